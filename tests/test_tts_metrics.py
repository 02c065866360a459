"""TTS automatic metrics with the real pocketsphinx on the real LibriSpeech utterances in ../shared/data."""

import json
from pathlib import Path

import jiwer
import numpy as np
import pytest
import soundfile as sf
import soxr

from speech_lpo.cli import main as cli_main
from speech_lpo.normalize import get_normalizer
from speech_lpo.tts_metrics import intelligibility, load_audio, make_asr, pocketsphinx_asr, transcribe_files

DATA = Path(__file__).parents[1] / ".." / "shared" / "data"
LIBRISPEECH = DATA / "librispeech" / "LibriSpeech"

pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"real corpus samples not found at {DATA}")


def librispeech() -> tuple[dict[str, str], dict[str, str]]:
    texts, wavs = {}, {}
    for trans in sorted(LIBRISPEECH.glob("*/*/*/*.trans.txt")):
        for line in trans.read_text().splitlines():
            uttid, text = line.split(maxsplit=1)
            texts[uttid] = text
            wavs[uttid] = str(trans.parent / f"{uttid}.flac")
    return texts, wavs


@pytest.fixture(scope="module")
def asr():
    return pocketsphinx_asr()


def test_pocketsphinx_intelligibility_on_real_librispeech(tmp_path, asr):
    texts, wavs = librispeech()
    norm = get_normalizer("whisper_en")
    cache = tmp_path / "asr.jsonl"
    system = intelligibility(texts, wavs, asr, norm, "originals", cache)
    assert len(system.utts) == 11 and system.problems == []
    print(f"pocketsphinx on {len(texts)} real LibriSpeech utterances: %WER {system.error_rate:.2f}")
    assert system.error_rate < 50  # well below 100%: the recogniser hears the words
    # the cached transcripts are what was scored: jiwer on them gives the same pooled WER
    hyps = {row["id"]: row["text"] for row in map(json.loads, cache.read_text().splitlines())}
    assert set(hyps) == set(texts)
    wer = jiwer.wer([norm.normalize(texts[k]) for k in texts], [norm.normalize(hyps[k]) for k in texts])
    assert system.error_rate == pytest.approx(100 * wer)
    # a re-run reads the cache instead of transcribing again
    again, problems = transcribe_files(wavs, lambda audio: pytest.fail("transcribed twice"), cache)
    assert again == hyps and problems == []


def test_load_audio_resamples_and_rejects_garbage(tmp_path):
    _, wavs = librispeech()
    audio16 = load_audio(wavs["2830-3980-0043"])
    assert audio16.dtype == np.float32 and abs(len(audio16) - 1.975 * 16000) < 2
    sf.write(tmp_path / "x8k.wav", soxr.resample(audio16, 16000, 8000), 8000)
    assert abs(len(load_audio(tmp_path / "x8k.wav")) - len(audio16)) < 4
    (tmp_path / "junk.wav").write_bytes(b"RIFF not really a wave file")
    with pytest.raises(Exception):  # noqa: B017 - soundfile's own error type
        load_audio(tmp_path / "junk.wav")


