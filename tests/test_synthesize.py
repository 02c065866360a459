"""`speech-lpo synthesize` and `score tts` end to end on real LibriSpeech audio: prepare -> tokenize (melvq)
-> build-model -> a tiny Qwen2 that memorises the TTS answers of three utterances -> wav files."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from speech_lpo.cli import main as cli_main
from speech_lpo.codecs import load_codec
from speech_lpo.codecs.neural import EncodecCodec
from speech_lpo.synthesize import write_wavs
from speech_lpo.tokenize_audio import SCHEMA, load_tokenized, write_shard
from tests.fixtures_corpus import tiny_neural_model
from tests.test_decode import ROOT, train

LIBRISPEECH = ROOT / ".." / "shared" / "data" / "librispeech"
SHORT = ("1089-134691-0000", "2830-3980-0043", "8455-210777-0068")  # about 2 s each


@pytest.fixture(scope="module")
def tts_models(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(trained model dir, untrained model dir, tokenised utterances)."""
    if not LIBRISPEECH.is_dir():
        pytest.skip(f"real LibriSpeech samples not found at {LIBRISPEECH}")
    tmp = tmp_path_factory.mktemp("tts")
    cli_main(
        ["prepare", "--corpus", "librispeech", "--corpus-dir", str(LIBRISPEECH), "--out", str(tmp / "data")]
    )
    lines = (tmp / "data" / "test-clean.jsonl").read_text().splitlines()
    manifest = tmp / "short.jsonl"
    manifest.write_text("".join(line + "\n" for line in lines if json.loads(line)["id"] in SHORT))
    spec = yaml.safe_load((ROOT / "tokenizers" / "melvq.yaml").read_text()) | {"codebook_size": 32}
    (tmp / "melvq.yaml").write_text(yaml.safe_dump(spec))
    argv = [
        "tokenize",
        "--manifests",
        str(manifest),
        "--out",
        str(tmp / "tokens"),
        "--codec",
        str(tmp / "melvq.yaml"),
    ]
    cli_main(argv + ["--fit-manifest", str(manifest), "--jobs", "1"])
    argv = ["build-model", "--codec", str(tmp / "tokens" / "codec"), "--out", str(tmp / "model")]
    cli_main(argv + ["--text-manifests", str(manifest), "--bpe-vocab-size", "400", "--hidden-size", "64"])
    shutil.copytree(tmp / "model", tmp / "untrained")
    train(tmp / "model", tmp / "tokens" / "short", ("tts",), steps=300)
    return tmp / "model", tmp / "untrained", tmp / "tokens" / "short"


