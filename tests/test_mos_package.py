"""`speech-lpo mos package`: a P.808 listening test from synthesis outputs. Every packaged WAV is measured
with ITU-T P.56 method B written here sample by sample, as the ITU's STL (G.191, sv56) does it,
independently of speech_lpo/mos/level.py."""

import json
import math

import numpy as np
import pytest
import soundfile as sf
import soxr

from speech_lpo.cli import main as cli
from speech_lpo.mos.definition import load_definition
from speech_lpo.mos.level import active_level
from speech_lpo.mos.package import build_package
from speech_lpo.mos.report import markdown_table
from tests.test_mos_kit import REPO, UTTERANCES, find_flac


def p56(x: np.ndarray, fs: int) -> float:
    """Active speech level in dBov, P.56 method B as sv56 runs it: per sample, the envelope smoothed
    twice (0.03 s), and per threshold 2^-15 .. 2^0 an activity count with 0.2 s hangover; then the
    level where A - C meets the 15.9 dB margin, found by bisection between the two thresholds."""
    g, hang_max, margin = math.exp(-1 / (fs * 0.03)), math.floor(0.2 * fs + 0.5), 15.9
    thresholds = [2.0**j for j in range(-15, 1)]
    count, hang = [0] * len(thresholds), [hang_max] * len(thresholds)
    p = q = energy = 0.0
    for v in np.asarray(x, dtype=np.float64).tolist():
        energy += v * v
        p = g * p + (1 - g) * abs(v)
        q = g * q + (1 - g) * p
        for j, c in enumerate(thresholds):
            if q >= c:
                count[j] += 1
                hang[j] = 0
            elif hang[j] < hang_max:
                count[j] += 1
                hang[j] += 1
            else:
                break  # below this threshold and past its hangover: so for every higher one
    a = [10 * math.log10(energy / n) if n else math.inf for n in count]
    c = [20 * math.log10(t) for t in thresholds]
    j = next(j for j in range(1, len(a)) if a[j] - c[j] <= margin)
    lo_a, hi_a, lo_c, hi_c = a[j - 1], a[j], c[j - 1], c[j]
    for _ in range(40):  # bisection on the straight line between the two points
        mid_a, mid_c = (lo_a + hi_a) / 2, (lo_c + hi_c) / 2
        if mid_a - mid_c > margin:
            lo_a, lo_c = mid_a, mid_c
        else:
            hi_a, hi_c = mid_a, mid_c
    return (lo_a + hi_a) / 2


