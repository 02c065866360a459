"""The TTS prompt names the voice (DESIGN.md, Formats): one builder, used alike by the SFT examples and the
candidates (and so the pairs made from them), on the real Qwen2.5 tokenizer and a tokenised split."""

from pathlib import Path

import pytest

from speech_lpo.prompts import tts_prompt_ids

QWEN_TOKENIZER = Path(__file__).parents[1] / ".." / "shared" / "data" / "qwen2.5_tokenizer"


@pytest.mark.skipif(
    not QWEN_TOKENIZER.is_dir(), reason=f"Qwen2.5 tokenizer files not found at {QWEN_TOKENIZER}"
)
def test_tts_prompt_names_the_voice_on_the_qwen_tokenizer():
    from transformers import Qwen2TokenizerFast

    tok = Qwen2TokenizerFast.from_pretrained(QWEN_TOKENIZER)
    a, b = tts_prompt_ids(tok, "THE SUN IS BRIGHT", "9001"), tts_prompt_ids(tok, "THE SUN IS BRIGHT", "9002")
    assert (
        tok.decode(a) == "<|im_start|>user\nvoice 9001\nTHE SUN IS BRIGHT<|im_end|>\n<|im_start|>assistant\n"
    )
    assert a != b and a[: a.index(tok.convert_tokens_to_ids("<|im_end|>"))] != b[: len(a)]
    # no speaker (a text task's prompt): the text alone, as before
    plain = tts_prompt_ids(tok, "THE SUN IS BRIGHT")
    assert tok.decode(plain) == "<|im_start|>user\nTHE SUN IS BRIGHT<|im_end|>\n<|im_start|>assistant\n"


def test_sft_examples_and_candidates_name_each_utterances_voice(tmp_path):
    from transformers import AutoTokenizer

    from speech_lpo.generate import dataset_items
    from speech_lpo.sft import build_examples
    from speech_lpo.tokenize_audio import load_tokenized, write_shard
    from speech_lpo.vocab import AudioVocab
    from tests.conftest import build_speech_lm

    model_dir, tokens = build_speech_lm(tmp_path)
    two = tmp_path / "two_voices"
    two.mkdir()
    rows = load_tokenized(tokens).to_list()
    columns = {k: [r[k] for r in rows] for k in rows[0]}
    columns["speaker"] = ["9001" if i % 2 else "9002" for i in range(len(rows))]
    write_shard(two / "shard-00000.arrow", columns)
    ds = load_tokenized(two)
    tokenizer, vocab = AutoTokenizer.from_pretrained(model_dir), AudioVocab.load(model_dir)

    examples, _ = build_examples(ds, tokenizer, vocab, "tts", None)
    items = dataset_items(ds, "tts", tokenizer, vocab)
    for row, example, item in zip(ds, examples, items, strict=True):
        expected = tts_prompt_ids(tokenizer, row["text"], row["speaker"])
        assert example["prompt"] == expected and item.prompt_ids == expected
        assert f"voice {row['speaker']}\n" in tokenizer.decode(example["prompt"])
    voices = {tokenizer.decode(e["prompt"]).split("voice ")[1].split("\n")[0] for e in examples}
    assert voices == {"9001", "9002"}
