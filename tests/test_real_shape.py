"""The real-shape rehearsal: Qwen2.5-shaped models with the real tokenizer through every LM stage.

Two models built from the configs in ../shared/data/qwen2.5_configs, with random weights saved as a
checkpoint dir (bf16, as Qwen2.5 ships) that ``build-model --model`` loads as it loads a real one:

- ``qwen2.5-0.5b``: the 0.5B's width, heads, KV heads, 151,936 rows and tied embeddings; 2 layers;
- ``qwen2.5-7b-like``: the 7B's 28 heads and 4 KV heads, untied LM head and 152,064 rows; 2 layers and
  16-dim heads (hidden 448) so that training fits CI.

Each goes through build-model, sft, generate, make-pairs, ref-logps, train, decode and score on the real
AISHELL-1 (0.5B) or LibriSpeech (7B-like) samples in ../shared/data, prepared and tokenised with a melvq
codec fitted on the embedded mini corpus, as CI fits it. Step counts are tiny: the point is that the
shapes (the real vocabulary in the LM head, GQA, untied heads) go through every stage; each stage's
time and peak memory are printed (``-s``) and kept in ``stages.json``.

``REAL_SHAPE_BF16=1`` trains in bf16 (bench/gpu_check.sh, on a GPU).
"""

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures_corpus import AISHELL_DIR, LIBRISPEECH_DIR, MINI_CODEBOOK, QWEN_TOKENIZER_DIR, need

pytest_plugins = ["tests.fixtures_corpus"]
pytestmark = pytest.mark.slow

CONFIGS = AISHELL_DIR.parent / "qwen2.5_configs"
QWEN_TEXT_TOKENS = 151_665  # vocab.json + the added special tokens of the Qwen2.5 tokenizer files

# name: (config file, corpus, corpus dir, scoring benchmark)
CASES = {
    "qwen2.5-0.5b": ("Qwen2.5-0.5B", "aishell", AISHELL_DIR, "aishell1"),
    "qwen2.5-7b-like": ("Qwen2.5-7B", "librispeech", LIBRISPEECH_DIR, "librispeech"),
}
SEVEN_B_HEAD_DIM = 16  # the 7B's is 128: 28 heads x 16 = 448 wide


def cut_config(name: str):
    """The Qwen2.5 config with 2 layers; the 7B's also narrowed (heads, KV heads, vocab and untied head
    kept; the MLP keeps the 7B's ratio to the hidden size)."""
    from transformers import Qwen2Config

    values = json.loads(need(CONFIGS / f"{name}.config.json").read_text())
    values.update(num_hidden_layers=2, max_window_layers=2)
    if name == "Qwen2.5-7B":
        hidden = values["num_attention_heads"] * SEVEN_B_HEAD_DIM
        values["intermediate_size"] = round(values["intermediate_size"] * hidden / values["hidden_size"])
        values["hidden_size"] = hidden
    return Qwen2Config(**values)


