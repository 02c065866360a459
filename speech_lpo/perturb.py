"""Corrupt reference transcripts into rejected ASR responses (the paper's perturbation-based pairs).

The paper's three operators on units (characters for Chinese, words for English): insertion of a unit
drawn from a vocabulary (the corpus' units), deletion, and repetition of a unit in place. A fourth,
substitution, is an option (``--mix ...,substitution=1``), not the default: it replaces a unit by a
confusable one (for Chinese, a character of the corpus with the same toneless pinyin, from pypinyin), or,
where the unit has none, by another vocabulary unit. A transcript of n units
gets about ``eta * n`` edits at distinct positions (stochastic rounding, so the corpus-level noise ratio
is eta), at least one, each operator drawn from a weighted mix. Every draw comes from a
``random.Random`` seeded by (seed, utterance id): an utterance's corruption does not depend on which
other utterances are processed or in what order.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

OPERATORS = ("insertion", "deletion", "repetition", "substitution")
DEFAULT_MIX = {"insertion": 1.0, "deletion": 1.0, "repetition": 1.0}  # the paper's; substitution is an option
# a handful of redraws is enough: only rare coincidences (delete one "a" of "a a", repeat the other)
# give back the input
MAX_TRIES = 20


def is_char_language(lang: str) -> bool:
    """Languages written without spaces between words, whose transcripts are perturbed per character."""
    return lang.lower().split("-")[0].split("_")[0] in {"zh", "cmn", "yue", "ja"}


def split_units(text: str, lang: str) -> list[str]:
    if is_char_language(lang):
        return [c for c in text if not c.isspace()]
    return text.split()


def join_units(units: Sequence[str], lang: str) -> str:
    return ("" if is_char_language(lang) else " ").join(units)


def confusable_units(units: Sequence[str], lang: str) -> dict[str, list[str]]:
    """unit -> the other units it may be heard as: for Chinese, the characters of ``units`` with the same
    toneless pinyin (homophones such as 花/画); other languages have none here."""
    if not is_char_language(lang):
        return {}
    from pypinyin import Style, lazy_pinyin

    by_sound: dict[str, list[str]] = {}
    for unit in sorted(set(units)):
        by_sound.setdefault(lazy_pinyin(unit, style=Style.NORMAL)[0], []).append(unit)
    return {u: [v for v in same if v != u] for same in by_sound.values() for u in same if len(same) > 1}


def parse_mix(spec: str) -> dict[str, float]:
    """``"insertion=1,deletion=1,repetition=0.5"`` -> weights; operators left out get weight 0."""
    mix = dict.fromkeys(OPERATORS, 0.0)
    for part in spec.split(","):
        name, _, weight = part.partition("=")
        name = name.strip()
        if name not in mix or not weight:
            raise ValueError(
                f"bad operator mix {spec!r}: expected e.g. 'insertion=1,deletion=1,repetition=1'"
            )
        mix[name] = float(weight)
    if any(w < 0 for w in mix.values()) or not any(mix.values()):
        raise ValueError(f"bad operator mix {spec!r}: weights must be >= 0 and not all 0")
    return mix


@dataclass
class Perturbation:
    text: str
    operators: Counter  # operator -> how many times it was applied
    n_units: int  # units in the input

    @property
    def n_edits(self) -> int:
        return sum(self.operators.values())


def utterance_rng(seed: int, utt_id: str, draw: int = 0) -> random.Random:
    return random.Random(f"{seed}:{utt_id}:{draw}")


def perturb(
    text: str,
    lang: str,
    rng: random.Random,
    eta: float = 0.1,
    mix: Mapping[str, float] = DEFAULT_MIX,
    vocab: Sequence[str] = (),
    confusable: Mapping[str, Sequence[str]] | None = None,
) -> Perturbation:
    """Corrupt ``text``; the result is never equal to the input and never empty.

    ``vocab``: units to insert (the corpus' units); without one, insertions copy a unit of the text
    from another position. ``confusable``: unit -> units a substitution prefers (confusable_units).
    """
    units = split_units(text, lang)
    if not units:
        raise ValueError("cannot perturb an empty transcript")
    if not 0 < eta <= 1:
        raise ValueError(f"noise ratio eta must be in (0, 1], got {eta}")
    ops, weights = zip(*((op, w) for op, w in mix.items() if w > 0), strict=True)
    insert_from = list(vocab) or units
    for _ in range(MAX_TRIES):
        expected = eta * len(units)
        n_edits = max(1, min(len(units), math.floor(expected + rng.random())))
        positions = set(rng.sample(range(len(units)), n_edits))
        chosen = {i: rng.choices(ops, weights)[0] for i in sorted(positions)}
        out: list[str] = []
        for i, unit in enumerate(units):
            op = chosen.get(i)
            if op == "insertion":
                out.append(_insertion(insert_from, unit, rng))
            if op == "substitution":
                out.append(
                    rng.choice(similar)
                    if (similar := (confusable or {}).get(unit))
                    else _insertion(insert_from, unit, rng)
                )
            elif op != "deletion":
                out.append(unit)
            if op == "repetition":
                out.append(unit)
        if out and out != units:
            return Perturbation(join_units(out, lang), Counter(chosen.values()), len(units))
    # only deletion of a one-unit text can keep failing: nothing but an empty output can come of it
    raise ValueError(f"no non-empty perturbation of {text!r} with operators {ops}")


def _insertion(vocab: Sequence[str], before: str, rng: random.Random) -> str:
    # a unit equal to its neighbour would be a repetition, not an insertion
    for _ in range(MAX_TRIES):
        unit = rng.choice(vocab)
        if unit != before:
            return unit
    return unit
