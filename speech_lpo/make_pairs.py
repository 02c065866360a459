"""Build preference groups from sampled candidates (LPPC) or from corrupted ASR transcripts.

The chosen response is the ground truth (but for ``--select metric-best``). ``--method model`` reads
`speech-lpo generate` output and makes one group per prompt whose rejected responses are the model's own
samples:

- TTS: every candidate (three by default) against the reference audio; a candidate identical to the
  reference or without audio codes is dropped.
- ASR and text tasks: the candidates whose text differs from the reference after normalisation
  (characters for Chinese, words for English: speech_lpo.normalize), each kept as the model's token ids.
- A candidate cut by max_new_tokens is dropped and counted: its missing end, not its content, would make
  it the rejected one. ``--keep-cut-candidates`` keeps them, flagged in the report and the group's meta.

``--select`` chooses which usable candidates become rejected responses, for ASR and text tasks:

- ``all``: every one (deduplicated);
- ``near-miss``: those with an edit rate (edit distance / reference length) of at most ``--max-edit-rate``,
  the ``--max-rejected`` most likely under the model first (summed log-prob of the response given the
  prompt, stored as ``meta.logp``): the paper's point that good rejected responses are near misses
  (homophones, one word off) rather than gross errors;

and for TTS candidates, scored with the TTS instruments of ``score tts`` (the model's codec makes the
audio, ``--asr`` its transcript, ``--speaker-encoder`` its voice):

- ``metric``: the reference stays the chosen response, as in the paper; a candidate is rejected only when
  it is worse than the reference (heard through the same codec) by a margin: ASR error rate higher by more
  than ``--wer-margin``, speaker similarity to the reference lower by more than ``--sim-margin``, or
  shorter than ``1 - --max-truncation`` of its duration (cut off);
- ``metric-best``: NeMo's Magpie-TTS variant: the best candidate that is not cut off (lowest error rate,
  then highest similarity) is the chosen response when its error rate is at most ``--max-chosen-wer``, and the
  candidates worse than it by those margins are rejected.

``--method perturb`` (ASR) corrupts each reference transcript by insertion, deletion and repetition at
noise ratio eta (speech_lpo.perturb); no model samples are needed.

Beside the output ``groups.jsonl`` go ``groups.report.json`` (the pair statistics of this candidate method:
method, selection, prompts, groups, pairs, dropped groups and responses by reason, responses flagged, edit
distance and edit rate between chosen and rejected, with quartiles) and ``groups.edit_distance.png``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import astuple, dataclass, field
from pathlib import Path

import numpy as np
from kaldialign import edit_distance
from tqdm import tqdm

from speech_lpo.generate import Item, generation_settings, iter_rows, load_dataset_items
from speech_lpo.groups import PreferenceGroup, write_groups
from speech_lpo.normalize import Normalizer, get_normalizer
from speech_lpo.perturb import (
    DEFAULT_MIX,
    confusable_units,
    is_char_language,
    parse_mix,
    perturb,
    split_units,
    utterance_rng,
)
from speech_lpo.prompts import asr_response_ids, im_end_id, response_codes, response_text
from speech_lpo.vocab import AudioVocab

log = logging.getLogger(__name__)
UNIT_NAMES = {"char": "characters", "word": "words"}


@dataclass
class PairReport:
    method: str = "model"
    select: str = "all"
    prompts: int = 0
    groups: int = 0
    rejected: int = 0
    dropped_groups: Counter = field(default_factory=Counter)  # reason -> prompts without a group
    dropped_responses: Counter = field(default_factory=Counter)  # reason -> candidates not used
    flagged: Counter = field(default_factory=Counter)  # kept, but marked in the group's meta
    operators: Counter = field(default_factory=Counter)
    edit_distances: list[int] = field(default_factory=list)
    edit_rates: list[float] = field(default_factory=list)  # edit distance / reference length
    gaps: dict[str, list[float]] = field(default_factory=dict)  # TTS metric selection: wer_gap, sim_gap
    units: set[str] = field(default_factory=set)  # what edit distances count: audio codes, words, characters

    def add_group(self, group: PreferenceGroup) -> None:
        self.groups += 1
        self.rejected += group.k
        self.edit_distances += group.meta["edit_distance"]
        self.edit_rates += [d / max(group.meta["reference_units"], 1) for d in group.meta["edit_distance"]]
        for key in ("wer_gap", "sim_gap"):
            if key in group.meta:
                self.gaps.setdefault(key, []).extend(group.meta[key])

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "select": self.select,
            "prompts": self.prompts,
            "groups": self.groups,
            "rejected": self.rejected,
            "pairs": self.rejected,  # a group of k rejected responses is k pairs
            "dropped_groups": dict(self.dropped_groups),
            "dropped_responses": dict(self.dropped_responses),
            "flagged": dict(self.flagged),
            "operators": dict(self.operators),
            "edit_distance_units": sorted(self.units),
            "edit_distance": distribution(self.edit_distances),
            "edit_rate": distribution(self.edit_rates),
            **{key: distribution(values) for key, values in self.gaps.items()},
        }


def distribution(values: list[float]) -> dict:
    if not values:
        return {"count": 0}
    a = np.asarray(values, dtype=float)
    q = np.percentile(a, [0, 10, 25, 50, 75, 90, 100])
    keys = ("min", "p10", "p25", "median", "p75", "p90", "max")
    return {"count": len(a), "mean": float(a.mean()), **{k: float(v) for k, v in zip(keys, q, strict=True)}}


def normalizer_for(task: str, lang: str, name: str | None) -> Normalizer:
    if name:
        return get_normalizer(name)
    if task == "text":
        return get_normalizer("none")
    return get_normalizer("chinese" if is_char_language(lang) else "librispeech")


def distance(reference: list, hypothesis: list) -> int:
    return edit_distance(reference, hypothesis)["total"]


def dedupe(rejected: list[tuple[list[int], dict]], report: PairReport) -> list[tuple[list[int], dict]]:
    seen, keep = set(), []
    for ids, info in rejected:
        if tuple(ids) in seen:
            report.dropped_responses["duplicate of another rejected response"] += 1
        else:
            seen.add(tuple(ids))
            keep.append((ids, info))
    return keep


LONGER_THAN_POSITIONS = "prompt and longest response longer than the model's max_position_embeddings"


def make_group(
    row: dict,
    method: str,
    rejected: list[tuple[list[int], dict]],
    report: PairReport,
    max_positions: int | None,
    **meta,
) -> PreferenceGroup | None:
    """One group from (ids, per-response meta) pairs; per-response meta become meta lists.

    A group whose prompt plus longest response exceeds ``max_positions`` is dropped: positions restart
    after the prompt for every response of a packed group, so that is the furthest position the model
    sees (the packed length is a memory matter: ``train --max_length``).
    """
    rejected = dedupe(rejected, report)
    if not rejected:
        report.dropped_groups["no usable rejected response"] += 1
        return None
    longest = len(row["prompt_ids"]) + max(len(row["reference_ids"]), *(len(ids) for ids, _ in rejected))
    if max_positions is not None and longest > max_positions:
        report.dropped_groups[LONGER_THAN_POSITIONS] += 1
        return None
    keys = rejected[0][1].keys()
    group = PreferenceGroup(
        id=row["id"],
        task=row["task"],
        prompt_ids=row["prompt_ids"],
        chosen_ids=row["reference_ids"],
        rejected_ids=[ids for ids, _ in rejected],
        meta={"method": method, "source_id": row["id"], "lang": row["lang"], **meta}
        | {k: [info[k] for _, info in rejected] for k in keys},
    )
    report.add_group(group)
    return group


CUT = "hit max_new_tokens"
# (prompt ids, responses' ids) -> each response's summed log-prob under the model
Scorer = Callable[[list[int], list[list[int]]], list[float]]


@dataclass
class Selection:
    """Which usable candidates become rejected responses (``--select``)."""

    select: str = "all"  # all | near-miss
    max_edit_rate: float = 0.3
    max_rejected: int = 3
    scorer: Scorer | None = None  # near-miss: the likelihood ranking

    def __call__(
        self, row: dict, rejected: list[tuple[list[int], dict]], reference_units: int, report: PairReport
    ) -> list[tuple[list[int], dict]]:
        if self.select == "all":
            return rejected
        near = []
        for ids, info in rejected:
            if info["edit_distance"] / max(reference_units, 1) > self.max_edit_rate:
                report.dropped_responses["edit rate above --max-edit-rate"] += 1
            else:
                near.append((ids, info))
        near = dedupe(near, report)  # a duplicate must not take one of the max_rejected places
        if not near:
            return []
        logps = self.scorer(row["prompt_ids"], [ids for ids, _ in near])
        ranked = sorted(zip(logps, range(len(near)), strict=True), reverse=True)
        report.dropped_responses["near miss beyond the --max-rejected most likely"] += max(
            0, len(ranked) - self.max_rejected
        )
        return [(near[i][0], {**near[i][1], "logp": lp}) for lp, i in ranked[: self.max_rejected]]


ALL = Selection()


@dataclass
class Measured:
    """One TTS response as the instruments hear it."""

    error_rate: float  # ASR errors / reference units
    sim: float  # speaker similarity (cosine) to the reference through the codec
    seconds: float


class TtsInstruments:
    """``score tts``'s instruments on code sequences: the model's codec makes 16 kHz audio, an ASR
    (speech_lpo.tts_metrics.make_asr) transcribes it, a speaker encoder embeds it.

    With ``cache`` (a JSON-lines file), each prompt's measurements are appended as they are made and read
    back on a re-run, keyed by the instruments, the prompt and a digest of its code sequences: a killed
    selection resumes where it stopped, and a prompt whose candidates (or instruments) changed is measured
    again."""

    def __init__(
        self, model_dir: str | Path, asr: str, speaker_encoder: str, cache: Path | None = None
    ) -> None:
        from speech_lpo.codecs import load_codec
        from speech_lpo.tts_metrics import make_asr, make_speaker_encoder

        self.codec = load_codec(model_dir)
        self.asr = make_asr(asr)
        self.embed = make_speaker_encoder(speaker_encoder)
        self.cache, self.cached, self.instruments_key = cache, {}, f"{asr}|{speaker_encoder}"
        if cache is not None and cache.is_file():
            lines = cache.read_text(encoding="utf-8").splitlines(keepends=True)
            for line in lines:
                if line.endswith("\n"):  # not the last line cut by a kill: that prompt is measured again
                    entry = json.loads(line)
                    self.cached[entry["key"]] = [Measured(*m) for m in entry["measured"]]
            if lines and not lines[-1].endswith("\n"):
                cache.write_text("".join(lines[:-1]), encoding="utf-8")

    def measure(
        self, key: str, text_units: list[str], normalizer: Normalizer, codes: list[np.ndarray]
    ) -> list[Measured]:
        """The reference's codes first: similarity is to its voice. ``key`` names the prompt."""
        digest = hashlib.sha1()
        for c in codes:
            digest.update(f"{np.shape(c)}".encode() + np.ascontiguousarray(c, np.int64).tobytes())
        key = f"{self.instruments_key}|{key}|{digest.hexdigest()}"
        if key in self.cached:
            return self.cached[key]
        measured = self._measure(text_units, normalizer, codes)
        if self.cache is not None:
            with self.cache.open("a", encoding="utf-8") as f:
                f.write(json.dumps({"key": key, "measured": [astuple(m) for m in measured]}) + "\n")
        return measured

    def _measure(
        self, text_units: list[str], normalizer: Normalizer, codes: list[np.ndarray]
    ) -> list[Measured]:
        import soxr

        from speech_lpo.tts_metrics import ASR_SAMPLE_RATE, cosine

        wavs = [
            soxr.resample(
                np.asarray(self.codec.decode(c), np.float32), self.codec.sample_rate, ASR_SAMPLE_RATE
            )
            for c in codes
        ]
        voice = self.embed(wavs[0])
        return [
            Measured(
                distance(text_units, normalizer.units(self.asr(w))) / max(len(text_units), 1),
                cosine(self.embed(w), voice),
                len(w) / ASR_SAMPLE_RATE,
            )
            for w in wavs
        ]


