"""build-model: the real Qwen2.5 tokenizer extended with audio tokens; the embedded BPE + tiny Qwen2."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2TokenizerFast

from speech_lpo.build_model import NEW_ROW_NOISE, build, train_bpe
from speech_lpo.codecs import load_codec
from speech_lpo.modeling import tiny_qwen2
from speech_lpo.prepare import read_manifest
from speech_lpo.prompts import (
    asr_prompt_ids,
    asr_response_ids,
    response_codes,
    response_text,
    tts_prompt_ids,
    tts_response_ids,
)
from speech_lpo.vocab import AUDIO_END, AUDIO_START, AudioVocab, audio_token
from tests.fixtures_corpus import MINI_CODEBOOK, QWEN_TOKENIZER_DIR, need

pytest_plugins = ["tests.fixtures_corpus"]  # its fixtures

QWEN_TEXT_TOKENS = 151_665
TEXTS = [
    "HE COULD WAIT NO LONGER",
    "甚至出现交易几乎停滞的情况",
    "Mixed 中文 and English, digits 12345 and symbols <>&!",
    "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n",
    "  leading spaces\tand\ttabs\n\nnewlines  ",
    "<|audio_3 is not a token",
]


def tiny(**kw):
    return {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "num_kv_heads": 1, **kw}


@pytest.fixture(scope="module")
def qwen_model_dir(melvq_codec_dir, tmp_path_factory):
    need(QWEN_TOKENIZER_DIR)
    out = tmp_path_factory.mktemp("qwen_model") / "model"
    build(str(melvq_codec_dir), out, tokenizer_name=str(QWEN_TOKENIZER_DIR), tiny_config=tiny())
    return out


def test_qwen_tokenizer_extended_text_unchanged(qwen_model_dir):
    before = Qwen2TokenizerFast.from_pretrained(QWEN_TOKENIZER_DIR)
    assert len(before) == QWEN_TEXT_TOKENS
    after = AutoTokenizer.from_pretrained(qwen_model_dir)
    assert len(after) == QWEN_TEXT_TOKENS + 2 + MINI_CODEBOOK
    for text in TEXTS:
        assert after.encode(text) == before.encode(text), text
        assert after.decode(after.encode(text)) == text
    vocab = AudioVocab.load(qwen_model_dir)
    assert (vocab.audio_start_id, vocab.audio_end_id, vocab.offset) == (151_665, 151_666, 151_667)
    assert after.convert_tokens_to_ids([AUDIO_START, AUDIO_END]) == [151_665, 151_666]
    ids = after.convert_tokens_to_ids([audio_token(c) for c in range(MINI_CODEBOOK)])
    assert ids == list(range(vocab.offset, vocab.offset + MINI_CODEBOOK))
    # audio tokens written as text become exactly one id each
    assert after.encode("<|audio_0|><|audio_63|>") == [vocab.offset, vocab.offset + 63]


def assert_new_rows_near_the_mean(emb: torch.Tensor, first_new: int) -> None:
    """Rows from first_new on: distinct, centred on the text rows' mean, spread NEW_ROW_NOISE of their std."""
    std, mean = torch.std_mean(emb[:first_new], dim=0)
    new = emb[first_new:]
    assert len(torch.unique(new, dim=0)) == len(new)  # no two rows alike: the audio tokens are not symmetric
    assert torch.allclose(new.mean(dim=0), mean, atol=4 * NEW_ROW_NOISE * std.max() / len(new) ** 0.5)
    spread = ((new - mean) / std).std()
    assert spread == pytest.approx(NEW_ROW_NOISE, rel=0.1)


def test_model_rows_and_codec_saved(qwen_model_dir, melvq_codec_dir):
    model = AutoModelForCausalLM.from_pretrained(qwen_model_dir)
    emb = model.get_input_embeddings().weight.detach()
    tokens = QWEN_TEXT_TOKENS + 2 + MINI_CODEBOOK  # 151,731
    assert emb.shape[0] == 151_744 and emb.shape[0] % 64 == 0 and 0 <= emb.shape[0] - tokens < 64
    assert_new_rows_near_the_mean(emb, QWEN_TEXT_TOKENS)
    assert model.generation_config.eos_token_id == AutoTokenizer.from_pretrained(
        qwen_model_dir
    ).convert_tokens_to_ids("<|im_end|>")
    codec = load_codec(qwen_model_dir)
    assert np.array_equal(codec.codebook, load_codec(melvq_codec_dir).codebook)


