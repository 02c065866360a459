"""Prepare AISHELL-1 or LibriSpeech (release layout) into manifests and a Kaldi-style data dir.

Writes under ``--out``:
  <split>.jsonl            one manifest per split, a line per utterance:
                           {"id", "audio", "text", "speaker", "duration", "sample_rate", "lang", "split"}
  kaldi/<split>/           wav.scp, text, utt2spk, spk2utt (sorted by id, as Kaldi requires); wav.scp
                           holds plain paths, as ESPnet and lhotse read them (Kaldi's own binaries
                           want ``flac -c -d -s <path> |`` for LibriSpeech's FLAC)
  skipped.tsv              every utterance left out: split, id, file, reason
  report.json              kept and skipped counts per split and reason

AISHELL-1's splits are train, dev and test; its text has its word-segmenting spaces removed (and
lhotse's full-width letter normalisation). LibriSpeech's evaluation sets stay apart as released
(dev-clean, dev-other, test-clean, test-other: each its own split), its training parts
(train-clean-100, train-clean-360, train-other-500) are one split, train, the union of those asked for
with ``--subsets`` (default: every part present); its text stays upper case as released.

``--pref-utts N`` sets a seeded random N of the kept training utterances aside as the ``pref`` split
(their manifest lines say ``"split": "pref"``): the preference prompts, which SFT, the codec fit and the
model's text vocabulary never see, so that preference data is made on the model's test-time errors, not
on utterances it was trained on. The draw depends on ``--seed`` and the set of training ids only.

Audio at another sample rate is kept (``tokenize`` resamples it); float audio holding NaN or Inf is a
skip. A transcript line that is not UTF-8 is a skip naming the file and line; id and text may be
separated by spaces or a tab. An AISHELL-1 release whose per-speaker ``wav/*.tar.gz`` were not extracted
is an error naming the archives.

lhotse does the parts it does well: the download (only with ``--download``), the audio probing
(``Recording.from_file``) and AISHELL's text normalisation. Its ``prepare_aishell`` and
``prepare_librispeech`` read the same layouts (the tests check that we agree with them on the real
utterances in ../shared/data), but they stop at the first unreadable file, drop a transcript line
that has no audio without a word, and only log a warning for audio without a transcript; here every
such utterance is a counted skip listed in skipped.tsv, and one bad file never stops the stage.
"""

from __future__ import annotations

import argparse
import json
import os
import random
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

AISHELL_SPLITS = ("train", "dev", "test")
PREF_SPLIT = "pref"
CORPORA = {"aishell": {"lang": "cmn"}, "librispeech": {"lang": "en"}}


@dataclass
class Candidate:
    """One utterance as the layout describes it, before its audio is probed."""

    id: str
    split: str
    audio: Path | None
    text: str | None
    speaker: str
    problem: str = ""  # why the layout already rules it out (e.g. a non-UTF-8 transcript line)


