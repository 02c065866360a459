"""MOS per system and dimension with 95% intervals, paired tests and agreement, after screening raters.

Screening, each exclusion named (rater and why) in the table and the JSON summary: a rating without a
full listen (plays = 0, heard = 0, or heard > plays: possible only by calling the API around the panel);
a trapping question (a voice asks for one answer, P.808) not given that answer; the same answer for
everything, or in CMOS the same side (A or B) always preferred although A/B is balanced within the rater
(both judged on the answers as clicked); a failed check: a hidden reference ("high") below ``high_min``,
an anchor ("low") above ``low_max``, a gold clip answered more than 1 from its known score on any
dimension, a CMOS identical pair ("same") off "about the same" by more than 1; no check answered. Then
the P.808 toolkit's screens, thresholds under ``screening`` in the definition: the variance of a rater's
answers, and the Pearson correlation of a rater's answers with the other kept raters' mean per clip.
Clips with fewer kept votes than ``screening.min_votes`` are left out, named. Check answers never enter
the means.

Raters and utterances both vary, and ratings of one rater (or of one utterance) are not independent:
the table's interval is a percentile bootstrap that resamples raters and utterances together (the
t-interval over single ratings, too narrow then, stays in the JSON summary). Systems are compared per
dimension by the difference of their means with the same two-way bootstrap (one draw weighs both
systems, so they stay paired by rater and utterance) and by Wilcoxon signed-rank tests on each rater's
mean per system, Holm-corrected over all comparisons; agreement is Krippendorff's alpha (interval
level). CMOS adds, per system, the test of its mean against 0 (two-sided bootstrap, Holm-corrected) and
the position bias: the mean answer for B over A as clicked.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import stats

from speech_lpo.mos.definition import Definition
from speech_lpo.stats import holm

CONFIDENCE = 0.95
BOOTSTRAP = 2000  # resamples of raters x utterances


@dataclass
class Cell:
    system: str
    dimension: str
    n: int
    mean: float
    low: float  # t-based interval over single ratings; nan when n < 2
    high: float
    boot_low: float  # percentile bootstrap over raters and utterances
    boot_high: float


def raw_answer(row: dict) -> float:
    """The answer as the rater clicked it (CMOS: B against A); stored scores are system vs baseline."""
    return -row["score"] if row.get("flipped") else row["score"]


def _same_side(defn: Definition, answers: list[dict]) -> str | None:
    """CMOS: "A" or "B" when a rater who heard the system both as A and as B still always preferred the
    same side (A/B is balanced within each rater, so an honest preference lands on both sides)."""
    rated = [r for r in answers if r["item"] in defn.items and defn.items[r["item"]].system is not None]
    if defn.kind != "cmos" or len({bool(r.get("flipped")) for r in rated}) < 2:
        return None
    raw = [raw_answer(r) for r in rated]
    return "B" if all(x > 0 for x in raw) else "A" if all(x < 0 for x in raw) else None


def screen(defn: Definition, rows: list[dict]) -> dict[str, str | None]:
    """Rater -> why they are excluded, or None when they are kept."""
    by_rater: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_rater[row["rater"]].append(row)
    verdict: dict[str, str | None] = {}
    for rater, answers in by_rater.items():
        check_scores: dict[str, list[float]] = defaultdict(list)
        for row in answers:
            item = defn.items.get(row["item"])
            if item is not None and item.expect is not None:
                check_scores[row["item"]].append(row["score"])

        def failed_check(item_id: str, scores: list[float]) -> bool:
            item = defn.items[item_id]
            mean = float(np.mean(scores))
            return (
                (item.expect == "high" and mean < defn.high_min)
                or (item.expect == "low" and mean > defn.low_max)
                or (item.expect == "same" and abs(mean) > 1)  # identical A and B: "about the same", +-1
                or (item.expect == "gold" and max(abs(s - item.answer) for s in scores) > 1)  # P.808: +-1
            )

        failed = [item_id for item_id, scores in check_scores.items() if failed_check(item_id, scores)]
        trapped = [
            item_id
            for item_id, scores in check_scores.items()
            if defn.items[item_id].expect == "trap" and any(s != defn.items[item_id].answer for s in scores)
        ]
        unheard = [r for r in answers if r["plays"] == 0 or r["heard"] == 0 or r["heard"] > r["plays"]]
        side = _same_side(defn, answers)
        if unheard:
            verdict[rater] = "rated without a full listen"
        elif trapped:
            verdict[rater] = "failed trapping question"
        elif len(answers) > 1 and len({raw_answer(row) for row in answers}) == 1:
            verdict[rater] = "same score for everything"
        elif side:
            verdict[rater] = f"always preferred {side}"
        elif failed:
            verdict[rater] = "failed attention check"
        elif defn.check_items and not check_scores:
            verdict[rater] = "answered no attention check"
        else:
            verdict[rater] = None
    _screen_variance(defn, by_rater, verdict)
    _screen_consensus(defn, rows, verdict)
    return verdict


def _screen_variance(
    defn: Definition, by_rater: dict[str, list[dict]], verdict: dict[str, str | None]
) -> None:
    """P.808 toolkit: a rater whose answers to the rated samples hardly vary is not judging them."""
    least = defn.screening.min_variance
    for rater, answers in by_rater.items():
        raw = [raw_answer(r) for r in answers if r["item"] in defn.items and defn.items[r["item"]].system]
        if verdict[rater] is None and len(raw) > 1 and np.var(raw) < least:
            verdict[rater] = f"rating variance {np.var(raw):.2f} below {least:g}"


def _screen_consensus(defn: Definition, rows: list[dict], verdict: dict[str, str | None]) -> None:
    """P.808 toolkit: a rater whose answers correlate poorly (Pearson) with the mean of the other kept
    raters on the same clips and dimensions is excluded; judged on 3 or more such clips, once, against
    the raters every other rule kept."""
    scores: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)  # (item, dim) -> rater -> score
    for r in _system_rows(defn, rows, verdict):
        scores[r["item"], r["dimension"]][r["rater"]] = r["score"]
    least = defn.screening.min_correlation
    correlations = {}
    for rater in [r for r, why in verdict.items() if why is None]:
        pairs = [
            (by[rater], np.mean([v for other, v in by.items() if other != rater]))
            for by in scores.values()
            if rater in by and len(by) > 1
        ]
        own, others = np.array(pairs).T if len(pairs) >= 3 else (np.zeros(0), np.zeros(0))
        if len(own) >= 3 and own.std() > 0 and others.std() > 0:
            correlations[rater] = float(np.corrcoef(own, others)[0, 1])
    for rater, r in correlations.items():
        if r < least:
            verdict[rater] = f"correlation with the other raters {r:.2f} below {least:g}"


def t_interval(scores: list[float]) -> tuple[float, float, float]:
    """(mean, low, high): mean +- t_{0.975, n-1} * s / sqrt(n), as scipy.stats.t.interval gives."""
    x = np.asarray(scores, dtype=np.float64)
    mean = float(x.mean())
    if len(x) < 2:
        return mean, math.nan, math.nan
    half = stats.t.ppf((1 + CONFIDENCE) / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return mean, mean - half, mean + half


def two_way_weights(raters: list[str], utterances: list[str], seed: int = 0) -> np.ndarray:
    """(BOOTSTRAP, ratings): raters and utterances both resampled with replacement; a rating weighs
    (times its rater was drawn) x (times its utterance was drawn). Ratings of two systems weighed by
    one draw stay paired by rater and utterance."""
    r_ids, r_idx = np.unique(raters, return_inverse=True)
    u_ids, u_idx = np.unique(utterances, return_inverse=True)
    rng = np.random.default_rng(seed)
    draw_r = rng.multinomial(len(r_ids), np.full(len(r_ids), 1 / len(r_ids)), size=BOOTSTRAP)
    draw_u = rng.multinomial(len(u_ids), np.full(len(u_ids), 1 / len(u_ids)), size=BOOTSTRAP)
    return (draw_r[:, r_idx] * draw_u[:, u_idx]).astype(np.float64)


def _weighted_means(weights: np.ndarray, scores: list[float]) -> np.ndarray:
    """Per replicate, the weighted mean; nan where the draw left no rating."""
    total = weights.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (weights @ np.asarray(scores, dtype=np.float64)) / total


def _percentile_interval(values: np.ndarray) -> tuple[float, float]:
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.nanpercentile(values, [tail, 100 - tail])
    return float(low), float(high)


def _against_zero(values: np.ndarray) -> float:
    """Two-sided bootstrap p-value of "the mean is 0": twice the smaller share of replicates on either
    side of 0 (+1 in numerator and denominator, so never 0), at most 1."""
    values = values[~np.isnan(values)]
    side = min(np.sum(values <= 0), np.sum(values >= 0))
    return float(min(1.0, 2 * (side + 1) / (len(values) + 1)))


def bootstrap_interval(
    raters: list[str], utterances: list[str], scores: list[float], seed: int = 0
) -> tuple[float, float]:
    """Percentile interval of the mean when raters and utterances are both resampled with replacement."""
    return _percentile_interval(_weighted_means(two_way_weights(raters, utterances, seed), scores))


def _system_rows(defn: Definition, rows: list[dict], verdict: dict[str, str | None]) -> list[dict]:
    return [
        row
        for row in rows
        if verdict.get(row["rater"]) is None
        and row["item"] in defn.items
        and defn.items[row["item"]].system is not None
    ]


def thin_clips(defn: Definition, rows: list[dict], verdict: dict[str, str | None]) -> dict[str, int]:
    """Clips (system items) with fewer votes from kept raters than ``screening.min_votes``: their votes."""
    votes = Counter(item for item, _ in {(r["item"], r["rater"]) for r in _system_rows(defn, rows, verdict)})
    return {item: n for item, n in sorted(votes.items()) if n < defn.screening.min_votes}


def _kept_system_rows(defn: Definition, rows: list[dict], verdict: dict[str, str | None]) -> list[dict]:
    """Ratings of system items by kept raters, less the clips with too few votes."""
    thin = thin_clips(defn, rows, verdict)
    return [row for row in _system_rows(defn, rows, verdict) if row["item"] not in thin]


def summarize(defn: Definition, rows: list[dict], verdict: dict[str, str | None]) -> list[Cell]:
    by_cell: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in _kept_system_rows(defn, rows, verdict):
        by_cell[defn.items[row["item"]].system, row["dimension"]].append(row)
    cells = []
    for system in defn.systems:
        for dim in defn.dimension_names():
            group = by_cell[system, dim]
            if group:
                scores = [r["score"] for r in group]
                boot = bootstrap_interval(
                    [r["rater"] for r in group], [defn.items[r["item"]].utterance for r in group], scores
                )
                cells.append(Cell(system, dim, len(scores), *t_interval(scores), *boot))
    return cells


def paired_tests(defn: Definition, rows: list[dict], verdict: dict[str, str | None]) -> list[dict]:
    """Per dimension and pair of systems: the difference of their means with a bootstrap interval that
    resamples raters and utterances (one draw weighs both systems' ratings, so they stay paired), and a
    Wilcoxon signed-rank test over raters' mean scores, Holm-adjusted."""
    kept = _kept_system_rows(defn, rows, verdict)
    means: dict[tuple[str, str, str], list[float]] = defaultdict(list)  # (dim, system, rater)
    for row in kept:
        means[row["dimension"], defn.items[row["item"]].system, row["rater"]].append(row["score"])
    tests = []
    for dim in defn.dimension_names():
        for i, a in enumerate(defn.systems):
            for b in defn.systems[i + 1 :]:
                raters = sorted(r for (d, s, r) in means if d == dim and s == a and (dim, b, r) in means)
                diffs = [np.mean(means[dim, a, r]) - np.mean(means[dim, b, r]) for r in raters]
                if len(diffs) < 2 or not any(diffs):
                    p = 1.0
                else:
                    p = float(stats.wilcoxon(diffs).pvalue)
                pair = [r for r in kept if r["dimension"] == dim and defn.items[r["item"]].system in (a, b)]
                difference, low, high = _difference(defn, pair, a)
                tests.append(
                    {
                        "dimension": dim,
                        "a": a,
                        "b": b,
                        "raters": len(raters),
                        "mean_difference": float(np.mean(diffs)) if diffs else math.nan,
                        "difference": difference,
                        "low": low,
                        "high": high,
                        "p": p,
                    }
                )
    adjusted_p = holm({i: t["p"] for i, t in enumerate(tests)}).values()
    for test, adjusted in zip(tests, adjusted_p, strict=True):
        test["p_holm"] = adjusted
    return tests


def _difference(defn: Definition, pair: list[dict], a: str) -> tuple[float, float, float]:
    """Mean of ``a``'s ratings minus the other system's in ``pair``, with its two-way bootstrap interval."""
    is_a = np.array([defn.items[r["item"]].system == a for r in pair])
    if not pair or is_a.all() or not is_a.any():
        return math.nan, math.nan, math.nan
    scores = np.array([r["score"] for r in pair])
    weights = two_way_weights([r["rater"] for r in pair], [defn.items[r["item"]].utterance for r in pair])
    boot = _weighted_means(weights[:, is_a], scores[is_a]) - _weighted_means(weights[:, ~is_a], scores[~is_a])
    return float(scores[is_a].mean() - scores[~is_a].mean()), *_percentile_interval(boot)


def cmos_tests(defn: Definition, rows: list[dict], verdict: dict[str, str | None]) -> list[dict]:
    """CMOS: per system and dimension, the mean against the baseline with its bootstrap interval over
    raters and utterances, and the two-sided bootstrap test of "no difference" (mean 0), Holm-adjusted."""
    kept = _kept_system_rows(defn, rows, verdict)
    tests = []
    for system in defn.systems:
        for dim in defn.dimension_names():
            group = [r for r in kept if r["dimension"] == dim and defn.items[r["item"]].system == system]
            if not group:
                continue
            weights = two_way_weights(
                [r["rater"] for r in group], [defn.items[r["item"]].utterance for r in group]
            )
            boot = _weighted_means(weights, [r["score"] for r in group])
            low, high = _percentile_interval(boot)
            mean = float(np.mean([r["score"] for r in group]))
            tests.append(
                {
                    "system": system,
                    "dimension": dim,
                    "n": len(group),
                    "raters": len({r["rater"] for r in group}),
                    "cmos": mean,
                    "low": low,
                    "high": high,
                    "p": _against_zero(boot),
                }
            )
    for test, adjusted in zip(tests, holm({i: t["p"] for i, t in enumerate(tests)}).values(), strict=True):
        test["p_holm"] = adjusted
    return tests


def position_bias(defn: Definition, rows: list[dict], verdict: dict[str, str | None]) -> dict[str, dict]:
    """CMOS: per dimension, the mean answer for B over A as clicked, with its two-way bootstrap interval.
    A/B is balanced within each rater, so the systems' own differences cancel and what is left is a
    preference for one position."""
    out = {}
    kept = _kept_system_rows(defn, rows, verdict)
    for dim in defn.dimension_names():
        group = [r for r in kept if r["dimension"] == dim]
        if group:
            raw = [raw_answer(r) for r in group]
            weights = two_way_weights(
                [r["rater"] for r in group], [defn.items[r["item"]].utterance for r in group]
            )
            low, high = _percentile_interval(_weighted_means(weights, raw))
            out[dim] = {"bias": float(np.mean(raw)), "low": low, "high": high, "n": len(raw)}
    return out


def agreement(defn: Definition, rows: list[dict], verdict: dict[str, str | None]) -> dict[str, float]:
    """Krippendorff's alpha (interval) per dimension over kept raters x system items; nan when undefined."""
    import krippendorff

    kept = _kept_system_rows(defn, rows, verdict)
    raters = sorted({r["rater"] for r in kept})
    items = sorted({r["item"] for r in kept})
    alphas = {}
    for dim in defn.dimension_names():
        data = np.full((len(raters), len(items)), np.nan)
        for r in kept:
            if r["dimension"] == dim:
                data[raters.index(r["rater"]), items.index(r["item"])] = r["score"]
        pairable = np.sum((~np.isnan(data)).sum(axis=0) >= 2)
        values = np.unique(data[~np.isnan(data)])
        if len(raters) < 2 or pairable == 0 or len(values) < 2:
            alphas[dim] = math.nan
        else:
            alphas[dim] = float(krippendorff.alpha(reliability_data=data, level_of_measurement="interval"))
    return alphas


def markdown_table(
    defn: Definition, cells: list[Cell], verdict: dict[str, str | None], thin: dict[str, int] | None = None
) -> str:
    """Laid out like the paper's Table 6: one row per system, one column per dimension; below it every
    excluded rater and every clip left out, each with why."""
    by_key = {(c.system, c.dimension): c for c in cells}
    lines = [
        "| System | " + " | ".join(d.label for d in defn.dimensions) + " |",
        "|---|" + "---:|" * len(defn.dimensions),
    ]
    for system in defn.systems:
        row = []
        for dim in defn.dimension_names():
            c = by_key.get((system, dim))
            row.append("n/a" if c is None else f"{c.mean:.2f} [{c.boot_low:.2f}, {c.boot_high:.2f}]")
        lines.append(f"| {system} | " + " | ".join(row) + " |")
    kept = sum(v is None for v in verdict.values())
    reasons = defaultdict(int)
    for v in verdict.values():
        if v is not None:
            reasons[v] += 1
    excluded = ", ".join(f"{n} {why}" for why, n in sorted(reasons.items())) or "none"
    n_ratings = sum(c.n for c in cells) // max(len(defn.dimensions), 1)
    failed = defaultdict(list)
    for item_id in defn.failed_syntheses:
        failed[defn.items[item_id].system].append(defn.items[item_id].utterance)
    failures = "; ".join(f"{s} {len(u)} ({', '.join(u)})" for s, u in failed.items())
    lines.append("")
    lines.append(
        (f"Failed syntheses, rated as the silence they are: {failures}. " if failures else "")
        + f"{defn.kind.upper()}{f' against {defn.baseline}' if defn.baseline else ''} on a "
        f"{defn.scale.min:g} to {defn.scale.max:g} scale, mean [{CONFIDENCE:.0%} bootstrap interval "
        f"over raters and utterances]; {kept} raters kept, excluded: {excluded}; "
        f"{n_ratings} rated samples."
    )
    named = [f"{rater} ({why})" for rater, why in sorted(verdict.items()) if why is not None]
    if named:
        lines += ["", "Excluded raters: " + "; ".join(named) + "."]
    if thin:
        lines += [
            "",
            f"Clips left out, fewer than {defn.screening.min_votes} votes from kept raters: "
            + ", ".join(f"{item} ({n})" for item, n in thin.items())
            + ".",
        ]
    return "\n".join(lines) + "\n"


def tests_table(defn: Definition, tests: list[dict], alphas: dict[str, float]) -> str:
    labels = {d.name: d.label for d in defn.dimensions}
    lines = [
        "| Dimension | A | B | raters | A - B [interval] | p | p (Holm) |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for t in tests:
        lines.append(
            f"| {labels[t['dimension']]} | {t['a']} | {t['b']} | {t['raters']} | "
            f"{t['difference']:+.2f} [{t['low']:+.2f}, {t['high']:+.2f}] | {t['p']:.3g} | {t['p_holm']:.3g} |"
        )
    agreement = "Krippendorff's alpha (interval): " + ", ".join(
        f"{labels[d]} {a:.2f}" for d, a in alphas.items()
    )
    if not tests:  # one system rated (CMOS against its baseline): no pair to compare
        return agreement + ".\n"
    lines.append("")
    lines.append(
        f"A - B: difference of the means, {CONFIDENCE:.0%} bootstrap interval over raters and utterances "
        "(paired: one draw weighs both systems). "
        "Wilcoxon signed-rank tests on each rater's mean per system, Holm-corrected over all rows. "
        + agreement
        + "."
    )
    return "\n".join(lines) + "\n"


def cmos_table(defn: Definition, tests: list[dict], bias: dict[str, dict]) -> str:
    labels = {d.name: d.label for d in defn.dimensions}
    lines = [
        f"| System | Dimension | CMOS against {defn.baseline} [interval] | raters | p (against 0) "
        "| p (Holm) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for t in tests:
        lines.append(
            f"| {t['system']} | {labels[t['dimension']]} | "
            f"{t['cmos']:+.2f} [{t['low']:+.2f}, {t['high']:+.2f}] | {t['raters']} | {t['p']:.3g} "
            f"| {t['p_holm']:.3g} |"
        )
    lines.append("")
    lines.append(
        f"Test of CMOS against 0: two-sided bootstrap over raters and utterances ({BOOTSTRAP} resamples), "
        f"{CONFIDENCE:.0%} percentile interval, Holm-corrected over all rows. Position bias (mean answer for "
        "B over A as clicked; A/B balanced within each rater): "
        + ", ".join(
            f"{labels[d]} {b['bias']:+.2f} [{b['low']:+.2f}, {b['high']:+.2f}]" for d, b in bias.items()
        )
        + "."
    )
    return "\n".join(lines) + "\n"


def bar_chart(defn: Definition, cells: list[Cell], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_key = {(c.system, c.dimension): c for c in cells}
    dims = defn.dimension_names()
    width = 0.8 / len(defn.systems)
    fig, ax = plt.subplots(figsize=(2.6 + 1.6 * len(dims), 3.6))
    for i, system in enumerate(defn.systems):
        cs = [by_key.get((system, d)) for d in dims]
        x = np.arange(len(dims)) + (i - (len(defn.systems) - 1) / 2) * width
        means = [c.mean if c else np.nan for c in cs]
        errs = np.array([[c.mean - c.boot_low, c.boot_high - c.mean] if c else [0, 0] for c in cs]).T
        ax.bar(x, means, width, yerr=errs, capsize=3, label=system)
    ax.set_xticks(np.arange(len(dims)), [d.label for d in defn.dimensions])
    ax.set_ylim(defn.scale.min, defn.scale.max)
    ax.set_ylabel(f"MOS (bars: {CONFIDENCE:.0%} bootstrap interval)")
    ax.set_title(defn.title)
    ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def write_votes_per_clip(
    defn: Definition, rows: list[dict], verdict: dict[str, str | None], out_dir: Path
) -> None:
    """Per dimension, ``{test}_votes_per_clip_{dimension}.csv`` in the P.808 toolkit's layout: per clip
    its file, the number of kept votes, their mean (MOS, or CMOS), standard deviation and 95% CI
    half-width (1.96 sd / sqrt(n)), then the clip's name and conditions and the votes themselves."""
    mean_name = {"cmos": "CMOS"}.get(defn.kind, "MOS")
    for dim in defn.dimension_names():
        votes: dict[str, list[float]] = defaultdict(list)
        for r in _system_rows(defn, rows, verdict):
            if r["dimension"] == dim:
                votes[r["item"]].append(r["score"])
        most = max((len(v) for v in votes.values()), default=0)
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(
            ["file_url", "n", mean_name, "std", "95%CI", "short_file_name", "system", "utterance"]
            + [f"vote_{i}" for i in range(1, most + 1)]
        )
        for item in defn.system_items:
            v = votes.get(item.id, [])
            std = float(np.std(v, ddof=1)) if len(v) > 1 else None
            writer.writerow(
                [
                    item.audio.relative_to(defn.root),
                    len(v),
                    float(np.mean(v)) if v else None,
                    std,
                    1.96 * std / math.sqrt(len(v)) if std is not None else None,
                    item.id,
                    item.system,
                    item.utterance,
                ]
                + v
                + [None] * (most - len(v))
            )
        _write(out_dir / f"{defn.name}_votes_per_clip_{dim}.csv", out.getvalue())


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_report(defn: Definition, rows: list[dict], out_dir: Path) -> tuple[str, list[Cell]]:
    """Write mos_table.md, mos_bars.png, mos_summary.json and the per-clip vote files into ``out_dir``;
    return the table."""
    out_dir.mkdir(parents=True, exist_ok=True)
    verdict = screen(defn, rows)
    cells = summarize(defn, rows, verdict)
    tests, alphas = paired_tests(defn, rows, verdict), agreement(defn, rows, verdict)
    thin = thin_clips(defn, rows, verdict)
    table = markdown_table(defn, cells, verdict, thin) + "\n" + tests_table(defn, tests, alphas)
    against_zero, bias = [], {}
    if defn.kind == "cmos":
        against_zero, bias = cmos_tests(defn, rows, verdict), position_bias(defn, rows, verdict)
        table += "\n" + cmos_table(defn, against_zero, bias)
    summary = {
        "test": defn.name,
        "confidence": CONFIDENCE,
        "cells": [{k: None if v != v else v for k, v in asdict(c).items()} for c in cells],  # nan -> null
        "excluded": {rater: why for rater, why in verdict.items() if why is not None},
        "kept": sorted(rater for rater, why in verdict.items() if why is None),
        "clips_left_out": thin,
        "paired_tests": [{k: None if v != v else v for k, v in t.items()} for t in tests],
        "krippendorff_alpha": {d: None if a != a else a for d, a in alphas.items()},
        "cmos_against_zero": against_zero,
        "position_bias": bias,
    }
    for name, text in (("mos_table.md", table), ("mos_summary.json", json.dumps(summary, indent=1) + "\n")):
        _write(out_dir / name, text)
    write_votes_per_clip(defn, rows, verdict, out_dir)
    bar_chart(defn, cells, out_dir / "mos_bars.png")
    return table, cells
