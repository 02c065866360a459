"""Preference groups: one prompt, one chosen response, k >= 1 rejected responses (DESIGN.md, Formats).

Stored as JSONL, one group per line, so that stages can append finished groups and resume.
Reference log-probs are summed over response tokens (``ref_*_logp``) with the token counts beside
them (``ref_*_len``); the trainer divides to length-normalise.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class PreferenceGroup:
    id: str
    task: str  # "asr", "tts" or "text"
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[list[int]]
    ref_chosen_logp: float | None = None
    ref_chosen_len: int | None = None
    ref_rejected_logp: list[float] | None = None
    ref_rejected_len: list[int] | None = None
    meta: dict = field(default_factory=dict)

    @property
    def k(self) -> int:
        return len(self.rejected_ids)

    @property
    def has_ref(self) -> bool:
        return self.ref_chosen_logp is not None

    def packed_length(self) -> int:
        return len(self.prompt_ids) + len(self.chosen_ids) + sum(map(len, self.rejected_ids))

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)


class GroupFormatError(ValueError):
    """A group file line that cannot be used; the message names the file and line."""


@dataclass
class SkipReport:
    """Counts of what loading dropped, by reason, with the affected group ids."""

    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, group_id: str) -> None:
        self.counts[reason] += 1
        self.examples.setdefault(reason, [])
        if len(self.examples[reason]) < 5:
            self.examples[reason].append(group_id)

    def __bool__(self) -> bool:
        return bool(self.counts)

    def summary(self) -> str:
        if not self.counts:
            return "nothing skipped"
        return "; ".join(
            f"{reason}: {n} (e.g. {', '.join(self.examples[reason])})"
            for reason, n in sorted(self.counts.items())
        )


def _check_ref(group: PreferenceGroup, where: str) -> None:
    if not group.has_ref:
        return
    values = [group.ref_chosen_logp, *(group.ref_rejected_logp or [])]
    if not all(isinstance(v, int | float) and math.isfinite(v) for v in values):
        raise GroupFormatError(
            f"{where}: group {group.id!r} has a NaN or infinite reference log-prob: {values}"
        )
    if len(group.ref_rejected_logp or []) != group.k or len(group.ref_rejected_len or []) != group.k:
        raise GroupFormatError(
            f"{where}: group {group.id!r} has {group.k} rejected but ref values for another count"
        )
    lengths = [len(group.chosen_ids), *map(len, group.rejected_ids)]
    if [group.ref_chosen_len, *group.ref_rejected_len] != lengths:
        raise GroupFormatError(
            f"{where}: group {group.id!r} reference log-probs were computed on other tokens "
            f"(lengths {[group.ref_chosen_len, *group.ref_rejected_len]} vs {lengths})"
        )


def parse_group(line: str, where: str) -> PreferenceGroup:
    try:
        row = json.loads(line)
        group = PreferenceGroup(**row)
    except (json.JSONDecodeError, TypeError) as err:
        raise GroupFormatError(f"{where}: not a preference group: {err}") from err
    if not group.prompt_ids:
        raise GroupFormatError(f"{where}: group {group.id!r} has an empty prompt")
    _check_ref(group, where)
    return group


def clean_group(
    group: PreferenceGroup, report: SkipReport, max_length: int | None = None
) -> PreferenceGroup | None:
    """Drop unusable rejected responses, or the whole group; every drop is counted in ``report``.

    Rules: an empty chosen response drops the group; an empty rejected response, or one identical to
    the chosen response, drops that rejected response (its reference values with it); a group left
    with no rejected response is dropped; a group whose packed length exceeds ``max_length`` is
    dropped whole (never truncated: a truncated response would be scored on a different sequence).
    """
    if not group.chosen_ids:
        report.add("empty chosen response", group.id)
        return None
    keep = []
    for j, rejected in enumerate(group.rejected_ids):
        if not rejected:
            report.add("empty rejected response", group.id)
        elif rejected == group.chosen_ids:
            report.add("rejected identical to chosen", group.id)
        else:
            keep.append(j)
    if not keep:
        report.add("no usable rejected response", group.id)
        return None
    if len(keep) < group.k:
        group.rejected_ids = [group.rejected_ids[j] for j in keep]
        if group.has_ref:
            group.ref_rejected_logp = [group.ref_rejected_logp[j] for j in keep]
            group.ref_rejected_len = [group.ref_rejected_len[j] for j in keep]
    if max_length is not None and group.packed_length() > max_length:
        report.add(f"packed length over max_length {max_length}", group.id)
        return None
    return group


def iter_groups(path: str | Path) -> Iterator[PreferenceGroup]:
    path = Path(path)
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                yield parse_group(line, f"{path}:{lineno}")


def load_groups(
    path: str | Path, max_length: int | None = None, report: SkipReport | None = None
) -> tuple[list[PreferenceGroup], SkipReport]:
    report = report if report is not None else SkipReport()
    groups = [g for g in (clean_group(g, report, max_length) for g in iter_groups(path)) if g is not None]
    ids = Counter(g.id for g in groups)
    dups = [i for i, n in ids.items() if n > 1]
    if dups:
        raise GroupFormatError(f"{path}: duplicate group ids, e.g. {dups[:5]}")
    return groups, report


def write_groups(path: str | Path, groups: Iterable[PreferenceGroup]) -> int:
    """Write atomically: a crash leaves either the old file or the complete new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    with tmp.open("w", encoding="utf-8") as f:
        for g in groups:
            f.write(g.to_json() + "\n")
            n += 1
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    return n
