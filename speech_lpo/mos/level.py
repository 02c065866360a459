"""Active speech level, ITU-T P.56 method B, and levelling to a target such as P.808's -26 dBov.

P.56 (Annex B): the envelope is |x| smoothed twice by a first-order filter with a 0.03 s time constant;
for each of a ladder of thresholds c_j (factors of 2 apart), a sample is active while the envelope is at
or above c_j or was so within the last 0.2 s (the hangover). With a_j the active samples at c_j, the
active level there is A_j = 10 log10(sum x^2 / a_j); the active speech level is the A at which A - C
(C = 20 log10 c) falls to the margin of 15.9 dB, interpolated between the two thresholds around it.
dBov: samples in [-1, 1], 0 dBov the mean square of 1 (a full-scale square wave).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import signal

TIME_CONSTANT_S = 0.03
HANGOVER_S = 0.2
MARGIN_DB = 15.9
THRESHOLDS = 2.0 ** np.arange(-20, 1)  # c_j, from far below any speech up to full scale
TARGET_DBOV = -26.0  # ITU-T P.808's level for every stimulus


def active_level(x: np.ndarray, sample_rate: int) -> float:
    """The active speech level of mono ``x`` in dBov; ValueError when it holds no active speech."""
    x = np.asarray(x, dtype=np.float64)
    energy = float(np.sum(x**2))
    g = math.exp(-1.0 / (sample_rate * TIME_CONSTANT_S))
    envelope = signal.lfilter([1 - g], [1, -g], signal.lfilter([1 - g], [1, -g], np.abs(x)))
    hang = math.floor(HANGOVER_S * sample_rate + 0.5)
    above = envelope[None, :] >= THRESHOLDS[:, None]  # (thresholds, samples)
    # active: above the threshold at this sample or at one of the ``hang`` before it
    seen = np.concatenate([np.zeros((len(THRESHOLDS), 1)), np.cumsum(above, axis=1)], axis=1)
    start = np.maximum(np.arange(len(x)) - hang, 0)
    active = (seen[:, 1:] - seen[:, start]) > 0
    counts = active.sum(axis=1)
    if energy == 0 or counts[0] == 0:
        raise ValueError("no active speech (silence)")
    with np.errstate(divide="ignore"):
        levels = 10 * np.log10(energy / counts)  # inf where nothing is active
    excess = levels - 20 * np.log10(THRESHOLDS) - MARGIN_DB
    j = int(np.argmax(excess <= 0))
    if excess[j] > 0 or j == 0:
        raise ValueError("the active speech level is outside the thresholds' range")
    t = excess[j - 1] / (excess[j - 1] - excess[j])  # linear in dB between c_{j-1} and c_j
    return float(levels[j - 1] + t * (levels[j] - levels[j - 1]))


def to_level(x: np.ndarray, sample_rate: int, target_dbov: float = TARGET_DBOV) -> np.ndarray:
    """``x`` scaled to ``target_dbov`` active speech level (float32); ValueError if that would clip.

    The level is measured again after scaling (the thresholds do not scale with the signal) and the
    gain corrected once, which lands within a few hundredths of a dB.
    """
    y = np.asarray(x, dtype=np.float64)
    for _ in range(2):
        y = y * 10 ** ((target_dbov - active_level(y, sample_rate)) / 20)
    peak = float(np.abs(y).max())
    if peak > 1.0:
        raise ValueError(f"reaching {target_dbov:g} dBov active level would clip (peak {peak:.2f})")
    return y.astype(np.float32)
