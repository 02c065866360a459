"""Several processes for real: `accelerate launch --num_processes 2` on CPU (gloo) runs sft, ref-logps and
train as one process does with the same global batch; only rank 0 writes; a non-finite loss on one rank
stops both, naming the step and the groups."""

import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import Qwen2ForCausalLM

from speech_lpo.groups import load_groups, write_groups
from speech_lpo.modeling import tiny_qwen2, tiny_qwen2_config
from tests.conftest import build_speech_lm
from tests.test_packing import VOCAB, random_groups, write_training_dir


def _free_port() -> int:
    """Other test sessions may share the machine: never the default rendezvous port 29500."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(
    *args: str, processes: int = 1, timeout: float = 600, multi_cpu: bool = True
) -> subprocess.CompletedProcess:
    """`speech-lpo ARGS` in one plain process, or under `accelerate launch` in several CPU processes.

    ACCELERATE_USE_CPU (``multi_cpu``): on a machine without GPUs accelerate then sets up MULTI_CPU with
    gloo (without it, each process would train alone); DeepSpeed runs go without it, or the Trainer takes
    the MULTI_CPU path instead of DeepSpeed's. A hung run is killed with its whole process group."""
    command = [sys.executable, "-m", "speech_lpo.cli", *args]
    if processes > 1:
        command = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            f"--num_processes={processes}",
            "--num_machines=1",
            "--mixed_precision=no",
            "--dynamo_backend=no",
            f"--main_process_port={_free_port()}",
            "-m",
            "speech_lpo.cli",
            *args,
        ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env["ACCELERATE_USE_CPU"] = "true" if multi_cpu else "false"
    proc = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{' '.join(args[:1])} with {processes} processes hung:\n{out[-3000:]}")
    return subprocess.CompletedProcess(command, proc.returncode, out)


def run_ok(*args: str, processes: int = 1, multi_cpu: bool = True) -> str:
    result = run(*args, processes=processes, multi_cpu=multi_cpu)
    assert result.returncode == 0, result.stdout[-5000:]
    return result.stdout


