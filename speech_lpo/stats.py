"""Resampling statistics shared by ASR and TTS scoring (and the reports built on them).

Every figure here is a ratio of sums over units, ``scale * sum(num) / sum(den)``: a pooled error rate
(``num`` errors, ``den`` reference words) or a mean (``den`` 1 per utterance: SIM, DNSMOS, a per-utterance
WER, a 0/1 flag such as "truncated"). The units resampled are utterances, or speakers where the
utterance-to-speaker map is known and the test set has ``MIN_CLUSTERS`` speakers or more: utterances of one
voice are not independent, so a speaker is resampled with all its utterances (a cluster bootstrap: sums
per speaker, then the same ratio). With fewer speakers a cluster bootstrap has too few distinct resamples
(3 speakers: 10) to be an interval at all, so utterances are resampled and the output says so.

- ``interval``: the percentile bootstrap interval. It is made of values the statistic takes on resampled
  data, so it stays inside the statistic's range (the old mean +- 1.96 sd one did not: 81-112% for a
  pooled WER of 96.7%), and it is the interval of the statistic reported: a pooled WER above 100
  (insertions) has an interval around it, above 100. A metric may declare ``bounds``; the interval is
  clipped to them (percentiles commute with monotone maps: the interval of the clipped metric).
- ``paired``: two systems on the same units. The p-value is a two-sided sign-flip permutation test
  (approximate randomisation: under "no difference" the two systems' outputs of a unit are exchangeable,
  so swapping them, per speaker where known, draws from the null). Beside it: the paired bootstrap
  interval of the difference, and Bisani and Ney's (2004) figure, the share of paired bootstrap replicates
  in which the system beats the baseline, labelled as what it is, a probability of improvement (it is
  not a p-value).
- ``holm``: Holm's step-down adjustment of the p-values of several systems compared with one baseline.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

REPLICATIONS = 10_000
LEVEL = 0.95
CHUNK = 500  # replicates per matrix product: memory stays at CHUNK x units floats
MIN_CLUSTERS = 20  # speakers needed to resample by speaker


def clusters(speakers: Sequence[str] | None) -> Sequence[str] | None:
    """The resampling groups by rule: the speakers where there are ``MIN_CLUSTERS`` or more, else None
    (utterances)."""
    if speakers is None or len(set(speakers)) < MIN_CLUSTERS:
        return None
    return speakers


def _units(
    num: Sequence[float], den: Sequence[float] | None, groups: Sequence[str] | None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-unit sums: one unit per utterance, or one per group (speaker) with its utterances summed, where
    ``clusters`` accepts the groups."""
    num = np.asarray(num, dtype=np.float64)
    den = np.ones(len(num)) if den is None else np.asarray(den, dtype=np.float64)
    if num.ndim == 1:
        num = num[:, None]
    if len(den) != len(num):
        raise ValueError(f"{len(num)} values but {len(den)} denominators")
    if groups is not None and len(groups) != len(num):
        raise ValueError(f"{len(num)} values but {len(groups)} group labels")
    groups = clusters(groups)
    if groups is None:
        return num, den
    names, index = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)
    sum_num = np.zeros((len(names), num.shape[1]))
    np.add.at(sum_num, index, num)
    return sum_num, np.bincount(index, weights=den, minlength=len(names))


def _resampled_counts(n: int, replications: int, seed: int) -> Iterator[np.ndarray]:
    """Bootstrap replicates as multinomial counts (how often each unit was drawn), in chunks."""
    rng = np.random.default_rng(seed)
    done = 0
    while done < replications:
        k = min(CHUNK, replications - done)
        yield rng.multinomial(n, np.full(n, 1.0 / n), size=k).astype(np.float64)
        done += k


def _percentiles(values: np.ndarray, level: float) -> tuple[float, float]:
    tail = 100 * (1 - level) / 2
    low, high = np.nanpercentile(values, [tail, 100 - tail])
    return float(low), float(high)


def resampling(groups: Sequence[str] | None) -> str:
    """What the bootstrap resamples for these groups: "speaker" or "utterance" (``clusters``' rule)."""
    return "utterance" if clusters(groups) is None else "speaker"


