"""`speech-lpo mos package`: a listening test from synthesis outputs, accepted by the panel's loader."""

import json

import pytest
import soundfile as sf

from speech_lpo.cli import main as cli
from speech_lpo.mos.definition import load_definition
from speech_lpo.mos.package import build_package
from tests.test_mos_kit import REPO, UTTERANCES, find_flac


def fake_synthesis(root, system, utts, failed=()):
    """A synthesize output dir whose wavs are real speech (the references, cut short)."""
    d = root / system
    (d / "wav").mkdir(parents=True)
    rows = []
    for u in utts:
        audio, sr = sf.read(find_flac(u))
        if u in failed:
            rows.append({"id": u, "wav": None, "wav_error": "no audio codes"})
            continue
        sf.write(d / "wav" / f"{u}.wav", audio[:sr], sr)
        rows.append({"id": u, "wav": f"wav/{u}.wav"})
    (d / "synth.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def test_package_keeps_utterances_every_system_has(tmp_path):
    manifest = tmp_path / "test.jsonl"
    manifest.write_text("".join(json.dumps({"id": u, "audio": str(find_flac(u))}) + "\n" for u in UTTERANCES))
    systems = {
        "sft": fake_synthesis(tmp_path / "synth", "sft", UTTERANCES),
        "lpo": fake_synthesis(tmp_path / "synth", "lpo", UTTERANCES, failed={UTTERANCES[0]}),
    }
    out = tmp_path / "mos"
    cli(
        [
            "mos",
            "package",
            "--systems",
            *(f"{k}={v}" for k, v in systems.items()),
            "--manifest",
            str(manifest),
            "--template",
            str(REPO / "eval" / "mos_tts.yaml"),
            "--out",
            str(out),
            "-n",
            "2",
        ]
    )
    defn = load_definition(out / "mos_tts.yaml")
    kept = sorted(UTTERANCES[1:])[:2]
    assert defn.systems == ["sft", "lpo"]
    assert sorted({item.utterance for item in defn.system_items}) == kept
    assert {item.expect for item in defn.check_items} == {"high", "low"}
    for system in ("sft", "lpo", "reference"):
        assert sorted(p.stem for p in (out / system).glob("*.wav")) == kept
    anchor, sr = sf.read(out / "anchors" / f"{kept[0]}.wav")
    assert sr == 16000 and len(anchor) > sr // 2


def test_package_refuses_too_few_common_utterances(tmp_path):
    manifest = tmp_path / "test.jsonl"
    manifest.write_text("".join(json.dumps({"id": u, "audio": str(find_flac(u))}) + "\n" for u in UTTERANCES))
    systems = {
        "a": fake_synthesis(tmp_path, "a", UTTERANCES[:2]),
        "b": fake_synthesis(tmp_path, "b", UTTERANCES[1:]),
    }
    with pytest.raises(ValueError, match="only 1 utterances were synthesised by every system"):
        build_package(systems, manifest, REPO / "eval" / "mos_tts.yaml", tmp_path / "mos", 8)
