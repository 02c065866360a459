"""The paper's claims, one line each, named as the paper makes them and computed from the scores: holds /
does not hold / not resolved at this scale (with the minimum detectable effect beside it, so that "not
resolved" can be read as what it is).

- Table 7 (ASR): LPO's error rate below SFT's, for every candidate method, at every r2; and below the DPO
  baseline's, trained on the same pairs with the same seeds.
- Table 6 (TTS): MOS on four dimensions, measured here by proxies, one verdict per dimension.
- Figure 1: larger r2, a faster fall of rejected and a slower rise of chosen log-probs.
- Figures 2 and 3 are the paper's GSM8K (DPO degrades over epochs, LPO keeps improving) and MT-Bench (the
  score depends on r2) findings; here they are tested on ASR, and named so.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from speech_lpo import stats
from speech_lpo.seed_compare import NONINFERIORITY_MARGIN, Comparison, Counts, compare
from speech_lpo.summaries import (
    PAPER_TABLE7,
    bench_of,
    compare_groups,
    compare_intelligibility,
    final_logratios,
    groups_by_seed,
    last_epochs,
    num,
    seed_of,
    system_key,
    tag,
    tts_by_seed,
)

HOLDS, FAILS, OPEN = "holds", "does not hold", "not resolved at this scale"
FIGURE2 = (
    "Figure 2, the paper's GSM8K finding (DPO degrades over epochs while LPO keeps improving), "
    "tested here on ASR"
)
FIGURE3 = "Figure 3, the paper's MT-Bench finding (the score depends on r2), tested here on ASR"


def _claim(verdicts: list[str], wanted: str, opposite: str) -> str:
    """holds when every comparison is resolved the claimed way, fails when one is resolved the other way."""
    if verdicts and all(v == wanted for v in verdicts):
        return HOLDS
    return FAILS if opposite in verdicts else OPEN


def _sign_test(diffs: list[float]) -> float:
    """One-sided binomial P(at least this many negative differences) under no effect."""
    n, k = len(diffs), sum(d < 0 for d in diffs)
    return sum(math.comb(n, i) for i in range(k, n + 1)) / 2**n


TEST = "crossed bootstrap (one test-unit draw per replication shared by every seed and SFT), 95% interval"


# Table 6's dimensions and their automatic proxies: (summary key, per-utterance key, lower is better, label)
TABLE6 = {
    "fidelity": [("sim", "sim", False, "SIM")],
    "stability": [
        ("truncated_pct", "truncated", True, "truncated %"),
        ("repetition_pct", "repetition", True, "repetition %"),
        ("wer_over_50_pct", "wer_over_50", True, "WER > 50 %"),
    ],
    "naturalness": [("dnsmos_ovrl", "dnsmos_ovrl", False, "DNSMOS OVRL"), ("utmos", "utmos", False, "UTMOS")],
}


def _lpo_against(groups: dict[tuple, dict], bench: str, cands: list[str], baseline_of) -> tuple[str, str]:
    """LPO at every r2 of each candidate method against ``baseline_of(cand)``: the overall verdict and
    the per-method parts of the claim line."""
    parts, claims = [], []
    for cand in cands:
        baseline = baseline_of(cand)
        lpo = sorted((k for k in groups if k[:3] == (bench, cand, "lpo")), key=lambda k: num(k[3]))
        cmps = [(k[3], compare_groups(groups[k], baseline)) for k in lpo]
        verdicts = [c.verdict if c else "n/a" for _, c in cmps]
        claims.append(_claim(verdicts, "better", "worse"))
        parts.append(
            f"{cand} candidates: "
            + "; ".join(
                f"r2={r2} {c.describe() if c else 'n/a'} {v}"
                for (r2, c), v in zip(cmps, verdicts, strict=True)
            )
        )
    overall = HOLDS if all(c == HOLDS for c in claims) else (FAILS if FAILS in claims else OPEN)
    return overall, " | ".join(parts)


def claim_table7(groups: dict[tuple, dict], bench: str) -> str:
    sft = next((g for k, g in groups.items() if k[0] == bench and k[2] == "sft"), None)
    cands = sorted({k[1] for k in groups if k[0] == bench and k[2] == "lpo"})
    if sft is None or not cands:
        return f"- Table 7 ({bench}), LPO below SFT for every candidate method: {OPEN}: no SFT or LPO scored."
    paper = PAPER_TABLE7.get(bench.split()[0], "not reported for this benchmark")
    overall, parts = _lpo_against(groups, bench, cands, lambda cand: sft)
    return (
        f"- Table 7 ({bench}), LPO below SFT for every candidate method ({', '.join(cands)}): **{overall}**. "
        + parts
        + f". The paper's effect: {paper}. Test: {TEST}, LPO at every r2 against SFT."
    )


def claim_lpo_vs_dpo(groups: dict[tuple, dict], bench: str) -> str | None:
    """LPO at every r2 against the DPO baseline trained on the same candidates, seed by seed."""
    cands = sorted(
        {k[1] for k in groups if k[0] == bench and k[2] == "lpo"}
        & {k[1] for k in groups if k[0] == bench and k[2] == "dpo"}
    )
    if not cands:
        return None

    def dpo_of(cand: str) -> dict:
        return next(g for k, g in groups.items() if k[:3] == (bench, cand, "dpo"))

    overall, parts = _lpo_against(groups, bench, cands, dpo_of)
    return (
        f"- Table 7 ({bench}), LPO below DPO (the paper's baseline, on the same pairs and seeds) for every "
        f"candidate method ({', '.join(cands)}): **{overall}**. "
        + parts
        + ". Test: crossed bootstrap (one test-unit draw per replication shared by every seed, LPO and DPO), "
        "95% interval, LPO at every r2 against DPO of the same seed; MDE as % of DPO's rate."
    )


def claim_figure2(summaries: list[dict], bench: str) -> str:
    """DPO worse at its last epoch than at its first, LPO better, in the runs decoded at every epoch."""
    curves: dict[tuple, dict] = defaultdict(lambda: defaultdict(dict))
    for s in summaries:
        if s["kind"] == "asr" and bench_of(s) == bench and tag(s, "epoch"):
            curves[system_key(s)][seed_of(s)][num(tag(s, "epoch"))] = s
    verdicts, parts = {"dpo": [], "lpo": []}, []
    for key, per_seed in sorted(curves.items()):
        method = key[2]
        if method not in verdicts or any(len(epochs) < 2 for epochs in per_seed.values()):
            continue
        first = {seed: epochs[min(epochs)] for seed, epochs in per_seed.items()}
        last = {seed: epochs[max(epochs)] for seed, epochs in per_seed.items()}
        cmp = compare_groups(last, first)
        verdicts[method].append(cmp.verdict if cmp else "n/a")
        name = method.upper() + (f" r2={key[3]}" if key[3] != "-" else "") + f" ({key[1]})"
        parts.append(f"{name} last vs first epoch {cmp.describe() if cmp else 'n/a'} {verdicts[method][-1]}")
    if not verdicts["dpo"] or not verdicts["lpo"]:
        return f"- {FIGURE2} ({bench}): {OPEN}: no epoch curves."
    dpo, lpo = _claim(verdicts["dpo"], "worse", "better"), _claim(verdicts["lpo"], "better", "worse")
    overall = HOLDS if dpo == lpo == HOLDS else (FAILS if FAILS in (dpo, lpo) else OPEN)
    return (
        f"- {FIGURE2} ({bench}): **{overall}**. "
        + "; ".join(parts)
        + f". Test: {TEST}, last epoch against first."
    )


def claim_figure3(groups: dict[tuple, dict], bench: str) -> str:
    """Some pair of r2 values differs in error rate, Holm-corrected over all pairs of every method."""
    names, pvalues = [], []
    for cand in sorted({k[1] for k in groups if k[0] == bench and k[2] == "lpo"}):
        lpo = sorted((k for k in groups if k[:3] == (bench, cand, "lpo")), key=lambda k: num(k[3]))
        for i, a in enumerate(lpo):
            for b in lpo[i + 1 :]:
                cmp = compare_groups(groups[b], groups[a])
                if cmp:
                    names.append(f"{cand} r2={b[3]} vs {a[3]} {cmp.delta:+.2f}")
                    pvalues.append(cmp.p_two_sided)
    if not pvalues:
        return f"- {FIGURE3} ({bench}): {OPEN}: fewer than two r2 values."
    adjusted = list(stats.holm(dict(enumerate(pvalues))).values())
    overall = HOLDS if min(adjusted) < 0.05 else OPEN
    shown = "; ".join(f"{n} (Holm-adjusted p {p:.3f})" for n, p in zip(names, adjusted, strict=True))
    return (
        f"- {FIGURE3} ({bench}): **{overall}**. {shown}. Test: {TEST}, "
        "two-sided, Holm-corrected over the pairs of r2."
    )


def claim_figure1(runs: list[str | Path]) -> str:
    """Larger r2: lower final rejected and chosen log-ratios, in every seed (a sign test over the
    differences between neighbouring r2 values of every seed)."""
    by_seed: dict[int, list[tuple[float, float, float]]] = defaultdict(list)
    for run in runs:
        summ = json.loads((Path(run) / "train_summary.json").read_text())
        if summ["loss"]["loss_type"] == "lpo":
            by_seed[summ.get("seed", 0)].append((summ["loss"]["r2"], *final_logratios(run)))
    diffs: dict[str, list[float]] = {"chosen": [], "rejected": []}
    for rows in by_seed.values():
        rows.sort()
        for (_, c1, r1), (_, c2, r2) in zip(rows, rows[1:], strict=False):
            diffs["chosen"].append(c2 - c1)
            diffs["rejected"].append(r2 - r1)
    if not diffs["chosen"]:
        return f"- Figure 1, larger r2: faster fall of rejected, slower rise of chosen: {OPEN}: one r2 only."
    p = {which: _sign_test(d) for which, d in diffs.items()}
    p_other = {which: _sign_test([-x for x in d]) for which, d in diffs.items()}
    if max(p.values()) < 0.05:
        overall = HOLDS
    elif min(p_other.values()) < 0.05:
        overall = FAILS
    else:
        overall = OPEN
    shown = "; ".join(
        f"{which} lower with the larger r2 in {sum(x < 0 for x in d)} of {len(d)} "
        f"(one-sided p {p[which]:.3f})"
        for which, d in diffs.items()
    )
    return (
        f"- Figure 1, larger r2 gives a faster fall of rejected and a slower rise of chosen log-probs: "
        f"**{overall}**. {shown}, over neighbouring r2 values in {len(by_seed)} seed(s). Test: sign test."
    )


def _proxy_counts(group: dict[int | None, dict], per_utt_key: str, ids: list[str]) -> dict:
    """Per-seed Counts of one per-utterance TTS value on ``ids`` (a mean: scale 1, units of 1)."""
    out = {}
    for seed, s in group.items():
        values = {r["id"]: _proxy_value(r, per_utt_key) for r in s["per_utterance"]}
        out[seed] = Counts(
            tuple(ids), np.array([values[i] for i in ids], float), np.ones(len(ids)), scale=1.0
        )
    return out


def _proxy_value(row: dict, key: str) -> float | None:
    if key == "wer_over_50":
        return None if row.get("wer") is None else 100.0 * (row["wer"] > 50)
    return row.get(key)


def _proxy_compare(system: dict, baseline: dict, key: str, lower: bool) -> tuple[Comparison | None, int]:
    """The crossed comparison of one proxy on the utterances where every seed of both has a value, and how
    many utterances lack one (silent or failed outputs have no SIM or DNSMOS: counted, not scored)."""
    rows = [s["per_utterance"] for s in (*system.values(), *baseline.values())]
    every = set.intersection(*({r["id"] for r in rs} for rs in rows))
    ids = sorted(
        i for i in every if all(_proxy_value(r, key) is not None for rs in rows for r in rs if r["id"] == i)
    )
    if not ids:
        return None, len(every)
    cmp = compare(_proxy_counts(system, key, ids), _proxy_counts(baseline, key, ids), lower_is_better=lower)
    return cmp, len(every) - len(ids)


def _dimension(system: dict, baseline: dict, proxies: list[tuple]) -> tuple[str, list[str]]:
    """One dimension's verdict from its proxies: worse if any proxy is worse, better if one is better and
    the rest keep the baseline, keeps if all keep it, else not resolved."""
    verdicts, parts = [], []
    for summary_key, per_utt_key, lower, label in proxies:
        if not all(summary_key in s for s in (*system.values(), *baseline.values())):
            continue
        cmp, lacking = _proxy_compare(system, baseline, per_utt_key, lower)
        if cmp is None:
            continue
        word = cmp.verdict if cmp.verdict != "not resolved" else ("keeps" if cmp.keeps else cmp.verdict)
        verdicts.append(word)
        no_value = f"; {lacking} utterances without a value" if lacking else ""
        parts.append(f"{label} {cmp.describe()}, {cmp.describe_keeps()}: {word}{no_value}")
    if not verdicts:
        return "not measured", parts
    if "worse" in verdicts:
        return "worse", parts
    if all(v in ("better", "keeps") for v in verdicts):
        return ("better" if "better" in verdicts else "keeps"), parts
    return "not resolved", parts


def claim_table6(summaries: list[dict]) -> str | None:
    """Table 6 (TTS): LPO against SFT per rated dimension, each through its automatic proxies (the paper
    rates them by MOS); emotional expressiveness has no proxy and is left to the listening test."""
    if not any(s["kind"] == "tts" for s in summaries):
        return None
    groups = tts_by_seed(summaries, method=True)
    head = "- Table 6 (TTS), LPO rated above SFT on fidelity, stability and naturalness (MOS; proxies here)"
    if not {"sft", "lpo"} <= set(groups):
        return f"{head}: {OPEN}: no SFT and LPO scored."
    dims, parts = {}, []
    for dimension, proxies in TABLE6.items():
        dims[dimension], shown = _dimension(groups["lpo"], groups["sft"], proxies)
        parts.append(f"{dimension}: **{dims[dimension]}** ({'; '.join(shown) or 'no proxy measured'})")
    measured = [v for v in dims.values() if v != "not measured"]
    if measured and all(v == "better" for v in measured):
        overall = HOLDS
    else:
        overall = FAILS if "worse" in measured else OPEN
    wer, lacking = compare_intelligibility(groups["lpo"], groups["sft"])
    left_out = f", {lacking} utterances without audio in a seed left out" if lacking else ""
    wer_part = (
        f" Intelligibility (%WER, not a Table 6 dimension): {wer.describe()} {wer.verdict}{left_out}."
        if wer
        else ""
    )
    return (
        f"{head}: **{overall}**. "
        + " | ".join(parts)
        + f". Emotional expressiveness: not measured automatically (the listening test rates it).{wer_part} "
        f"Keeps: the interval's worse end within {NONINFERIORITY_MARGIN:.0%} of SFT's value. Test: {TEST}."
    )


def claims(summaries: list[dict], runs: list[str | Path] | None = None) -> list[str]:
    """One line per claim of the paper: holds / does not hold / not resolved at this scale."""
    asr = [s for s in summaries if s["kind"] == "asr"]
    groups = groups_by_seed(last_epochs(asr))
    lines = []
    for bench in sorted({bench_of(s) for s in asr}):
        vs_dpo = claim_lpo_vs_dpo(groups, bench)
        lines += [claim_table7(groups, bench), *([vs_dpo] if vs_dpo else [])]
        lines += [claim_figure2(asr, bench), claim_figure3(groups, bench)]
    if runs:
        lines.append(claim_figure1(runs))
    tts = claim_table6(summaries)
    return lines + ([tts] if tts else [])
