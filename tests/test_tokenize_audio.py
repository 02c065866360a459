"""tokenize: manifests -> Arrow shards of codes; parallel, resumable, bad audio reported."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from speech_lpo.codecs import load_audio, load_codec
from speech_lpo.prepare import read_manifest
from speech_lpo.tokenize_audio import load_tokenized, prepare_codec, tokenize_manifest
from tests.fixtures_corpus import MINI_CODEBOOK, MINI_COUNTS, tiny_neural_model

pytest_plugins = ["tests.fixtures_corpus"]  # its fixtures

COLUMNS = ["id", "text", "speaker", "lang", "split", "duration", "audio", "codes"]


@pytest.fixture(scope="module")
def tokenised(mini_manifests, melvq_codec_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("tokens")
    shutil.copytree(melvq_codec_dir, out / "codec")
    for split in ("train", "test-clean"):
        tokenize_manifest(mini_manifests["librispeech"] / f"{split}.jsonl", out, out / "codec", 10, 2)
    return out


def test_rows_hold_the_codec_codes(tokenised, mini_manifests):
    ds = load_tokenized(tokenised / "test-clean")
    assert ds.column_names == COLUMNS
    lines = read_manifest(mini_manifests["librispeech"] / "test-clean.jsonl")
    assert ds["id"] == [x["id"] for x in lines]
    codec = load_codec(tokenised / "codec")
    for row, line in zip(ds, lines, strict=True):
        assert {k: row[k] for k in COLUMNS[:-1]} == {k: line[k] for k in COLUMNS[:-1]}
        assert row["codes"] == codec.encode(*load_audio(line["audio"])).tolist()
        assert max(row["codes"]) < MINI_CODEBOOK


def test_load_tokenized_whole_dir_and_shards(tokenised):
    assert len(list((tokenised / "train").glob("shard-*.arrow"))) == 3  # 24 lines, 10 per shard
    every = load_tokenized(tokenised)
    assert len(every) == MINI_COUNTS["train"] + MINI_COUNTS["test"]
    assert set(every["split"]) == {"train", "test-clean"}
    report = json.loads((tokenised / "train" / "report.json").read_text())
    assert report == {
        "manifest": report["manifest"],
        "utterances": MINI_COUNTS["train"],
        "skipped": 0,
        "shards": 3,
    }


def test_rerun_resumes_from_finished_shards(tokenised, mini_manifests):
    split_dir = tokenised / "train"
    before = load_tokenized(split_dir)
    kept = split_dir / "shard-00000.arrow"
    stamp = kept.stat().st_mtime_ns
    (split_dir / "shard-00001.arrow").unlink()  # as if killed before this shard was written
    tokenize_manifest(mini_manifests["librispeech"] / "train.jsonl", tokenised, tokenised / "codec", 10, 1)
    assert kept.stat().st_mtime_ns == stamp  # finished shards are not redone
    after = load_tokenized(split_dir)
    assert after["id"] == before["id"] and after["codes"] == before["codes"]
    with pytest.raises(ValueError, match="--shard-size 10"):  # another cut would duplicate rows
        tokenize_manifest(mini_manifests["librispeech"] / "train.jsonl", tokenised, tokenised / "codec", 7, 1)
    with pytest.raises(ValueError, match="another version"):
        dev = mini_manifests["librispeech"] / "dev-clean.jsonl"
        (split_dir.parent / "dev-clean").mkdir(exist_ok=True)
        (split_dir.parent / "dev-clean" / "plan.json").write_text(
            json.dumps({"manifest_sha1": "0", "shard_size": 10})
        )
        tokenize_manifest(dev, tokenised, tokenised / "codec", 10, 1)


def test_bad_audio_is_a_counted_skip(mini_manifests, melvq_codec_dir, tmp_path):
    lines = read_manifest(mini_manifests["librispeech"] / "dev-clean.jsonl")
    (tmp_path / "garbage.flac").write_bytes(b"garbage")
    lines[1] = {**lines[1], "id": "bad-1", "audio": str(tmp_path / "garbage.flac")}
    lines[2] = {**lines[2], "id": "bad-2", "audio": str(tmp_path / "missing.flac")}
    wav, sr = load_audio(lines[3]["audio"])
    wav[100] = np.nan  # a float WAV passes every header check; melvq's librosa would raise on it
    sf.write(tmp_path / "nan.wav", wav, sr, subtype="FLOAT")
    lines.insert(3, {**lines[3], "id": "bad-3", "audio": str(tmp_path / "nan.wav")})
    manifest = tmp_path / "dev.jsonl"
    manifest.write_text("".join(json.dumps(x) + "\n" for x in lines))
    shutil.copytree(melvq_codec_dir, tmp_path / "tok" / "codec")
    report = tokenize_manifest(manifest, tmp_path / "tok", tmp_path / "tok" / "codec", 2, 1)
    assert report["skipped"] == 3
    assert load_tokenized(tmp_path / "tok" / "dev")["id"] == [lines[0]["id"], lines[4]["id"]]
    rows = (tmp_path / "tok" / "dev" / "skipped.tsv").read_text().splitlines()[1:]
    assert [r.split("\t")[0] for r in rows] == ["bad-1", "bad-2", "bad-3"]
    assert "garbage.flac" in rows[0] and "unreadable" in rows[0] and "missing.flac" in rows[1]
    assert rows[2].endswith(f"nan.wav\tnon-finite samples (NaN or Inf): 1 of {wav.size}")


def test_other_sample_rates_are_resampled(mini_manifests, melvq_codec_dir, tmp_path):
    """A prepared 8 kHz or 44.1 kHz file is tokenised at the codec's rate: as many frames as at 16 kHz."""
    import soxr

    line = read_manifest(mini_manifests["librispeech"] / "test-clean.jsonl")[0]
    wav, sr = load_audio(line["audio"])
    lines = [line]
    for rate in (8000, 44100):
        path = tmp_path / f"{rate}.flac"
        sf.write(path, soxr.resample(wav, sr, rate), rate)
        lines.append({**line, "id": f"at-{rate}", "audio": str(path), "sample_rate": rate})
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    report = tokenize_manifest(tmp_path / "m.jsonl", tmp_path / "tok", melvq_codec_dir, 10, 1)
    assert report["skipped"] == 0
    lengths = [len(c) for c in load_tokenized(tmp_path / "tok" / "m")["codes"]]
    assert abs(lengths[1] - lengths[0]) <= 1 and abs(lengths[2] - lengths[0]) <= 1


