"""A listening-test package from TTS outputs: one folder per system, references, anchors, the definition.

Takes the ``synth.jsonl`` of ``speech-lpo synthesize`` for each system and the test manifest for the
reference recordings; keeps the first ``n`` utterances that every system synthesised; copies the audio
under one root (the panel serves nothing outside it); writes a degraded anchor for the low attention
check; and writes the test definition from a template (e.g. eval/mos_tts.yaml) with this package's
systems, utterances and checks. The definition is loaded back, so a package that the panel would refuse
is refused here.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import soundfile as sf
import yaml

from speech_lpo.mos.anchor import degrade
from speech_lpo.mos.definition import load_definition


def synthesised(synth_dir: Path) -> dict[str, Path]:
    """Utterance id -> wav of the utterances a system synthesised (failed ones have no wav)."""
    rows = [json.loads(line) for line in (synth_dir / "synth.jsonl").read_text(encoding="utf-8").splitlines()]
    return {r["id"]: synth_dir / r["wav"] for r in rows if r.get("wav")}


def build_package(
    systems: dict[str, Path], manifest: Path, template: Path, out: Path, n: int
) -> tuple[Path, list[str]]:
    """Write the package under ``out``; returns the definition's path and the utterances kept."""
    try:  # before any audio is copied
        test = yaml.safe_load(template.read_text(encoding="utf-8"))
    except OSError as e:
        raise ValueError(f"template {template}: cannot read: {e.strerror}") from e
    outputs = {name: synthesised(d) for name, d in systems.items()}
    references = {}
    for line in manifest.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        references[row["id"]] = Path(row["audio"])
    common = [u for u in sorted(references) if all(u in o for o in outputs.values())]
    if len(common) < 2:
        raise ValueError(f"only {len(common)} utterances were synthesised by every system: need 2 or more")
    utts = common[:n]
    for name, wavs in outputs.items():
        (out / name).mkdir(parents=True, exist_ok=True)
        for u in utts:
            shutil.copyfile(wavs[u], out / name / f"{u}.wav")
    (out / "reference").mkdir(parents=True, exist_ok=True)
    (out / "anchors").mkdir(parents=True, exist_ok=True)
    for u in utts:
        audio, sr = sf.read(references[u], dtype="float32")
        sf.write(out / "reference" / f"{u}.wav", audio, sr)
    audio, sr = sf.read(out / "reference" / f"{utts[0]}.wav", dtype="float32")
    sf.write(out / "anchors" / f"{utts[0]}.wav", degrade(audio, sr), sr)

    test.update(
        root=".",
        systems=list(systems),
        utterances=utts,
        audio_pattern="{system}/{utt}.wav",
        reference_pattern="reference/{utt}.wav",
        items_per_rater=len(systems) * len(utts),
        attention_checks=[
            {
                "id": "hidden_reference",
                "audio": f"reference/{utts[1]}.wav",
                "reference": f"reference/{utts[1]}.wav",
                "expect": "high",
            },
            {
                "id": "anchor",
                "audio": f"anchors/{utts[0]}.wav",
                "reference": f"reference/{utts[0]}.wav",
                "expect": "low",
            },
        ],
    )
    definition = out / template.name
    definition.write_text(yaml.safe_dump(test, sort_keys=False, allow_unicode=True), encoding="utf-8")
    load_definition(definition)
    return definition, utts
