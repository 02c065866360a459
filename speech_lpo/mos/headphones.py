"""A headphone check for the qualification (Woods et al. 2017, the antiphase test the P.808 toolkit
offers): three low tones, one 6 dB quieter than the others, one played in antiphase (left = -right).
Over headphones the quieter one is heard as the quietest; over loudspeakers the antiphase tone cancels
in the air and sounds quieter still, so a rater without headphones picks the wrong one.
"""

from __future__ import annotations

import numpy as np

TONE_HZ = 200.0
TONE_S = 1.0
GAP_S = 0.5
RAMP_S = 0.1  # raised-cosine on- and off-ramps: no clicks that would give a tone away
LEVEL = 0.3  # peak of the louder tones
QUIETER_DB = 6.0
CHOICES = ["first", "second", "third"]


def antiphase_trial(quiet: int, antiphase: int, sample_rate: int = 16000) -> np.ndarray:
    """(samples, 2) float32: tone ``quiet`` (0-2) 6 dB down, tone ``antiphase`` (another one) with its
    right channel inverted."""
    if quiet == antiphase or not {quiet, antiphase} <= {0, 1, 2}:
        raise ValueError(
            f"quiet ({quiet}) and antiphase ({antiphase}) must be two different tones of 0, 1, 2"
        )
    t = np.arange(int(TONE_S * sample_rate)) / sample_rate
    ramp = int(RAMP_S * sample_rate)
    envelope = np.ones_like(t)
    envelope[:ramp] = 0.5 - 0.5 * np.cos(np.pi * np.arange(ramp) / ramp)
    envelope[-ramp:] = envelope[:ramp][::-1]
    tone = LEVEL * envelope * np.sin(2 * np.pi * TONE_HZ * t)
    gap = np.zeros((int(GAP_S * sample_rate), 2))
    parts = []
    for k in range(3):
        gain = 10 ** (-QUIETER_DB / 20) if k == quiet else 1.0
        parts += [np.stack([gain * tone, -gain * tone if k == antiphase else gain * tone], axis=1), gap]
    return np.concatenate(parts[:-1]).astype(np.float32)