@dataclass
class TtsSelection:
    """``--select metric`` / ``metric-best`` (see the module docstring)."""

    instruments: TtsInstruments
    select: str = "metric"
    wer_margin: float = 0.1
    sim_margin: float = 0.1
    max_truncation: float = 0.2
    max_chosen_wer: float = 0.1

    def worse(self, c: Measured, than: Measured) -> list[str]:
        """How ``c`` is worse than ``than`` by more than a margin (empty: not worse)."""
        return [
            name
            for name, bad in (
                ("intelligibility", c.error_rate - than.error_rate > self.wer_margin),
                ("voice", than.sim - c.sim > self.sim_margin),
                ("truncated", c.seconds < (1 - self.max_truncation) * than.seconds),
            )
            if bad
        ]

    def __call__(
        self,
        row: dict,
        candidates: list[tuple[list[int], np.ndarray, dict]],
        ref_codes: np.ndarray,
        report: PairReport,
    ) -> tuple[list[int], list[tuple[list[int], dict]]] | None:
        """(chosen ids, rejected (ids, info)) or None where no candidate makes a pair (counted)."""
        normalizer = normalizer_for("asr", row["lang"], None)
        units = normalizer.units(row["text"])
        ref, *measured = self.instruments.measure(
            str(row["id"]), units, normalizer, [ref_codes] + [c for _, c, _ in candidates]
        )
        chosen_ids, anchor = row["reference_ids"], ref
        if self.select == "metric-best":
            # a cut candidate may be heard as fewer errors: it cannot be the best
            whole = [i for i, m in enumerate(measured) if "truncated" not in self.worse(m, ref)]
            best = min(whole, key=lambda i: (measured[i].error_rate, -measured[i].sim), default=None)
            if best is None or measured[best].error_rate > self.max_chosen_wer:
                report.dropped_groups["no candidate within --max-chosen-wer"] += 1
                return None
            chosen_ids, anchor = candidates[best][0], measured[best]
            measured, candidates = (
                measured[:best] + measured[best + 1 :],
                candidates[:best] + candidates[best + 1 :],
            )
        rejected = []
        for (ids, _, info), m in zip(candidates, measured, strict=True):
            reasons = self.worse(m, anchor)
            if not reasons:
                report.dropped_responses["not worse than the chosen response by a margin"] += 1
                continue
            gaps = {"wer_gap": m.error_rate - anchor.error_rate, "sim_gap": anchor.sim - m.sim}
            rejected.append(
                (ids, {**info, "error_rate": m.error_rate, "sim": m.sim, **gaps, "worse": reasons})
            )
        return chosen_ids, rejected