def test_synthesize_and_score_a_trained_tiny_model(tts_models, tmp_path, capsys):
    model, _, tokens = tts_models
    out = tmp_path / "lpo"
    cli_main(
        ["synthesize", "--model", str(model), "--data", str(tokens), "--out-dir", str(out), "--limit", "1"]
    )
    cli_main(
        [
            "synthesize",
            "--model",
            str(model),
            "--data",
            str(tokens),
            "--out-dir",
            str(out),
            "--batch-size",
            "2",
        ]
    )
    report = json.loads((out / "synthesize.json").read_text())
    assert report["utterances"] == report["with_audio"] == 3 and report["synthesized_this_run"] == 2
    assert report["no_audio_end"] == [] and report["no_audio"] == {} and report["no_roundtrip"] == {}

    codec = load_codec(model)
    refs = {r["id"]: r for r in load_tokenized(tokens)}
    rows = [json.loads(line) for line in (out / "synth.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == sorted(SHORT)
    for row in rows:
        assert row["codes"] == refs[row["id"]]["codes"]  # memorised: greedy TTS gives the reference codes
        wav, sr = sf.read(out / row["wav"], dtype="float32")
        roundtrip, _ = sf.read(out / row["roundtrip_wav"], dtype="float32")
        assert sr == codec.sample_rate and row["duration"] == pytest.approx(len(wav) / sr)
        np.testing.assert_allclose(wav, roundtrip, atol=1e-4)  # same codes, same audio
        assert row["audio_end"] and row["n_codes"] == len(row["codes"])
        assert row["duration"] / row["ref_duration"] == pytest.approx(1, abs=0.05)

    cli_main(["score", "tts", "--synth-dir", str(out), "--out-dir", str(tmp_path / "score")])
    cli_main(["score", "tts", "--synth-dir", str(out), "--roundtrip", "--out-dir", str(tmp_path / "score")])
    capsys.readouterr()
    summ = json.loads((tmp_path / "score" / "tts-summary-lpo.json").read_text())
    roundtrip = json.loads((tmp_path / "score" / "tts-summary-codec_roundtrip.json").read_text())
    assert summ["truncated_pct"]["value"] == 0 and summ["duration_ratio"]["value"] == pytest.approx(
        1, abs=0.05
    )
    synth, ceiling = summ["intelligibility"], roundtrip["intelligibility"]
    assert synth["problems"] == [] and synth["ref_units"] == ceiling["ref_units"] == 14
    # the same audio reaches the ceiling exactly; this failed while pocketsphinx's front end kept state
    # from the synthesised files into the round trips (tts_metrics.pocketsphinx_asr resets it)
    assert synth["error_rate"] == ceiling["error_rate"]
    assert summ["dnsmos_ovrl"]["value"] == pytest.approx(roundtrip["dnsmos_ovrl"]["value"], abs=1e-3)


def test_outputs_that_never_close_are_recorded(tts_models, tmp_path):
    model, untrained, tokens = tts_models
    out = tmp_path / "cut"
    cli_main(
        [
            "synthesize",
            "--model",
            str(model),
            "--data",
            str(tokens),
            "--out-dir",
            str(out),
            "--max-new-tokens",
            "20",
        ]
    )
    report = json.loads((out / "synthesize.json").read_text())
    assert sorted(report["no_audio_end"]) == sorted(SHORT)
    for row in map(json.loads, (out / "synth.jsonl").read_text().splitlines()):
        assert not row["audio_end"] and row["n_codes"] == 19  # <|audio_start|> + 19 codes = 20 tokens
    # an untrained model: whatever it emits, every utterance keeps its row and says why it has no audio
    out = tmp_path / "untrained"
    argv = ["synthesize", "--model", str(untrained), "--data", str(tokens), "--out-dir", str(out)]
    cli_main(argv + ["--max-new-tokens", "30", "--temperature", "1.0"])
    rows = [json.loads(line) for line in (out / "synth.jsonl").read_text().splitlines()]
    assert len(rows) == 3
    for row in rows:
        assert (row["wav"] is None) == ("wav_error" in row)
        if row["n_codes"] == 0:
            assert row["wav_error"] == "no audio codes"


def test_codes_the_codec_cannot_decode_are_named(tts_models, tmp_path):
    _, _, tokens = tts_models
    codec = EncodecCodec(tiny_neural_model("encodec"))  # two codebooks: one code is less than a frame
    codes = np.arange(40) % 2 * 64 + np.arange(40) // 2  # 20 frames, codebook q of each in band q
    x, y, z = write_wavs(
        tmp_path / "wav", codec, [np.array([5]), codes, np.array([], np.int64)], ["x", "y", "z"]
    )
    assert x.wav is None and x.malformed and "utterance 'x': 1 codes are not whole frames of 2" in x.error
    assert not (tmp_path / "wav" / "x.wav").exists()
    assert (
        y.error is None
        and y.wav == "wav/y.wav"
        and y.duration == pytest.approx(20 / codec.frame_rate, rel=0.1)
    )
    assert z.wav is None and not z.malformed and z.error == "no audio codes"
    # a tokenised utterance without codes: its round trip is named, its synthesis still runs
    bad = tmp_path / "tokens"
    shutil.copytree(tokens, bad)
    columns = {name: [] for name in SCHEMA.names}
    row = {"id": "empty", "text": "HELLO", "speaker": "x", "lang": "en", "split": "test", "duration": 1.0}
    for name in SCHEMA.names:
        columns[name].append(row.get(name, "" if name == "audio" else []))
    write_shard(bad / "shard-99999.arrow", columns)
    model = tts_models[0]
    out = tmp_path / "synth"
    cli_main(
        [
            "synthesize",
            "--model",
            str(model),
            "--data",
            str(bad),
            "--out-dir",
            str(out),
            "--max-new-tokens",
            "50",
        ]
    )
    report = json.loads((out / "synthesize.json").read_text())
    assert report["utterances"] == 4 and report["no_roundtrip"] == {"empty": "no audio codes"}
