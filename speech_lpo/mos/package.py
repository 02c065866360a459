"""A listening test from TTS outputs, prepared as ITU-T P.808 asks: one folder per system, references,
checks, the definition.

Takes the ``synth.jsonl`` of ``speech-lpo synthesize`` for each system and the test manifest for the
reference recordings. Draws ``n`` utterances at random from the manifest (seeded), whichever systems
failed on them: a failed synthesis becomes a stimulus of silence as long as the reference, rated like
any other (a system's failures count against it, they do not vanish), and the definition lists it under
``failed_syntheses`` so that the report names it. Every stimulus is mono, resampled to the lowest sample
rate among them (bandwidth would give a system away) and levelled to -26 dBov active speech level
(ITU-T P.56, ``level.py``). Checks: gold clips with known scores (hidden references, score the top of
the scale; a degraded anchor, the bottom), and a trapping question spliced into a real stimulus (a
system's sample, then a voice asking for one answer), as the P.808 toolkit makes them. The definition
is written from a template (e.g. eval/mos_tts.yaml) and loaded back, so a package that the panel would
refuse is refused here.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import yaml

from speech_lpo.mos.anchor import degrade
from speech_lpo.mos.definition import load_definition
from speech_lpo.mos.level import to_level
from speech_lpo.mos.trap import spliced_trap


def synthesised(synth_dir: Path) -> dict[str, Path]:
    """Utterance id -> wav of the utterances a system synthesised (failed ones have no wav)."""
    rows = [json.loads(line) for line in (synth_dir / "synth.jsonl").read_text(encoding="utf-8").splitlines()]
    return {r["id"]: synth_dir / r["wav"] for r in rows if r.get("wav")}


def _mono(path: Path) -> tuple[np.ndarray, int]:
    audio, sr = sf.read(path, dtype="float32", always_2d=True)
    return audio.mean(axis=1), sr


def build_package(
    systems: dict[str, Path], manifest: Path, template: Path, out: Path, n: int, seed: int = 0
) -> tuple[Path, list[str], list[str]]:
    """Write the package under ``out``; returns the definition's path, the utterances drawn and the
    failed syntheses (``utt@system``) that stand in as silence."""
    try:  # before any audio is written
        test = yaml.safe_load(template.read_text(encoding="utf-8"))
    except OSError as e:
        raise ValueError(f"template {template}: cannot read: {e.strerror}") from e
    outputs = {name: synthesised(d) for name, d in systems.items()}
    references = {}
    for line in manifest.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        references[row["id"]] = Path(row["audio"])
    if len(references) < 2:
        raise ValueError(f"{manifest}: {len(references)} utterances; a test needs 2 or more")
    rng = random.Random(seed)
    utts = sorted(rng.sample(sorted(references), min(n, len(references))))
    failed = [f"{u}@{s}" for s in systems for u in utts if u not in outputs[s]]

    sources = {("reference", u): references[u] for u in utts}
    sources |= {(s, u): outputs[s][u] for s in systems for u in utts if u in outputs[s]}
    audio = {key: _mono(path) for key, path in sources.items()}
    rate = min(sr for _, sr in audio.values())
    for key, (wav, sr) in audio.items():
        try:
            audio[key] = to_level(soxr.resample(wav, sr, rate) if sr != rate else wav, rate), rate
        except ValueError as e:
            raise ValueError(f"{sources[key]}: {e}") from e
    for u in utts:  # a failed synthesis: silence as long as the reference
        for s in systems:
            audio.setdefault((s, u), (np.zeros_like(audio["reference", u][0]), rate))

    def write(rel: str, wav: np.ndarray) -> None:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        sf.write(out / rel, wav, rate, subtype="PCM_16")

    for (folder, u), (wav, _) in audio.items():
        write(f"{folder}/{u}.wav", wav)
    write(f"anchors/{utts[0]}.wav", to_level(degrade(audio["reference", utts[0]][0], rate), rate))

    cmos = test.get("type") == "cmos"
    gold = [  # known scores: the hidden references at the top of the scale, the anchor at the bottom
        {"id": f"hidden_reference_{u}", "audio": f"reference/{u}.wav", "reference": f"reference/{u}.wav"}
        for u in utts[1:3]
    ]
    anchor = {"id": "anchor", "audio": f"anchors/{utts[0]}.wav", "reference": f"reference/{utts[0]}.wav"}
    test.update(
        root=".",
        systems=list(systems),
        utterances=utts,
        audio_pattern="{system}/{utt}.wav",
        reference_pattern="reference/{utt}.wav",
        items_per_rater=len(utts),  # a Latin square: each sentence once per rater
        failed_syntheses=failed,
    )
    test.pop("trapping_questions", None)
    test["attention_checks"] = []  # the checks need the scale, read from the definition written first
    definition = out / template.name
    definition.write_text(yaml.safe_dump(test, sort_keys=False, allow_unicode=True), encoding="utf-8")
    scale = load_definition(definition).scale
    if cmos:  # A and B identical: "about the same"; B the anchor of A: worse
        test["attention_checks"] = [{**g, "expect": "same"} for g in gold] + [{**anchor, "expect": "low"}]
    else:
        test["attention_checks"] = [{**g, "expect": "gold", "score": scale.max} for g in gold]
        test["attention_checks"].append({**anchor, "expect": "gold", "score": scale.min})
        # a trapping question: a real sample, then a voice asking for the scale's second answer
        label, answer = scale.named_choices()[1]
        real = [(s, u) for s in systems for u in utts if f"{u}@{s}" not in failed]
        write("traps/trap.wav", spliced_trap(audio[rng.choice(real)][0], rate, label))
        test["trapping_questions"] = [{"id": "trap", "audio": "traps/trap.wav", "answer": answer}]
    definition.write_text(yaml.safe_dump(test, sort_keys=False, allow_unicode=True), encoding="utf-8")
    load_definition(definition)
    return definition, utts, failed
