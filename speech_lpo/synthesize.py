"""TTS with the trained LM: text -> audio tokens -> codec decode -> wav files, with codec round trips.

For each utterance of a tokenised test set the LM answers the TTS prompt, under
speech_lpo.codecs.constrain.CodebookOrder (codebook order within frames, whole frames); the audio tokens
of its answer are decoded by the model's codec into ``wav/<id>.wav``. The reference codes of the same
utterance are decoded into ``roundtrip/<id>.wav``: the ceiling that a perfect LM could reach through this
codec. ``synth.jsonl`` has one row per utterance: ``{id, text, wav, roundtrip_wav, audio_end, n_codes,
duration, ref_duration, codes}`` (paths relative to the output dir, codes as generated); ``audio_end``
is false when the answer never closed with ``<|audio_end|>`` (the generation ran into
``--max-new-tokens``, or stopped with ``<|im_end|>`` before it). Without ``--max-new-tokens`` the limit
comes from the data: the longest reference duration times the codec's tokens per second, with a margin
(speech_lpo.generate.length_limit). An utterance without audio keeps its row, with ``wav`` null and
``wav_error`` saying why: no audio tokens, a malformed answer (a text token among the audio tokens, a code
of the wrong codebook, a partial frame: also ``malformed`` in the row and in the report; never folded into
range), or codes the codec cannot decode. ``synthesize.json`` names the utterances cut by the limit, those
without ``<|audio_end|>``, the malformed ones and those without audio. Rows are appended batch by batch,
so a killed run continues where it stopped. ``speech-lpo score tts`` scores the directory.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from speech_lpo.codecs import MalformedCodes, unflatten_codes
from speech_lpo.decode import batches, check_settings, load_rows, load_vocab, read_done
from speech_lpo.generate import (
    SamplingConfig,
    TransformersBackend,
    add_backend_arguments,
    length_limit,
    make_backend,
    tts_answer_tokens,
)
from speech_lpo.prompts import im_end_id, tts_prompt_ids
from speech_lpo.score import write_atomic
from speech_lpo.tts_metrics import SYNTH_LIST
from speech_lpo.vocab import AudioVocab


def answer_codes(vocab: AudioVocab, ids: list[int], stop_ids: list[int]) -> tuple[np.ndarray, bool]:
    """Codes of a TTS answer as generated, and whether ``<|audio_end|>`` closed it: every token after a
    leading ``<|audio_start|>`` and before the stop token, minus the audio offset. A text token among
    them falls outside [0, K) and makes the sequence malformed (speech_lpo.codecs.unflatten_codes)."""
    closed = vocab.audio_end_id in ids
    body = ids[:-1] if ids and ids[-1] in stop_ids else ids
    if body and body[0] == vocab.audio_start_id:
        body = body[1:]
    return np.asarray(body, dtype=np.int64) - vocab.offset, closed


@dataclass
class Written:
    """What became of one code sequence: its wav (relative path) and duration, or why there is none."""

    wav: str | None = None
    duration: float | None = None
    error: str | None = None
    malformed: bool = False  # not whole frames in codebook order (speech_lpo.codecs.unflatten_codes)


def write_wavs(directory: Path, codec, sequences: list[np.ndarray], utterances: list[str]) -> list[Written]:
    """Decode code sequences to ``directory/<utterance>.wav``, the well-formed ones as one codec batch
    (a neural codec pads them and cuts each result to its length). Empty and malformed sequences are
    named and left out; if the batch fails, each is decoded alone, so that the failure is named."""
    import soundfile as sf

    per_codebook = codec.codebook_size // codec.num_quantizers
    out, todo = [Written() for _ in sequences], []
    for k, (codes, utt) in enumerate(zip(sequences, utterances, strict=True)):
        try:
            if len(codes) == 0:
                out[k].error = "no audio codes"
                continue
            unflatten_codes(codes, codec.num_quantizers, per_codebook, utt)
            todo.append(k)
        except MalformedCodes as e:
            out[k] = Written(error=str(e), malformed=True)
    try:
        wavs = codec.decode_batch([sequences[k] for k in todo], [utterances[k] for k in todo])
    except Exception:  # named below, one at a time
        wavs = None
    for n, k in enumerate(todo):
        try:
            wav = np.asarray(wavs[n] if wavs is not None else codec.decode(sequences[k]), dtype=np.float32)
            if wav.size == 0 or not np.isfinite(wav).all():
                raise ValueError(f"codec returned {wav.size} samples, empty or not finite")
        except Exception as e:  # any codec failure is this utterance's, named in its row
            out[k].error = f"codec cannot decode {len(sequences[k])} codes: {type(e).__name__}: {e}"
            continue
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{utterances[k]}.wav"
        tmp = path.with_name(f".{path.name}.tmp.wav")
        sf.write(tmp, wav, codec.sample_rate)
        tmp.replace(path)
        out[k] = Written(f"{directory.name}/{path.name}", len(wav) / codec.sample_rate)
    return out


def synthesized_rows(
    out_dir: Path, codec, vocab: AudioVocab, rows: list[dict], answers: list[list[int]], stops: list[int]
) -> list[dict]:
    """The ``synth.jsonl`` rows of a batch of generated answers, their wavs and round-trip wavs written."""
    parsed = [answer_codes(vocab, ids, stops) for ids in answers]
    ids = [row["id"] for row in rows]
    synth = write_wavs(out_dir / "wav", codec, [codes for codes, _ in parsed], ids)
    roundtrip = write_wavs(out_dir / "roundtrip", codec, [np.asarray(row["codes"]) for row in rows], ids)
    recs = []
    for row, answer, (codes, closed), s, rt in zip(rows, answers, parsed, synth, roundtrip, strict=True):
        rec = {
            "id": row["id"],
            "text": row["text"],
            "wav": s.wav,
            "roundtrip_wav": rt.wav,
            "audio_end": closed,
        }
        rec |= {"hit_max_new_tokens": not any(t in stops for t in answer)}
        rec |= {"n_codes": len(codes), "duration": s.duration, "ref_duration": row["duration"]}
        rec |= {"codes": codes.tolist()}
        rec |= {k: v for k, v in (("wav_error", s.error), ("roundtrip_wav_error", rt.error)) if v}
        if s.malformed:
            rec["malformed"] = s.error
        recs.append(rec)
    return recs


def synthesize(
    model_dir: str | Path,
    data: str | Path,
    out_dir: str | Path,
    split: str | None = None,
    batch_size: int = 4,
    max_new_tokens: int | None = None,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    limit: int | None = None,
    backend=None,
) -> dict:
    """Synthesise ``data`` into ``out_dir``; ``backend`` (speech_lpo.generate.make_backend) defaults to
    transformers with ``batch_size``."""
    from tqdm import tqdm

    from speech_lpo.codecs import load_codec, read_codec_meta
    from speech_lpo.codecs.constrain import CodebookOrder

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    backend = backend or TransformersBackend(model_dir, batch_size)
    tokenizer, vocab, _ = load_vocab(model_dir)
    codec = load_codec(model_dir)
    end_id = im_end_id(tokenizer)
    every = load_rows(data, split)
    rows = every[:limit] if limit else every
    if max_new_tokens is None:  # from the whole split, so that a run with --limit continues as the whole
        tps = read_codec_meta(model_dir)["tokens_per_second"]
        max_new_tokens = length_limit(tts_answer_tokens(r["duration"], tps) for r in every)
    stops = [vocab.audio_end_id, end_id]
    cfg = SamplingConfig(1, temperature, top_p, max_new_tokens, tuple(stops))
    cfg.codebook_order = CodebookOrder.for_model(model_dir, vocab, end_id)
    list_path = out_dir / SYNTH_LIST
    settings = {
        "model": str(model_dir),
        "data": str(data),
        "split": split,
        "sampling": "greedy"
        if temperature == 0
        else f"temperature {temperature}, top_p {top_p}, seed {seed}",
        "max_new_tokens": max_new_tokens,
        "backend": backend.name,
    }
    check_settings(out_dir / "synthesize.json", settings, list_path)
    done = read_done(list_path)
    todo = [r for r in rows if r["id"] not in done]
    t0 = time.time()
    with open(list_path, "a", encoding="utf-8") as out, tqdm(total=len(todo), desc="synthesize") as bar:
        for i, batch in enumerate(batches(todo, backend.batch_size or len(todo))):  # vLLM: all at once
            prompts = [tts_prompt_ids(tokenizer, r["text"], r.get("speaker")) for r in batch]
            new = [c.ids for [c] in backend.generate(prompts, cfg, seed + i)]
            for rec in synthesized_rows(out_dir, codec, vocab, batch, new, stops):
                done[rec["id"]] = rec
                out.write(json.dumps(rec, ensure_ascii=False) + "\n")
            out.flush()
            bar.update(len(batch))
    recs = [done[r["id"]] for r in rows]
    report = {
        **settings,
        "utterances": len(recs),
        "with_audio": sum(bool(r["wav"]) for r in recs),
        "synthesized_this_run": len(todo),
        "seconds_this_run": round(time.time() - t0, 2),
        "hit_max_new_tokens": [r["id"] for r in recs if r.get("hit_max_new_tokens")],
        "no_audio_end": [r["id"] for r in recs if not r["audio_end"]],
        "malformed": {r["id"]: r["malformed"] for r in recs if "malformed" in r},
        "no_audio": {r["id"]: r["wav_error"] for r in recs if not r["wav"]},
        "no_roundtrip": {r["id"]: r["roundtrip_wav_error"] for r in recs if not r["roundtrip_wav"]},
    }
    write_atomic(out_dir / "synthesize.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", required=True, help="model dir with its codec (build-model, sft or train output)"
    )
    parser.add_argument(
        "--data", required=True, help="tokenised dataset (speech-lpo tokenize): texts and reference codes"
    )
    parser.add_argument("--split", help="synthesise only this split of the dataset")
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        help="default: from the data, the longest reference duration x the codec's tokens/s plus a margin",
    )
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, help="synthesise only the first N utterances (by id)")
    add_backend_arguments(parser)


def main(args: argparse.Namespace) -> None:
    backend = make_backend(args, args.model)
    try:
        report = synthesize(
            args.model,
            args.data,
            args.out_dir,
            args.split,
            args.batch_size,
            args.max_new_tokens,
            args.temperature,
            args.top_p,
            args.seed,
            args.limit,
            backend,
        )
    finally:
        backend.close()
    print(
        f"synthesised {report['with_audio']}/{report['utterances']} with audio; "
        f"no <|audio_end|>: {len(report['no_audio_end'])}, malformed: {len(report['malformed'])}, "
        f"cut by max_new_tokens {report['max_new_tokens']}: {len(report['hit_max_new_tokens'])} "
        f"-> {args.out_dir}/{SYNTH_LIST}"
    )
