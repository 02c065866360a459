"""Shared fixtures for the corpus, codec and tokenisation tests: a small synthetic corpus (espeak-ng),
its prepared manifests, a melvq codec fitted on it, and the real data in ../shared/data.

A test module gets the fixtures with ``pytest_plugins = ["tests.fixtures_corpus"]`` and imports the
constants and helpers (``need``, ``tiny_neural_model``, ...) by name.
"""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
AISHELL_DIR = SHARED_DATA / "aishell1"
LIBRISPEECH_DIR = SHARED_DATA / "librispeech"
QWEN_TOKENIZER_DIR = SHARED_DATA / "qwen2.5_tokenizer"
MINI_COUNTS = {"train": 24, "dev": 4, "test": 4}
MINI_CODEBOOK = 64  # small K: the fit is quick and every centroid sees enough frames


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is absent (the real corpora and tokenizer live in ../shared/data)")
    return path


@pytest.fixture(scope="session")
def mini_corpus(tmp_path_factory) -> Path:
    from speech_lpo.synth_corpus import synth_corpus

    root = tmp_path_factory.mktemp("mini_corpus")
    synth_corpus(root, MINI_COUNTS, seed=0)
    return root


@pytest.fixture(scope="session")
def mini_manifests(mini_corpus, tmp_path_factory) -> dict[str, Path]:
    """{"aishell": dir, "librispeech": dir} of manifests prepared from the mini corpus."""
    from speech_lpo.prepare import prepare

    out = tmp_path_factory.mktemp("mini_manifests")
    prepare("aishell", mini_corpus / "aishell1", out / "aishell")
    prepare("librispeech", mini_corpus / "librispeech", out / "librispeech")
    return {"aishell": out / "aishell", "librispeech": out / "librispeech"}


@pytest.fixture(scope="session")
def melvq_codec_dir(mini_manifests, tmp_path_factory) -> Path:
    """A melvq codec fitted on the mini corpus's English train split, saved."""
    import yaml

    from speech_lpo.tokenize_audio import fit_codec

    spec = yaml.safe_load((Path(__file__).resolve().parents[1] / "tokenizers" / "melvq.yaml").read_text())
    spec["codebook_size"] = MINI_CODEBOOK
    codec = fit_codec(spec, mini_manifests["librispeech"] / "train.jsonl")
    out = tmp_path_factory.mktemp("melvq") / "codec"
    codec.save(out)
    return out


def tiny_neural_model(name: str, codebooks: int | None = None):
    """A small randomly initialised EnCodec / Mimi / DAC (the real classes, no download), 16 kHz, with
    ``codebooks`` residual codebooks (default: EnCodec 2, Mimi 4, DAC 3).

    EnCodec and Mimi initialise their codebooks to zeros, which would give code 0 everywhere; random
    codebooks make every code reachable, so the tests can see codes move.
    """
    import torch
    from transformers import DacConfig, DacModel, EncodecConfig, EncodecModel, MimiConfig, MimiModel

    torch.manual_seed(0)
    if name == "encodec":
        config = EncodecConfig(
            hidden_size=16,
            num_filters=4,
            upsampling_ratios=[8, 8],
            codebook_size=64,
            num_lstm_layers=1,
            target_bandwidths=[1.5, 1.5 * (codebooks or 2)],  # 1 and 2 codebooks at 250 Hz x 6 bits
            sampling_rate=16000,
        )
        model = EncodecModel(config)
    elif name == "mimi":
        config = MimiConfig(
            hidden_size=16,
            num_filters=4,
            upsampling_ratios=[4, 4],
            codebook_size=64,
            codebook_dim=16,
            vector_quantization_hidden_dimension=16,
            num_quantizers=codebooks or 4,
            num_semantic_quantizers=1,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            head_dim=8,
            intermediate_size=32,
            sliding_window=16,
            upsample_groups=16,
            sampling_rate=16000,
        )
        model = MimiModel(config)
    elif name == "dac":
        config = DacConfig(
            encoder_hidden_size=4,
            downsampling_ratios=[4, 8],
            decoder_hidden_size=16,
            n_codebooks=codebooks or 3,
            codebook_size=64,
            codebook_dim=4,
            hidden_size=16,
            sampling_rate=16000,
        )
        model = DacModel(config)
    else:
        raise ValueError(name)
    with torch.no_grad():
        for buffer_name, buffer in model.named_buffers():
            if buffer_name.endswith(("codebook.embed", "codebook.embed_sum")):
                buffer.normal_()
        if name == "encodec":  # its random encoder's frames are far from N(0, 1): start at real frames
            noise = torch.randn(1, 1, 16000, generator=torch.Generator().manual_seed(0))
            frames = model.encoder(noise)[0].T  # (T, D)
            for layer in model.quantizer.layers:
                layer.codebook.embed.copy_(frames[torch.randperm(len(frames))[:64]])
                frames = frames - frames.mean(dim=0)  # later codebooks quantise residuals around zero
    return model.eval()
