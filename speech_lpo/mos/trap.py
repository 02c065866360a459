"""Trapping questions (ITU-T P.808): audio that tells the rater which answer to give, spoken by espeak-ng.

A rater who gives another answer was not listening; the report excludes them.
"""

from __future__ import annotations

import numpy as np

from speech_lpo.synth_corpus import SAMPLE_RATE, synthesize

VOICE = "en-us+f2"  # the clearest of espeak-ng's English voices here (DESIGN.md, Environment facts)


def trap_audio(answer: str) -> tuple[np.ndarray, int]:
    """(float32 audio, sample rate) of a voice asking for ``answer``, e.g. "2 Poor"."""
    text = f"This is an attention check. Please select the answer {answer}."
    return synthesize(text, VOICE), SAMPLE_RATE
