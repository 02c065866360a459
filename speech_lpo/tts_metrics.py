"""Automatic TTS metrics: ASR intelligibility, codec ceiling, missing <|audio_end|> rate, duration ratio.

Intelligibility is the WER/CER of an ASR model on the synthesised audio, scored like ``score asr`` (one
declared normaliser, pooled rate, alignment report, bootstrap interval). The same ASR on the codec round
trips of the reference codes gives the ceiling that a perfect LM could reach through this codec. The
ASR is pocketsphinx (English only; its wheel carries the model) unless ``--asr`` names a Whisper model
directory or hub id, run through transformers. Audio that cannot be read is named and its utterance
counts as all deletions; utterances whose synthesis failed are named too.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable
from pathlib import Path

import numpy as np

from speech_lpo.normalize import NORMALIZERS, Normalizer, get_normalizer
from speech_lpo.score import (
    KaldiText,
    Problem,
    SystemScore,
    errs_report,
    score_system,
    scoring_config,
    summary,
    write_atomic,
)

ASR_SAMPLE_RATE = 16_000
SYNTH_LIST = "synth.jsonl"  # written by `speech-lpo synthesize`

Transcriber = Callable[[np.ndarray], str]  # 16 kHz mono float32 -> text


def load_audio(path: str | Path, sample_rate: int = ASR_SAMPLE_RATE) -> np.ndarray:
    """Mono float32 at ``sample_rate``; raises on audio that cannot be read or is empty."""
    import soundfile as sf
    import soxr

    audio, sr = sf.read(str(path), dtype="float32", always_2d=True)
    if audio.shape[0] == 0:
        raise ValueError("no samples")
    audio = audio.mean(axis=1)
    return soxr.resample(audio, sr, sample_rate).astype(np.float32) if sr != sample_rate else audio


def pocketsphinx_asr(jsgf: str | None = None) -> Transcriber:
    """pocketsphinx's US English model (in the wheel, 16 kHz), with its general language model or, given
    a JSGF grammar, restricted to it (the embedded corpus's word loop: its general LM misses 70% and more
    of the words of every espeak voice, the word loop about 30-45%)."""
    from pocketsphinx import Decoder

    # the word loop with the default beams runs at half real time; these narrower ones are 7x faster and
    # cost 1 point of WER on 20 espeak test sentences (31.0 -> 31.9), 8 on the 24 of the test fixture
    beams = {"beam": 1e-30, "wbeam": 1e-20, "pbeam": 1e-30} if jsgf else {}
    decoder = Decoder(samprate=ASR_SAMPLE_RATE, loglevel="FATAL", **beams)
    if jsgf:
        decoder.add_jsgf_string("grammar", jsgf)
        decoder.activate_search("grammar")

    def transcribe(audio: np.ndarray) -> str:
        pcm = (np.clip(audio, -1.0, 1.0) * 32767).astype(np.int16)
        # the feature front end keeps state across utterances (the result for one file depended on
        # the files before it); a fresh one per utterance makes every transcript order-independent
        decoder.reinit_feat()
        decoder.start_utt()
        decoder.process_raw(pcm.tobytes(), full_utt=True)
        decoder.end_utt()
        hyp = decoder.hyp()
        return hyp.hypstr if hyp else ""

    return transcribe


def whisper_asr(model: str, language: str | None) -> Transcriber:
    """Whisper through transformers: features, ``generate``, decode (the model card's recipe); audio over
    30 s goes through Whisper's sequential long-form decoding, which needs timestamps."""
    import torch
    from transformers import AutoProcessor, WhisperForConditionalGeneration

    device = "cuda" if torch.cuda.is_available() else "cpu"
    processor = AutoProcessor.from_pretrained(model)
    whisper = WhisperForConditionalGeneration.from_pretrained(model).to(device).eval()
    options = {"task": "transcribe", **({"language": language} if language else {})}

    def transcribe(audio: np.ndarray) -> str:
        long_form = len(audio) > 30 * ASR_SAMPLE_RATE
        padding = (
            {"truncation": False, "padding": "longest", "return_attention_mask": True} if long_form else {}
        )
        features = processor(audio, sampling_rate=ASR_SAMPLE_RATE, return_tensors="pt", **padding).to(device)
        with torch.inference_mode():
            ids = whisper.generate(
                **features, **options, **({"return_timestamps": True} if long_form else {})
            )
        return processor.batch_decode(ids, skip_special_tokens=True)[0].strip()

    return transcribe


def make_asr(spec: str, language: str | None = None, jsgf: str | None = None) -> Transcriber:
    """``pocketsphinx`` (optionally restricted to a JSGF grammar) or a Whisper model directory / hub id."""
    if spec == "pocketsphinx":
        if language not in (None, "en"):
            raise ValueError(
                f"pocketsphinx has only an English model; for {language!r} give --asr a Whisper model"
            )
        return pocketsphinx_asr(jsgf)
    if jsgf:
        raise ValueError("a grammar restricts pocketsphinx only; Whisper takes none")
    return whisper_asr(spec, language)


def transcribe_files(
    wavs: dict[str, str],
    asr: Transcriber,
    cache: Path | None = None,
    desc: str = "asr",
    asr_name: str = "",
) -> tuple[dict[str, str], list[Problem]]:
    """Transcribe id -> audio path. Finished transcripts are appended to ``cache`` (JSONL) as they come,
    so a re-run continues where a killed one stopped; a cached line is reused only for the same, unchanged
    file transcribed by the same ASR (``asr_name``). Unreadable audio becomes a named Problem."""
    from tqdm import tqdm

    def stamp(path: str) -> list:
        p = Path(path)
        return [str(p), p.stat().st_mtime_ns] if p.exists() else [str(p), None]

    hyps: dict[str, str] = {}
    if cache is not None and cache.is_file():
        for line in cache.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                break  # the last line of a killed run
            same_asr = row.get("asr", "") == asr_name
            if row["id"] in wavs and row["audio"] == stamp(wavs[row["id"]]) and same_asr:
                hyps[row["id"]] = row["text"]
    problems: list[Problem] = []
    todo = [k for k in wavs if k not in hyps]
    out = open(cache, "a", encoding="utf-8") if cache is not None else None
    try:
        for uttid in tqdm(todo, desc=desc, disable=len(todo) < 10):
            try:
                audio = load_audio(wavs[uttid])
            except Exception as e:  # soundfile raises several types; every one is named in the report
                problems.append(
                    Problem("undecodable_audio", str(wavs[uttid]), None, uttid, f"{type(e).__name__}: {e}")
                )
                continue
            hyps[uttid] = asr(audio)
            if out is not None:
                row = {"id": uttid, "text": hyps[uttid], "audio": stamp(wavs[uttid]), "asr": asr_name}
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
                out.flush()
    finally:
        if out is not None:
            out.close()
    return {k: hyps[k] for k in wavs if k in hyps}, problems


def intelligibility(
    refs: dict[str, str],
    wavs: dict[str, str],
    asr: Transcriber,
    normalizer: Normalizer,
    name: str,
    cache: Path | None = None,
    problems: list[Problem] | None = None,
    asr_name: str = "",
) -> SystemScore:
    """ASR error rate of audio files against their texts; ids without audio count as all deletions."""
    hyps, asr_problems = transcribe_files(wavs, asr, cache, desc=name, asr_name=asr_name)
    hyp_path = str(cache) if cache is not None else f"<{name} transcripts>"
    hyp = KaldiText(hyp_path, hyps, problems=(problems or []) + asr_problems)
    return score_system(KaldiText("<texts>", refs), hyp, normalizer, name)


def read_synth_list(synth_dir: Path) -> list[dict]:
    path = synth_dir / SYNTH_LIST
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no synthesis list; run `speech-lpo synthesize` first")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _audio_of(rows: list[dict], synth_dir: Path, key: str, error_key: str) -> tuple[dict, list[Problem]]:
    wavs, problems = {}, []
    for row in rows:
        if row.get(key):
            wavs[row["id"]] = str(synth_dir / row[key])
        else:
            problems.append(
                Problem("no_audio", str(synth_dir / SYNTH_LIST), None, row["id"], row.get(error_key) or "")
            )
    return wavs, problems


def tts_metrics(
    synth_dir: str | Path,
    asr_spec: str,
    normalizer: Normalizer,
    out_dir: str | Path,
    language: str | None = None,
    grammar: str | Path | None = None,
) -> dict:
    """Intelligibility of a synthesis dir (and of its codec round trips), its <|audio_end|> rate and
    duration ratios; ``grammar`` is a JSGF file restricting pocketsphinx (the name goes into the report)."""
    synth_dir, out_dir = Path(synth_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = read_synth_list(synth_dir)
    refs = {row["id"]: row["text"] for row in rows}
    name = synth_dir.resolve().name
    asr = make_asr(asr_spec, language, Path(grammar).read_text(encoding="utf-8") if grammar else None)
    asr_name = f"{asr_spec} (grammar {Path(grammar).name})" if grammar else asr_spec
    scored = {}
    for part, key in (("synth", "wav"), ("roundtrip", "roundtrip_wav")):
        wavs, problems = _audio_of(rows, synth_dir, key, f"{key}_error")
        system = intelligibility(
            refs, wavs, asr, normalizer, f"{name}-{part}", out_dir / f"asr-{part}.jsonl", problems, asr_name
        )
        summ = summary(system, {"asr": asr_name})
        write_atomic(out_dir / f"errs-{system.name}.txt", errs_report(system, summ))
        scored[part] = summ
    no_end = [row["id"] for row in rows if not row.get("audio_end")]
    ratios = [
        row["duration"] / row["ref_duration"]
        for row in rows
        if row.get("duration") and row.get("ref_duration")
    ]
    out = {
        "kind": "tts",
        "system": name,
        "synth_dir": str(synth_dir),
        "asr": asr_name,
        "normalizer": normalizer.name,
        "metric": normalizer.metric,
        "utterances": len(rows),
        "intelligibility": scored["synth"],
        "codec_ceiling": scored["roundtrip"],
        "no_audio_end_rate": len(no_end) / len(rows) if rows else float("nan"),
        "no_audio_end_ids": no_end,
        "duration_ratio_mean": statistics.fmean(ratios) if ratios else float("nan"),
        "duration_ratio_median": statistics.median(ratios) if ratios else float("nan"),
        "duration_ratio_n": len(ratios),
    }
    write_atomic(out_dir / f"tts-summary-{name}.json", json.dumps(out, indent=2, ensure_ascii=False) + "\n")
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--synth-dir", required=True, help=f"output dir of `speech-lpo synthesize` (has {SYNTH_LIST})"
    )
    parser.add_argument(
        "--lang", default="en", help="language of the texts; picks ASR and normaliser from eval/scoring.yaml"
    )
    parser.add_argument(
        "--asr", help="pocketsphinx, or a Whisper model dir / hub id (default: eval/scoring.yaml)"
    )
    parser.add_argument(
        "--normalizer", choices=sorted(NORMALIZERS), help="default: eval/scoring.yaml for --lang"
    )
    parser.add_argument(
        "--grammar", help="JSGF file restricting pocketsphinx, e.g. the embedded corpus's corpus_words.jsgf"
    )
    parser.add_argument("--out-dir", required=True)
    parser.set_defaults(run=_main)


def _main(args: argparse.Namespace) -> None:
    defaults = scoring_config()["tts"].get(args.lang, {})
    asr_spec = args.asr or defaults.get("asr")
    if not asr_spec:
        raise SystemExit(f"no default ASR for language {args.lang!r} in eval/scoring.yaml; give --asr")
    normalizer = get_normalizer(args.normalizer or defaults.get("normalizer") or "none")
    out = tts_metrics(args.synth_dir, asr_spec, normalizer, args.out_dir, args.lang, args.grammar)
    m, synth, ceiling = out["metric"], out["intelligibility"], out["codec_ceiling"]
    print(
        f"{out['system']}: intelligibility %{m} {synth['error_rate']:.2f} "
        f"(codec ceiling {ceiling['error_rate']:.2f}; {out['asr']}, {normalizer.name}), "
        f"no <|audio_end|> {100 * out['no_audio_end_rate']:.1f}%, "
        f"duration ratio {out['duration_ratio_mean']:.2f} -> {args.out_dir}"
    )
