"""The order in which one rater hears items: randomised per rater, balanced across systems."""

from __future__ import annotations

import random
from collections import Counter

from speech_lpo.mos.definition import Definition


def assign_items(
    defn: Definition, seed: int, rater_index: int, taken: Counter[str], tries: int = 32
) -> list[str]:
    """Item ids for one rater.

    ``items_per_rater`` system items, chosen as cells of the utterance x system grid so that every
    system gets the same number of items (+1 for some when it does not divide; which ones rotates
    with ``rater_index``) and every utterance too (+1 for the utterances given out least so far).
    Filling the grid system by system, each taking the utterances with the most places left, always
    meets both counts when they can be met (Ryser's construction); of ``tries`` random fillings the
    one whose items were given to fewest raters so far (``taken``) wins, which keeps the design
    balanced across raters. The order is shuffled, and every attention check goes in at a random
    place after the first item.
    """
    rng = random.Random(seed)
    n = defn.items_per_rater
    systems, utts = defn.systems, list(dict.fromkeys(it.utterance for it in defn.system_items))
    by_cell = {(it.utterance, it.system): it.id for it in defn.system_items}

    quota = {s: n // len(systems) for s in systems}
    for j in range(n % len(systems)):
        quota[systems[(rater_index + j) % len(systems)]] += 1
    heard = Counter({u: sum(taken[by_cell[u, s]] for s in systems) for u in utts})

    def fill() -> list[str]:
        extra = sorted(utts, key=lambda u: (heard[u], rng.random()))[: n % len(utts)]
        places = {u: n // len(utts) + (u in extra) for u in utts}
        chosen = []
        for system in sorted(systems, key=lambda s: (-quota[s], rng.random())):
            ranked = sorted(utts, key=lambda u: (-places[u], taken[by_cell[u, system]], rng.random()))
            for u in ranked[: quota[system]]:
                chosen.append(by_cell[u, system])
                places[u] -= 1
        return chosen

    chosen = min((fill() for _ in range(tries)), key=lambda ids: sum(taken[i] ** 2 for i in ids))
    rng.shuffle(chosen)
    for check in defn.check_items:
        chosen.insert(rng.randint(1, len(chosen)), check.id)
    return chosen
