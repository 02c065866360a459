"""Listening-test definition: a YAML file in eval/ that users edit (see eval/mos_tts.yaml).

Every audio path is relative to the test's ``root`` directory and must stay inside it: the panel serves
nothing else. Errors name the file and the key, e.g. ``eval/mos_tts.yaml: scale.step: must be > 0``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import soundfile as sf
import yaml

# the paper's Table 6 dimensions, in its column order
PAPER_DIMENSIONS = {
    "fidelity": ("Fidelity", "How faithful is the sample to the reference recording (voice, content)?"),
    "stability": ("Stability", "Is the speech free of glitches, skipped or repeated words, and noise?"),
    "naturalness": ("Naturalness", "How natural does the speech sound, as if spoken by a person?"),
    "emotional_expressiveness": (
        "Emotional expressiveness",
        "How well does the speech convey emotion and expressive prosody?",
    ),
}
AUDIO_SUFFIXES = {".wav", ".flac", ".mp3", ".ogg"}
TOP_KEYS = {
    "name",
    "title",
    "instructions",
    "root",
    "scale",
    "dimensions",
    "systems",
    "utterances",
    "audio_pattern",
    "reference_pattern",
    "attention_checks",
    "attention",
    "items_per_rater",
    "invitations",
    "trapping_questions",
    "qualification",
    "training",
    "completion_code",
    "comment",
    "type",
    "baseline",
    "failed_syntheses",
    "screening",
}
# what each test type asks when the YAML does not say otherwise
SMOS_LABELS = (
    "Not at all similar",
    "Slightly similar",
    "Moderately similar",
    "Very similar",
    "Extremely similar",
)
CCR_LABELS = (
    "Much worse",
    "Worse",
    "Slightly worse",
    "About the same",
    "Slightly better",
    "Better",
    "Much better",
)
# ITU-T P.808's absolute category rating scale
ACR_LABELS = ("Bad", "Poor", "Fair", "Good", "Excellent")
TYPE_DEFAULTS = {
    "mos": ({"min": 1, "max": 5, "step": 1, "labels": list(ACR_LABELS)}, list(PAPER_DIMENSIONS)),
    "smos": (
        {"min": 1, "max": 5, "step": 1, "labels": list(SMOS_LABELS)},
        [
            {
                "name": "similarity",
                "label": "Speaker similarity",
                "question": "How similar is the voice of the sample to the voice of the reference recording?",
            }
        ],
    ),
    "cmos": (  # P.800 comparison category rating: B against A, A and B in random order per rater
        {"min": -3, "max": 3, "step": 1, "labels": list(CCR_LABELS)},
        [
            {
                "name": "comparison",
                "label": "B compared with A",
                "question": "How is the quality of B compared with A?",
            }
        ],
    ),
}


class DefinitionError(ValueError):
    """A malformed test definition; the message names the file and the key."""


@dataclass(frozen=True)
class Scale:
    min: float
    max: float
    step: float
    min_label: str
    max_label: str
    labels: tuple[str, ...] = ()  # one per point when every point is named (P.808's ACR)

    def named_choices(self) -> list[tuple[str, float]]:
        """(what the rater reads, value) per point of the scale."""
        if self.labels:
            return [(f"{v:g} {label}", v) for v, label in zip(self.choices(), self.labels, strict=True)]
        return [(f"{v:g}", v) for v in self.choices()]

    def choices(self) -> list[float]:
        n = round((self.max - self.min) / self.step)
        return [round(self.min + i * self.step, 6) for i in range(n + 1)]

    def problem(self, score: object) -> str | None:
        """Why ``score`` is not a point of this scale, or None when it is."""
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
            shown = repr(score)
            return f"score {shown if len(shown) <= 40 else shown[:40] + '...'} is not a number"
        if not self.min <= score <= self.max:
            return f"score {score} is outside the scale {self.min:g} to {self.max:g}"
        k = (score - self.min) / self.step
        if abs(k - round(k)) > 1e-6:
            return f"score {score} is not on the scale's steps of {self.step:g}"
        return None


@dataclass(frozen=True)
class Dimension:
    name: str
    label: str
    question: str


@dataclass(frozen=True)
class Item:
    """One sample a rater hears: a system's rendering of an utterance, or an attention check."""

    id: str
    audio: Path
    duration: float  # seconds; the listening gate asks for this much listening time
    system: str | None = None  # None for attention checks
    utterance: str | None = None
    reference: Path | None = None
    # checks: "high" (hidden reference), "low" (degraded anchor), "same" (CMOS: A and B identical),
    # "gold" (a known score, every answer within 1 of it) or "trap"
    expect: str | None = None
    answer: float | None = None  # trapping questions: the score their audio asks for; gold: the known score
    reference_duration: float | None = None  # the reference's (CMOS: the baseline's) length