def model_scorer(model, batch_size: int = 8) -> Scorer:
    """Summed log-probs of responses under ``model``, packed and computed as ``ref-logps`` computes them."""
    from speech_lpo.ref_logps import with_ref_logps

    pad_id = model.config.pad_token_id or 0

    def score(prompt_ids: list[int], responses: list[list[int]]) -> list[float]:
        # the first response stands in as the chosen one: a packed group needs one, its log-prob is unused
        group = PreferenceGroup("score", "asr", prompt_ids, responses[0], responses)
        (scored,) = with_ref_logps(model, [group], batch_size, pad_id=pad_id)
        return scored.ref_rejected_logp

    return score


def keep_candidate(candidate: dict, report: PairReport, keep_cut: bool) -> bool:
    """False for a candidate cut by max_new_tokens (counted as dropped) unless ``keep_cut``, when it is
    kept and counted as flagged."""
    if not candidate["hit_max_new_tokens"]:
        return True
    (report.flagged if keep_cut else report.dropped_responses)[CUT] += 1
    return keep_cut


def tts_group(
    row: dict,
    tokenizer,
    vocab: AudioVocab,
    report: PairReport,
    max_positions: int | None = None,
    keep_cut: bool = False,
    selection: TtsSelection | None = None,
) -> PreferenceGroup | None:
    """The candidates against the reference: every usable one, or as ``selection`` chooses them."""
    ref_codes, _ = response_codes(vocab, row["reference_ids"])
    report.units.add("audio codes")
    end = im_end_id(tokenizer)
    rejected = []
    for c in row["candidates"]:
        ids = c["ids"]
        if ids and ids[-1] == vocab.audio_end_id:
            ids = ids + [end]  # stopped at <|audio_end|>: close the turn as a reference response is closed
        codes, _ = response_codes(vocab, ids)
        if not codes.size:
            report.dropped_responses["decodes to no audio codes"] += 1
        elif ids == row["reference_ids"]:
            report.dropped_responses["identical to the reference"] += 1
        elif keep_candidate(c, report, keep_cut):
            info = {
                "hit_max_new_tokens": c["hit_max_new_tokens"],
                "edit_distance": distance(ref_codes, codes),
            }
            rejected.append((ids, codes, info))
    if selection is None:
        rejected = [(ids, info) for ids, _, info in rejected]
        return make_group(row, "model", rejected, report, max_positions, reference_units=len(ref_codes))
    picked = selection(row, rejected, ref_codes, report)
    if picked is None:
        return None
    chosen_ids, rejected = picked
    meta = {"reference_units": len(ref_codes), "select": selection.select}
    return make_group({**row, "reference_ids": chosen_ids}, "model", rejected, report, max_positions, **meta)


