"""Neural codecs under control: a codebook count is required, batches equal one-at-a-time, generated TTS
answers keep codebook order, model dirs refer to the codec instead of copying it.

Codecs are random-config EnCodec, Mimi and DAC (the real transformers classes, no download).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import LogitsProcessorList

from speech_lpo.cli import main as cli
from speech_lpo.codecs import CODEC_FILE, MalformedCodes, load_audio, load_codec, unflatten_codes
from speech_lpo.codecs.constrain import CodebookOrder
from speech_lpo.codecs.neural import MODEL_SUBDIR, NEURAL_CODECS
from speech_lpo.decode import generate_batch
from speech_lpo.modeling import tiny_qwen2
from speech_lpo.prepare import read_manifest
from speech_lpo.synthesize import answer_codes
from speech_lpo.tokenize_audio import load_tokenized
from speech_lpo.vocab import AudioVocab
from tests.fixtures_corpus import tiny_neural_model

pytest_plugins = ["tests.fixtures_corpus"]  # its fixtures


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@pytest.mark.parametrize("name", sorted(NEURAL_CODECS))
def test_a_checkpoint_needs_a_count_and_keeps_that_many_codebooks(name, mini_manifests, tmp_path):
    tiny_neural_model(name, codebooks=12).save_pretrained(tmp_path / "ckpt")
    manifest = mini_manifests["librispeech"] / "test-clean.jsonl"
    argv = ["tokenize", "--manifests", str(manifest), "--codec", str(tmp_path / "ckpt"), "--jobs", "1"]
    with pytest.raises(ValueError, match="holds 12 codebooks; say how many to keep with --num-quantizers"):
        cli(argv + ["--out", str(tmp_path / "refused")])
    assert not (tmp_path / "refused" / "codec").exists()

    cli(argv + ["--out", str(tmp_path / "tok"), "--num-quantizers", "8"])
    codec = load_codec(tmp_path / "tok" / "codec")
    assert codec.num_quantizers == 8 and codec.codebook_size == 8 * 64
    codes = load_tokenized(tmp_path / "tok" / "test-clean")["codes"]
    assert len(codes) == len(read_manifest(manifest))
    for c in codes:  # whole frames, codebook q of each frame in band q
        frames = np.asarray(c).reshape(-1, 8)
        assert (frames // 64 == np.arange(8)).all()
    # the saved codec refers to the checkpoint instead of copying its weights
    meta = json.loads((tmp_path / "tok" / "codec" / CODEC_FILE).read_text())
    assert meta["pretrained"] == str((tmp_path / "ckpt").resolve()) and meta["num_quantizers"] == 8
    assert not (tmp_path / "tok" / "codec" / MODEL_SUBDIR).exists()
    with pytest.raises(ValueError, match="holds a codec with 8 codebooks, not --num-quantizers 4"):
        cli(argv + ["--out", str(tmp_path / "tok"), "--num-quantizers", "4"])


@pytest.mark.parametrize("name", sorted(NEURAL_CODECS))
def test_batched_codec_equals_one_at_a_time(name, mini_manifests):
    codec = NEURAL_CODECS[name](tiny_neural_model(name), num_quantizers=2, device="cpu")
    lines = read_manifest(mini_manifests["librispeech"] / "test-clean.jsonl")[:3]
    audio = []
    for line, seconds in zip(lines, (0.31, 0.5, 0.77), strict=True):  # three lengths, none whole frames
        wav, sr = load_audio(line["audio"])
        audio.append((wav[: int(seconds * sr)], sr))
    batched = codec.encode_batch(audio)
    alone = [codec.encode(wav, sr) for wav, sr in audio]
    assert [len(c) for c in batched] == [len(c) for c in alone] and len({len(c) for c in alone}) == 3
    for b, a in zip(batched, alone, strict=True):
        assert np.array_equal(b, a)
    wavs = codec.decode_batch(alone, ["a", "b", "c"])
    for w, c in zip(wavs, alone, strict=True):
        one = codec.decode(c)
        assert len(w) == len(one) == len(c) // 2 * codec.samples_per_frame
        np.testing.assert_allclose(w, one, atol=1e-5)


def well_formed(ids: list[int], vocab: AudioVocab, n_q: int, per: int, end: int) -> bool:
    """<|audio_start|>, codebook t mod Q at audio position t, then <|audio_end|> at a frame boundary (or a
    generation cut by the limit); nothing else."""
    if not ids or ids[0] != vocab.audio_start_id:
        return False
    for t, token in enumerate(ids[1:]):
        if token == vocab.audio_end_id:
            return t > 0 and t % n_q == 0 and ids[t + 2 :] in ([], [end])
        band = vocab.offset + (t % n_q) * per
        if not band <= token < band + per:
            return False
    return True


def test_codebook_order_keeps_100_sampled_answers_well_formed():
    n_q, per, end = 8, 16, 2
    vocab = AudioVocab(audio_start_id=150, audio_end_id=151, offset=152, codebook_size=n_q * per)
    model = tiny_qwen2(vocab.end, seed=3).eval()
    order = CodebookOrder(vocab.audio_start_id, vocab.audio_end_id, end, vocab.offset, n_q, per)
    prompts = [
        torch.randint(3, 150, (n,), generator=torch.Generator().manual_seed(n)).tolist() for n in range(5, 15)
    ]
    stops = [vocab.audio_end_id, end]

    def sample(**extra) -> list[list[int]]:
        torch.manual_seed(0)
        return generate_batch(
            model,
            prompts,
            0,
            stops,
            do_sample=True,
            top_k=0,
            num_return_sequences=10,
            max_new_tokens=60,
            **extra,
        )

    answers = sample(logits_processor=LogitsProcessorList([order]))
    assert len(answers) == 100
    assert all(well_formed(ids, vocab, n_q, per, end) for ids in answers)
    closed = [ids for ids in answers if ids[-1] == vocab.audio_end_id]
    assert closed  # some stop on their own: at a frame boundary, so they parse
    for ids in closed:
        codes, was_closed = answer_codes(vocab, ids, stops)
        assert was_closed and unflatten_codes(codes, n_q, per, "u").shape == (n_q, len(codes) // n_q)
    # the same model unconstrained: the check above can fail, and a malformed answer raises, named
    free = [ids for ids in sample() if not well_formed(ids, vocab, n_q, per, end)]
    assert free
    with pytest.raises(MalformedCodes, match="utterance 'free-0'"):
        unflatten_codes(answer_codes(vocab, free[0], stops)[0], n_q, per, "free-0")


def test_model_dirs_refer_to_the_codec_and_synthesize_counts_malformed_answers(mini_manifests, tmp_path):
    """tokenize -> build-model -> a 2-checkpoint SFT with a random-config Mimi (8 codebooks): every model dir
    and checkpoint refers to the codec, none grows by its weights; synthesize cut mid-frame names each
    malformed answer instead of folding it."""
    import soundfile as sf

    tiny_neural_model("mimi", codebooks=8).save_pretrained(tmp_path / "mimi")
    manifest = tmp_path / "short.jsonl"  # 0.15 s of each utterance: 75 frames of this 500 Hz Mimi
    with manifest.open("w") as f:
        for line in read_manifest(mini_manifests["librispeech"] / "test-clean.jsonl"):
            wav, sr = load_audio(line["audio"])
            sf.write(tmp_path / f"{line['id']}.wav", wav[: int(0.15 * sr)], sr)
            f.write(
                json.dumps(line | {"audio": str(tmp_path / f"{line['id']}.wav"), "duration": 0.15}) + "\n"
            )
    cli(["tokenize", "--manifests", str(manifest), "--out", str(tmp_path / "tok"), "--jobs", "1"]
        + ["--codec", str(tmp_path / "mimi"), "--num-quantizers", "8"])  # fmt: skip
    exp = tmp_path / "exp"
    cli(["build-model", "--codec", str(tmp_path / "tok" / "codec"), "--out", str(exp / "init")]
        + ["--text-manifests", str(manifest), "--bpe-vocab-size", "300", "--hidden-size", "32"])  # fmt: skip
    cli(["sft", "--data", str(tmp_path / "tok" / "short"), "--model", str(exp / "init"), "--task", "tts"]
        + ["--output_dir", str(exp / "sft"), "--max_steps", "2", "--save_steps", "1", "--batch_size", "2"]
        + ["--save_total_limit", "0", "--max_length", "4096"])  # fmt: skip
    model_dirs = [exp / "init", exp / "sft", exp / "sft" / "checkpoint-1", exp / "sft" / "checkpoint-2"]
    codec_weights = dir_size(tmp_path / "mimi")
    weights = dir_size(exp / "init") - dir_size(exp / "init" / "codec")
    print(f"codec weights {codec_weights} B, LM dir {weights} B, exp/ {dir_size(exp)} B")
    for d in model_dirs:
        assert (d / "codec" / CODEC_FILE).is_file() and dir_size(d / "codec") < 2000 < codec_weights
        assert load_codec(d).num_quantizers == 8
    assert dir_size(exp) < sum(dir_size(d) - dir_size(d / "codec") for d in model_dirs) + 4 * 2000

    out = tmp_path / "synth"
    argv = ["synthesize", "--model", str(exp / "sft"), "--data", str(tmp_path / "tok" / "short")]
    cli(argv + ["--out-dir", str(out), "--max-new-tokens", "12", "--limit", "3"])  # 11 codes: a partial frame
    report = json.loads((out / "synthesize.json").read_text())
    ids = sorted(r["id"] for r in read_manifest(manifest))[:3]
    assert sorted(report["malformed"]) == sorted(report["hit_max_new_tokens"]) == ids
    for utt, reason in report["malformed"].items():
        assert f"utterance {utt!r}: 11 codes are not whole frames of 8" in reason
        assert report["no_audio"][utt] == reason
    rows = [json.loads(line) for line in (out / "synth.jsonl").read_text().splitlines()]
    assert all(r["wav"] is None and r["roundtrip_wav"] for r in rows)


def test_a_spec_caps_the_codebooks_and_the_option_must_agree_with_it(tmp_path):
    import yaml

    tiny_neural_model("dac", codebooks=12).save_pretrained(tmp_path / "dac")
    spec = {"codec": "dac", "pretrained": str(tmp_path / "dac")}
    (tmp_path / "bare.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(ValueError, match="no num_quantizers in the spec; pass --num-quantizers"):
        load_codec(tmp_path / "bare.yaml")
    assert load_codec(tmp_path / "bare.yaml", 8).num_quantizers == 8
    (tmp_path / "eight.yaml").write_text(yaml.safe_dump({**spec, "num_quantizers": 8}))
    assert (
        load_codec(tmp_path / "eight.yaml").num_quantizers
        == load_codec(tmp_path / "eight.yaml", 8).num_quantizers
    )
    with pytest.raises(ValueError, match="keeps 8 codebooks; --num-quantizers 4 contradicts it"):
        load_codec(tmp_path / "eight.yaml", 4)
