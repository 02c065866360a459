"""Score ASR hypotheses (WER/CER, alignment reports), TTS outputs (automatic metrics); build result tables.

``speech-lpo score asr``: reference and hypothesis files in Kaldi ``text`` format (``uttid text...``), one
declared normaliser for both. Writes ``errs-<system>.txt`` (icefall's ``errs-*.txt`` layout: totals,
per-utterance alignments, the most frequent substitutions, deletions and insertions, per-unit
statistics) and ``summary-<system>.json``. The headline figure is Kaldi's pooled error rate
(all errors / all reference units); the mean of per-utterance error rates is reported beside it,
labelled as such. The 95% interval is a percentile bootstrap (by speaker where the data dir's ``utt2spk``,
beside the reference ``text``, names 20 or more) and the test against a baseline a paired permutation test
with Bisani & Ney's probability of improvement (``speech_lpo.stats``).

Bad input is named, never dropped: a hypothesis missing for a reference counts as all deletions, an
extra hypothesis id is listed, a duplicate id keeps its first line, a non-UTF-8 hypothesis line counts as
missing, a non-UTF-8 reference line cannot be scored and is listed, an empty reference adds its
insertions to the pooled count and is left out of the per-utterance mean.

The ``speech-lpo score`` command (asr, tts, table) is put together in ``speech_lpo.score_command``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from speech_lpo import stats
from speech_lpo.normalize import NORMALIZERS, Normalizer, get_normalizer

EPS = "\x00"  # alignment gap; cannot occur in normalised text
SCORING_CONFIG = Path(__file__).resolve().parents[1] / "eval" / "scoring.yaml"


def write_atomic(path: str | Path, text: str) -> None:
    """Write via a temporary file and rename, so a crash never leaves half a report."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


@dataclass
class Problem:
    kind: str  # non_utf8, duplicate_id, empty_line, empty_reference, missing_hypothesis, extra_hypothesis
    file: str
    line: int | None
    id: str
    detail: str = ""

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{self.kind}: {self.id!r} ({where}){' ' + self.detail if self.detail else ''}"


@dataclass
class KaldiText:
    path: str
    texts: dict[str, str]  # id -> text, first occurrence of each id
    unreadable: dict[str, int] = field(default_factory=dict)  # id -> line of a non-UTF-8 line
    problems: list[Problem] = field(default_factory=list)


def read_kaldi_text(path: str | Path) -> KaldiText:
    """Read ``uttid text...`` lines; every line that cannot be used becomes a named Problem."""
    path = str(path)
    out = KaldiText(path, {})
    lines_of: dict[str, int] = {}
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            raw = raw.rstrip(b"\r\n")
            parts = raw.split(maxsplit=1)
            if not parts:
                out.problems.append(Problem("empty_line", path, lineno, ""))
                continue
            uttid = parts[0].decode("utf-8", errors="replace")
            if uttid in lines_of or uttid in out.unreadable:
                first = lines_of.get(uttid, out.unreadable.get(uttid))
                out.problems.append(
                    Problem("duplicate_id", path, lineno, uttid, f"first on line {first}; kept")
                )
                continue
            try:
                text = parts[1].decode("utf-8") if len(parts) > 1 else ""
                parts[0].decode("utf-8")
            except UnicodeDecodeError as e:
                out.unreadable[uttid] = lineno
                out.problems.append(Problem("non_utf8", path, lineno, uttid, str(e)))
                continue
            out.texts[uttid] = text
            lines_of[uttid] = lineno
    return out


@dataclass
class UttScore:
    id: str
    ref: list[str]
    hyp: list[str]
    alignment: list[tuple[str, str]]
    sub: int
    dele: int
    ins: int
    hyp_missing: bool = False

    @property
    def errors(self) -> int:
        return self.sub + self.dele + self.ins

    @property
    def correct(self) -> int:
        return len(self.ref) - self.sub - self.dele


