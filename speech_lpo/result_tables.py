"""Result tables in Markdown: the paper-shaped answer table, Table 7's layout per test set, the ASR detail,
the TTS metrics (the paper's Table 6, measured) and the per-seed tables."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

from speech_lpo import stats
from speech_lpo.score import format_counts
from speech_lpo.seed_compare import footnote, rate_interval, spread
from speech_lpo.summaries import (
    PAPER_TABLE7,
    bench_of,
    compare_groups,
    compare_intelligibility,
    counts_of,
    fmt,
    groups_by_seed,
    last_epochs,
    num,
    of_seed,
    seed_means,
    seed_of,
    sft_of,
    system_key,
    tag,
    tts_by_seed,
    tts_name,
)


def table_per_test_set(summaries: list[dict]) -> str:
    """The paper's Table 7 layout: a row per system, a column of error rates per test set (the mean over
    seeds where a system was trained with several)."""
    rows = seed_means(last_epochs([s for s in summaries if s["kind"] == "asr"]))
    columns = sorted({(tag(s, "benchmark", "?"), tag(s, "test_set", "test")) for s in rows})
    cells: dict[tuple, dict[tuple, dict]] = defaultdict(dict)
    for s in rows:
        system = (tag(s, "benchmark", "?"), tag(s, "method") != "sft", *system_key(s)[1:])
        cells[system][(tag(s, "benchmark", "?"), tag(s, "test_set", "test"))] = s
    heads = [f"{bench} {test}" if len({b for b, _ in columns}) > 1 else test for bench, test in columns]
    lines = [
        "| Candidates | Method | r2 | " + " | ".join(heads) + " | Seeds |",
        "|---|---|---|" + "---|" * len(columns) + "---|",
    ]
    for system in sorted(cells, key=lambda k: (k[0], k[1], k[2], k[3], num(k[4]))):
        _, _, cand, method, r2 = system
        shown = [cells[system].get(c) for c in columns]
        lines.append(
            f"| {cand} | {method} | {r2} | "
            + " | ".join(f"{s['metric']} {fmt(s['error_rate'])}" if s else "" for s in shown)
            + f" | {max(s['seeds'] for s in shown if s)} |"
        )
    return "\n".join(lines) + "\n"


def asr_table(summaries: list[dict]) -> str:
    rows = last_epochs([s for s in summaries if s["kind"] == "asr"])
    sft: dict = {}
    for s in (s for s in rows if tag(s, "method") == "sft"):
        sft[bench_of(s)] = s  # an SFT shared by every seed
        sft[(bench_of(s), seed_of(s))] = s
    lines = [
        "| Benchmark | Candidates | Method | r2 | Error rate (95% CI) | SFT baseline | Δ vs SFT "
        "| P(better than SFT) | Mean per-utt. rate | Utts | No hypothesis (deletions) | Problems | Seed |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = sorted(
        rows,
        key=lambda s: (
            system_key(s)[0],
            tag(s, "method") != "sft",
            system_key(s)[1],
            system_key(s)[2],
            num(system_key(s)[3]),
            seed_of(s) or -1,
        ),
    )
    for s in order:
        bench, cand, method, r2 = system_key(s)
        base, p = sft_of(s, sft) if method != "sft" else (None, None)
        delta = s["error_rate"] - base if base is not None else None
        lines.append(
            f"| {bench} | {cand} | {method} | {r2} | {s['metric']} {fmt(s['error_rate'])} "
            f"({fmt(s['ci95']['low'])}–{fmt(s['ci95']['high'])}) | {fmt(base)} | "
            f"{'' if delta is None else f'{delta:+.2f}'} | {fmt(p, 3)} "
            f"| {fmt(s['mean_utterance_error_rate'])} | {s['utterances']} "
            f"| {s['missing_hypotheses']} ({s['missing_hypothesis_deletions']}) "
            f"| {format_counts(s['problem_counts'])} | {tag(s, 'seed', '-')} |"
        )
    normalizers = sorted({f"{tag(s, 'benchmark', '?')}: {s['normalizer']}" for s in rows})
    lines += [
        "",
        "Error rate: pooled (all errors / all reference units, as Kaldi), in percent; 95% CI: bootstrap "
        "(percentile, of the pooled rate itself: above 100 where insertions lift it there); P(better than "
        "SFT): probability of improvement (Bisani & Ney's "
        "paired bootstrap), not a p-value; no hypothesis: utterances of the test set with no hypothesis "
        "line, their reference units counted as deletions. Normalisers: " + "; ".join(normalizers) + ".",
    ]
    return "\n".join(lines) + "\n"


def _cell(metric: dict | None, digits: int = 2, ci: bool = True) -> str:
    """A figure with its 95% interval, or n/a where it was not measured."""
    if not metric or metric.get("value") is None:
        return "n/a"
    if not ci or "ci95" not in metric:
        return fmt(metric["value"], digits)
    c = metric["ci95"]
    return f"{fmt(metric['value'], digits)} ({fmt(c['low'], digits)}–{fmt(c['high'], digits)})"


TTS_ROWS = {"original": "original recordings", "roundtrip": "codec round trip"}

TTS_TESTS = (
    ("wer", "errors", True, "WER"),
    ("sim", "sim", False, "SIM"),
    ("dnsmos_ovrl", "dnsmos_ovrl", False, "DNSMOS OVRL"),
)


def _tts_order(rows: list[dict], baseline: str) -> list[dict]:
    kinds = {"original": 0, "roundtrip": 1, "system": 2}
    return sorted(rows, key=lambda s: (kinds[s.get("row", "system")], s["system"] != baseline, s["system"]))


def tts_table(summaries: list[dict], baseline: str = "sft") -> str:
    """The paper's Table 6, measured: per test set, a row per system plus the original recordings and the
    codec round trip; intelligibility, fidelity (SIM), naturalness (DNSMOS) and stability columns."""
    rows = [s for s in summaries if s["kind"] == "tts"]
    lines = []
    for test_set in sorted({s.get("test_set", "test") for s in rows}):
        in_set = [s for s in rows if s.get("test_set", "test") == test_set]
        metric = in_set[0]["metric"]
        with_utmos = any("utmos" in s for s in in_set)
        lines += [
            f"Test set `{test_set}`:",
            "",
            f"| System | %{metric} (95% CI) | Per-utt. mean %{metric} (95% CI) | %{metric} > 50 (% utts) "
            "| SIM (95% CI) | DNSMOS OVRL (95% CI) | DNSMOS P.808 "
            + ("| UTMOS " if with_utmos else "")
            + "| Truncated % | Repetition % | Silence % | Duration ratio | Utts | Problems |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if with_utmos else ""),
        ]
        for s in _tts_order(in_set, baseline):
            name = TTS_ROWS.get(s.get("row", "system"), tts_name(s))
            lines.append(
                f"| {name} | {_cell(s['wer'])} | {_cell(s['wer_utt_mean'])} "
                f"| {_cell(s.get('wer_over_50_pct'), 1, ci=False)} | {_cell(s.get('sim'), 3)} "
                f"| {_cell(s.get('dnsmos_ovrl'))} | {_cell(s.get('dnsmos_p808'), ci=False)} "
                + (f"| {_cell(s.get('utmos'))} " if with_utmos else "")
                + f"| {_cell(s.get('truncated_pct'), 1, ci=False)} "
                f"| {_cell(s.get('repetition_pct'), 1, ci=False)} "
                f"| {_cell(s.get('silence_pct'), 1, ci=False)} | {_cell(s.get('duration_ratio'), ci=False)} "
                f"| {s['utterances']} | {format_counts(s['intelligibility']['problem_counts'])} |"
            )
        asr = sorted({f"{s['asr']} ({s['normalizer']})" for s in in_set})
        encoders = sorted({s["speaker_encoder"] for s in in_set if s.get("speaker_encoder")})
        by = sorted({s.get("resampled", "utterance") for s in in_set})
        lines += [
            "",
            f"%{metric}: pooled (all errors / all reference words, as Kaldi) and the mean of per-utterance "
            f"rates (seed-tts-eval), by {', '.join(asr)}; > 50: share of utterances above 50% "
            "(seed-tts-eval's failures). SIM: cosine of speaker embeddings "
            f"({', '.join(encoders) or 'none'}) of the audio and the reference recording. DNSMOS: P.835 "
            "overall and P.808 (1-5). Truncated: no <|audio_end|> before the length limit; repetition: a "
            "loop of repeated code frames lasting 1 s or more; silence: leading, trailing and inner pauses "
            "(silero-vad) as a share of the duration; duration ratio: synthesised / reference. 95% CI: "
            f"percentile bootstrap by {'/'.join(by)} (speakers where a set has 20 or more), of the figure "
            "reported (a WER above 100, reached through insertions, has its interval around it; the duration "
            "ratio is a geometric mean). "
            "Emotional expressiveness, the paper's fourth dimension, has no automatic measure here: it is "
            "left to the listening test.",
            "",
            *tts_paired_tests(in_set, baseline),
        ]
    return "\n".join(lines) + "\n"


def _paired_values(base: dict, system: dict, key: str) -> tuple[list, list, list | None, list | None]:
    """Per-utterance values of two systems on the utterances both have (WER: errors and reference words)."""
    theirs = {r["id"]: r for r in base["per_utterance"]}
    common = [
        (theirs[r["id"]], r)
        for r in system["per_utterance"]
        if r["id"] in theirs and r.get(key) is not None and theirs[r["id"]].get(key) is not None
    ]
    den = [r["ref_words"] for _, r in common] if key == "errors" else None
    speakers = [r.get("speaker") for _, r in common]
    return [b[key] for b, _ in common], [r[key] for _, r in common], den, speakers if all(speakers) else None


def tts_paired_tests(rows: list[dict], baseline: str = "sft") -> list[str]:
    """Each system against the baseline (of the same seed, where the baseline was trained per seed) on the
    same utterances: the difference with its paired bootstrap interval, the permutation p-value, Holm's
    adjustment over the systems compared, and the probability of improvement."""
    systems = [s for s in rows if s.get("row", "system") == "system"]
    bases = {seed_of(s): s for s in systems if s["system"] == baseline}
    others = [s for s in systems if s["system"] != baseline]
    if not bases or not others:
        return []
    lines = [
        f"Paired tests against {baseline.upper()} (same utterances):",
        "",
        "| System | Metric | Difference (95% CI) | p | p (Holm) | P(improvement) | Units resampled |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, unit_key, lower, label in TTS_TESTS:
        tests = {}
        for s in sorted(others, key=tts_name):
            base = bases.get(seed_of(s), bases.get(None))
            if base is None or key not in s or key not in base:
                continue
            b, x, den, groups = _paired_values(base, s, unit_key)
            if b:
                scale = 100 if key == "wer" else 1
                tests[tts_name(s)] = stats.paired(
                    b, x, den, scale=scale, lower_is_better=lower, groups=groups
                )
        adjusted = stats.holm({name: t["p_value"] for name, t in tests.items()})
        for name, t in tests.items():
            c = t["difference_ci"]
            lines.append(
                f"| {name} | {label} | {t['difference']:+.3f} ({c['low']:+.3f}–{c['high']:+.3f}) "
                f"| {t['p_value']:.4f} | {adjusted[name]:.4f} | {t['p_improvement']:.3f} "
                f"| {t['units']} {t['resampled']}s |"
            )
    lines += [
        "",
        "Difference: system minus baseline; p: two-sided paired sign-flip permutation test; p (Holm): "
        "adjusted over the systems compared with the baseline, per metric; P(improvement): the share of "
        "paired bootstrap replicates in which the system is better (Bisani and Ney), not a p-value. With few "
        "speakers the sign-flip test has few patterns: with n speakers p cannot fall below 2 / 2^n.",
        "",
    ]
    return lines


def asr_findings(summaries: list[dict]) -> list[str]:
    """Per seed, one line per benchmark and candidate method: SFT, DPO and LPO at each r2 (Figure 3), the
    best system; one line per system decoded at every epoch (Figure 2)."""
    asr = [s for s in summaries if s["kind"] == "asr"]
    seeds = sorted({seed_of(s) for s in asr} - {None}) or [None]
    lines = []
    for seed in seeds:
        lines += _findings_of_one_seed(of_seed(asr, seed), f", seed {seed}" if len(seeds) > 1 else "")
    return lines


def _findings_of_one_seed(summaries: list[dict], seed_label: str) -> list[str]:
    rows = last_epochs(summaries)
    lines = []
    for bench in sorted({bench_of(s) for s in rows}):
        in_bench = [s for s in rows if bench_of(s) == bench]
        sft = next((s for s in in_bench if tag(s, "method") == "sft"), None)
        for cand in sorted({tag(s, "candidates") for s in in_bench} - {""}):
            systems = [s for s in in_bench if tag(s, "candidates") == cand]
            lpo = sorted((s for s in systems if tag(s, "method") == "lpo"), key=lambda s: num(tag(s, "r2")))
            parts = [f"SFT {fmt(sft['error_rate'])}"] if sft else []
            parts += [f"{tag(s, 'method').upper()} {fmt(s['error_rate'])}" for s in systems if s not in lpo]
            parts += [f"LPO r2={tag(s, 'r2')} {fmt(s['error_rate'])}" for s in lpo]
            best = min(systems, key=lambda s: s["error_rate"])
            base, p = sft_of(best, {bench: sft} if sft else {})
            verdict = f"best: {tag(best, 'method').upper()}" + (
                f" r2={tag(best, 'r2')}" if tag(best, "method") == "lpo" else ""
            )
            if base is not None:
                verdict += f", {best['error_rate'] - base:+.2f} points against SFT"
            if p is not None:
                verdict += f" (P(better) {p:.3f})"
            lines.append(
                f"- {bench}, {cand} candidates{seed_label}, %{best['metric']}: {'; '.join(parts)}; {verdict}."
            )
    curves = defaultdict(list)
    for s in summaries:
        if s["kind"] == "asr" and not math.isnan(num(tag(s, "epoch", "nan"))):
            curves[system_key(s)].append(s)
    for (bench, cand, method, r2), scored in sorted(curves.items()):
        # the final model and the last epoch's checkpoint are the same epoch: one point per epoch
        by_epoch = {num(tag(s, "epoch")): s for s in scored}
        pts = [by_epoch[e] for e in sorted(by_epoch)]
        if len(pts) > 1:
            name = method.upper() + (f" r2={r2}" if r2 != "-" else "")
            curve = ", ".join(f"{fmt(s['error_rate'])} (epoch {tag(s, 'epoch')})" for s in pts)
            lines.append(f"- {bench}, {cand} candidates{seed_label}, {name} over epochs: {curve}.")
    return lines


def across_seeds_table(summaries: list[dict]) -> str:
    """The answer, laid out like the paper's Table 7: one row per system with its rate averaged over seeds
    (crossed 95% interval), the difference from SFT (the SFT of the same seed, or the one every seed starts
    from) with its interval, the minimum detectable effect, the verdict and the non-inferiority reading.
    Reference rows (``--tag row=reference``: an outside ASR such as Whisper) stay in the per-test-set
    tables."""
    trained = [s for s in summaries if s["kind"] == "asr" and tag(s, "row") != "reference"]
    groups = groups_by_seed(last_epochs(trained))
    sft = {key[0]: group for key, group in groups.items() if key[2] == "sft"}
    metric = next(iter(next(iter(groups.values())).values()))["metric"] if groups else "WER"
    lines = [
        f"| Benchmark | Candidates | Method | r2 | Seeds | %{metric} (95% CI) | sd over seeds "
        "| Δ vs SFT (95% CI) | MDE (% of SFT) | Verdict | Keeps SFT (margin) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    comparisons = []
    for key in sorted(groups, key=lambda k: (k[0], k[2] != "sft", k[1], k[2], num(k[3]))):
        group = groups[key]
        sp = spread([s["error_rate"] for s in group.values()])
        head = f"| {' | '.join(key)} | {sp.seeds} | {fmt(sp.mean)}"
        try:
            low, high = rate_interval(counts_of(group))
            head += f" ({fmt(low)}–{fmt(high)})"
        except ValueError:  # scored before per-utterance counts were recorded
            pass
        head += f" | {fmt(sp.sd)}"
        cmp = compare_groups(group, sft[key[0]]) if key[2] != "sft" and key[0] in sft else None
        if cmp is None:
            lines.append(f"{head} | | | | |")
            continue
        comparisons.append(cmp)
        lines.append(
            f"{head} | {cmp.delta:+.2f} ({cmp.low:+.2f} to {cmp.high:+.2f}) | {cmp.mde:.2f} "
            f"({cmp.mde_pct:.1f}%) | {cmp.verdict} | {'yes' if cmp.keeps else 'no'} (+{cmp.margin:.2f}) |"
        )
    sft_seeds = max((len(g) for g in sft.values()), default=0)
    seeds = max((len(g) for g in groups.values()), default=0)
    papers = [PAPER_TABLE7[b] for b in sorted({k[0].split()[0] for k in groups}) if b in PAPER_TABLE7]
    paper = f" The paper's LPO effect (Table 7): {'; '.join(papers)}." if papers else ""
    return "\n".join([*lines, "", footnote(comparisons, sft_seeds, seeds) + paper]) + "\n"


def tts_across_seeds_table(summaries: list[dict], baseline: str = "sft") -> str:
    """Per TTS system: the mean and spread over seeds of its WER, SIM and DNSMOS, and the crossed bootstrap
    comparison of its WER with the baseline's (of the same seed, or the one shared by all)."""
    groups = tts_by_seed(summaries)
    lines = [
        "| System | Seeds | %WER mean (sd) | Min–max | Δ WER vs SFT (95% CI) | MDE (% of SFT) "
        "| Better than SFT in | Verdict | %WER, failures as 100 | SIM mean (sd) | Voice gap mean (sd) "
        "| DNSMOS OVRL mean (sd) | Utts scored (no audio, no speech) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def mean_sd(group: dict, key: str, digits: int, field: str = "value") -> str:
        values = [s[key][field] for s in group.values() if s.get(key, {}).get(field) is not None]
        if not values:
            return "n/a"
        sp = spread(values)
        return f"{fmt(sp.mean, digits)} ({fmt(sp.sd, digits)})"

    comparisons = []
    for name in sorted(groups, key=lambda n: (n != baseline, n)):
        group = groups[name]
        sp = spread([s["wer"]["value"] for s in group.values()])
        row = f"| {name} | {sp.seeds} | {fmt(sp.mean)} ({fmt(sp.sd)}) | {fmt(sp.low)}–{fmt(sp.high)}"
        cmp, lacking = (None, 0)
        if baseline in groups and name != baseline:
            cmp, lacking = compare_intelligibility(group, groups[baseline])
        comparisons += [cmp] if cmp else []
        left_out = f"; {lacking} utts left out (no audio in a seed)" if lacking else ""
        row += (
            f" | {cmp.delta:+.2f} ({cmp.low:+.2f} to {cmp.high:+.2f}) | {cmp.mde:.2f} ({cmp.mde_pct:.1f}%) "
            f"| {cmp.better_in} of {len(cmp.per_seed)} | {cmp.verdict}{left_out}"
            if cmp
            else " | | | |"
        )
        failures = [f"{sum(s.get(k, 0) for s in group.values())}" for k in ("no_audio", "no_speech")]
        scored = sum(s["wer"].get("n", s["utterances"]) for s in group.values())
        lines.append(
            f"{row} | {mean_sd(group, 'wer', 2, 'worst_case')} | {mean_sd(group, 'sim', 3)} "
            f"| {mean_sd(group, 'voice_gap', 3)} | {mean_sd(group, 'dnsmos_ovrl', 2)} "
            f"| {scored} ({', '.join(failures)}) |"
        )
    seeds = max((len(g) for g in groups.values()), default=0)
    base_seeds = len(groups.get(baseline, {}))
    lines += [
        "",
        "Mean and sd over training seeds. %WER, failures as 100: the sensitivity figure with every output "
        "that has no audio scored as all words wrong. Voice gap: SIM to the requested voice's reference "
        "minus SIM to another voice's recording (above 0: the output has the voice its prompt named). Utts "
        "scored: summed over seeds; SIM and DNSMOS exist only where the VAD finds speech. "
        + footnote(comparisons, base_seeds, seeds),
    ]
    return "\n".join(lines) + "\n"


def pair_table(reports: list[str | Path]) -> str:
    """The preference data behind the systems, per candidate method (and seed where several): prompts,
    pairs, what was dropped and why, and how far the rejected responses are from the chosen ones (edit rate,
    or Whisper WER / SIM gap for TTS), as ``make-pairs`` reported it in ``<out>.report.json``."""
    lines = [
        "| Seed | Candidates | Selection | Prompts | Pairs | Dropped (reason: count) "
        "| Edit rate of rejected, median (p25–p75) | WER gap | SIM gap |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def quartiles(d: dict | None, digits: int = 3) -> str:
        if not d or not d.get("count"):
            return ""
        return f"{fmt(d['median'], digits)} ({fmt(d['p25'], digits)}–{fmt(d['p75'], digits)})"

    for path in sorted(reports, key=str):
        report = json.loads(Path(path).read_text(encoding="utf-8"))
        seed = next((p[4:] for p in Path(path).parts if p.startswith("seed") and p[4:].isdigit()), "-")
        dropped = {**report.get("dropped_groups", {}), **report.get("dropped_responses", {})}
        lines.append(
            f"| {seed} | {report['method']} | {report.get('select', 'all')} | {report['prompts']} "
            f"| {report['pairs']} | {'; '.join(f'{k}: {v}' for k, v in dropped.items()) or 'none'} "
            f"| {quartiles(report.get('edit_rate'))} | {quartiles(report.get('wer_gap'), 1)} "
            f"| {quartiles(report.get('sim_gap'))} |"
        )
    lines += [
        "",
        "A group of k rejected responses is k pairs. Edit rate: edit distance between the chosen and the "
        "rejected response over the chosen one's length (units as make-pairs counts them); WER / SIM gap: "
        "how much worse a rejected TTS candidate is than the chosen response under Whisper and the speaker "
        "encoder.",
    ]
    return "\n".join(lines) + "\n"