def fake_synthesis(root, system, utts, failed=(), rate=None):
    """A synthesize output dir whose wavs are real speech (the references, cut to 1 s, at ``rate``)."""
    d = root / system
    (d / "wav").mkdir(parents=True)
    rows = []
    for u in utts:
        audio, sr = sf.read(find_flac(u))
        if u in failed:
            rows.append({"id": u, "wav": None, "wav_error": "no audio codes"})
            continue
        audio = audio[:sr] * 0.3  # quieter than the reference: levelling must undo it
        sf.write(d / "wav" / f"{u}.wav", soxr.resample(audio, sr, rate) if rate else audio, rate or sr)
        rows.append({"id": u, "wav": f"wav/{u}.wav"})
    (d / "synth.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def manifest_of(tmp_path, seconds: float = 2.0):
    """The test manifest, its references cut to ``seconds`` (the reference P.56 above is slow)."""
    rows = []
    for u in UTTERANCES:
        audio, sr = sf.read(find_flac(u))
        sf.write(tmp_path / f"{u}.flac", audio[: int(seconds * sr)], sr)
        rows.append(json.dumps({"id": u, "audio": str(tmp_path / f"{u}.flac")}) + "\n")
    (tmp_path / "test.jsonl").write_text("".join(rows))
    return tmp_path / "test.jsonl"


def test_active_level_agrees_with_the_sample_by_sample_p56() -> None:
    audio, sr = sf.read(find_flac(UTTERANCES[1]), dtype="float32")
    audio = audio[: 3 * sr]
    for gain in (0.05, 0.3, 1.0):
        assert active_level(audio * gain, sr) == pytest.approx(p56(audio * gain, sr), abs=0.3)
    # a tone is active throughout (but for the ~20 ms its envelope takes to rise): its mean square
    sine = 0.5 * np.sin(2 * np.pi * 1000 * np.arange(5 * sr) / sr)
    assert active_level(sine, sr) == pytest.approx(20 * math.log10(0.5 / math.sqrt(2)), abs=0.05)
    with pytest.raises(ValueError, match="no active speech"):
        active_level(np.zeros(sr), sr)


def test_package_levels_resamples_and_keeps_failures(tmp_path):
    manifest = manifest_of(tmp_path)
    failed = set(UTTERANCES[:2])  # lpo failed on two of four: a draw of three holds at least one
    systems = {
        "sft": fake_synthesis(tmp_path / "synth", "sft", UTTERANCES, rate=22050),
        "lpo": fake_synthesis(tmp_path / "synth", "lpo", UTTERANCES, failed=failed),
    }
    out = tmp_path / "mos"
    args = ["mos", "package", "--systems", *(f"{k}={v}" for k, v in systems.items())]
    args += ["--manifest", str(manifest), "--template", str(REPO / "eval" / "mos_tts.yaml")]
    cli([*args, "--out", str(out), "-n", "3", "--seed", "1"])
    defn = load_definition(out / "mos_tts.yaml")
    drawn = sorted({item.utterance for item in defn.system_items})
    assert len(drawn) == 3 and defn.systems == ["sft", "lpo"] and len(defn.system_items) == 6
    assert defn.failed_syntheses == [f"{u}@lpo" for u in drawn if u in failed] != []
    assert defn.scale.labels == ("Bad", "Poor", "Fair", "Good", "Excellent")  # ACR, the default
    gold = {i.id: i.answer for i in defn.check_items if i.expect == "gold"}
    assert sorted(gold.values()) == [1.0, 5.0, 5.0] and len(gold) == 3  # two hidden references, an anchor
    (trap,) = [i for i in defn.check_items if i.expect == "trap"]
    assert trap.answer == 2.0

    wavs = sorted(out.rglob("*.wav"))
    rates = {sf.info(w).samplerate for w in wavs}
    assert rates == {16000}  # the lowest rate among the inputs, for every stimulus
    silent = {out / "lpo" / f"{i.split('@')[0]}.wav" for i in defn.failed_syntheses}
    for wav in wavs:
        audio, sr = sf.read(wav)
        if wav in silent:  # a failed synthesis is served as the silence it is
            assert not audio.any() and len(audio) == len(sf.read(out / "reference" / wav.name)[0])
            continue
        assert abs(p56(audio, sr) + 26) <= 1.0, wav  # P.808: -26 dBov active speech level
    # the trap starts as a real sample of the test does; the message follows it
    trap_audio, _ = sf.read(out / "traps" / "trap.wav")
    starts = [sf.read(w)[0] for w in wavs if w.parent.name in ("sft", "lpo") and w not in silent]
    assert any(np.abs(trap_audio[: len(s)] - s).max() < 2e-3 for s in starts)
    assert len(trap_audio) > max(len(s) for s in starts) + 8000
    failures = ", ".join(u for u in drawn if u in failed)
    table = markdown_table(defn, [], {})
    assert (
        f"Failed syntheses, rated as the silence they are: lpo {len(defn.failed_syntheses)} ({failures})"
        in table
    )


def test_package_refuses_a_manifest_of_one(tmp_path):
    manifest = tmp_path / "test.jsonl"
    manifest.write_text(json.dumps({"id": UTTERANCES[0], "audio": str(find_flac(UTTERANCES[0]))}) + "\n")
    systems = {"a": fake_synthesis(tmp_path, "a", UTTERANCES[:1])}
    with pytest.raises(ValueError, match="1 utterances; a test needs 2 or more"):
        build_package(systems, manifest, REPO / "eval" / "mos_tts.yaml", tmp_path / "mos", 8)