def align_units(uttid: str, ref: list[str], hyp: list[str], hyp_missing: bool = False) -> UttScore:
    """Levenshtein alignment with unit costs (Kaldi's compute-wer), counted from the alignment itself."""
    import kaldialign

    alignment = kaldialign.align(ref, hyp, EPS)
    ins = sum(r == EPS for r, _ in alignment)
    dele = sum(h == EPS for _, h in alignment)
    sub = sum(r != h and EPS not in (r, h) for r, h in alignment)
    return UttScore(uttid, ref, hyp, alignment, sub, dele, ins, hyp_missing)


@dataclass
class SystemScore:
    name: str
    ref_path: str
    hyp_path: str
    normalizer: Normalizer
    utts: list[UttScore]
    problems: list[Problem]

    @property
    def totals(self) -> dict[str, int]:
        return {
            "substitutions": sum(u.sub for u in self.utts),
            "deletions": sum(u.dele for u in self.utts),
            "insertions": sum(u.ins for u in self.utts),
            "errors": sum(u.errors for u in self.utts),
            "correct": sum(u.correct for u in self.utts),
            "ref_units": sum(len(u.ref) for u in self.utts),
        }

    @property
    def error_rate(self) -> float:
        """Pooled error rate in percent (Kaldi's %WER): all errors over all reference units."""
        t = self.totals
        return 100.0 * t["errors"] / t["ref_units"] if t["ref_units"] else float("inf")

    @property
    def mean_utterance_error_rate(self) -> float:
        """Mean of per-utterance error rates in percent, over utterances with a non-empty reference."""
        rates = [u.errors / len(u.ref) for u in self.utts if u.ref]
        return 100.0 * sum(rates) / len(rates) if rates else float("nan")


def score_system(ref: KaldiText, hyp: KaldiText, normalizer: Normalizer, name: str) -> SystemScore:
    problems = list(ref.problems) + list(hyp.problems)
    for uttid, lineno in ref.unreadable.items():
        problems.append(Problem("unscorable_reference", ref.path, lineno, uttid, "reference is not UTF-8"))
    utts = []
    for uttid, ref_text in ref.texts.items():
        ref_units = normalizer.units(ref_text)
        if not ref_units:
            problems.append(
                Problem("empty_reference", ref.path, None, uttid, "insertions counted; not in the mean")
            )
        missing = uttid not in hyp.texts
        if missing:
            why = "hypothesis line is not UTF-8" if uttid in hyp.unreadable else "no hypothesis line"
            problems.append(Problem("missing_hypothesis", hyp.path, hyp.unreadable.get(uttid), uttid, why))
        hyp_units = [] if missing else normalizer.units(hyp.texts[uttid])
        utts.append(align_units(uttid, ref_units, hyp_units, hyp_missing=missing))
    known = set(ref.texts) | set(ref.unreadable)
    for uttid in hyp.texts:
        if uttid not in known:
            problems.append(Problem("extra_hypothesis", hyp.path, None, uttid, "no reference; not scored"))
    return SystemScore(name, ref.path, hyp.path, normalizer, utts, problems)


def bootstrap(
    system: SystemScore, baseline: SystemScore | None = None, speakers: dict[str, str] | None = None
) -> dict:
    """Percentile bootstrap 95% interval of the pooled rate (by speaker where ``speakers`` maps ids to
    speakers); with a baseline, also the paired test and the probability of improvement over it."""
    groups = [speakers.get(u.id, u.id) for u in system.utts] if speakers else None
    lengths = [len(u.ref) for u in system.utts]
    errors = [u.errors for u in system.utts]
    ci = stats.interval(errors, lengths, scale=100, groups=groups)
    if baseline is None:
        return ci
    if [u.id for u in baseline.utts] != [u.id for u in system.utts]:
        raise ValueError("system and baseline were scored on different references")
    base_errors = [u.errors for u in baseline.utts]
    return {
        "baseline_ci95": stats.interval(base_errors, lengths, scale=100, groups=groups),
        "ci95": ci,
        **stats.paired(base_errors, errors, lengths, scale=100, groups=groups),
    }


