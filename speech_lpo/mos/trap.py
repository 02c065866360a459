"""Trapping questions (ITU-T P.808): a real test sample, then a voice (espeak-ng) telling the rater which
answer to give, as the P.808 toolkit makes them: the clip starts like every other one, so it cannot be
told apart before the message.

A rater who gives another answer was not listening; the report excludes them.
"""

from __future__ import annotations

import numpy as np
import soxr

from speech_lpo.mos.level import to_level
from speech_lpo.synth_corpus import SAMPLE_RATE, synthesize

VOICE = "en-us+f2"  # the clearest of espeak-ng's English voices here (DESIGN.md, Environment facts)
PAUSE_S = 0.5  # silence between the sample and the message


def spliced_trap(carrier: np.ndarray, sample_rate: int, answer: str) -> np.ndarray:
    """Mono ``carrier`` (a real test sample), a pause, then a voice asking for ``answer`` (e.g. "2 Poor"),
    both at P.808's -26 dBov active speech level; float32 at ``sample_rate``."""
    text = f"This is an attention check. Please select the answer {answer}."
    voice = synthesize(text, VOICE)
    if sample_rate != SAMPLE_RATE:
        voice = soxr.resample(voice, SAMPLE_RATE, sample_rate)
    pause = np.zeros(int(PAUSE_S * sample_rate), dtype=np.float32)
    return np.concatenate([to_level(carrier, sample_rate), pause, to_level(voice, sample_rate)])