def tiny_whisper(path: Path) -> Path:
    """A randomly initialised tiny Whisper (the real classes, no download) with a byte-level tokenizer
    and Whisper's special tokens; end-of-text is suppressed so that it always says something."""
    import torch
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizer,
    )
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    tokenizer = WhisperTokenizer(vocab={c: i for i, c in enumerate(bytes_to_unicode().values())}, merges=[])
    special = [
        "<|endoftext|>",
        "<|startoftranscript|>",
        "<|en|>",
        "<|zh|>",
        "<|translate|>",
        "<|transcribe|>",
    ]
    special += ["<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]
    tokenizer.add_special_tokens({"additional_special_tokens": special})
    ids = dict(zip(special, tokenizer.convert_tokens_to_ids(special), strict=True))
    eot, sot = ids["<|endoftext|>"], ids["<|startoftranscript|>"]
    torch.manual_seed(0)
    config = WhisperConfig(
        vocab_size=len(tokenizer),
        num_mel_bins=80,
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        max_target_positions=64,
        pad_token_id=eot,
        bos_token_id=eot,
        eos_token_id=eot,
        decoder_start_token_id=sot,
    )
    model = WhisperForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=sot,
        eos_token_id=eot,
        pad_token_id=eot,
        lang_to_id={"<|en|>": ids["<|en|>"], "<|zh|>": ids["<|zh|>"]},
        task_to_id={"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]},
        no_timestamps_token_id=ids["<|notimestamps|>"],
        is_multilingual=True,
        suppress_tokens=[eot],
        max_length=24,
    )
    model.save_pretrained(path)
    WhisperProcessor(WhisperFeatureExtractor(feature_size=80), tokenizer).save_pretrained(path)
    return path


def test_whisper_through_transformers_on_a_tiny_random_model(tmp_path):
    texts, wavs = librispeech()
    files = {k: wavs[k] for k in ("2830-3980-0043", "1089-134691-0000")}
    asr = make_asr(str(tiny_whisper(tmp_path / "whisper")), "en")
    refs = {k: texts[k] for k in files}
    system = intelligibility(refs, files, asr, get_normalizer("whisper_en"), "tiny", tmp_path / "asr.jsonl")
    hyps = [json.loads(line)["text"] for line in (tmp_path / "asr.jsonl").read_text().splitlines()]
    assert len(hyps) == 2 and all(hyps)  # it ran and said something (random, so nothing sensible)
    assert [u.id for u in system.utts] == list(files) and system.error_rate > 0


def test_pocketsphinx_refuses_mandarin():
    with pytest.raises(ValueError, match="only an English model"):
        make_asr("pocketsphinx", "zh")


def test_score_tts_on_a_synthesis_dir_names_every_bad_output(tmp_path, capsys):
    """A synthesize-style dir built from real audio: two good utterances, one that never closed its
    audio, one whose synthesis failed, one unreadable wav; the round trips are 8 kHz copies."""
    texts, wavs = librispeech()
    synth = tmp_path / "lpo_r2_0.4"
    (synth / "wav").mkdir(parents=True)
    (synth / "roundtrip").mkdir()
    rows = []
    for uttid in ("2830-3980-0043", "8455-210777-0068", "1089-134691-0000"):
        audio = load_audio(wavs[uttid])
        sf.write(
            synth / "wav" / f"{uttid}.wav",
            audio[: int(0.9 * len(audio))] if uttid[0] == "1" else audio,
            16000,
        )
        sf.write(synth / "roundtrip" / f"{uttid}.wav", soxr.resample(audio, 16000, 8000), 8000)
        rows.append(
            {
                "id": uttid,
                "text": texts[uttid],
                "wav": f"wav/{uttid}.wav",
                "roundtrip_wav": f"roundtrip/{uttid}.wav",
                "audio_end": uttid[0] != "1",
                "duration": (0.9 if uttid[0] == "1" else 1.0) * len(audio) / 16000,
                "ref_duration": len(audio) / 16000,
            }
        )
    rows.append(
        {"id": "failed", "text": "HELLO", "wav": None, "wav_error": "no audio codes", "audio_end": False}
    )
    (synth / "wav" / "junk.wav").write_bytes(b"RIFF\x00\x00")
    rows.append({"id": "junk", "text": "HE COULD WAIT", "wav": "wav/junk.wav", "audio_end": True})
    (synth / "synth.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    cli_main(["score", "tts", "--synth-dir", str(synth), "--out-dir", str(tmp_path / "score")])
    assert "lpo_r2_0.4: intelligibility %WER" in capsys.readouterr().out
    out = json.loads((tmp_path / "score" / "tts-summary-lpo_r2_0.4.json").read_text())
    assert out["asr"] == "pocketsphinx" and out["normalizer"] == "whisper_en" and out["utterances"] == 5
    assert out["no_audio_end_rate"] == pytest.approx(2 / 5)
    assert sorted(out["no_audio_end_ids"]) == ["1089-134691-0000", "failed"]
    assert out["duration_ratio_mean"] == pytest.approx((1 + 1 + 0.9) / 3, abs=1e-3)
    synth_kinds = {(p["kind"], p["id"]) for p in out["intelligibility"]["problems"]}
    assert {
        ("no_audio", "failed"),
        ("undecodable_audio", "junk"),
        ("missing_hypothesis", "junk"),
    } <= synth_kinds
    assert ("missing_hypothesis", "failed") in synth_kinds  # both count as all deletions
    assert out["intelligibility"]["deletions"] >= 1 + 3
    # round trips: rows without a round-trip wav are named too
    assert ("no_audio", "junk") in {(p["kind"], p["id"]) for p in out["codec_ceiling"]["problems"]}
    errs = (tmp_path / "score" / "errs-lpo_r2_0.4-synth.txt").read_text()
    assert "undecodable_audio: 'junk'" in errs and "failed:\tS=0 D=1 I=0 N=1" in errs
