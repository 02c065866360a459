"""``speech-lpo score table``: RESULTS.md from score summaries, top-down.

Reads the ``summary-*.json`` of ``score asr`` and ``tts-summary-*.json`` of ``score tts``, and with
``--runs`` the training dirs whose log-prob curves make the paper's Figure 1. A system is described by
the tags given to ``score asr --tag``: ``benchmark``, ``test_set`` (LibriSpeech's test-clean, ...),
``candidates`` (candidate method), ``method`` (sft, dpo, lpo, ...), ``r2``, ``epoch`` and ``seed``.
The page reads top-down: the answer (one row per system over seeds, against SFT, with the crossed
interval, the minimum detectable effect and the verdict), the paper's claims, then the per-seed and
per-test-set tables and plots. The tables live in ``result_tables``, the claims in ``claims``, the plots
in ``result_plots``; all read summaries through ``summaries``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from speech_lpo.claims import claims
from speech_lpo.result_plots import logps_section, plot_vs_epoch, plot_vs_r2
from speech_lpo.result_tables import (
    across_seeds_table,
    asr_findings,
    asr_table,
    pair_table,
    table_per_test_set,
    tts_across_seeds_table,
    tts_table,
)
from speech_lpo.score import write_atomic
from speech_lpo.select_lr import selection_table
from speech_lpo.summaries import load_summaries


def write_results(
    summaries: list[dict],
    out: str | Path,
    plot_dir: str | Path | None = None,
    runs: list[str | Path] | None = None,
    tts_baseline: str = "sft",
    pair_reports: list[str | Path] | None = None,
    lr_selection: str | Path | None = None,
) -> str:
    asr = any(s["kind"] == "asr" for s in summaries)
    tts = any(s["kind"] == "tts" for s in summaries)
    # top-down: the answer (one row per system, over seeds), then the claims, then the detail
    parts = []
    if asr:
        parts += ["## The answer: each system against SFT over seeds", "", across_seeds_table(summaries)]
    if tts:
        parts += [
            "## TTS: each system against SFT over seeds",
            "",
            tts_across_seeds_table(summaries, tts_baseline),
        ]
    parts += ["## The paper's claims", "", *claims(summaries, runs), ""]
    parts += ["## Per seed and per test set", ""]
    if pair_reports:
        parts += ["### Preference pairs", "", pair_table(pair_reports)]
    if lr_selection:
        selection = json.loads(Path(lr_selection).read_text(encoding="utf-8"))
        parts += ["### Learning rates chosen on dev", "", *selection_table(selection)]
    if asr:
        parts += ["### ASR", "", table_per_test_set(summaries), asr_table(summaries)]
        parts += ["Measured:", *asr_findings(summaries), ""]
        if plot_dir:
            plot_vs_r2(summaries, Path(plot_dir) / "error_rate_vs_r2.png")
            plot_vs_epoch(summaries, Path(plot_dir) / "error_rate_vs_epoch.png")
            rel = Path(os.path.relpath(Path(plot_dir).resolve(), Path(out).resolve().parent))
            parts += [f"![error rate against r2 (Figure 3 layout)]({rel / 'error_rate_vs_r2.png'})", ""]
            parts += [f"![error rate over epochs (Figure 2 layout)]({rel / 'error_rate_vs_epoch.png'})", ""]
    if tts:
        parts += [
            "### TTS automatic metrics (the paper's Table 6, measured)",
            "",
            tts_table(summaries, tts_baseline),
        ]
    if runs:
        if not plot_dir:
            raise ValueError("--runs needs --plot-dir for the log-prob plot")
        parts += ["### Log-probs during training (Figure 1)", ""]
        parts += logps_section(runs, Path(plot_dir) / "logps_vs_step.png", out)
    text = "\n".join(parts)
    write_atomic(out, text)
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "summaries", nargs="+", help="summary-*.json of `score asr`, tts-summary-*.json of `score tts`"
    )
    parser.add_argument("--out", required=True, help="Markdown file to write")
    parser.add_argument("--plot-dir", help="write error_rate_vs_r2.png and error_rate_vs_epoch.png here")
    parser.add_argument(
        "--runs", nargs="+", help="training output dirs: their log-prob curves (logps_vs_step.png) and table"
    )
    parser.add_argument(
        "--tts-baseline", default="sft", help="the TTS system the others are tested against (paired tests)"
    )
    parser.add_argument("--pairs", nargs="*", help="make-pairs reports (<out>.report.json): the pair table")
    parser.add_argument("--lr-selection", help="`speech-lpo select-lr` output: the learning-rate table")
    parser.set_defaults(run=_main)


def _main(args: argparse.Namespace) -> None:
    print(
        write_results(
            load_summaries(args.summaries),
            args.out,
            args.plot_dir,
            args.runs,
            args.tts_baseline,
            args.pairs,
            args.lr_selection,
        )
    )