def transcript_lines(path: Path) -> Iterator[tuple[int, str, str | None]]:
    """(line number, utterance id, text) per non-empty line; text is None where the line is not UTF-8.

    Id and text are split at the first run of whitespace, a space or a tab alike."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            parts = raw.split(maxsplit=1)
            if not parts:
                continue
            try:
                yield n, parts[0].decode("utf-8"), parts[1].decode("utf-8").strip() if len(parts) > 1 else ""
            except UnicodeDecodeError:
                yield n, parts[0].decode("utf-8", errors="replace"), None


def not_utf8(path: Path, line: int) -> str:
    return f"transcript line not UTF-8: {path}:{line}"


# -- reading the layouts ------------------------------------------------------------------------------------
def aishell_candidates(corpus_dir: Path) -> list[Candidate]:
    from lhotse.recipes.aishell import text_normalize

    root = corpus_dir / "data_aishell"
    transcript = root / "transcript" / "aishell_transcript_v0.8.txt"
    if not transcript.is_file():
        raise FileNotFoundError(
            f"{transcript}: AISHELL-1 transcript not found (is {corpus_dir} the corpus root?)"
        )
    check_aishell_extracted(root / "wav")
    texts: dict[str, str] = {}
    problems: dict[str, str] = {}
    for n, uid, text in transcript_lines(transcript):
        if text is None:
            problems[uid] = not_utf8(transcript, n)
        else:
            texts[uid] = text_normalize(text).replace(" ", "").strip()
    candidates, seen = [], set()
    for split in AISHELL_SPLITS:
        for path in sorted((root / "wav" / split).glob("*/*.wav")):
            uid = path.stem
            seen.add(uid)
            candidates.append(
                Candidate(uid, split, path, texts.get(uid), path.parent.name, problems.get(uid, ""))
            )
    # transcript lines whose audio is in none of the splits
    candidates += [
        Candidate(uid, "", None, texts.get(uid), "", problems.get(uid, ""))
        for uid in dict.fromkeys([*texts, *problems])
        if uid not in seen
    ]
    return candidates


def check_aishell_extracted(wav_dir: Path) -> None:
    """The release ships wav/<speaker>.tar.gz, each to be unpacked into wav/<split>/<speaker>/."""
    extracted = {p.name for p in wav_dir.glob("*/*") if p.is_dir()}
    packed = sorted(p for p in wav_dir.glob("*.tar.gz") if p.name.removesuffix(".tar.gz") not in extracted)
    if packed:
        more = f" and {len(packed) - 5} more" if len(packed) > 5 else ""
        names = ", ".join(p.name for p in packed[:5]) + more
        raise FileNotFoundError(
            f"{wav_dir}: {len(packed)} speaker archives not extracted ({names}); unpack them first: "
            f'for f in {wav_dir}/*.tar.gz; do tar xzf "$f" -C {wav_dir}; done'
        )


def librispeech_split(subset: str) -> str | None:
    """train for every training part; an evaluation set (dev-clean, test-other, ...) is its own split."""
    prefix = subset.split("-")[0]
    if prefix == "train":
        return "train"
    return subset if prefix in ("dev", "test") else None


def librispeech_candidates(corpus_dir: Path, subsets: list[str] | None = None) -> list[Candidate]:
    root = corpus_dir / "LibriSpeech" if (corpus_dir / "LibriSpeech").is_dir() else corpus_dir
    present = sorted(p.name for p in root.iterdir() if p.is_dir() and librispeech_split(p.name))
    subsets = subsets or present
    missing = [s for s in subsets if s not in present]
    if missing or not subsets:
        archives = sorted(p.name for p in corpus_dir.glob("*.tar.gz"))
        raise FileNotFoundError(
            f"{root}: LibriSpeech subsets {missing or 'none'} not found (present: {present})"
            + (f"; archives not extracted: {', '.join(archives)}" if archives else "")
        )
    candidates = []
    for subset in subsets:
        split = librispeech_split(subset)
        listed = set()
        for trans in sorted((root / subset).glob("*/*/*.trans.txt")):
            for n, uid, text in transcript_lines(trans):
                audio = trans.parent / f"{uid}.flac"
                listed.add(audio)
                candidates.append(
                    Candidate(
                        uid,
                        split,
                        audio if audio.is_file() else None,
                        text,
                        uid.split("-")[0],
                        not_utf8(trans, n) if text is None else "",
                    )
                )
        for audio in sorted((root / subset).glob("*/*/*.flac")):
            if audio not in listed:
                candidates.append(Candidate(audio.stem, split, audio, None, audio.parent.parent.name))
    return candidates


# -- checking one utterance ---------------------------------------------------------------------------------
def probe(c: Candidate, lang: str, min_duration: float) -> tuple[dict | None, str]:
    """The manifest line of a candidate, or None and why it is skipped."""
    from lhotse import Recording

    if c.problem:
        return None, c.problem
    if c.audio is None:
        return None, "transcript line with no audio file"
    if c.text is None:
        return None, "audio with no transcript line"
    if not c.text:
        return None, "empty transcript"
    if c.audio.stat().st_size == 0:
        return None, "empty audio file (0 bytes)"
    try:
        rec = Recording.from_file(c.audio, recording_id=c.id)
    except Exception as e:  # lhotse raises AudioLoadingError, wrapping each backend's own error
        return None, f"unreadable audio: {str(e).splitlines()[0]}"
    if rec.num_samples == 0:
        return None, "zero-length audio"
    if rec.duration < min_duration:
        return None, f"too short: {rec.duration:.3f} s < {min_duration} s"
    # only float audio can hold NaN or Inf (integer PCM cannot): read those files whole and look
    if sf.info(str(c.audio)).subtype in ("FLOAT", "DOUBLE"):
        wav, _ = sf.read(str(c.audio), dtype="float32")
        bad = int((~np.isfinite(wav)).sum())
        if bad:
            return None, f"non-finite samples (NaN or Inf): {bad} of {wav.size}"
    line = {
        "id": c.id,
        "audio": str(c.audio.resolve()),
        "text": c.text,
        "speaker": c.speaker,
        "duration": round(rec.duration, 4),
        "sample_rate": rec.sampling_rate,
        "lang": lang,
        "split": c.split,
    }
    return line, ""


# -- writing ------------------------------------------------------------------------------------------------
def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_manifest(path: Path, lines: list[dict]) -> None:
    write_atomic(path, "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines))


def read_manifest(path: str | Path) -> list[dict]:
    """Manifest lines; a malformed line is an error naming the file and line number."""
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not a JSON manifest line ({e})") from e
    return out


def write_kaldi_dir(directory: Path, lines: list[dict]) -> None:
    lines = sorted(lines, key=lambda x: x["id"])
    spk2utt: dict[str, list[str]] = {}
    for x in lines:
        spk2utt.setdefault(x["speaker"], []).append(x["id"])
    files = {
        "wav.scp": [f"{x['id']} {x['audio']}" for x in lines],
        "text": [f"{x['id']} {x['text']}" for x in lines],
        "utt2spk": [f"{x['id']} {x['speaker']}" for x in lines],
        "spk2utt": [f"{spk} {' '.join(utts)}" for spk, utts in sorted(spk2utt.items())],
    }
    for name, rows in files.items():
        write_atomic(directory / name, "".join(r + "\n" for r in rows))


def set_aside(train: list[dict], count: int, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, pref): a seeded random ``count`` of the training lines moved to the ``pref`` split."""
    if count < 0 or count >= len(train):
        raise ValueError(
            f"--pref-utts {count}: must be at least 0 and fewer than the {len(train)} training utterances"
        )
    ids = sorted(x["id"] for x in train)
    pref = set(random.Random(seed).sample(ids, count))
    return [x for x in train if x["id"] not in pref], [
        {**x, "split": PREF_SPLIT} for x in train if x["id"] in pref
    ]