def summary(
    system: SystemScore,
    tags: dict[str, str],
    baseline: SystemScore | None = None,
    speakers: dict[str, str] | None = None,
) -> dict:
    """The JSON summary of one scored system; ``speakers`` (utterance id to speaker, from the data dir's
    ``utt2spk``) is recorded per utterance and, by ``stats.clusters``' rule, resampled by."""
    kinds = Counter(p.kind for p in system.problems)
    out = {
        "kind": "asr",
        "system": system.name,
        "ref": system.ref_path,
        "hyp": system.hyp_path,
        "normalizer": system.normalizer.name,
        "metric": system.normalizer.metric,
        "unit": system.normalizer.unit,
        "tags": tags,
        "error_rate": system.error_rate,
        **system.totals,
        "utterances": len(system.utts),
        # references with no hypothesis line: scored, every unit a deletion (e.g. lost in tokenize or decode)
        "missing_hypotheses": sum(u.hyp_missing for u in system.utts),
        "missing_hypothesis_deletions": sum(u.dele for u in system.utts if u.hyp_missing),
        "mean_utterance_error_rate": system.mean_utterance_error_rate,
        "problem_counts": dict(sorted(kinds.items())),
        "problems": [vars(p) for p in system.problems],
        # per utterance [id, errors, reference units(, speaker)]: comparisons across seeds resample these
        "utterance_errors": [
            [u.id, u.errors, len(u.ref)] + ([speakers.get(u.id, "")] if speakers else []) for u in system.utts
        ],
    }
    if baseline is None:
        out["ci95"] = bootstrap(system, speakers=speakers)
    else:
        paired = bootstrap(system, baseline, speakers)
        out["ci95"] = paired.pop("ci95")
        out["baseline"] = {
            "system": baseline.name,
            "hyp": baseline.hyp_path,
            "error_rate": baseline.error_rate,
            "mean_utterance_error_rate": baseline.mean_utterance_error_rate,
            "problem_counts": dict(sorted(Counter(p.kind for p in baseline.problems).items())),
            **paired,
        }
    return out


def format_counts(problem_counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in problem_counts.items()) or "none"


def _pair(r: str, h: str) -> str:
    return r if r == h else f"({r.replace(EPS, '*')}->{h.replace(EPS, '*')})"