def text_group(
    row: dict,
    tokenizer,
    normalizer: Normalizer,
    report: PairReport,
    max_positions: int | None = None,
    keep_cut: bool = False,
    selection: Selection = ALL,
) -> PreferenceGroup | None:
    """ASR and text tasks: the candidates whose normalised text differs from the reference's, as
    ``selection`` chooses them."""
    ref_units = normalizer.units(row["text"])
    report.units.add(UNIT_NAMES[normalizer.unit])
    rejected = []
    for c in row["candidates"]:
        units = normalizer.units(response_text(tokenizer, c["ids"]))
        if not units:
            report.dropped_responses["decodes to empty text"] += 1
        elif units == ref_units:
            report.dropped_responses["same as the reference after normalisation"] += 1
        elif keep_candidate(c, report, keep_cut):
            info = {
                "hit_max_new_tokens": c["hit_max_new_tokens"],
                "edit_distance": distance(ref_units, units),
            }
            rejected.append((c["ids"], info))
    rejected = selection(row, rejected, len(ref_units), report)
    meta = {"normalizer": normalizer.name, "reference_units": len(ref_units), "select": selection.select}
    return make_group(row, "model", rejected, report, max_positions, **meta)


def model_groups(
    candidates_dir: str | Path,
    tokenizer,
    vocab: AudioVocab,
    normalizer_name: str | None,
    report: PairReport,
    max_positions: int | None = None,
    keep_cut: bool = False,
    selection: Selection = ALL,
    tts_selection: TtsSelection | None = None,
) -> list[PreferenceGroup]:
    groups = []
    prompts = generation_settings(candidates_dir)["prompts"]
    for row in tqdm(iter_rows(candidates_dir), total=prompts, desc="make-pairs", unit="prompt"):
        report.prompts += 1
        if row["skipped"]:
            report.dropped_groups[f"skipped by generate: {row['skipped']}"] += 1
            continue
        if row["task"] == "tts":
            if selection.select != "all":
                raise ValueError(
                    f"{candidates_dir}: --select {selection.select} is for ASR and text candidates"
                )
            group = tts_group(row, tokenizer, vocab, report, max_positions, keep_cut, tts_selection)
        elif tts_selection is not None:
            raise ValueError(f"{candidates_dir}: --select {tts_selection.select} is for TTS candidates")
        else:
            normalizer = normalizer_for(row["task"], row["lang"], normalizer_name)
            group = text_group(row, tokenizer, normalizer, report, max_positions, keep_cut, selection)
        if group is not None:
            groups.append(group)
    return groups


