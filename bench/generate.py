"""Candidate generation throughput: batched transformers vs one prompt at a time, and vLLM vs transformers.

One tiny Qwen2 (the real Qwen2.5 tokenizer + audio tokens; or ``--model`` dir), TTS prompts made from
the real transcripts in ../shared/data, n candidates per prompt at temperature 1.0, top_p 1.0. The vLLM
row needs the vLLM environment:

    .venv/bin/python bench/generate.py                 # transformers rows only
    .venv-vllm/bin/python bench/generate.py            # all rows, same model, same prompts

Prints a Markdown table, the ratios, and last one JSON line of the figures.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import tempfile
import time
from pathlib import Path

from speech_lpo.generate import SamplingConfig, Throughput, TransformersBackend, VLLMBackend, stop_ids_for
from speech_lpo.prompts import tts_prompt_ids
from speech_lpo.vocab import AudioVocab

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def transcripts() -> list[str]:
    aishell = DATA / "aishell1" / "data_aishell" / "transcript" / "aishell_transcript_v0.8.txt"
    lines = aishell.read_text(encoding="utf-8").splitlines()
    for trans in sorted((DATA / "librispeech" / "LibriSpeech").glob("*/*/*/*.trans.txt")):
        lines += trans.read_text(encoding="utf-8").splitlines()
    return [line.split(maxsplit=1)[1] for line in lines]


def build_tiny_model(path: Path, codebook_size: int = 1024) -> Path:
    from transformers import Qwen2TokenizerFast

    from speech_lpo.modeling import extend_tokenizer, tiny_qwen2

    tokenizer = Qwen2TokenizerFast.from_pretrained(DATA / "qwen2.5_tokenizer")
    vocab = extend_tokenizer(tokenizer, codebook_size)
    # build-model's tiny defaults; head size 32, the smallest vLLM's CPU attention takes
    tiny_qwen2(len(tokenizer), hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2).save_pretrained(
        path
    )
    tokenizer.save_pretrained(path)
    vocab.save(path)
    return path


def measure(backend, prompts: list[list[int]], cfg: SamplingConfig, batch_size: int) -> Throughput:
    backend.generate(prompts[:batch_size], cfg, seed=0)  # warm-up: first-call allocations, kernels
    t = Throughput()
    for b, start in enumerate(range(0, len(prompts), batch_size)):
        batch = prompts[start : start + batch_size]
        t0 = time.perf_counter()
        out = backend.generate(batch, cfg, seed=b)
        t.add(len(batch), out, time.perf_counter() - t0)
    return t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="model dir (default: build a tiny Qwen2)")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--n", type=int, default=3, help="candidates per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16, help="prompts per batched transformers call")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model or build_tiny_model(Path(tmp))
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        vocab = AudioVocab.load(model_dir)
        texts = transcripts()
        prompts = [tts_prompt_ids(tokenizer, texts[i % len(texts)]) for i in range(args.prompts)]
        cfg = SamplingConfig(args.n, 1.0, 1.0, args.max_new_tokens, stop_ids_for("tts", tokenizer, vocab))

        hf = TransformersBackend(model_dir)
        rows = {
            f"transformers, batch {args.batch_size}": measure(hf, prompts, cfg, args.batch_size),
            "transformers, one prompt at a time": measure(hf, prompts, cfg, 1),
        }
        has_vllm = importlib.util.find_spec("vllm") is not None
        if has_vllm:
            # float32 as the transformers model; eager and 0.3 of RAM on CPU (DESIGN.md, Environment facts)
            vllm = VLLMBackend(model_dir, gpu_memory_utilization=0.3, enforce_eager=True, dtype="float32")
            rows["vllm (all prompts at once)"] = measure(vllm, prompts, cfg, len(prompts))
            vllm.close()

    figures = {name: t.summary() for name, t in rows.items()}
    print(f"\n{args.prompts} TTS prompts x {args.n} candidates, max_new_tokens {args.max_new_tokens}\n")
    print("| backend | prompts | candidates | new tokens | seconds | candidates/s | tokens/s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, f in figures.items():
        print(
            f"| {name} | {f['prompts']} | {f['candidates']} | {f['new_tokens']} | {f['seconds']:.2f} "
            f"| {f['candidates_per_s']:.1f} | {f['tokens_per_s']:.0f} |"
        )
    batched, single = (figures[k]["candidates_per_s"] for k in list(figures)[:2])
    ratios = {"batched_vs_one_at_a_time": batched / single}
    if has_vllm:
        ratios["vllm_vs_transformers_batched"] = (
            figures["vllm (all prompts at once)"]["candidates_per_s"] / batched
        )
    print()
    for name, r in ratios.items():
        print(f"- {name.replace('_', ' ')}: {r:.2f}x")
    if not has_vllm:
        print("- vllm vs transformers: not measured (no vLLM here; run with .venv-vllm/bin/python)")
    print(
        json.dumps({"figures": figures, "ratios": ratios, "n": args.n, "max_new_tokens": args.max_new_tokens})
    )


if __name__ == "__main__":
    main()
