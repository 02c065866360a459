"""Shared fixtures: a small speech LM model dir and a tokenised split, built in seconds.

The model dir is what `speech-lpo build-model` writes (BPE tokenizer trained by the project on the text,
audio tokens appended, tiny Qwen2 from a config, audio_vocab.json); the tokenised split is the Arrow
shard layout of `speech-lpo tokenize`, with codes drawn at random instead of encoded from audio, so
tests of the LM stages don't pay for a codec.
"""

from pathlib import Path

import numpy as np
import pytest

SENTENCES = [
    "THE CAT SAT ON THE MAT",
    "A DOG RAN IN THE PARK",
    "SHE READS A GREEN BOOK",
    "WE WALK TO THE OLD HOUSE",
    "THE SUN IS VERY BRIGHT",
    "HE PLAYS A SMALL DRUM",
    "THEY SING A LONG SONG",
    "MY FRIEND HAS A RED CAR",
]


def build_speech_lm(
    root: Path, codebook_size: int = 32, hidden_size: int = 64, seed: int = 0
) -> tuple[Path, Path]:
    from speech_lpo.build_model import train_bpe
    from speech_lpo.modeling import extend_tokenizer, tiny_qwen2
    from speech_lpo.tokenize_audio import write_shard

    rng = np.random.default_rng(seed)
    tokenizer = train_bpe(SENTENCES, vocab_size=300)
    vocab = extend_tokenizer(tokenizer, codebook_size)
    model_dir = root / "model"
    tiny_qwen2(len(tokenizer), hidden_size=hidden_size, seed=seed).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    vocab.save(model_dir)

    tokens = root / "tokens" / "train"
    tokens.mkdir(parents=True)
    n = len(SENTENCES)
    lengths = rng.integers(15, 30, size=n)
    write_shard(
        tokens / "shard-00000.arrow",
        {
            "id": [f"utt{i}" for i in range(n)],
            "text": SENTENCES,
            "speaker": ["spk"] * n,
            "lang": ["en"] * n,
            "split": ["train"] * n,
            "duration": (lengths / 25.0).tolist(),
            "audio": [f"utt{i}.wav" for i in range(n)],
            "codes": [rng.integers(0, codebook_size, size=m).tolist() for m in lengths],
        },
    )
    return model_dir, tokens


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Tiny models on 2 shared cores: torch's spinning worker threads only add contention (measured 4-17x
    slower with the default thread pool while other processes ran)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def speech_lm(tmp_path) -> tuple[Path, Path]:
    """(model dir, tokenised split dir) of a tiny speech LM."""
    return build_speech_lm(tmp_path)