def ratio(num: Sequence[float], den: Sequence[float] | None = None, scale: float = 1.0) -> float:
    """``scale * sum(num) / sum(den)`` (``den`` defaults to 1 per unit: the mean); nan without units."""
    num = np.asarray(num, dtype=np.float64)
    total = len(num) if den is None else float(np.sum(den))
    return scale * float(num.sum()) / total if total else float("nan")


def interval(
    num: Sequence[float],
    den: Sequence[float] | None = None,
    *,
    scale: float = 1.0,
    bounds: tuple[float, float] | None = None,
    groups: Sequence[str] | None = None,
    replications: int = REPLICATIONS,
    level: float = LEVEL,
    seed: int = 0,
) -> dict:
    """Percentile bootstrap interval of ``scale * sum(num) / sum(den)``, clipped to ``bounds``."""
    units_num, units_den = _units(num, den, groups)
    n = len(units_den)
    if n == 0:
        raise ValueError("no units to resample")
    values = []
    for counts in _resampled_counts(n, replications, seed):
        with np.errstate(invalid="ignore", divide="ignore"):
            values.append(scale * (counts @ units_num[:, 0]) / (counts @ units_den))
    low, high = _percentiles(np.concatenate(values), level)
    if bounds is not None:
        low, high = (float(np.clip(x, *bounds)) for x in (low, high))
    out = {"low": low, "high": high, "level": level, "method": "percentile bootstrap"}
    out |= {"replications": replications, "resampled": resampling(groups), "units": n}
    return out | ({"bounds": list(bounds)} if bounds is not None else {})


def paired(
    baseline: Sequence[float],
    system: Sequence[float],
    den: Sequence[float] | None = None,
    *,
    scale: float = 1.0,
    lower_is_better: bool = True,
    groups: Sequence[str] | None = None,
    replications: int = REPLICATIONS,
    level: float = LEVEL,
    seed: int = 0,
) -> dict:
    """Compare ``system`` with ``baseline`` on the same units (same order): the difference system minus
    baseline with its paired bootstrap interval, the two-sided sign-flip permutation p-value, and the
    probability of improvement (Bisani and Ney: the share of bootstrap replicates where the system is
    better)."""
    if len(baseline) != len(system):
        raise ValueError(f"paired test needs the same units: {len(baseline)} against {len(system)}")
    units, units_den = _units(np.stack([baseline, system], axis=1), den, groups)
    diff = units[:, 1] - units[:, 0]
    total = units_den.sum()
    if len(diff) == 0 or total == 0:
        raise ValueError("no units to compare")
    observed = scale * diff.sum() / total
    boot, better = [], 0
    for counts in _resampled_counts(len(diff), replications, seed):
        with np.errstate(invalid="ignore", divide="ignore"):
            d = scale * (counts @ diff) / (counts @ units_den)
        boot.append(d)
        better += int(np.sum(d < 0 if lower_is_better else d > 0))
    rng = np.random.default_rng(seed + 1)
    extreme = 0
    for start in range(0, replications, CHUNK):
        signs = rng.choice([-1.0, 1.0], size=(min(CHUNK, replications - start), len(diff)))
        # a tiny tolerance: a flip that reproduces the observed sum in floating point counts as as extreme
        extreme += int(np.sum(np.abs(signs @ diff) >= abs(diff.sum()) * (1 - 1e-12)))
    low, high = _percentiles(np.concatenate(boot), level)
    return {
        "difference": float(observed),
        "difference_ci": {"low": low, "high": high, "level": level, "method": "paired percentile bootstrap"},
        "p_value": (extreme + 1) / (replications + 1),
        "test": "two-sided sign-flip permutation (paired)",
        "p_improvement": better / replications,
        "replications": replications,
        "resampled": resampling(groups),
        "units": len(diff),
    }


def holm(p_values: dict[str, float]) -> dict[str, float]:
    """Holm's step-down adjusted p-values (family-wise error), keyed as given."""
    order = sorted(p_values, key=p_values.get)
    m, running, out = len(order), 0.0, {}
    for i, name in enumerate(order):
        running = max(running, min(1.0, (m - i) * p_values[name]))
        out[name] = running
    return {name: out[name] for name in p_values}
