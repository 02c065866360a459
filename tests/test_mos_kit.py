"""Small listening tests built from real LibriSpeech speech in ../shared/data, shared by tests/test_mos_*.py.

Three "systems" render each utterance differently (the original, a telephone-band copy, a noisy
copy), the hidden reference is the original and the anchor is the MUSHRA-style degraded copy.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
import yaml

from speech_lpo.mos.anchor import degrade

REPO = Path(__file__).resolve().parents[1]
LIBRISPEECH = REPO / ".." / "shared" / "data" / "librispeech" / "LibriSpeech"
UTTERANCES = ["1089-134691-0000", "2830-3980-0043", "1089-134686-0001", "1272-128104-0001"]
SYSTEMS = ["original", "telephone", "noisy"]
SECONDS = 2.0


def find_flac(utt: str) -> Path:
    spk, chapter, _ = utt.split("-")
    hits = list(LIBRISPEECH.glob(f"*/{spk}/{chapter}/{utt}.flac"))
    if not hits:
        pytest.skip(f"{utt}.flac not found under {LIBRISPEECH} (../shared/data is absent)")
    return hits[0]


def render(system: str, audio: np.ndarray, sr: int) -> np.ndarray:
    if system == "telephone":
        return soxr.resample(soxr.resample(audio, sr, 8000), 8000, sr)[: len(audio)]
    if system == "noisy":
        noise = np.random.default_rng(1).standard_normal(len(audio)) * np.sqrt(np.mean(audio**2) / 10)
        return np.clip(audio + noise, -1, 1)
    return audio


def make_test(
    folder: Path,
    n_utts: int = 2,
    systems: Sequence[str] = SYSTEMS,
    dimensions: Sequence[str | dict] = ("fidelity", "stability", "naturalness", "emotional_expressiveness"),
    items_per_rater: int | None = None,
    invitations: str = "required",
    seconds: float = SECONDS,
) -> Path:
    """Write audio and a definition YAML into ``folder``; return the YAML's path."""
    root = folder / "audio"
    for utt in UTTERANCES[:n_utts]:
        audio, sr = sf.read(find_flac(utt), dtype="float32")
        audio = audio[: int(seconds * sr)]
        for name, wav in [(f"reference/{utt}", audio), (f"anchors/{utt}", degrade(audio, sr))] + [
            (f"{s}/{utt}", render(s, audio, sr)) for s in systems
        ]:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            sf.write(root / f"{name}.wav", wav, sr, subtype="PCM_16")
    definition = {
        "name": "test_mos",
        "title": "Speech quality listening test",
        "instructions": "Use headphones. Play each sample, then answer every question.",
        "root": "audio",
        "scale": {"min": 0, "max": 5, "step": 0.5, "min_label": "very poor", "max_label": "excellent"},
        "dimensions": list(dimensions),
        "systems": list(systems),
        "utterances": UTTERANCES[:n_utts],
        "audio_pattern": "{system}/{utt}.wav",
        "reference_pattern": "reference/{utt}.wav",
        "attention_checks": [
            {
                "id": "hidden_ref",
                "audio": f"reference/{UTTERANCES[0]}.wav",
                "reference": f"reference/{UTTERANCES[0]}.wav",
                "expect": "high",
            },
            {
                "id": "anchor",
                "audio": f"anchors/{UTTERANCES[1]}.wav",
                "reference": f"reference/{UTTERANCES[1]}.wav",
                "expect": "low",
            },
        ],
        "attention": {"high_min": 3.0, "low_max": 2.0},
        "items_per_rater": items_per_rater or n_utts * len(systems),
        "invitations": invitations,
    }
    path = folder / "mos_test.yaml"
    path.write_text(yaml.safe_dump(definition, sort_keys=False), encoding="utf-8")
    return path


class Clock:
    """A clock the test moves by hand, for the store's listening gate (real time: test_mos_browser)."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def listen(store, token: str, browser: str, item: str) -> None:
    """Play every player of ``item`` through on ``store``'s hand-moved clock, as a rater who hears it all."""
    for player in store.players(item):
        store.play(token, browser, item, player)
        store.clock.advance(store.length(token, item, player))
        assert store.heard(token, browser, item, player)[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(
    definition: Path, db: Path, port: int, log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen:
    """``speech-lpo mos serve`` on loopback in its own process (``env`` added to its environment);
    waits until it answers."""
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "1", **(env or {})}
    cmd = [sys.executable, "-m", "speech_lpo.cli", "mos", "serve", "--definition", str(definition)]
    cmd += ["--db", str(db), "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=log.open("ab"), stderr=subprocess.STDOUT, env=env, cwd=REPO)
    for _ in range(600):  # bounded: 60 s
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        raise RuntimeError(f"server did not start:\n{log.read_text()}")
    return proc


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_anchor_is_band_limited_and_noisy() -> None:
    audio, sr = sf.read(find_flac(UTTERANCES[0]), dtype="float32")
    freqs = np.fft.rfftfreq(len(audio), 1 / sr)
    high = freqs > 4500

    def energy_above(x: np.ndarray) -> float:
        return float((np.abs(np.fft.rfft(x))[high] ** 2).sum())

    # without noise, what is left above the 3.5 kHz cut-off is a tiny part of the speech there
    assert energy_above(degrade(audio, sr, snr_db=200)) < 1e-3 * energy_above(audio)
    anchor = degrade(audio, sr)
    assert anchor.shape == audio.shape and np.abs(anchor).max() <= 1
    residual = anchor - audio / max(1.0, np.abs(audio).max())
    assert 10 * np.log10(np.mean(audio**2) / np.mean(residual**2)) < 8  # audibly degraded