def unit_vocabularies(items: list[Item]) -> dict[str, list[str]]:
    """Per language, the units of all reference transcripts: what insertions draw from."""
    units: dict[str, set[str]] = {}
    for item in items:
        units.setdefault(item.lang, set()).update(split_units(item.text, item.lang))
    return {lang: sorted(u) for lang, u in units.items()}


def perturb_groups(
    items: list[Item],
    tokenizer,
    normalizer_name: str | None,
    report: PairReport,
    eta: float = 0.1,
    mix: dict[str, float] = DEFAULT_MIX,
    num_perturbations: int = 3,
    seed: int = 0,
    max_positions: int | None = None,
) -> list[PreferenceGroup]:
    vocabularies = unit_vocabularies([i for i in items if i.skipped is None])
    substitutes = mix.get("substitution", 0) > 0
    confusable = {lang: confusable_units(units, lang) for lang, units in vocabularies.items() if substitutes}
    groups = []
    for item in items:
        report.prompts += 1
        if item.skipped:
            report.dropped_groups[item.skipped] += 1
            continue
        normalizer = normalizer_for("asr", item.lang, normalizer_name)
        ref_units = normalizer.units(item.text)
        report.units.add(UNIT_NAMES[normalizer.unit])
        rejected = []
        for draw in range(num_perturbations):
            rng = utterance_rng(seed, item.id, draw)
            p = perturb(
                item.text, item.lang, rng, eta, mix, vocabularies[item.lang], confusable.get(item.lang)
            )
            units = normalizer.units(p.text)
            if units == ref_units:  # e.g. a deleted punctuation mark
                report.dropped_responses["same as the reference after normalisation"] += 1
                continue
            report.operators.update(p.operators)
            info = {"operators": dict(p.operators), "edit_distance": distance(ref_units, units)}
            rejected.append((asr_response_ids(tokenizer, p.text), info))
        row = {"id": item.id, "task": "asr", "lang": item.lang, "prompt_ids": item.prompt_ids}
        row["reference_ids"] = item.reference_ids
        meta = {"normalizer": normalizer.name, "reference_units": len(ref_units), "eta": eta, "seed": seed}
        group = make_group(row, "perturb", rejected, report, max_positions, **meta)
        if group is not None:
            groups.append(group)
    return groups