@dataclass(frozen=True)
class Question:
    """A qualification question (hearing / headphone check): audio, a question, choices, the right one."""

    audio: Path
    question: str
    choices: list[str]
    answer: str


@dataclass(frozen=True)
class Example:
    """A training example: audio of one end of the scale and what it illustrates."""

    audio: Path
    caption: str


@dataclass(frozen=True)
class Screening:
    """The P.808 toolkit's screening rules; each rater or clip that fails one is named in the report."""

    min_variance: float = 0.1  # a rater whose answers vary less than this (variance) is excluded
    min_correlation: float = 0.25  # ... or whose answers correlate less with the other raters' means
    min_votes: int = 1  # a clip with fewer votes from kept raters is left out of the MOS (P.808: 5 or more)


@dataclass(frozen=True)
class Definition:
    path: Path
    name: str
    title: str
    instructions: str
    root: Path
    scale: Scale
    dimensions: list[Dimension]
    systems: list[str]  # the systems rated (a CMOS test's baseline is not one of them)
    items: dict[str, Item]
    items_per_rater: int
    high_min: float  # a rater fails a "high" check whose mean score is below this
    low_max: float  # ... or a "low" check whose mean score is above this
    invitations: str  # "required": only invited tokens; "open": newcomers get a UUID
    qualification: list[Question] = field(default_factory=list)  # all must be answered right first
    training: list[Example] = field(default_factory=list)  # heard before rating starts
    completion_code: bool = False  # show a per-rater code at the end (crowdsourcing platforms)
    comment: bool = False  # offer a comment box at the end
    kind: str = "mos"  # "mos", "smos" (similarity to the reference) or "cmos" (A/B against baseline)
    baseline: str | None = None  # cmos: the system every other one is compared with
    failed_syntheses: list[str] = field(default_factory=list)  # items that are silence: synthesis failed
    screening: Screening = field(default_factory=Screening)

    @property
    def system_items(self) -> list[Item]:
        return [item for item in self.items.values() if item.system is not None]

    @property
    def check_items(self) -> list[Item]:
        return [item for item in self.items.values() if item.expect is not None]

    def dimension_names(self) -> list[str]:
        return [d.name for d in self.dimensions]


