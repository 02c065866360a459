"""melvq on real speech: encode speed and what its round trip costs an ASR.

On the real LibriSpeech utterances in ../shared/data (release layout, prepared by `speech-lpo prepare`):
the codebook is fitted on the train and dev utterances and measured on the test-clean ones.
pocketsphinx (its wheel's US English model and language model) transcribes

  original      the 16 kHz recordings
  griffin-lim   Griffin-Lim from the unquantised 40 Hz log-mel (what the codebook cannot be blamed for)
  melvq         the codec round trip: encode to codes, decode with Griffin-Lim

and the word error rate of each is pooled over the utterances (jiwer). Encode speed is audio seconds per
wall-clock second of ``codec.encode`` (resampling included) in this one process, OMP threads as set.
Goals (issue #3): encode >= 200x real time on 2 cores; melvq WER at most 15 points above the originals'.

Usage: OMP_NUM_THREADS=2 .venv/bin/python bench/codec.py [--codebook-size 512]
Prints a Markdown table, the ratios, and last one JSON line of the figures.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import jiwer
import numpy as np
import yaml

from speech_lpo.codecs import load_audio, resample
from speech_lpo.prepare import prepare, read_manifest
from speech_lpo.tokenize_audio import fit_melvq
from speech_lpo.tts_metrics import ASR_SAMPLE_RATE, pocketsphinx_asr

ROOT = Path(__file__).resolve().parents[1]
LIBRISPEECH = ROOT / ".." / "shared" / "data" / "librispeech"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=ROOT / "tokenizers" / "melvq.yaml")
    parser.add_argument("--codebook-size", type=int, help="override the spec's K")
    parser.add_argument("--speed-repeats", type=int, default=5)
    args = parser.parse_args()
    if not LIBRISPEECH.is_dir():
        raise SystemExit(f"{LIBRISPEECH}: the real LibriSpeech utterances are not there")

    spec = yaml.safe_load(args.spec.read_text())
    if args.codebook_size:
        spec["codebook_size"] = args.codebook_size
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        prepare("librispeech", LIBRISPEECH, tmp)
        fit_lines = read_manifest(tmp / "train.jsonl") + read_manifest(tmp / "dev.jsonl")
        (tmp / "fit.jsonl").write_text("".join(json.dumps(x) + "\n" for x in fit_lines))
        t0 = time.perf_counter()
        codec = fit_melvq(spec, tmp / "fit.jsonl")
        fit_s = time.perf_counter() - t0
        test = read_manifest(tmp / "test.jsonl")

    audio = [load_audio(x["audio"]) for x in test]
    seconds = sum(len(w) / sr for w, sr in audio)

    t0 = time.perf_counter()
    for _ in range(args.speed_repeats):
        codes = [codec.encode(w, sr) for w, sr in audio]
    encode_x = seconds * args.speed_repeats / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    round_trip = [codec.decode(c) for c in codes]
    decode_x = seconds / (time.perf_counter() - t0)
    unquantised = [codec.mel_to_audio(codec.features(resample(w, sr, codec.sample_rate))) for w, sr in audio]

    asr = pocketsphinx_asr()
    refs = [x["text"] for x in test]
    conditions = {
        "original": [resample(w, sr, ASR_SAMPLE_RATE) for w, sr in audio],
        "griffin-lim (unquantised mel)": [
            resample(w, codec.sample_rate, ASR_SAMPLE_RATE) for w in unquantised
        ],
        "melvq round trip": [resample(w, codec.sample_rate, ASR_SAMPLE_RATE) for w in round_trip],
    }
    wer = {}
    for name, wavs in conditions.items():
        hyps = [asr(w).upper() for w in wavs]
        wer[name] = 100 * jiwer.wer(refs, hyps)

    print(f"melvq K={codec.codebook_size}, {codec.frame_rate:g} Hz; fitted on {len(fit_lines)} utterances")
    print(f"(train + dev) in {fit_s:.1f} s; measured on {len(test)} test-clean utterances, {seconds:.1f} s\n")
    print("| audio | pocketsphinx WER % |")
    print("|---|---|")
    for name, value in wer.items():
        print(f"| {name} | {value:.1f} |")
    print("\n| melvq speed | x real time |")
    print("|---|---|")
    print(f"| encode | {encode_x:.0f} |")
    print(f"| decode (Griffin-Lim, {codec.griffin_lim_iters} iterations) | {decode_x:.1f} |")
    gap = wer["melvq round trip"] - wer["original"]
    print(f"\nmelvq WER - original WER = {gap:+.1f} points (goal <= +15)")
    print(f"encode speed / goal = {encode_x / 200:.1f}x (goal 200x real time)")
    figures = {
        "codebook_size": codec.codebook_size,
        "frame_rate": codec.frame_rate,
        "test_utterances": len(test),
        "test_seconds": round(seconds, 2),
        "wer_original": round(wer["original"], 2),
        "wer_griffin_lim_unquantised": round(wer["griffin-lim (unquantised mel)"], 2),
        "wer_melvq": round(wer["melvq round trip"], 2),
        "wer_gap_points": round(gap, 2),
        "encode_x_realtime": round(encode_x, 1),
        "decode_x_realtime": round(decode_x, 2),
        "fit_seconds": round(fit_s, 2),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
