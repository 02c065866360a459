"""melvq on real speech: encode speed and what its round trip costs an ASR.

On the real LibriSpeech utterances in ../shared/data (release layout, prepared by `speech-lpo prepare`),
pocketsphinx (its wheel's US English acoustic and language model) transcribes the 7 test-clean ones as

  original       the 16 kHz recordings
  griffin-lim    Griffin-Lim from the unquantised 40 Hz log-mel (what the codebook cannot be blamed for)
  melvq          the codec round trip, encode to codes and decode with Griffin-Lim, with the codebook fitted
                 (a) held out: on the 4 train + dev utterances only (1,300 frames for 512 centroids), and
                 (b) in sample: on all 11 utterances, test ones included, which is how TTS training
                     targets are made (the codebook is fitted on the very split it then encodes)

and the word error rate of each is pooled over the utterances (jiwer). The same is measured on English
of the embedded mini corpus (espeak-ng, fitted on its train split, test split measured), with
pocketsphinx both as is and restricted to the corpus's words (synth_corpus.jsgf_word_loop).

Encode speed is audio seconds per wall-clock second of ``codec.encode`` (resampling included), one BLAS
thread per process: in one process, and in two worker processes as `speech-lpo tokenize --jobs 2` runs.
Goals (issue #3): encode >= 200x real time on 2 cores; melvq WER at most 15 points above the originals'.

Usage: .venv/bin/python bench/codec.py
Prints Markdown tables, the ratios, and last one JSON line of the figures.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import jiwer
import numpy as np
import yaml
from threadpoolctl import threadpool_limits

from speech_lpo.codecs import Codec, load_audio, resample
from speech_lpo.prepare import prepare, read_manifest
from speech_lpo.synth_corpus import jsgf_word_loop, synth_corpus
from speech_lpo.tokenize_audio import fit_melvq
from speech_lpo.tts_metrics import ASR_SAMPLE_RATE, pocketsphinx_asr

ROOT = Path(__file__).resolve().parents[1]
LIBRISPEECH = ROOT / ".." / "shared" / "data" / "librispeech"


def pocketsphinx(jsgf: str | None = None):
    asr = pocketsphinx_asr(jsgf)
    return lambda wav: asr(wav).upper()


def wer(asr, refs: list[str], wavs: list[np.ndarray], sample_rate: int) -> float:
    return 100 * jiwer.wer(refs, [asr(resample(w, sample_rate, ASR_SAMPLE_RATE)) for w in wavs])


def write_manifest(path: Path, lines: list[dict]) -> Path:
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


_CODEC: Codec | None = None


def _encode_all(audio: list[tuple[np.ndarray, int]]) -> int:
    with threadpool_limits(1):
        return sum(len(_CODEC.encode(w, sr)) for w, sr in audio)


def encode_speed(codec: Codec, audio: list[tuple[np.ndarray, int]], repeats: int, workers: int) -> float:
    """Audio seconds encoded per wall-clock second, ``workers`` processes each encoding all of ``audio``."""
    global _CODEC
    _CODEC = codec
    seconds = sum(len(w) / sr for w, sr in audio)
    with ProcessPoolExecutor(workers) as pool:  # forked: workers inherit the codec
        list(pool.map(_encode_all, [audio[:1]] * workers))  # warm up
        t0 = time.perf_counter()
        list(pool.map(_encode_all, [audio] * (workers * repeats)))
        return seconds * workers * repeats / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=ROOT / "tokenizers" / "melvq.yaml")
    parser.add_argument("--speed-repeats", type=int, default=5)
    parser.add_argument("--synthetic-train", type=int, default=300, help="mini corpus train utterances")
    parser.add_argument("--synthetic-test", type=int, default=30)
    args = parser.parse_args()
    if not LIBRISPEECH.is_dir():
        raise SystemExit(f"{LIBRISPEECH}: the real LibriSpeech utterances are not there")
    spec = yaml.safe_load(args.spec.read_text())

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        prepare("librispeech", LIBRISPEECH, tmp / "real")
        split = {s: read_manifest(tmp / "real" / f"{s}-clean.jsonl") for s in ("dev", "test")}
        split["train"] = read_manifest(tmp / "real" / "train.jsonl")
        held_out = fit_melvq(spec, write_manifest(tmp / "fit_a.jsonl", split["train"] + split["dev"]))
        in_sample = fit_melvq(
            spec, write_manifest(tmp / "fit_b.jsonl", split["train"] + split["dev"] + split["test"])
        )

        counts = {"train": args.synthetic_train, "dev": 0, "test": args.synthetic_test}
        synth_corpus(tmp / "mini", counts, langs=("en",))
        prepare("librispeech", tmp / "mini" / "librispeech", tmp / "mini_manifests")
        synth_codec = fit_melvq(spec, tmp / "mini_manifests" / "train.jsonl")
        synth_test = read_manifest(tmp / "mini_manifests" / "test-clean.jsonl")
        synth_audio = [load_audio(x["audio"]) for x in synth_test]  # before the directory goes

    test = split["test"]
    audio = [load_audio(x["audio"]) for x in test]
    seconds = sum(len(w) / sr for w, sr in audio)
    speed_1 = encode_speed(held_out, audio, args.speed_repeats, 1)
    speed_2 = encode_speed(held_out, audio, args.speed_repeats, 2)
    with threadpool_limits(1):
        t0 = time.perf_counter()
        decoded = {
            name: [c.decode(c.encode(w, sr)) for w, sr in audio]
            for name, c in (("held_out", held_out), ("in_sample", in_sample))
        }
        decode_x = 2 * seconds / (time.perf_counter() - t0)
    sr_codec = held_out.sample_rate
    unquantised = [held_out.mel_to_audio(held_out.features(resample(w, sr, sr_codec))) for w, sr in audio]

    asr = pocketsphinx()
    refs = [x["text"] for x in test]
    real = {
        "original": wer(asr, refs, [w for w, _ in audio], audio[0][1]),
        "griffin-lim, unquantised mel": wer(asr, refs, unquantised, sr_codec),
        "melvq, codebook held out": wer(asr, refs, decoded["held_out"], sr_codec),
        "melvq, codebook in sample": wer(asr, refs, decoded["in_sample"], sr_codec),
    }

    synth_refs = [x["text"] for x in synth_test]
    with threadpool_limits(1):
        synth_round = [synth_codec.decode(synth_codec.encode(w, sr)) for w, sr in synth_audio]
    synth = {}
    for asr_name, synth_asr in (("general LM", asr), ("corpus words", pocketsphinx(jsgf_word_loop("en")))):
        synth[(asr_name, "original")] = wer(synth_asr, synth_refs, [w for w, _ in synth_audio], 16000)
        synth[(asr_name, "melvq")] = wer(synth_asr, synth_refs, synth_round, synth_codec.sample_rate)

    c = held_out
    print(f"melvq K={c.codebook_size}, {c.frame_rate:g} Hz, {c.griffin_lim_iters} Griffin-Lim iterations")
    print(f"\nReal LibriSpeech test-clean: {len(test)} utterances, {seconds:.1f} s; pocketsphinx WER %\n")
    print("| audio | WER % | minus original |")
    print("|---|---|---|")
    for name, value in real.items():
        print(f"| {name} | {value:.1f} | {value - real['original']:+.1f} |")
    print(
        f"\nMini corpus English (espeak-ng, {args.synthetic_train} train / {len(synth_test)} test); WER %\n"
    )
    print("| pocketsphinx | original | melvq round trip | minus original |")
    print("|---|---|---|---|")
    for asr_name in ("general LM", "corpus words"):
        o, m = synth[(asr_name, "original")], synth[(asr_name, "melvq")]
        print(f"| {asr_name} | {o:.1f} | {m:.1f} | {m - o:+.1f} |")
    print("\n| melvq speed, 1 BLAS thread per process | x real time |")
    print("|---|---|")
    print(f"| encode, 1 process | {speed_1:.0f} |")
    print(f"| encode, 2 processes (2 cores) | {speed_2:.0f} |")
    print(f"| decode, 1 process | {decode_x:.1f} |")
    gap_held, gap_in = (
        real[k] - real["original"] for k in ("melvq, codebook held out", "melvq, codebook in sample")
    )
    print(
        f"\nWER gap to the originals (goal <= +15 points): in sample {gap_in:+.1f}, held out {gap_held:+.1f}"
    )
    print(f"encode speed on 2 cores / goal of 200x = {speed_2 / 200:.2f}")
    figures = {
        "codebook_size": held_out.codebook_size,
        "frame_rate": held_out.frame_rate,
        "real_test_utterances": len(test),
        "real_test_seconds": round(seconds, 2),
        "wer_original": round(real["original"], 2),
        "wer_griffin_lim_unquantised": round(real["griffin-lim, unquantised mel"], 2),
        "wer_melvq_held_out": round(real["melvq, codebook held out"], 2),
        "wer_melvq_in_sample": round(real["melvq, codebook in sample"], 2),
        "wer_gap_in_sample": round(gap_in, 2),
        "wer_gap_held_out": round(gap_held, 2),
        "synth_wer_original_general_lm": round(synth[("general LM", "original")], 2),
        "synth_wer_melvq_general_lm": round(synth[("general LM", "melvq")], 2),
        "synth_wer_original_corpus_words": round(synth[("corpus words", "original")], 2),
        "synth_wer_melvq_corpus_words": round(synth[("corpus words", "melvq")], 2),
        "encode_x_realtime_1_process": round(speed_1, 1),
        "encode_x_realtime_2_processes": round(speed_2, 1),
        "decode_x_realtime": round(decode_x, 2),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