def stage(log: list[dict], workdir: Path, *args: str) -> dict:
    """Run one stage in its own process (tests.peak_memory) and record its time and peak memory."""
    start = time.time()
    result = subprocess.run(
        [sys.executable, "-m", "tests.peak_memory", *args],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, f"{args[0]} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    figures["seconds"] = round(time.time() - start, 1)
    log.append(figures)
    (workdir / "stages.json").write_text(json.dumps(log, indent=2) + "\n")
    return figures


@pytest.mark.parametrize("case", sorted(CASES))
def test_real_shape_rehearsal(case, melvq_codec_dir, tmp_path):
    import torch
    from transformers import AutoConfig, AutoTokenizer, Qwen2ForCausalLM

    config_name, corpus, corpus_dir, benchmark = CASES[case]
    need(corpus_dir)
    tokenizer_dir = need(QWEN_TOKENIZER_DIR)
    bf16 = ["--bf16"] if os.environ.get("REAL_SHAPE_BF16") == "1" else []
    log: list[dict] = []

    config = cut_config(config_name)
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).to(torch.bfloat16).save_pretrained(tmp_path / "checkpoint")

    data, tokens, exp = tmp_path / "data", tmp_path / "tokens", tmp_path / "exp"
    stage(log, tmp_path, "prepare", "--corpus", corpus, "--corpus-dir", str(corpus_dir), "--out", str(data))
    splits = [str(p) for p in sorted(data.glob("*.jsonl"))]  # LibriSpeech keeps test-clean/-other apart
    test_set = min(p.stem for p in data.glob("test*.jsonl"))
    codec = str(melvq_codec_dir)
    stage(log, tmp_path, "tokenize", "--manifests", *splits, "--out", str(tokens), "--codec", codec)
    stage(
        log,
        tmp_path,
        "build-model",
        "--model",
        str(tmp_path / "checkpoint"),
        "--tokenizer",
        str(tokenizer_dir),
        "--codec",
        str(tokens / "codec"),
        "--out",
        str(exp / "init"),
    )
    built = AutoConfig.from_pretrained(exp / "init")
    assert len(AutoTokenizer.from_pretrained(exp / "init")) == QWEN_TEXT_TOKENS + 2 + MINI_CODEBOOK
    shape = ("hidden_size", "num_attention_heads", "num_key_value_heads", "vocab_size", "tie_word_embeddings")
    assert {k: getattr(built, k) for k in shape} == {k: getattr(config, k) for k in shape}

    steps = ["--max_steps", "2", "--batch_size", "1", "--logging_steps", "1", "--save_steps", "1000", *bf16]
    stage(
        log,
        tmp_path,
        "sft",
        "--data",
        str(tokens / "train"),
        "--model",
        str(exp / "init"),
        "--output_dir",
        str(exp / "sft"),
        "--task",
        "asr",
        "--learning_rate",
        "1e-4",
        *steps,
    )
    stage(
        log,
        tmp_path,
        "generate",
        "--task",
        "asr",
        "--model",
        str(exp / "sft"),
        "--data",
        str(tokens / "train"),
        "--out",
        str(exp / "candidates"),
        "--n",
        "2",
        "--max-new-tokens",
        "8",
    )
    pairs = exp / "pairs" / "model.jsonl"
    stage(
        log,
        tmp_path,
        "make-pairs",
        "--method",
        "model",
        "--model",
        str(exp / "sft"),
        "--candidates",
        str(exp / "candidates"),
        "--out",
        str(pairs),
        # a few SFT steps from random weights never say <|im_end|>: every candidate hits the limit, which
        # make-pairs drops by default; kept (and flagged) here, the shapes still go through every stage
        "--keep-cut-candidates",
    )
    assert pairs.read_text().strip(), "no preference groups from the candidates"
    ref = exp / "pairs" / "model.ref.jsonl"
    sft = str(exp / "sft")
    # in train's precision and batches (one group each), so that train's step-0 check finds x1 = x2 = 0
    ref_options = ["--batch_size", "1", *bf16]
    stage(
        log, tmp_path, "ref-logps", "--groups", str(pairs), "--model", sft, "--output", str(ref), *ref_options
    )
    for line in ref.read_text().splitlines():
        group = json.loads(line)
        assert all(math.isfinite(v) for v in [group["ref_chosen_logp"], *group["ref_rejected_logp"]])
    stage(
        log,
        tmp_path,
        "train",
        "--groups",
        str(ref),
        "--model",
        str(exp / "sft"),
        "--output_dir",
        str(exp / "lpo"),
        "--learning_rate",
        "1e-5",
        *steps,
    )
    summary = json.loads((exp / "lpo" / "train_summary.json").read_text())
    assert summary["steps"] == 2 and math.isfinite(summary["train_loss"])
    decode = exp / "decode"
    stage(
        log,
        tmp_path,
        "decode",
        "--model",
        str(exp / "lpo"),
        "--data",
        str(tokens / test_set),
        "--out-dir",
        str(decode),
        "--max-new-tokens",
        "8",
        "--limit",
        "3",
    )
    assert len((decode / "text").read_text().splitlines()) == 3
    score = exp / "score"
    stage(
        log,
        tmp_path,
        "score",
        "asr",
        "--ref",
        str(decode / "ref_text"),
        "--hyp",
        str(decode / "text"),
        "--benchmark",
        benchmark,
        "--out-dir",
        str(score),
    )
    assert list(score.glob("summary-*.json"))

    print(f"\n{case} ({config.hidden_size} hidden, {config.vocab_size} rows):")
    print(f"{'stage':<12} {'seconds':>8} {'peak RSS MiB':>13} {'peak CUDA MiB':>14}")
    for row in log:
        cuda = row.get("peak_cuda_mib", "-")
        print(f"{row['stage']:<12} {row['seconds']:>8} {row['peak_rss_mib']:>13} {cuda:>14}")
