"""ASR with the trained LM on a tokenised test set: greedy or beam search, batched, Kaldi text + JSONL out.

Output directory:

- ``hyps.jsonl``: one row per utterance, ``{id, text, ref, n_tokens, finished}``; ``finished`` is false
  when ``<|im_end|>`` did not come within ``--max-new-tokens`` (by default derived from the data: the
  longest reference transcript in tokens, with a margin; speech_lpo.generate.length_limit). An
  utterance that cannot be decoded (no audio codes, a prompt longer than the model's context) is a row
  with ``error`` and no ``text``.
  Rows are appended batch by batch, so a killed run continues where it stopped.
- ``text``: the hypotheses in Kaldi ``text`` format, for ``speech-lpo score asr``; utterances with an
  error have no line there, so scoring counts them as missing (all deletions) and names them.
- ``ref_text``: the references from the same dataset, in the same format.
- ``decode.json``: the settings, counts, and the ids that were cut by the limit (``unfinished``) or failed.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from speech_lpo.generate import (
    SamplingConfig,
    TransformersBackend,
    add_backend_arguments,
    length_limit,
    make_backend,
)
from speech_lpo.prompts import asr_prompt_ids, asr_response_ids, im_end_id, response_text
from speech_lpo.score import write_atomic
from speech_lpo.vocab import AudioVocab

HYPS_FILE = "hyps.jsonl"


def load_vocab(model_dir: str | Path):
    """Tokenizer, audio vocabulary and context length of a `build-model` / training output dir."""
    from transformers import AutoConfig, AutoTokenizer

    max_len = getattr(AutoConfig.from_pretrained(model_dir), "max_position_embeddings", None)
    return AutoTokenizer.from_pretrained(model_dir), AudioVocab.load(model_dir), max_len


def generate_batch(
    model, prompts: list[list[int]], pad_id: int, stop_ids: list[int], **generate_kwargs
) -> list:
    """New token ids for each prompt: one left-padded batch through ``model.generate`` (the transformers
    backend of generate, decode and synthesize: speech_lpo.generate.TransformersBackend).

    Left padding puts every prompt's last token at the same position, where generation starts; the
    attention mask keeps the pads out. Returned ids stop at (and include) the first stop token.
    """
    import torch

    width = max(map(len, prompts))
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for i, p in enumerate(prompts):
        input_ids[i, width - len(p) :] = torch.tensor(p)
        attention_mask[i, width - len(p) :] = 1
    with torch.inference_mode():
        out = model.generate(
            input_ids=input_ids.to(model.device),
            attention_mask=attention_mask.to(model.device),
            eos_token_id=stop_ids,
            pad_token_id=pad_id,
            **generate_kwargs,
        )
    new = []
    for row in out[:, width:].tolist():
        stop = next((i for i, t in enumerate(row) if t in stop_ids), None)
        new.append(row if stop is None else row[: stop + 1])
    return new


def read_done(path: Path) -> dict[str, dict]:
    """Rows already written by an earlier run; a torn last line (killed mid-write) is dropped and the
    file rewritten without it, so appending can go on."""
    if not path.is_file():
        return {}
    rows, lines = {}, path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if i != len(lines) - 1:
                raise ValueError(f"{path}:{i + 1}: corrupt line in the middle of the file") from None
            write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows.values()))
            break
        rows[row["id"]] = row
    return rows


def check_settings(path: Path, settings: dict, results: Path) -> None:
    """Refuse to continue a run made with other settings: its rows would be mixed with ours."""
    if results.is_file() and results.stat().st_size and path.is_file():
        old = json.loads(path.read_text())
        diff = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
        if diff:
            raise ValueError(
                f"{results} was made with other settings {diff}; use a new --out-dir or remove it"
            )
    write_atomic(path, json.dumps(settings, indent=2, ensure_ascii=False) + "\n")


def batches(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def load_rows(data: str | Path, split: str | None) -> list[dict]:
    """Rows of a tokenised dataset (``speech-lpo tokenize``), optionally one split, sorted by id."""
    from speech_lpo.tokenize_audio import load_tokenized

    ds = load_tokenized(data)
    if split:
        ds = ds.filter(lambda s: s == split, input_columns="split")
    rows = sorted(ds, key=lambda r: r["id"])
    if not rows:
        raise ValueError(f"{data}: no utterances" + (f" in split {split!r}" if split else ""))
    repeated = sorted(k for k, n in Counter(r["id"] for r in rows).items() if n > 1)
    if repeated:
        raise ValueError(f"{data}: {len(repeated)} utterance ids occur more than once, e.g. {repeated[:5]}")
    return rows


def decode(
    model_dir: str | Path,
    data: str | Path,
    out_dir: str | Path,
    split: str | None = None,
    batch_size: int = 8,
    beam_size: int = 1,
    max_new_tokens: int | None = None,
    limit: int | None = None,
    backend=None,
) -> dict:
    """Decode ``data`` into ``out_dir``; ``max_new_tokens`` None derives it from the reference transcripts.
    ``backend`` (speech_lpo.generate.make_backend) defaults to transformers with ``batch_size``."""
    from tqdm import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    backend = backend or TransformersBackend(model_dir, batch_size)
    tokenizer, vocab, max_len = load_vocab(model_dir)
    end_id = im_end_id(tokenizer)
    every = load_rows(data, split)
    rows = every[:limit] if limit else every
    if max_new_tokens is None:  # from the whole split, so that a run with --limit continues as the whole
        max_new_tokens = length_limit(len(asr_response_ids(tokenizer, r["text"] or "")) for r in every)
    hyps_path = out_dir / HYPS_FILE
    settings = {
        "model": str(model_dir),
        "data": str(data),
        "split": split,
        "search": "greedy" if beam_size == 1 else f"beam {beam_size}",
        "max_new_tokens": max_new_tokens,
        "backend": backend.name,
    }
    check_settings(out_dir / "decode.json", settings, hyps_path)
    done = read_done(hyps_path)
    todo, t0 = [], time.time()
    with open(hyps_path, "a", encoding="utf-8") as out:
        for row in rows:
            if row["id"] in done:
                continue
            error = None
            if len(row["codes"]) == 0:
                error = "no audio codes"
            else:
                try:
                    prompt = asr_prompt_ids(tokenizer, vocab, row["codes"])
                except ValueError as e:  # codes outside this model's audio block: the wrong model or data
                    raise ValueError(f"{data}: utterance {row['id']!r}: {e}") from e
                if max_len and len(prompt) + max_new_tokens > max_len:
                    error = (
                        f"prompt of {len(prompt)} tokens + {max_new_tokens} new exceeds the model's {max_len}"
                    )
            if error:
                done[row["id"]] = {"id": row["id"], "ref": row["text"], "error": error}
                out.write(json.dumps(done[row["id"]], ensure_ascii=False) + "\n")
            else:
                todo.append((row, prompt))
        out.flush()
        todo.sort(key=lambda rp: len(rp[1]))  # similar lengths in one batch: less padding
        cfg = SamplingConfig(1, 0.0, 1.0, max_new_tokens, (end_id,), num_beams=beam_size)
        with tqdm(total=len(todo), desc="decode", disable=not todo) as bar:
            for batch in batches(todo, backend.batch_size or len(todo)):  # vLLM: all at once
                new = backend.generate([p for _, p in batch], cfg, seed=0)
                for (row, _), [candidate] in zip(batch, new, strict=True):
                    ids = candidate.ids
                    hyp = {"id": row["id"], "text": response_text(tokenizer, ids), "ref": row["text"]}
                    hyp |= {"n_tokens": len(ids), "finished": end_id in ids}
                    done[row["id"]] = hyp
                    out.write(json.dumps(hyp, ensure_ascii=False) + "\n")
                out.flush()
                bar.update(len(batch))
    ids = [r["id"] for r in rows]
    hyps = [done[i] for i in ids]
    # one line per utterance whatever the model wrote: newlines inside a hypothesis become spaces
    text = "".join(f"{h['id']} {' '.join(h['text'].split())}\n" for h in hyps if "error" not in h)
    write_atomic(out_dir / "text", text)
    write_atomic(out_dir / "ref_text", "".join(f"{r['id']} {r['text']}\n" for r in rows))
    report = {
        **settings,
        "batch_size": batch_size,
        "utterances": len(rows),
        "decoded": sum("error" not in h for h in hyps),
        "decoded_this_run": len(todo),
        "seconds_this_run": round(time.time() - t0, 2),
        "unfinished": [h["id"] for h in hyps if "error" not in h and not h["finished"]],
        "failed": {h["id"]: h["error"] for h in hyps if "error" in h},
    }
    write_atomic(out_dir / "decode.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        required=True,
        nargs="+",
        help="model dir(s) (build-model, sft or train output); several are decoded in one process",
    )
    parser.add_argument("--data", required=True, help="tokenised dataset (speech-lpo tokenize)")
    parser.add_argument("--split", help="decode only this split of the dataset")
    parser.add_argument("--out-dir", required=True, nargs="+", help="one per --model")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--beam-size", type=int, default=1, help="1: greedy search")
    parser.add_argument(
        "--max-new-tokens", type=int, help="default: from the data, the longest reference plus a margin"
    )
    parser.add_argument("--limit", type=int, help="decode only the first N utterances (by id)")
    add_backend_arguments(parser)


def main(args: argparse.Namespace) -> None:
    if len(args.model) != len(args.out_dir):
        raise SystemExit(
            f"{len(args.model)} --model dirs for {len(args.out_dir)} --out-dir dirs: give one each"
        )
    # several models in one process: the interpreter, torch and the dataset load once (on CPU that
    # start-up takes far longer than decoding a small test set)
    for model, out_dir in zip(args.model, args.out_dir, strict=True):
        backend = make_backend(args, model)
        try:
            report = decode(
                model,
                args.data,
                out_dir,
                args.split,
                args.batch_size,
                args.beam_size,
                args.max_new_tokens,
                args.limit,
                backend,
            )
        finally:
            backend.close()
        print(
            f"{model}: decoded {report['decoded']}/{report['utterances']} ({report['search']}); "
            f"cut by max_new_tokens {report['max_new_tokens']}: {len(report['unfinished'])}, "
            f"failed {len(report['failed'])} -> {out_dir}/text"
        )