def plot_edit_distance(report: PairReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    if report.edit_distances:
        ax.hist(report.edit_distances, bins=np.arange(max(report.edit_distances) + 2) - 0.5, color="tab:blue")
    ax.set_xlabel(f"edit distance, chosen vs rejected ({' / '.join(sorted(report.units))})")
    ax.set_ylabel("rejected responses")
    ax.set_title(f"{report.groups} groups, {report.rejected} rejected responses")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def report_paths(out: Path) -> tuple[Path, Path]:
    stem = out.name.removesuffix(".jsonl")
    return out.with_name(stem + ".report.json"), out.with_name(stem + ".edit_distance.png")


def write_report(report: PairReport, out: Path) -> dict:
    json_path, png_path = report_paths(out)
    summary = report.to_dict()
    tmp = json_path.with_name(json_path.name + ".tmp")
    tmp.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, json_path)
    plot_edit_distance(report, png_path)
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", choices=("model", "perturb"), default="model")
    parser.add_argument("--model", required=True, help="model dir: its tokenizer and audio_vocab.json")
    parser.add_argument("--candidates", help="model: a `speech-lpo generate` output directory")
    parser.add_argument(
        "--select",
        choices=("all", "near-miss", "metric", "metric-best"),
        default="all",
        help="model: which usable candidates are rejected: all; ASR/text: near misses (--max-edit-rate); "
        "TTS: those worse than the reference by a margin (metric) or than the best candidate (metric-best)",
    )
    parser.add_argument(
        "--max-edit-rate",
        type=float,
        default=0.3,
        help="near-miss: largest edit distance / reference length of a rejected response",
    )
    parser.add_argument(
        "--max-rejected", type=int, default=3, help="near-miss: rejected per prompt, the most likely first"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="near-miss: groups per log-prob batch")
    tts = parser.add_argument_group("TTS metric selection (--select metric, metric-best)")
    tts.add_argument("--asr", default="whisper", help="speech_lpo.tts_metrics.make_asr spec")
    tts.add_argument("--speaker-encoder", default="resemblyzer", help="resemblyzer or a WavLM x-vector model")
    tts.add_argument("--wer-margin", type=float, default=0.1, help="rejected: error rate higher by more")
    tts.add_argument(
        "--sim-margin", type=float, default=0.1, help="rejected: speaker similarity lower by more"
    )
    tts.add_argument(
        "--max-truncation", type=float, default=0.2, help="rejected: shorter by more than this share"
    )
    tts.add_argument(
        "--max-chosen-wer",
        type=float,
        default=0.1,
        help="metric-best: the best candidate's largest error rate",
    )
    parser.add_argument("--data", help="perturb: tokenised dataset dir")
    parser.add_argument("--split", help="perturb: only utterances of this split")
    parser.add_argument(
        "--max-prompts", type=int, help="perturb: the fixed random subset of generate --max-prompts"
    )
    parser.add_argument("--out", required=True, help="groups JSONL; the report goes beside it")
    parser.add_argument("--normalizer", help="text normaliser (default: chinese or librispeech by language)")
    parser.add_argument("--eta", type=float, default=0.1, help="perturb: noise ratio (edits per unit)")
    parser.add_argument(
        "--mix",
        default="insertion=1,deletion=1,repetition=1",
        help="perturb: operator weights; the paper's three, or with substitution=W (confusable units) too",
    )
    parser.add_argument("--num-perturbations", type=int, default=3, help="perturb: rejected per transcript")
    parser.add_argument(
        "--keep-cut-candidates",
        action="store_true",
        help="model: keep candidates cut by max_new_tokens as rejected (flagged); default: drop them",
    )
    parser.add_argument("--seed", type=int, default=0)


