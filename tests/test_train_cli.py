"""The ref-logps and train stages through the CLI: stored references, metrics, kill and resume."""

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from speech_lpo.groups import load_groups
from speech_lpo.training_args import resume_checkpoint
from tests.test_packing import write_training_dir


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "speech_lpo.cli", *args]


def ref_logps(workdir: Path, output: Path, *options: str) -> None:
    groups, model = str(workdir / "groups.jsonl"), str(workdir / "sft")
    subprocess.run(
        cli("ref-logps", "--groups", groups, "--model", model, "--output", str(output), *options), check=True
    )


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    d = write_training_dir(tmp_path_factory.mktemp("train"))
    ref_logps(d, d / "groups.ref.jsonl", "--batch_size", "5")
    return d


def read_metrics(path: Path) -> dict[int, dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return {r["step"]: r for r in rows if "loss" in r}


def test_ref_logps_are_stored_and_match_unpacked(workdir, tmp_path):
    packed, _ = load_groups(workdir / "groups.ref.jsonl")
    assert len(packed) == 24 and all(g.has_ref for g in packed)
    ref_logps(workdir, tmp_path / "unpacked.jsonl", "--no_shared_prefix")
    unpacked, _ = load_groups(tmp_path / "unpacked.jsonl")
    for a, b in zip(packed, unpacked, strict=True):
        assert a.ref_chosen_len == len(a.chosen_ids)
        assert a.ref_chosen_logp == pytest.approx(b.ref_chosen_logp, abs=1e-4)
        assert a.ref_rejected_logp == pytest.approx(b.ref_rejected_logp, abs=1e-4)


def test_ref_logps_resumes_after_a_torn_line(workdir, tmp_path):
    out = tmp_path / "ref.jsonl"
    full = (workdir / "groups.ref.jsonl").read_text().splitlines()
    # a run killed after 7 groups, in the middle of writing the 8th
    Path(str(out) + ".partial").write_text("\n".join(full[:7]) + "\n" + full[7][:20])
    ref_logps(workdir, out, "--batch_size", "5")
    resumed = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in resumed] == [json.loads(line)["id"] for line in full]
    assert resumed[10]["ref_rejected_logp"] == pytest.approx(
        json.loads(full[10])["ref_rejected_logp"], abs=1e-5
    )


TRAIN = (
    "--loss",
    "lpo",
    "--r2",
    "2.0",
    "--learning_rate",
    "1e-3",
    "--batch_size",
    "4",
    "--max_steps",
    "60",
    "--save_steps",
    "20",
    "--logging_steps",
    "1",
    "--seed",
    "3",
)


def test_lpo_training_logs_metrics(workdir):
    out = workdir / "run_full"
    subprocess.run(
        cli(
            "train",
            "--groups",
            str(workdir / "groups.ref.jsonl"),
            "--model",
            str(workdir / "sft"),
            "--output_dir",
            str(out),
            *TRAIN,
        ),
        check=True,
    )
    metrics = read_metrics(out / "metrics.jsonl")
    assert sorted(metrics) == list(range(1, 61))
    first, last = metrics[1], metrics[60]
    for key in (
        "rewards/chosen",
        "rewards/rejected",
        "rewards/margins",
        "rewards/accuracies",
        "logps/chosen",
        "logps/rejected",
        "logps_per_token/chosen",
        "grad/x1",
        "grad/x2",
        "grad/ratio",
        "positive_active",
    ):
        assert key in last, key
    # training separates chosen from rejected: over the last 10 steps, rejected log-ratios fell below the
    # reference and the margin grew (single steps see different groups, so compare window means)
    tail = [metrics[s] for s in range(51, 61)]
    assert sum(m["rewards/rejected"] for m in tail) / 10 < -0.02
    assert sum(m["rewards/margins"] for m in tail) / 10 > first["rewards/margins"] + 0.05
    # at step 1 the policy is the reference: x1 = 0, positive term off, dL/dx2 / dL/dx1 = r2 / r1
    assert first["grad/ratio"] == pytest.approx(2.0, rel=1e-4)
    assert (out / "model.safetensors").exists()


def test_sigkill_and_resume_reaches_the_same_losses(workdir):
    out = workdir / "run_killed"
    command = cli(
        "train",
        "--groups",
        str(workdir / "groups.ref.jsonl"),
        "--model",
        str(workdir / "sft"),
        "--output_dir",
        str(out),
        *TRAIN,
    )
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics_file = out / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if metrics_file.exists() and max(read_metrics(metrics_file), default=0) >= 22:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "training finished before it could be killed"
    assert (out / "checkpoint-20").is_dir()

    subprocess.run(command, check=True)
    full = read_metrics(workdir / "run_full" / "metrics.jsonl")
    resumed = read_metrics(metrics_file)
    assert sorted(resumed) == list(range(1, 61))
    for step in range(21, 61):
        assert resumed[step]["loss"] == pytest.approx(full[step]["loss"], abs=1e-5), step


def test_metrics_file_keeps_entries_up_to_the_restored_step_and_drops_a_torn_line(tmp_path):
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from speech_lpo.trainer import MetricsJsonlCallback

    path = tmp_path / "metrics.jsonl"
    path.write_text(
        "".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in (5, 10, 15, 20)) + '{"step": 2'
    )
    state = TrainerState(global_step=10)
    MetricsJsonlCallback(path).on_train_begin(TrainingArguments(str(tmp_path)), state, TrainerControl())
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [5, 10]


def test_model_only_checkpoints_start_over(tmp_path, caplog):
    # they hold no optimiser state, and DeepSpeed cannot resume from them at all
    (tmp_path / "checkpoint-3").mkdir()
    (tmp_path / "checkpoint-3" / "trainer_state.json").write_text("{}")
    resumable = argparse.Namespace(output_dir=str(tmp_path), save_only_model=False)
    assert resume_checkpoint(resumable) == str(tmp_path / "checkpoint-3")
    with caplog.at_level(logging.WARNING):
        assert resume_checkpoint(argparse.Namespace(output_dir=str(tmp_path), save_only_model=True)) is None
    assert "starting over" in caplog.text
