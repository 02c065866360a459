"""Degraded anchors for attention checks: MUSHRA's 3.5 kHz low-pass anchor, plus noise.

Raters who listen at all rate such a sample low; one who rates it high is not listening.
"""

from __future__ import annotations

import numpy as np
from scipy import signal


def degrade(
    audio: np.ndarray, sample_rate: int, cutoff_hz: float = 3500.0, snr_db: float = 5.0
) -> np.ndarray:
    """Low-pass ``audio`` at ``cutoff_hz`` and add white noise at ``snr_db``; float32, peak <= 1."""
    sos = signal.butter(8, cutoff_hz, "lowpass", fs=sample_rate, output="sos")
    low = signal.sosfilt(sos, audio.astype(np.float64), axis=0)  # (samples,) or (samples, channels)
    noise = np.random.default_rng(0).standard_normal(low.shape)
    noise *= np.sqrt(np.mean(low**2) / np.mean(noise**2) / 10 ** (snr_db / 10))
    out = low + noise
    return (out / max(1.0, np.abs(out).max())).astype(np.float32)