def load_definition(path: str | Path) -> Definition:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise DefinitionError(f"{path}: cannot read: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise DefinitionError(f"{path}: not valid YAML: {e}") from e
    return _parse(path, raw)


def _parse(path: Path, raw: object) -> Definition:
    def fail(key: str, problem: str) -> DefinitionError:
        return DefinitionError(f"{path}: {key}: {problem}")

    if not isinstance(raw, dict):
        raise fail("(top level)", "expected a mapping of keys")
    unknown = sorted(set(raw) - TOP_KEYS)
    if unknown:
        raise fail(unknown[0], f"unknown key (known: {', '.join(sorted(TOP_KEYS))})")

    def text(key: str, default: str | None = None) -> str:
        value = raw.get(key, default)
        if not isinstance(value, str) or not value.strip():
            raise fail(key, "expected a non-empty string")
        return value

    name = text("name")
    kind = raw.get("type", "mos")
    if kind not in TYPE_DEFAULTS:
        raise fail("type", f"expected one of {', '.join(TYPE_DEFAULTS)}")
    default_scale, default_dimensions = TYPE_DEFAULTS[kind]
    root = (path.parent / text("root", ".")).resolve()
    if not root.is_dir():
        raise fail("root", f"directory {root} does not exist")

    def audio(key: str, rel: object) -> Path:
        if not isinstance(rel, str) or not rel:
            raise fail(key, "expected a relative audio path")
        if Path(rel).is_absolute():
            raise fail(key, f"{rel} is absolute; audio paths are relative to root {root}")
        full = (root / rel).resolve()  # resolve() follows symlinks, so a link cannot leave root either
        if not full.is_relative_to(root):
            raise fail(key, f"{rel} is outside the test directory {root}")
        if full.suffix.lower() not in AUDIO_SUFFIXES:
            raise fail(key, f"{rel}: not an audio file ({', '.join(sorted(AUDIO_SUFFIXES))})")
        if not full.is_file():
            raise fail(key, f"{full} does not exist")
        return full

    def seconds(key: str, path: Path) -> float:
        try:
            return sf.info(path).duration
        except (sf.LibsndfileError, RuntimeError) as e:
            raise fail(key, f"{path}: cannot read the audio: {e}") from e

    scale_raw = raw.get("scale", default_scale)
    if scale_raw == "acr":
        scale_raw = {"min": 1, "max": 5, "step": 1, "labels": list(ACR_LABELS)}
    if not isinstance(scale_raw, dict):
        raise fail("scale", "expected a mapping with min, max, step, min_label, max_label")
    lo, hi, step = (scale_raw.get(k, d) for k, d in (("min", 0), ("max", 5), ("step", 0.5)))
    for key, value in (("min", lo), ("max", hi), ("step", step)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise fail(f"scale.{key}", f"expected a number, got {value!r}")
    if step <= 0:
        raise fail("scale.step", "must be > 0")
    if hi <= lo or abs((hi - lo) / step - round((hi - lo) / step)) > 1e-6:
        raise fail("scale", f"max ({hi}) must exceed min ({lo}) by a whole number of steps ({step})")
    labels = scale_raw.get("labels", [])
    n_points = round((hi - lo) / step) + 1
    if not isinstance(labels, list) or labels and len(labels) != n_points:
        raise fail("scale.labels", f"expected one label per point of the scale ({n_points})")
    scale = Scale(
        float(lo),
        float(hi),
        float(step),
        str(scale_raw.get("min_label", labels[0] if labels else "very poor")),
        str(scale_raw.get("max_label", labels[-1] if labels else "excellent")),
        tuple(map(str, labels)),
    )

    dimensions = []
    for i, d in enumerate(raw.get("dimensions", default_dimensions)):
        key = f"dimensions[{i}]"
        if isinstance(d, str):
            if d not in PAPER_DIMENSIONS:
                raise fail(key, f"{d!r} needs a label and question (built in: {', '.join(PAPER_DIMENSIONS)})")
            d = {"name": d}
        if not isinstance(d, dict) or not isinstance(d.get("name"), str) or not d["name"].isidentifier():
            raise fail(key, "expected a name (an identifier) or a mapping with name, label, question")
        label, question = PAPER_DIMENSIONS.get(d["name"], (None, None))
        label, question = d.get("label", label), d.get("question", question)
        if not label or not question:
            raise fail(key, f"dimension {d['name']!r} needs a label and a question")
        dimensions.append(Dimension(d["name"], str(label), str(question)))
    names = [d.name for d in dimensions]
    if not dimensions or len(set(names)) != len(names):
        raise fail("dimensions", "expected at least one dimension and no repeated names")

    systems = raw.get("systems")
    if (
        not isinstance(systems, list)
        or not systems
        or not all(isinstance(s, str) and s for s in systems)
        or len(set(systems)) != len(systems)
    ):
        raise fail("systems", "expected a list of distinct system names")
    utterances = raw.get("utterances")
    if not isinstance(utterances, list) or not utterances or not all(isinstance(u, str) for u in utterances):
        raise fail("utterances", "expected a list of utterance ids")
    if len(set(utterances)) != len(utterances):
        raise fail("utterances", "repeated utterance id")
    pattern = text("audio_pattern", "{system}/{utt}.wav")
    ref_pattern = raw.get("reference_pattern")
    if kind == "smos" and not ref_pattern:
        raise fail("reference_pattern", "an SMOS test compares every sample with a reference recording")
    baseline = raw.get("baseline")
    if kind == "cmos" and (baseline not in systems or len(systems) < 2):
        raise fail("baseline", "a CMOS test needs a baseline, one of 2 or more systems, to compare with")
    if kind != "cmos" and baseline is not None:
        raise fail("baseline", "only a CMOS test has a baseline")
    rated = [s for s in systems if s != baseline]

    items: dict[str, Item] = {}
    for utt in utterances:
        ref = audio("reference_pattern", ref_pattern.format(utt=utt)) if ref_pattern else None
        if kind == "cmos":  # A/B: the baseline's rendering is the other sample
            ref = audio("audio_pattern", pattern.format(system=baseline, utt=utt))
        for system in rated:
            try:
                rel = pattern.format(system=system, utt=utt)
            except (KeyError, IndexError) as e:
                raise fail("audio_pattern", f"only {{system}} and {{utt}} may appear, not {e}") from e
            item_id = f"{utt}@{system}"
            wav = audio("audio_pattern", rel)
            ref_s = seconds("audio_pattern", ref) if ref else None
            items[item_id] = Item(
                item_id, wav, seconds("audio_pattern", wav), system, utt, ref, reference_duration=ref_s
            )

    checks = raw.get("attention_checks", [])
    if not isinstance(checks, list):
        raise fail("attention_checks", "expected a list of {id, audio, expect, reference (optional)}")
    for i, check in enumerate(checks):
        key = f"attention_checks[{i}]"
        if not isinstance(check, dict) or not isinstance(check.get("id"), str):
            raise fail(key, "expected a mapping with id, audio, expect")
        expects = ("same", "low") if kind == "cmos" else ("high", "low", "gold")
        if check.get("expect") not in expects:
            raise fail(
                f"{key}.expect",
                "expected 'same' (A and B identical) or 'low' (B a degraded anchor of A)"
                if kind == "cmos"
                else "expected 'high' (hidden reference), 'low' (degraded anchor) or 'gold' (with a score)",
            )
        known = None
        if check["expect"] == "gold":
            problem = scale.problem(check.get("score"))
            if problem:
                raise fail(f"{key}.score", f"a gold clip needs its known score: {problem}")
            known = float(check["score"])
        item_id = f"check:{check['id']}"
        if item_id in items:
            raise fail(f"{key}.id", f"repeated attention check id {check['id']!r}")
        ref = audio(f"{key}.reference", check["reference"]) if "reference" in check else None
        wav = audio(f"{key}.audio", check.get("audio"))
        duration = seconds(f"{key}.audio", wav)
        ref_s = seconds(f"{key}.reference", ref) if ref else None
        items[item_id] = Item(
            item_id,
            wav,
            duration,
            reference=ref,
            expect=check["expect"],
            answer=known,
            reference_duration=ref_s,
        )

    traps = raw.get("trapping_questions", [])
    if not isinstance(traps, list):
        raise fail("trapping_questions", "expected a list of {id, audio, answer}")
    for i, trap in enumerate(traps):
        key = f"trapping_questions[{i}]"
        if not isinstance(trap, dict) or not isinstance(trap.get("id"), str):
            raise fail(key, "expected a mapping with id, audio, answer")
        problem = scale.problem(trap.get("answer"))
        if problem:
            raise fail(f"{key}.answer", problem)
        item_id = f"trap:{trap['id']}"
        if item_id in items:
            raise fail(f"{key}.id", f"repeated trapping question id {trap['id']!r}")
        wav = audio(f"{key}.audio", trap.get("audio"))
        duration = seconds(f"{key}.audio", wav)
        items[item_id] = Item(item_id, wav, duration, expect="trap", answer=float(trap["answer"]))

    questions = []
    for i, q in enumerate(raw.get("qualification", [])):
        key = f"qualification[{i}]"
        if (
            not isinstance(q, dict)
            or not isinstance(q.get("question"), str)
            or not isinstance(q.get("choices"), list)
            or len(q["choices"]) < 2
            or q.get("answer") not in q["choices"]
        ):
            raise fail(key, "expected audio, question, choices (2 or more) and answer (one of the choices)")
        choices = [str(c) for c in q["choices"]]
        questions.append(
            Question(audio(f"{key}.audio", q.get("audio")), q["question"], choices, str(q["answer"]))
        )
    examples = []
    for i, ex in enumerate(raw.get("training", [])):
        key = f"training[{i}]"
        if not isinstance(ex, dict) or not isinstance(ex.get("caption"), str):
            raise fail(key, "expected audio and caption")
        examples.append(Example(audio(f"{key}.audio", ex.get("audio")), ex["caption"]))
    for key in ("completion_code", "comment"):
        if not isinstance(raw.get(key, False), bool):
            raise fail(key, "expected true or false")

    attention = raw.get("attention", {})
    if not isinstance(attention, dict) or set(attention) - {"high_min", "low_max"}:
        raise fail("attention", "expected a mapping with high_min and low_max")
    high_min = attention.get("high_min", scale.min + 0.6 * (scale.max - scale.min))
    low_max = attention.get("low_max", scale.min + 0.4 * (scale.max - scale.min))

    n_system_items = len(utterances) * len(rated)
    # by default each rater hears every sentence once, its system rotating across raters (order.py)
    per_rater = raw.get("items_per_rater", len(utterances))
    if isinstance(per_rater, bool) or not isinstance(per_rater, int) or not 1 <= per_rater <= n_system_items:
        raise fail(
            "items_per_rater", f"expected an integer from 1 to {n_system_items} (utterances x systems)"
        )
    failed = raw.get("failed_syntheses", [])
    if not isinstance(failed, list) or any(i not in items or items[i].system is None for i in failed):
        raise fail("failed_syntheses", "expected a list of rated item ids, utt@system")
    screening = raw.get("screening", {})
    if not isinstance(screening, dict) or set(screening) - {"min_variance", "min_correlation", "min_votes"}:
        raise fail("screening", "expected a mapping with min_variance, min_correlation, min_votes")
    for key, value in screening.items():
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or value < (0 if key != "min_correlation" else -1)
        ):
            raise fail(f"screening.{key}", f"expected a number (min_correlation from -1), got {value!r}")
    if not isinstance(screening.get("min_votes", 1), int):
        raise fail("screening.min_votes", "expected a whole number of votes")
    invitations = raw.get("invitations", "required")
    if invitations not in ("required", "open"):
        raise fail("invitations", "expected 'required' or 'open'")

    return Definition(
        path=path,
        name=name,
        title=text("title", "Listening test"),
        instructions=text("instructions", "Play each sample, then rate it on every question."),
        root=root,
        scale=scale,
        dimensions=dimensions,
        systems=rated,
        items=items,
        items_per_rater=per_rater,
        high_min=float(high_min),
        low_max=float(low_max),
        invitations=invitations,
        qualification=questions,
        training=examples,
        completion_code=raw.get("completion_code", False),
        comment=raw.get("comment", False),
        kind=kind,
        baseline=baseline,
        failed_syntheses=failed,
        screening=Screening(**screening),
    )