def logged(path: Path) -> dict[int, dict]:
    """Training log entries by step (the loss entries, not the final summary)."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    steps = [r["step"] for r in rows if "loss" in r]
    assert len(steps) == len(set(steps)), f"{path}: a step logged twice (more than one rank wrote)"
    return {r["step"]: r for r in rows if "loss" in r}


def assert_same_log(one: dict[int, dict], two: dict[int, dict], keys: tuple[str, ...]) -> None:
    assert sorted(one) == sorted(two)
    for step in one:
        for key in keys:
            assert two[step][key] == pytest.approx(one[step][key], abs=1e-4), (step, key)


@pytest.fixture(scope="module")
def groups_dir(tmp_path_factory) -> Path:
    d = write_training_dir(tmp_path_factory.mktemp("multiprocess"))
    return d


def ref_logps(d: Path, output: Path, processes: int) -> str:
    return run_ok(
        "ref-logps",
        "--groups",
        str(d / "groups.jsonl"),
        "--model",
        str(d / "sft"),
        "--output",
        str(output),
        "--batch_size",
        "5",  # 24 groups in rounds of 2 x 5: the last round leaves rank 1 without a batch
        processes=processes,
    )


def test_sft_with_two_processes_matches_one(tmp_path):
    model_dir, tokens = build_speech_lm(tmp_path)
    options = ["--task", "both", "--max_steps", "4", "--learning_rate", "3e-3", "--logging_steps", "1"]
    options += ["--lr_scheduler_type", "constant", "--data", str(tokens), "--model", str(model_dir)]
    run_ok("sft", *options, "--batch_size", "4", "--output_dir", str(tmp_path / "one"))
    run_ok("sft", *options, "--batch_size", "2", "--output_dir", str(tmp_path / "two"), processes=2)

    one, two = logged(tmp_path / "one" / "metrics.jsonl"), logged(tmp_path / "two" / "metrics.jsonl")
    assert sorted(two) == [1, 2, 3, 4]
    assert_same_log(one, two, ("loss", "grad_norm"))
    for name in ("model.safetensors", "train_summary.json", "audio_vocab.json", "tokenizer_config.json"):
        assert (tmp_path / "two" / name).exists(), name
    assert json.loads((tmp_path / "two" / "train_summary.json").read_text())["steps"] == 4


def test_ref_logps_sharded_over_two_processes_match_one_and_resume(groups_dir, tmp_path):
    ref_logps(groups_dir, tmp_path / "one.jsonl", processes=1)
    ref_logps(groups_dir, tmp_path / "two.jsonl", processes=2)
    one, _ = load_groups(tmp_path / "one.jsonl")
    two, _ = load_groups(tmp_path / "two.jsonl")
    assert [g.id for g in two] == [f"g{i}" for i in range(24)]  # merged in the input order
    for a, b in zip(one, two, strict=True):
        assert (b.ref_chosen_len, b.ref_rejected_len) == (a.ref_chosen_len, a.ref_rejected_len)
        assert b.ref_chosen_logp == pytest.approx(a.ref_chosen_logp, abs=1e-5)
        assert b.ref_rejected_logp == pytest.approx(a.ref_rejected_logp, abs=1e-5)

    # killed after 7 groups, in the middle of the 8th line: two processes continue after the 7th
    lines = (tmp_path / "one.jsonl").read_text().splitlines()
    resumed = tmp_path / "resumed.jsonl"
    Path(str(resumed) + ".partial").write_text("\n".join(lines[:7]) + "\n" + lines[7][:20])
    log = ref_logps(groups_dir, resumed, processes=2)
    assert "resuming after 7 finished groups" in log
    again = [json.loads(line) for line in resumed.read_text().splitlines()]
    assert [r["id"] for r in again] == [f"g{i}" for i in range(24)]
    for r, line in zip(again, lines, strict=True):
        assert r["ref_rejected_logp"] == pytest.approx(json.loads(line)["ref_rejected_logp"], abs=1e-5)
    (groups_dir / "groups.ref.jsonl").write_text((tmp_path / "one.jsonl").read_text())


TRAIN = ["--loss", "lpo", "--r2", "2.0", "--learning_rate", "1e-3", "--max_steps", "6"]
TRAIN += ["--logging_steps", "1", "--save_steps", "3", "--seed", "3"]


def test_train_with_two_processes_matches_one(groups_dir):
    if not (groups_dir / "groups.ref.jsonl").exists():
        ref_logps(groups_dir, groups_dir / "groups.ref.jsonl", processes=1)
    common = ["--groups", str(groups_dir / "groups.ref.jsonl"), "--model", str(groups_dir / "sft"), *TRAIN]
    one, two = groups_dir / "train_one", groups_dir / "train_two"
    run_ok("train", *common, "--batch_size", "4", "--output_dir", str(one))
    run_ok("train", *common, "--batch_size", "2", "--output_dir", str(two), processes=2)

    # metrics are means over the global batch (4 groups, 12 pairs): one rank's 2 groups would differ
    metrics = ("loss", "grad_norm", "rewards/margins", "rewards/accuracies", "logps/rejected", "grad/ratio")
    assert_same_log(logged(one / "metrics.jsonl"), logged(two / "metrics.jsonl"), metrics)
    summary = json.loads((two / "train_summary.json").read_text())
    assert summary["steps"] == 6 and summary["loss"]["r2"] == 2.0
    assert (two / "model.safetensors").exists() and (two / "checkpoint-3" / "model.safetensors").exists()


def test_a_non_finite_loss_on_one_rank_stops_both(tmp_path):
    """A model whose input embedding for one token is NaN: the group holding that token has a NaN loss on
    whichever rank gets it; the other rank's groups are finite. Both stop, with the step and the group."""
    poisoned = VOCAB  # an id no random group uses
    config = tiny_qwen2_config(VOCAB + 1, hidden_size=64, num_layers=2)
    config.tie_word_embeddings = False  # NaN only in the input row, not in the LM head every token sees
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    with torch.no_grad():
        model.get_input_embeddings().weight[poisoned] = float("nan")
    model.save_pretrained(tmp_path / "model")
    groups = random_groups(k=2, seed=1)
    groups[2].chosen_ids[0] = poisoned
    write_groups(tmp_path / "groups.jsonl", groups)

    result = run(
        "train",
        "--groups",
        str(tmp_path / "groups.jsonl"),
        "--model",
        str(tmp_path / "model"),
        "--output_dir",
        str(tmp_path / "out"),
        "--loss",
        "simpo",  # reference-free: the groups need no reference log-probs
        "--batch_size",
        "2",
        "--max_steps",
        "2",
        processes=2,
        timeout=300,
    )
    assert result.returncode != 0
    raised = re.findall(r"NonFiniteLossError: non-finite loss at step (\d+); groups \['g2'\]", result.stdout)
    assert len(raised) == 2, result.stdout[-5000:]  # both ranks, the same step
    assert len(set(raised)) == 1
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_deepspeed_reference_config_as_trl_prepares_it():
    from speech_lpo.trainer import deepspeed_reference_config

    train = {
        "zero_optimization": {"stage": 3, "reduce_bucket_size": "auto", "stage3_prefetch_bucket_size": 1000},
        "optimizer": {"type": "AdamW"},
        "train_batch_size": 8,
        "train_micro_batch_size_per_gpu": 2,
    }
    zero3 = deepspeed_reference_config(train, hidden_size=64)
    # sharded like the policy; "auto" buckets sized from the hidden size, set values kept; no optimizer
    assert zero3["zero_optimization"] == {
        "stage": 3,
        "reduce_bucket_size": 64 * 64,
        "stage3_prefetch_bucket_size": 1000,
        "stage3_param_persistence_threshold": 640,
    }
    assert "optimizer" not in zero3 and "train_batch_size" not in zero3
    assert zero3["train_micro_batch_size_per_gpu"] == 2
    assert train["zero_optimization"]["reduce_bucket_size"] == "auto"  # the training config is untouched
    # ZeRO-2: the reference is whole on every rank
    zero2 = deepspeed_reference_config({**train, "zero_optimization": {"stage": 2}}, hidden_size=64)
    assert zero2["zero_optimization"] == {"stage": 0}


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero_with_a_live_reference_matches_one_process(stage, tmp_path):
    """ZeRO-2 (reference whole on each rank) and ZeRO-3 (reference sharded) with `--ref_model`: the same
    losses and rewards as one process. Every group is the same group, so the comparison holds whichever
    rank gets which group: on CPU accelerate gives both DeepSpeed ranks the whole dataset (its device
    detection finds no accelerator for DeepSpeed and reports one process), which this test does not cover."""
    pytest.importorskip("deepspeed")
    tiny_qwen2(VOCAB, hidden_size=64, num_layers=2).save_pretrained(tmp_path / "sft")
    group = random_groups(k=3, seed=0)[1]
    groups = [dataclasses.replace(group, id=f"g{i}") for i in range(8)]
    write_groups(tmp_path / "groups.jsonl", groups)
    config = {
        "zero_optimization": {"stage": stage, "reduce_bucket_size": "auto"},
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "train_micro_batch_size_per_gpu": "auto",
    }
    if stage == 3:
        config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] = True
    (tmp_path / "ds.json").write_text(json.dumps(config))
    common = ["--groups", str(tmp_path / "groups.jsonl"), "--model", str(tmp_path / "sft")]
    common += ["--ref_model", str(tmp_path / "sft"), "--batch_size", "2", "--learning_rate", "1e-3"]
    common += ["--max_steps", "3", "--logging_steps", "1"]
    run_ok("train", *common, "--output_dir", str(tmp_path / "one"))
    deepspeed = ["--deepspeed", str(tmp_path / "ds.json")]
    run_ok("train", *common, "--output_dir", str(tmp_path / "ds"), *deepspeed, processes=2, multi_cpu=False)

    def by_step(path: Path) -> dict[int, dict]:
        return {r["step"]: r for r in map(json.loads, path.read_text().splitlines()) if "loss" in r}

    one, ds = by_step(tmp_path / "one" / "metrics.jsonl"), by_step(tmp_path / "ds" / "metrics.jsonl")
    assert one[1]["rewards/margins"] == 0.0  # the reference is the policy at step 1
    assert ds[3]["rewards/margins"] != 0.0  # and not after it: the reference engine stayed frozen
    assert_same_log(one, ds, ("loss", "grad_norm", "rewards/chosen", "rewards/margins", "logps/rejected"))
    assert (tmp_path / "ds" / "model.safetensors").exists()