def test_new_rows_are_deterministic_for_a_seed(melvq_codec_dir, tmp_path):
    """The same seed gives the same new rows (and text rows); another seed other new rows, same text rows."""
    need(QWEN_TOKENIZER_DIR)
    checkpoint = tmp_path / "checkpoint"
    tiny_qwen2(QWEN_TEXT_TOKENS, **tiny(hidden_size=16, num_heads=2)).save_pretrained(checkpoint)
    rows = {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        build(
            str(melvq_codec_dir),
            tmp_path / name,
            model_name=str(checkpoint),
            tokenizer_name=str(QWEN_TOKENIZER_DIR),
            seed=seed,
        )
        rows[name] = AutoModelForCausalLM.from_pretrained(tmp_path / name).get_input_embeddings().weight
    text = slice(0, QWEN_TEXT_TOKENS)
    assert torch.equal(rows["a"], rows["b"])
    assert torch.equal(rows["a"][text], rows["c"][text])
    assert not torch.isclose(rows["a"][QWEN_TEXT_TOKENS:], rows["c"][QWEN_TEXT_TOKENS:]).any()


def test_padded_checkpoint_initialises_padding_rows(melvq_codec_dir, tmp_path):
    """Qwen2.5 checkpoints have 151,936 rows for 151,665 tokens: audio tokens land in the padding."""
    need(QWEN_TOKENIZER_DIR)
    checkpoint = tmp_path / "padded"
    tiny_qwen2(151_936, **tiny(hidden_size=16, num_heads=2)).save_pretrained(checkpoint)
    out = tmp_path / "model"
    build(str(melvq_codec_dir), out, model_name=str(checkpoint), tokenizer_name=str(QWEN_TOKENIZER_DIR))
    emb = AutoModelForCausalLM.from_pretrained(out).get_input_embeddings().weight.detach()
    assert emb.shape[0] == 151_936  # no shrink, already a multiple of 64
    assert_new_rows_near_the_mean(emb, QWEN_TEXT_TOKENS)


def test_embedded_bpe_handles_both_languages(mini_manifests, melvq_codec_dir, tmp_path):
    manifests = [mini_manifests[c] / "train.jsonl" for c in ("aishell", "librispeech")]
    out = tmp_path / "model"
    vocab = build(str(melvq_codec_dir), out, text_manifests=manifests, bpe_vocab_size=600, tiny_config=tiny())
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [0, 1, 2]
    assert vocab.offset == vocab.audio_start_id + 2 and vocab.end == len(tok)
    texts = [x["text"] for m in manifests for x in read_manifest(m)]
    in_memory = train_bpe(texts, 600)
    for text in texts + TEXTS:
        assert tok.decode(tok.encode(text)) == text
        assert tok.encode(text) == in_memory.encode(text)  # reloading changes nothing
    # BPE merges: corpus words are a few tokens, not a byte each
    assert np.mean([len(tok.encode(t)) / len(t.encode()) for t in texts]) < 0.35
    rows = AutoModelForCausalLM.from_pretrained(out).get_input_embeddings().weight.shape[0]
    assert rows % 64 == 0 and 0 <= rows - len(tok) < 64


def test_embedded_default_needs_text(melvq_codec_dir, tmp_path):
    with pytest.raises(ValueError, match="--text-manifests"):
        build(str(melvq_codec_dir), tmp_path / "m")


def test_asr_and_tts_examples_decode_back(qwen_model_dir, mini_manifests):
    """A tokenised ASR and TTS example decodes back to the same text and codes."""
    tok = AutoTokenizer.from_pretrained(qwen_model_dir)
    vocab = AudioVocab.load(qwen_model_dir)
    codec = load_codec(qwen_model_dir)
    line = read_manifest(mini_manifests["aishell"] / "test.jsonl")[0]
    from speech_lpo.codecs import load_audio

    codes = codec.encode(*load_audio(line["audio"]))
    asr = asr_prompt_ids(tok, vocab, codes) + asr_response_ids(tok, line["text"])
    prompt_len = len(asr_prompt_ids(tok, vocab, codes))
    assert response_text(tok, asr[prompt_len:]) == line["text"]
    got, _ = response_codes(vocab, asr[:prompt_len])
    assert np.array_equal(got, codes)

    tts_prompt = tts_prompt_ids(tok, line["text"])
    tts = tts_prompt + tts_response_ids(tok, vocab, codes)
    got, closed = response_codes(vocab, tts[len(tts_prompt) :])
    assert closed and np.array_equal(got, codes)
    assert line["text"] in tok.decode(tts_prompt)


def test_cli_builds_the_embedded_default(mini_manifests, melvq_codec_dir, tmp_path, capsys):
    from speech_lpo.cli import main

    manifests = [str(mini_manifests[c] / "train.jsonl") for c in ("aishell", "librispeech")]
    out = tmp_path / "model"
    main(
        [
            "build-model",
            "--codec",
            str(melvq_codec_dir),
            "--out",
            str(out),
            "--text-manifests",
            *manifests,
            "--bpe-vocab-size",
            "500",
            "--hidden-size",
            "32",
            "--num-layers",
            "1",
        ]
    )
    vocab = AudioVocab.load(out)
    assert f"audio tokens [{vocab.offset}, {vocab.end})" in capsys.readouterr().out
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.hidden_size == 32 and model.config.num_hidden_layers == 1
    assert model.get_input_embeddings().weight.shape[0] == 576  # 566 tokens, padded to a multiple of 64
