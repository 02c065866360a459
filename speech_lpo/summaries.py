"""Score summaries as the result tables, claims and plots read them: loading, the tags that name a
system, grouping by seed, and the across-seed comparison of two groups."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from speech_lpo.plot import read_metric
from speech_lpo.seed_compare import Comparison, Counts, compare

# The paper's Table 7 effect of LPO over SFT, by benchmark tag (error rates in percent)
PAPER_TABLE7 = {
    "aishell1": "AISHELL-1 3.868 -> 3.583 CER, -7.4% of SFT",
    "librispeech": "LibriSpeech test-clean 7.222 -> 6.684-6.965 WER, -3.6% to -7.4% of SFT",
}


def load_summaries(paths: list[str | Path]) -> list[dict]:
    out = []
    for path in paths:
        summ = json.loads(Path(path).read_text(encoding="utf-8"))
        if summ.get("kind") not in ("asr", "tts"):
            raise ValueError(f"{path}: not a summary of `speech-lpo score asr` or `score tts`")
        summ["path"] = str(path)
        out.append(summ)
    return out


def tag(summ: dict, key: str, default: str = "") -> str:
    return summ.get("tags", {}).get(key, default)


def num(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        return math.nan


def fmt(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None or math.isnan(x) or math.isinf(x) else f"{x:.{digits}f}"


def bench_of(summ: dict) -> str:
    """The benchmark and, where tagged, its test set ("librispeech test-other"): what one score is on."""
    return " ".join(x for x in (tag(summ, "benchmark", "?"), tag(summ, "test_set")) if x)


def system_key(summ: dict) -> tuple[str, str, str, str]:
    return (
        bench_of(summ),
        tag(summ, "candidates", "-"),
        tag(summ, "method", summ["system"]),
        tag(summ, "r2", "-"),
    )


def seed_of(summ: dict) -> int | None:
    """The training seed; None for a system shared by every seed (an SFT trained once)."""
    seed = tag(summ, "seed")
    if (
        not seed and summ.get("kind") == "tts"
    ):  # `score tts` takes no tags: the recipes' seed<S>/synth/<system>
        parts = Path(summ.get("source", "")).parts
        seed = next((p[4:] for p in parts if p.startswith("seed") and p[4:].isdigit()), "")
    return int(seed) if seed else None


def of_seed(summaries: list[dict], seed: int | None) -> list[dict]:
    """The summaries of one seed, with the systems shared by every seed."""
    return [s for s in summaries if seed_of(s) in (seed, None)]


def last_epochs(summaries: list[dict]) -> list[dict]:
    """One summary per (benchmark and test set, candidates, method, r2) and seed: the one of the largest
    epoch."""
    best: dict[tuple, dict] = {}
    for summ in summaries:
        key = (*system_key(summ), seed_of(summ))
        epoch = num(tag(summ, "epoch", "nan"))
        kept = best.get(key)
        if kept is None or (not math.isnan(epoch) and not epoch <= num(tag(kept, "epoch", "-inf"))):
            best[key] = summ
    return list(best.values())


def sft_of(summ: dict, sft_by_benchmark: dict[str, dict]) -> tuple[float | None, float | None]:
    """Baseline error rate and P(better than it): the paired baseline if scored, else the SFT system."""
    if "baseline" in summ:
        return summ["baseline"]["error_rate"], summ["baseline"]["p_improvement"]
    sft = sft_by_benchmark.get((bench_of(summ), seed_of(summ))) or sft_by_benchmark.get(bench_of(summ))
    return (sft["error_rate"], None) if sft else (None, None)


def groups_by_seed(rows: list[dict]) -> dict[tuple, dict[int | None, dict]]:
    """{(benchmark, candidates, method, r2): {seed: summary}}."""
    out: dict[tuple, dict] = defaultdict(dict)
    for s in rows:
        out[system_key(s)][seed_of(s)] = s
    return out


def counts_of(group: dict[int | None, dict]) -> dict[int | None, Counts]:
    return {seed: Counts.from_summary(s) for seed, s in group.items()}


def compare_groups(system: dict, baseline: dict) -> Comparison | None:
    """None where a summary has no per-utterance counts (scored before they were recorded)."""
    try:
        return compare(counts_of(system), counts_of(baseline))
    except ValueError:
        return None


def compare_intelligibility(system: dict, baseline: dict) -> tuple[Comparison | None, int]:
    """WER of two TTS groups ({seed: summary}) on the utterances that every seed of both has audio for
    (``score tts --missing skip`` leaves a failed output out of its counts), and how many utterances that
    leaves out; (None, 0) where a summary has no per-utterance counts."""
    try:
        sys_counts, base_counts = counts_of(intelligibility(system)), counts_of(intelligibility(baseline))
    except ValueError:
        return None, 0
    every = [set(c.ids) for c in (*sys_counts.values(), *base_counts.values())]
    common = sorted(set.intersection(*every))
    left_out = len(set.union(*every)) - len(common)
    if not common:
        return None, left_out

    def on_common(counts: dict) -> dict:
        return {seed: c.subset(common) for seed, c in counts.items()}

    return compare(on_common(sys_counts), on_common(base_counts)), left_out


def tts_by_seed(summaries: list[dict], method: bool = False) -> dict[str, dict[int | None, dict]]:
    """{system: {seed: summary}} of the trained systems' TTS summaries (not the original recordings or the
    codec round trip); ``method``: keyed by method instead (``lpo_r2_0.4`` -> ``lpo``)."""
    out: dict[str, dict] = defaultdict(dict)
    for s in summaries:
        if s["kind"] == "tts" and s.get("row", "system") == "system":
            name = tag(s, "method", s["system"].split("_")[0]) if method else s["system"]
            out[name][seed_of(s)] = s
    return out


def intelligibility(group: dict[int | None, dict]) -> dict[int | None, dict]:
    """The per-seed ASR summaries inside TTS summaries (their per-utterance counts feed ``compare``)."""
    return {seed: {**s["intelligibility"], "path": s.get("path")} for seed, s in group.items()}


def tts_name(summ: dict) -> str:
    seed = seed_of(summ)
    return summ["system"] + ("" if seed is None else f" (seed {seed})")


def final_logratios(run: str | Path, tail: float = 0.2) -> tuple[float, float]:
    """Per-token log-ratio (policy minus reference) of the chosen and rejected responses, averaged over the
    last ``tail`` of a run's logged training steps (single steps see different groups)."""
    _, chosen, rejected = read_metric(run, "logratio_per_token")
    k = max(1, round(tail * len(chosen)))
    return float(chosen[-k:].mean()), float(rejected[-k:].mean())


def seed_means(rows: list[dict]) -> list[dict]:
    """One point per system and epoch: the error rate averaged over seeds, its bars the bootstrap 95%
    interval for one seed and the range over seeds for several (the final model and the last epoch's
    checkpoint of a seed count once)."""
    groups: dict[tuple, dict] = defaultdict(dict)
    for s in rows:
        groups[(*system_key(s), tag(s, "epoch"))][seed_of(s)] = s
    out = []
    for per_seed in groups.values():
        first = next(iter(per_seed.values()))
        rates = [s["error_rate"] for s in per_seed.values()]
        if len(rates) == 1:
            low, high = first["ci95"]["low"], first["ci95"]["high"]
        else:
            low, high = min(rates), max(rates)
        mean = float(np.mean(rates))
        out.append({**first, "error_rate": mean, "ci95": {"low": low, "high": high}, "seeds": len(rates)})
    return out
