"""Embedded codecs against the recordings they encode: naturalness, intelligibility, voice, and cost.

On the TTS recipe's embedded corpus (made as stage 0 and 1 make it, from recipes/tts/conf/corpus.yaml:
espeak-ng English, 2,400 train and 50 test sentences), for each codec spec (default: worldvq_25hz, the
recipe's codec, and melvq_20hz, the one before it):

  fit          the codebooks fitted on the train manifest as `speech-lpo tokenize` fits them (wall seconds)
  round trip   every test recording encoded and decoded
  scored       by the project's TTS instrument (speech_lpo.tts_metrics.tts_metrics; the English ASR and
               normaliser of eval/scoring.yaml, the corpus words as the recipe gives them): WER, DNSMOS
               OVRL and SIM to the original recording (resemblyzer), the original recordings scored the same
  speed        encode, audio seconds per wall-clock second with one BLAS thread per process, in one and in
               two processes (`speech-lpo tokenize --jobs 2` on 2 cores), resampling included
  real speech  the real LibriSpeech utterances in ../shared/data (every split: none is fitted on) through the
               codec fitted on the embedded corpus, scored beside their originals; reported, not gated

Targets (issue 24) for the first spec: DNSMOS OVRL within 0.5 of the originals', WER within 3 points, SIM
at least 0.85, at most 50 tokens per second, encode at least 200x real time on 2 cores, the fit within
180 s. Encode speed and fit time are wall clock: on shared cores they read low.

Usage: .venv/bin/python bench/codec.py [--work DIR] [--specs tokenizers/a.yaml ...]
Prints Markdown tables, the target checks, and last one JSON line of the figures: the first spec's under
the issue's keys (dnsmos_ovrl_original, dnsmos_ovrl_roundtrip, wer_original, wer_roundtrip,
sim_roundtrip, ...), every spec's under its file name.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf
import yaml
from threadpoolctl import threadpool_limits

from speech_lpo.cli import main as cli
from speech_lpo.codecs import Codec, load_audio
from speech_lpo.normalize import get_normalizer
from speech_lpo.score import scoring_config
from speech_lpo.synth_corpus import GRAMMAR_FILE
from speech_lpo.tokenize_audio import fit_codec
from speech_lpo.tts_metrics import Utterance, from_manifest, read_manifest, tts_metrics

ROOT = Path(__file__).resolve().parents[1]
LIBRISPEECH = ROOT / ".." / "shared" / "data" / "librispeech"
RECIPE_CONF = ROOT / "recipes" / "tts" / "conf" / "corpus.yaml"
DEFAULT_SPECS = [ROOT / "tokenizers" / "worldvq_25hz.yaml", ROOT / "tokenizers" / "melvq_20hz.yaml"]
TARGETS = {
    "dnsmos_gap": 0.5,
    "wer_gap": 3.0,
    "sim": 0.85,
    "tokens_per_second": 50,
    "encode_x": 200,
    "fit_s": 180,
}

_CODEC: Codec | None = None


def _encode_all(audio: list[tuple[np.ndarray, int]]) -> int:
    with threadpool_limits(1):
        return sum(len(_CODEC.encode(w, sr)) for w, sr in audio)


def encode_speed(codec: Codec, audio: list[tuple[np.ndarray, int]], workers: int) -> float:
    """Audio seconds encoded per wall-clock second, ``workers`` processes each encoding all of ``audio``."""
    global _CODEC
    _CODEC = codec
    seconds = sum(len(w) / sr for w, sr in audio)
    with ProcessPoolExecutor(workers) as pool:  # forked: workers inherit the codec
        list(pool.map(_encode_all, [audio[:1]] * workers))  # warm up
        t0 = time.perf_counter()
        list(pool.map(_encode_all, [audio] * workers))
        return seconds * workers / (time.perf_counter() - t0)


def round_trips(codec: Codec, manifest: dict[str, dict], out: Path) -> list[Utterance]:
    """Each recording encoded and decoded into ``out/<id>.wav``, as an utterance scored against it."""
    out.mkdir(parents=True, exist_ok=True)
    utts = []
    with threadpool_limits(1):
        for uttid, row in manifest.items():
            wav = out / f"{uttid}.wav"
            sf.write(wav, codec.decode(codec.encode(*load_audio(row["audio"])), uttid), codec.sample_rate)
            utts.append(
                Utterance(uttid, row["text"], str(wav), row["audio"], row.get("speaker"), row.get("duration"))
            )
    return utts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--specs", type=Path, nargs="+", default=DEFAULT_SPECS)
    parser.add_argument("--work", type=Path, help="keep the corpus and audio here (default: a temporary dir)")
    parser.add_argument(
        "--corpus-conf", type=Path, default=RECIPE_CONF, help="recipes/tts/conf/ci/corpus.yaml: a quick look"
    )
    args = parser.parse_args()
    if not LIBRISPEECH.is_dir():
        raise SystemExit(f"{LIBRISPEECH}: the real LibriSpeech utterances are not there")
    with tempfile.TemporaryDirectory() as tmp:
        run(args.specs, args.work or Path(tmp), args.corpus_conf)


def run(specs: list[Path], work: Path, corpus_conf: Path) -> None:
    corpus = work / "corpus"
    cli(["synth-corpus", "--config", str(corpus_conf), "--out", str(corpus)])
    cli(["prepare", "--corpus", "librispeech", "--corpus-dir", str(corpus / "librispeech")]
        + ["--out", str(work / "manifests")])  # fmt: skip
    cli(["prepare", "--corpus", "librispeech", "--corpus-dir", str(LIBRISPEECH), "--out", str(work / "real")])
    test = read_manifest(work / "manifests" / "test-clean.jsonl")
    real = {k: v for m in sorted((work / "real").glob("*.jsonl")) for k, v in read_manifest(m).items()}
    setting = scoring_config()["tts"]["en"]
    normalizer = get_normalizer(setting["normalizer"])
    grammar = corpus / "librispeech" / GRAMMAR_FILE

    def score(utts: list[Utterance], name: str, real_speech: bool = False) -> dict:
        out = tts_metrics(
            utts,
            name,
            setting["asr"],
            normalizer,
            work / "score",
            language="en",
            grammar=None if real_speech else grammar,  # the real texts are not the corpus's words
        )
        return {k: out[k]["value"] for k in ("wer", "dnsmos_ovrl", "sim") if k in out}

    originals = {
        "embedded": score(from_manifest(test), "original"),
        "real": score(from_manifest(real), "real", True),
    }
    test_audio = [load_audio(row["audio"]) for row in test.values()]
    seconds = sum(len(w) / sr for w, sr in test_audio)
    results = {}
    for spec_path in specs:
        spec = yaml.safe_load(spec_path.read_text())
        name = spec_path.stem
        t0 = time.perf_counter()
        codec = fit_codec(spec, work / "manifests" / "train.jsonl")
        fit_s = time.perf_counter() - t0
        speed = {n: encode_speed(codec, test_audio, n) for n in (1, 2)}
        t0 = time.perf_counter()
        utts = round_trips(codec, test, work / "roundtrip" / name)
        round_trip_x = seconds / (time.perf_counter() - t0)
        results[name] = {
            "tokens_per_second": codec.frame_rate * codec.num_quantizers,
            "codebook_size": codec.codebook_size,
            "fit_seconds": round(fit_s, 1),
            "encode_x_realtime_1_process": round(speed[1], 1),
            "encode_x_realtime_2_processes": round(speed[2], 1),
            "round_trip_x_realtime": round(round_trip_x, 1),
            "embedded": score(utts, f"roundtrip-{name}"),
            "real": score(round_trips(codec, real, work / "real_roundtrip" / name), f"real-{name}", True),
        }

    print(f"Embedded TTS corpus ({corpus_conf}): {len(test)} test sentences, {seconds:.0f} s")
    print(f"ASR {setting['asr']} (corpus words as hotwords), normaliser {normalizer.name}\n")
    print(
        "| audio | tokens/s | WER % | DNSMOS OVRL | SIM to original | real LibriSpeech WER % | real DNSMOS |"
    )
    print("|---|---|---|---|---|---|---|")
    o, r = originals["embedded"], originals["real"]
    print(f"| original recordings | - | {o['wer']:.1f} | {o['dnsmos_ovrl']:.2f} | - | {r['wer']:.1f} | "
          f"{r['dnsmos_ovrl']:.2f} |")  # fmt: skip
    for name, x in results.items():
        e, rr = x["embedded"], x["real"]
        print(f"| {name} round trip | {x['tokens_per_second']:g} | {e['wer']:.1f} | {e['dnsmos_ovrl']:.2f} | "
              f"{e['sim']:.3f} | {rr['wer']:.1f} | {rr['dnsmos_ovrl']:.2f} |")  # fmt: skip
    print("\n| codec | fit s | encode x real time, 1 process | 2 processes | encode + decode, 1 process |")
    print("|---|---|---|---|---|")
    for name, x in results.items():
        print(f"| {name} | {x['fit_seconds']:.0f} | {x['encode_x_realtime_1_process']:.0f} | "
              f"{x['encode_x_realtime_2_processes']:.0f} | {x['round_trip_x_realtime']:.1f} |")  # fmt: skip
    print(f"\nReal LibriSpeech: {len(real)} utterances of ../shared/data, no text restriction; codecs fitted "
          "on the embedded corpus only\n")  # fmt: skip

    first, x = next(iter(results.items()))
    e = x["embedded"]
    checks = {
        "DNSMOS OVRL original - round trip": (
            o["dnsmos_ovrl"] - e["dnsmos_ovrl"],
            TARGETS["dnsmos_gap"],
            "<=",
        ),
        "WER round trip - original (points)": (e["wer"] - o["wer"], TARGETS["wer_gap"], "<="),
        "SIM round trip to original": (e["sim"], TARGETS["sim"], ">="),
        "tokens per second": (x["tokens_per_second"], TARGETS["tokens_per_second"], "<="),
        "encode x real time, 2 processes": (x["encode_x_realtime_2_processes"], TARGETS["encode_x"], ">="),
        "fit seconds": (x["fit_seconds"], TARGETS["fit_s"], "<="),
    }
    print(f"Targets for {first}:\n\n| figure | value | target | ratio to target | holds |")
    print("|---|---|---|---|---|")
    for label, (value, target, sense) in checks.items():
        holds = value <= target if sense == "<=" else value >= target
        verdict = "yes" if holds else "NO"
        print(f"| {label} | {value:.3g} | {sense} {target:g} | {value / target:.2f} | {verdict} |")
    figures = {
        "codec": first,
        "dnsmos_ovrl_original": round(o["dnsmos_ovrl"], 3),
        "dnsmos_ovrl_roundtrip": round(e["dnsmos_ovrl"], 3),
        "wer_original": round(o["wer"], 2),
        "wer_roundtrip": round(e["wer"], 2),
        "sim_roundtrip": round(e["sim"], 3),
        "tokens_per_second": x["tokens_per_second"],
        "encode_x_realtime_2_processes": x["encode_x_realtime_2_processes"],
        "fit_seconds": x["fit_seconds"],
        "real_wer_original": round(r["wer"], 2),
        "real_wer_roundtrip": round(x["real"]["wer"], 2),
        "real_dnsmos_ovrl_original": round(r["dnsmos_ovrl"], 3),
        "real_dnsmos_ovrl_roundtrip": round(x["real"]["dnsmos_ovrl"], 3),
        "real_sim_roundtrip": round(x["real"]["sim"], 3),
        "codecs": results,
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