def errs_report(system: SystemScore, summ: dict, top: int = 20) -> str:
    """icefall-style errs-*.txt: totals, problems, per-utterance alignments, frequent errors, unit stats."""
    m, n = system.normalizer.metric, system.normalizer
    unit = "words" if n.unit == "word" else "characters"
    t = system.totals
    ci = summ["ci95"]
    lines = [
        f"%{m} = {system.error_rate:.2f}  (pooled: all errors / all reference {unit})",
        f"Errors: {t['insertions']} insertions, {t['deletions']} deletions, "
        f"{t['substitutions']} substitutions, over {t['ref_units']} reference {unit} "
        f"({t['correct']} correct)",
        f"Mean of per-utterance {m} = {system.mean_utterance_error_rate:.2f}  "
        f"(unweighted, over {sum(bool(u.ref) for u in system.utts)} utterances with a non-empty reference)",
        f"95% interval of %{m}: [{ci['low']:.2f}, {ci['high']:.2f}] ({ci['method']}, "
        f"{ci['replications']} replications by {ci['resampled']})",
    ]
    if "baseline" in summ:
        b = summ["baseline"]
        lines.append(
            f"Baseline {b['system']}: %{m} = {b['error_rate']:.2f}; difference {b['difference']:+.2f}; "
            f"p = {b['p_value']:.4f} ({b['test']}); "
            f"P({system.name} better than baseline) = {b['p_improvement']:.4f} "
            "(probability of improvement, Bisani-Ney paired bootstrap; not a p-value)"
        )
    lines += [
        f"Normaliser: {n.name}; reference: {system.ref_path}; hypothesis: {system.hyp_path}",
        f"Utterances scored: {len(system.utts)}",
        f"Missing hypotheses: {summ['missing_hypotheses']} utterances, their "
        f"{summ['missing_hypothesis_deletions']} reference {unit} counted as deletions",
        "Search below for sections starting with PROBLEMS:, PER-UTT DETAILS:, SUBSTITUTIONS:, DELETIONS:, "
        "INSERTIONS:, PER-UNIT STATS:",
        "",
        f"PROBLEMS: {len(system.problems)} ({format_counts(summ['problem_counts'])})",
        *(str(p) for p in system.problems),
        "",
        "PER-UTT DETAILS: corr or (ref->hyp); * is a gap",
    ]
    subs, dels, ins = Counter(), Counter(), Counter()
    # per unit, as icefall's write_error_stats: corr, ref_sub, hyp_sub, ins, dels
    stats: dict[str, list[int]] = {}
    for u in system.utts:
        rate = f"{100.0 * u.errors / len(u.ref):.2f}%" if u.ref else "n/a (empty reference)"
        note = " (hypothesis missing: all deletions)" if u.hyp_missing else ""
        lines.append(f"{u.id}:\tS={u.sub} D={u.dele} I={u.ins} N={len(u.ref)} {m}={rate}{note}")
        lines.append(f"{u.id}:\t" + " ".join(_pair(r, h) for r, h in u.alignment))
        for r, h in u.alignment:
            if r == EPS:
                ins[h] += 1
                stats.setdefault(h, [0] * 5)[3] += 1
            elif h == EPS:
                dels[r] += 1
                stats.setdefault(r, [0] * 5)[4] += 1
            elif r != h:
                subs[(r, h)] += 1
                stats.setdefault(r, [0] * 5)[1] += 1
                stats.setdefault(h, [0] * 5)[2] += 1
            else:
                stats.setdefault(r, [0] * 5)[0] += 1
    lines += ["", "SUBSTITUTIONS: count ref -> hyp"]
    lines += [f"{c}   {r} -> {h}" for (r, h), c in subs.most_common(top)]
    lines += ["", "DELETIONS: count ref"] + [f"{c}   {r}" for r, c in dels.most_common(top)]
    lines += ["", "INSERTIONS: count hyp"] + [f"{c}   {h}" for h, c in ins.most_common(top)]
    lines += ["", "PER-UNIT STATS: unit  corr tot_errs count_in_ref count_in_hyp"]
    rows = []
    for w, (corr, ref_sub, hyp_sub, n_ins, n_del) in stats.items():
        rows.append(
            (ref_sub + hyp_sub + n_ins + n_del, w, corr, corr + ref_sub + n_del, corr + hyp_sub + n_ins)
        )
    for tot, w, corr, in_ref, in_hyp in sorted(rows, key=lambda r: (-r[0], r[1])):
        lines.append(f"{w}   {corr} {tot} {in_ref} {in_hyp}")
    return "\n".join(lines) + "\n"


def scoring_config(path: Path = SCORING_CONFIG) -> dict:
    return yaml.safe_load(path.read_text())


def normalizer_for(
    benchmark: str | None, normalizer: str | None, config_path: Path = SCORING_CONFIG
) -> Normalizer:
    """An explicit --normalizer wins; otherwise the benchmark's entry in eval/scoring.yaml."""
    if normalizer:
        return get_normalizer(normalizer)
    if not benchmark:
        raise ValueError("give --normalizer or --benchmark (a name in eval/scoring.yaml)")
    benchmarks = scoring_config(config_path)["benchmarks"]
    if benchmark not in benchmarks:
        raise ValueError(f"benchmark {benchmark!r} not in {config_path}; known: {sorted(benchmarks)}")
    return get_normalizer(benchmarks[benchmark]["normalizer"])


def parse_tags(items: list[str]) -> dict[str, str]:
    tags = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--tag wants key=value, got {item!r}")
        tags[key] = value
    return tags