def test_melvq_is_fitted_once_and_checked(mini_manifests, tmp_path):
    spec = yaml.safe_load((Path(__file__).resolve().parents[1] / "tokenizers" / "melvq.yaml").read_text())
    spec["codebook_size"] = 32
    (tmp_path / "melvq.yaml").write_text(yaml.safe_dump(spec))
    train = mini_manifests["librispeech"] / "train.jsonl"
    codec = prepare_codec(str(tmp_path / "melvq.yaml"), tmp_path / "out", train)
    assert codec.codebook_size == 32 and (tmp_path / "out" / "codec" / "codebook.npy").is_file()
    stamp = (tmp_path / "out" / "codec" / "codebook.npy").stat().st_mtime_ns
    again = prepare_codec(str(tmp_path / "melvq.yaml"), tmp_path / "out", train)
    assert np.array_equal(again.codebook, codec.codebook)
    assert (tmp_path / "out" / "codec" / "codebook.npy").stat().st_mtime_ns == stamp
    spec["codebook_size"] = 64
    (tmp_path / "melvq64.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(ValueError, match="codebook_size=64"):
        prepare_codec(str(tmp_path / "melvq64.yaml"), tmp_path / "out", train)
    with pytest.raises(ValueError, match="--fit-manifest"):
        prepare_codec(str(tmp_path / "melvq.yaml"), tmp_path / "other", None)


def test_neural_codec_checkpoint_through_the_cli(mini_manifests, tmp_path):
    """`speech-lpo tokenize` with a transformers DAC checkpoint directory as --codec."""
    from speech_lpo.cli import main

    tiny_neural_model("dac").save_pretrained(tmp_path / "dac")
    manifest = mini_manifests["librispeech"] / "test-clean.jsonl"
    main(
        [
            "tokenize",
            "--manifests",
            str(manifest),
            "--out",
            str(tmp_path / "tok"),
            "--codec",
            str(tmp_path / "dac"),
            "--num-quantizers",
            "3",
        ]
    )
    ds = load_tokenized(tmp_path / "tok" / "test-clean")
    codec = load_codec(tmp_path / "tok" / "codec")
    assert codec.name == "dac" and codec.codebook_size == 3 * 64
    assert len(ds) == MINI_COUNTS["test"]
    assert all(len(c) % 3 == 0 and 0 <= min(c) and max(c) < codec.codebook_size for c in ds["codes"])


def test_no_shards_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenised shards"):
        load_tokenized(tmp_path)


def wait_for(pattern_dir: Path, glob: str, count: int, proc, timeout: float = 120) -> None:
    import time

    deadline = time.monotonic() + timeout
    while len(list(pattern_dir.glob(glob))) < count:
        assert proc.poll() is None, "the stage finished before it could be killed; give it more work"
        assert time.monotonic() < deadline
        time.sleep(0.01)


@pytest.mark.slow
def test_sigkilled_stages_resume(tmp_path, melvq_codec_dir):
    """synth-corpus and tokenize killed with SIGKILL mid-run: the re-run finishes the work, and the
    tokens equal those of an uninterrupted run."""
    import subprocess
    import sys

    cli = [sys.executable, "-m", "speech_lpo.cli"]
    synth = [*cli, "synth-corpus", "--out", str(tmp_path / "corpus"), "--langs", "en", "--num-train", "400"]
    synth += ["--num-dev", "0", "--num-test", "0"]
    proc = subprocess.Popen(synth, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(tmp_path / "corpus", "**/*.flac", 50, proc)
    proc.kill()
    proc.wait()
    subprocess.run(synth, check=True, capture_output=True)
    from speech_lpo.prepare import prepare

    report = prepare("librispeech", tmp_path / "corpus" / "librispeech", tmp_path / "data")
    assert report["splits"]["train"]["kept"] == 400 and report["skipped_total"] == 0

    manifest = tmp_path / "data" / "train.jsonl"
    tok = [
        *cli,
        "tokenize",
        "--manifests",
        str(manifest),
        "--codec",
        str(melvq_codec_dir),
        "--shard-size",
        "5",
    ]
    proc = subprocess.Popen(
        [*tok, "--out", str(tmp_path / "killed")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_for(tmp_path / "killed" / "train", "shard-*.arrow", 3, proc)
    proc.kill()
    proc.wait()
    done_before = len(list((tmp_path / "killed" / "train").glob("shard-*.arrow")))
    assert done_before < 80
    subprocess.run([*tok, "--out", str(tmp_path / "killed")], check=True, capture_output=True)
    subprocess.run([*tok, "--out", str(tmp_path / "clean")], check=True, capture_output=True)
    killed, clean = (
        load_tokenized(tmp_path / "killed" / "train"),
        load_tokenized(tmp_path / "clean" / "train"),
    )
    assert len(killed) == 400
    assert killed["id"] == clean["id"] and killed["codes"] == clean["codes"]