def main(args: argparse.Namespace) -> None:
    from transformers import AutoConfig, AutoTokenizer

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    vocab = AudioVocab.load(args.model)
    max_positions = AutoConfig.from_pretrained(args.model).max_position_embeddings
    report = PairReport(method=args.method, select=args.select if args.method == "model" else "all")
    if args.method == "model":
        if not args.candidates:
            raise SystemExit("--method model needs --candidates (a `speech-lpo generate` output directory)")
        selection, tts_selection = ALL, None
        if args.select.startswith("metric"):
            # beside the output: a killed run keeps what it measured (the ASR is most of the stage)
            cache = Path(args.out).with_suffix(".measured.jsonl")
            instruments = TtsInstruments(args.model, args.asr, args.speaker_encoder, cache)
            tts_selection = TtsSelection(
                instruments,
                args.select,
                args.wer_margin,
                args.sim_margin,
                args.max_truncation,
                args.max_chosen_wer,
            )
        elif args.select == "near-miss":
            selection = Selection(args.select, args.max_edit_rate, args.max_rejected)
            import torch
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
            selection.scorer = model_scorer(model, args.batch_size)
        groups = model_groups(
            args.candidates,
            tokenizer,
            vocab,
            args.normalizer,
            report,
            max_positions,
            args.keep_cut_candidates,
            selection,
            tts_selection,
        )
    else:
        if not args.data:
            raise SystemExit("--method perturb needs --data (a tokenised dataset)")
        items = load_dataset_items(args.data, "asr", tokenizer, vocab, args.split, args.max_prompts)
        mix = parse_mix(args.mix)
        groups = perturb_groups(
            items,
            tokenizer,
            args.normalizer,
            report,
            args.eta,
            mix,
            args.num_perturbations,
            args.seed,
            max_positions,
        )
    out = Path(args.out)
    write_groups(out, groups)
    summary = write_report(report, out)
    log.info("%d groups -> %s; report: %s", len(groups), out, json.dumps(summary, ensure_ascii=False))