def system_name(hyp_path: str) -> str:
    """A file-name-safe system name from the hypothesis path (its directory, as decode writes <dir>/text)."""
    p = Path(hyp_path).resolve()
    return re.sub(r"[^\w.-]+", "_", p.parent.name if p.name == "text" else p.stem)


def read_utt2spk(ref_path: str | Path) -> dict[str, str] | None:
    """The Kaldi ``utt2spk`` beside a reference ``text`` (a data dir), or None where there is none."""
    path = Path(ref_path).with_name("utt2spk")
    if not path.is_file():
        return None
    out = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        fields = line.split()
        if len(fields) != 2:
            raise ValueError(f"{path}:{lineno}: want 'utterance speaker', got {line!r}")
        out[fields[0]] = fields[1]
    return out


def score_asr(
    ref_path: str | Path,
    hyp_path: str | Path,
    normalizer: Normalizer,
    out_dir: str | Path,
    name: str | None = None,
    baseline_path: str | Path | None = None,
    tags: dict[str, str] | None = None,
) -> dict:
    """Score one system (and, optionally, against a baseline); write errs-*.txt and summary-*.json."""
    name = name or system_name(str(hyp_path))
    ref = read_kaldi_text(ref_path)
    system = score_system(ref, read_kaldi_text(hyp_path), normalizer, name)
    baseline = None
    if baseline_path:
        baseline = score_system(
            ref, read_kaldi_text(baseline_path), normalizer, system_name(str(baseline_path))
        )
    summ = summary(system, tags or {}, baseline, read_utt2spk(ref_path))
    out_dir = Path(out_dir)
    write_atomic(out_dir / f"errs-{name}.txt", errs_report(system, summ))
    write_atomic(out_dir / f"summary-{name}.json", json.dumps(summ, indent=2, ensure_ascii=False) + "\n")
    return summ


def add_arguments(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    """``score asr``; returns the sub-command group, to which ``speech_lpo.score_command`` adds the rest."""
    sub = parser.add_subparsers(dest="what", metavar="what", required=True)
    asr = sub.add_parser("asr", help="WER/CER of Kaldi-format hypotheses against references")
    asr.add_argument(
        "--ref",
        required=True,
        help="the test set's Kaldi text (uttid text...), as prepare wrote it: <manifests>/kaldi/<set>/text",
    )
    asr.add_argument("--hyp", required=True, help="hypothesis Kaldi text file")
    asr.add_argument("--benchmark", help=f"benchmark name in {SCORING_CONFIG.name}; picks the normaliser")
    asr.add_argument("--normalizer", choices=sorted(NORMALIZERS), help="overrides the benchmark's normaliser")
    asr.add_argument("--out-dir", required=True)
    asr.add_argument("--name", help="system name in file names and tables (default: from the hyp path)")
    asr.add_argument(
        "--baseline-hyp", help="hypotheses of a baseline (e.g. SFT) for the paired bootstrap test"
    )
    asr.add_argument(
        "--tag",
        action="append",
        default=[],
        help="key=value carried into the summary (method, r2, epoch, ...)",
    )
    asr.set_defaults(run=_main_asr)
    return sub


def _main_asr(args: argparse.Namespace) -> None:
    normalizer = normalizer_for(args.benchmark, args.normalizer)
    summ = score_asr(
        args.ref, args.hyp, normalizer, args.out_dir, args.name, args.baseline_hyp, parse_tags(args.tag)
    )
    problems = format_counts(summ["problem_counts"])
    print(
        f"{summ['system']}: %{summ['metric']} {summ['error_rate']:.2f} "
        f"[{summ['ci95']['low']:.2f}, {summ['ci95']['high']:.2f}] "
        f"(S {summ['substitutions']} D {summ['deletions']} I {summ['insertions']} / {summ['ref_units']}; "
        f"{summ['missing_hypotheses']} missing hypotheses, {summ['missing_hypothesis_deletions']} of the "
        f"deletions; normaliser {summ['normalizer']}; problems: {problems}) -> {args.out_dir}"
    )