def prepare(
    corpus: str,
    corpus_dir: Path,
    out: Path,
    subsets: list[str] | None = None,
    min_duration: float = 0.1,
    jobs: int = 4,
    pref_utts: int = 0,
    seed: int = 0,
) -> dict:
    """Write manifests, Kaldi dirs and the skip report; returns the report."""
    if not corpus_dir.is_dir():
        raise FileNotFoundError(f"{corpus_dir}: corpus directory not found")
    info = CORPORA[corpus]
    if corpus == "aishell":
        candidates = aishell_candidates(corpus_dir)
    else:
        candidates = librispeech_candidates(corpus_dir, subsets)

    def check(c: Candidate):
        return c, *probe(c, info["lang"], min_duration)

    kept: dict[str, list[dict]] = {c.split: [] for c in candidates if c.split}
    skipped: list[tuple[Candidate, str]] = []
    with ThreadPoolExecutor(jobs) as pool:  # probing is file I/O in libsndfile: threads suffice
        for c, line, reason in tqdm(
            pool.map(check, candidates), total=len(candidates), desc=f"prepare {corpus}"
        ):
            if line is None:
                skipped.append((c, reason))
            else:
                kept[c.split].append(line)

    if pref_utts:
        kept["train"], kept[PREF_SPLIT] = set_aside(kept.get("train", []), pref_utts, seed)
    report: dict = {"corpus": corpus, "corpus_dir": str(corpus_dir), "splits": {}}
    for split, lines in kept.items():
        lines.sort(key=lambda x: x["id"])
        if lines:
            write_manifest(out / f"{split}.jsonl", lines)
            write_kaldi_dir(out / "kaldi" / split, lines)
        reasons = Counter(r.split(":")[0] for c, r in skipped if c.split == split)
        report["splits"][split] = {"kept": len(lines), "skipped": dict(reasons)}
    orphans = Counter(r for c, r in skipped if not c.split)
    report["skipped_without_split"] = dict(orphans)
    report["skipped_total"] = len(skipped)
    rows = [
        f"{c.split or '-'}\t{c.id}\t{c.audio or '-'}\t{r}" for c, r in sorted(skipped, key=lambda t: t[0].id)
    ]
    write_atomic(out / "skipped.tsv", "split\tid\tfile\treason\n" + "".join(r + "\n" for r in rows))
    write_atomic(out / "report.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return report


def download(corpus: str, target_dir: Path, subsets: list[str] | None = None) -> Path:
    """lhotse's downloader (LibriSpeech: only ``subsets``, default all seven parts); returns the corpus root
    that ``prepare`` reads."""
    if corpus == "aishell":
        from lhotse.recipes.aishell import download_aishell

        return download_aishell(target_dir)
    from lhotse.recipes.librispeech import download_librispeech

    return download_librispeech(target_dir, dataset_parts=subsets or "librispeech")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--corpus", choices=sorted(CORPORA), required=True)
    parser.add_argument("--corpus-dir", type=Path, required=True, help="corpus root in its release layout")
    parser.add_argument("--out", type=Path, required=True, help="manifest directory")
    parser.add_argument(
        "--subsets",
        nargs="+",
        help="LibriSpeech parts to prepare (and, with --download, to fetch); default: every one present",
    )
    parser.add_argument("--min-duration", type=float, default=0.1, help="seconds; shorter audio is skipped")
    parser.add_argument("--jobs", type=int, default=4, help="threads probing audio files")
    parser.add_argument(
        "--pref-utts",
        type=int,
        default=0,
        help="training utterances set aside (seeded) as the pref split: preference prompts SFT never sees",
    )
    parser.add_argument("--seed", type=int, default=0, help="the draw of --pref-utts")
    parser.add_argument(
        "--download",
        type=lambda s: s.lower() in ("1", "true", "yes"),
        default=False,
        help="download the corpus into --corpus-dir first (OpenSLR, through lhotse)",
    )


def main(args: argparse.Namespace) -> None:
    corpus_dir = args.corpus_dir
    if args.download:
        corpus_dir = download(args.corpus, corpus_dir, args.subsets)
    report = prepare(
        args.corpus,
        corpus_dir,
        args.out,
        args.subsets,
        args.min_duration,
        args.jobs,
        args.pref_utts,
        args.seed,
    )
    for split, r in report["splits"].items():
        print(f"{split}: kept {r['kept']}, skipped {sum(r['skipped'].values())} {r['skipped'] or ''}")
    if report["skipped_total"]:
        print(f"{report['skipped_total']} skipped utterances listed in {args.out / 'skipped.tsv'}")
