"""The order in which one rater hears items: randomised per rater, balanced across systems."""

from __future__ import annotations

import random
from collections import Counter

from speech_lpo.mos.definition import Definition


def assign_items(defn: Definition, seed: int, rater_index: int, taken: Counter[str]) -> list[str]:
    """Item ids for one rater.

    ``items_per_rater`` system items: each system gets the same number (+1 for some when it does not
    divide; which systems get the extra rotates with ``rater_index``); within a system the items given
    to fewest raters so far (``taken``) come first, and an utterance repeats only when it must. The
    order is shuffled, and every attention check goes in at a random place after the first item.
    """
    rng = random.Random(seed)
    n_sys = len(defn.systems)
    quota = {s: defn.items_per_rater // n_sys for s in defn.systems}
    for j in range(defn.items_per_rater % n_sys):
        quota[defn.systems[(rater_index + j) % n_sys]] += 1

    tiebreak = {item.id: rng.random() for item in defn.system_items}
    slots = [s for s in defn.systems for _ in range(quota[s])]
    rng.shuffle(slots)
    chosen: list[str] = []
    heard = Counter()
    for system in slots:
        candidates = [it for it in defn.system_items if it.system == system and it.id not in chosen]
        best = min(candidates, key=lambda it: (heard[it.utterance], taken[it.id], tiebreak[it.id]))
        chosen.append(best.id)
        heard[best.utterance] += 1
    rng.shuffle(chosen)
    for check in defn.check_items:
        chosen.insert(rng.randint(1, len(chosen)), check.id)
    return chosen
