"""Mixed precision as accelerate and TRL do it: float32 master weights with bf16 autocast, reference
log-probs in the training precision, and what pure bf16 weights do to a small learning rate."""

import argparse
import json
import logging
import random
import subprocess

import pytest
import torch

from speech_lpo.groups import PreferenceGroup, load_groups, write_groups
from speech_lpo.modeling import tiny_qwen2
from speech_lpo.ref_logps import add_arguments, with_ref_logps
from speech_lpo.trainer import PreferenceConfig, PreferenceTrainer, ReferenceMismatchError
from speech_lpo.training_args import forward_precision, rounded_away_share, warn_if_updates_round_away
from tests.test_train_cli import cli

VOCAB = 211
AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "pure_bf16": None}


def groups(n: int = 8, k: int = 3) -> list[PreferenceGroup]:
    rng = random.Random(0)

    def ids(length: int) -> list[int]:
        return [rng.randrange(1, VOCAB) for _ in range(rng.randint(length // 2, length))]

    return [PreferenceGroup(f"g{i}", "tts", ids(12), ids(24), [ids(24) for _ in range(k)]) for i in range(n)]


def model_in(precision: str) -> torch.nn.Module:
    model = tiny_qwen2(VOCAB, hidden_size=64)
    return model.to(torch.bfloat16) if precision == "pure_bf16" else model


def train(model, data, precision: str, out, batch_size: int = 4, **kwargs) -> list[dict]:
    args = PreferenceConfig(
        output_dir=str(out),
        bf16=precision == "bf16",
        use_cpu=True,
        per_device_train_batch_size=batch_size,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        metrics_file=str(out / "metrics.jsonl"),
        **kwargs,
    )
    PreferenceTrainer(model=model, args=args, train_dataset=data).train()
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def step0_metrics(ref_precision: str, train_precision: str, tmp_path) -> dict:
    """The metrics of the first training step, against reference log-probs stored in ``ref_precision``."""
    model = model_in(ref_precision)
    data = list(with_ref_logps(model, groups(4), batch_size=4, autocast=AUTOCAST[ref_precision]))
    policy = model_in(train_precision)
    metrics = train(policy, data, train_precision, tmp_path, max_steps=1, learning_rate=0.0)
    return metrics[0]


@pytest.mark.parametrize("precision", ["fp32", "bf16", "pure_bf16"])
def test_logratios_are_zero_at_step_0_when_ref_logps_use_the_training_precision(precision, tmp_path):
    first = step0_metrics(precision, precision, tmp_path)
    assert first["logratio_per_token/chosen"] == first["logratio_per_token/rejected"] == 0.0
    assert first["positive_active"] == 0.0  # LPO's positive term (x1 < 0) is off
    # dL/dx1 = 4*beta*r1/(r1+r2)*sgn(D) with D = -1/(2beta) < 0, and TTS groups' r2 = 0.4
    assert first["grad/x1"] == pytest.approx(-4 * 0.2 / 1.4)


def test_a_float32_reference_against_bf16_training_stops_at_step_0_naming_both_settings(tmp_path):
    # the mismatch that ref-logps in the training precision avoids: rounding alone moves x1 below 0 for some
    # pairs, and gamma*max(0, -x1) would then dominate their gradient
    with pytest.raises(ReferenceMismatchError) as stop:
        step0_metrics("fp32", "bf16", tmp_path)
    message = str(stop.value)
    assert "ref-logps ran with weights float32, autocast off, groups_per_batch 4" in message
    assert "train runs with weights float32, autocast bfloat16, groups_per_batch 4" in message
    assert "--bf16" in message and "tolerance 1e-05" in message


def test_bf16_weights_against_bf16_autocast_stop_too(tmp_path):
    # DeepSpeed bf16 (bf16 weights, no autocast) against accelerate's bf16 autocast: the CPU probe
    with pytest.raises(ReferenceMismatchError, match="weights bfloat16, autocast off"):
        step0_metrics("pure_bf16", "bf16", tmp_path)


def changed_share(precision: str, tmp_path) -> float:
    model = model_in(precision)
    # one group per batch, as the paper presets: bf16 rounding depends on the batch's other groups
    data = list(with_ref_logps(model, groups(20), batch_size=1, autocast=AUTOCAST[precision]))
    before = [p.detach().clone() for p in model.parameters()]
    train(model, data, precision, tmp_path, 1, max_steps=10, learning_rate=2e-7, lr_scheduler_type="constant")
    changed = sum(int((p.detach() != b).sum()) for p, b in zip(model.parameters(), before, strict=True))
    return changed / sum(b.numel() for b in before)


def test_bf16_autocast_moves_weights_as_fp32_does_at_the_papers_learning_rate(tmp_path):
    shares = {p: changed_share(p, tmp_path / p) for p in ("fp32", "bf16", "pure_bf16")}
    assert shares["fp32"] > 0.9, shares
    assert abs(shares["bf16"] - shares["fp32"]) < 0.01, shares
    # bf16 weights: an update of 2e-7 is under half a bf16 step for nearly every weight and rounds away
    assert shares["pure_bf16"] < 0.05, shares
    assert rounded_away_share(model_in("pure_bf16"), 2e-7) > 0.95


def test_pure_bf16_warns_at_small_learning_rates(caplog):
    model = model_in("pure_bf16")
    with caplog.at_level(logging.WARNING):
        warn_if_updates_round_away(model, 1e-2)
    assert not caplog.records
    with caplog.at_level(logging.WARNING):
        warn_if_updates_round_away(model, 2e-7)
    assert "rounds away" in caplog.text and "--bf16" in caplog.text


def test_ref_logps_cli_computes_in_the_precision_asked(tmp_path):
    model, data = model_in("fp32"), groups(4)
    model.save_pretrained(tmp_path / "sft")
    write_groups(tmp_path / "groups.jsonl", data)
    stored = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / f"{precision}.jsonl"
        flags = [] if precision == "fp32" else [f"--{precision}"]
        cmd = ["ref-logps", "--groups", str(tmp_path / "groups.jsonl"), "--model", str(tmp_path / "sft")]
        subprocess.run(cli(*cmd, "--output", str(out), "--device", "cpu", *flags), check=True)
        stored[precision] = [g.ref_rejected_logp for g in load_groups(out)[0]]
        expected = with_ref_logps(model, groups(4), batch_size=4, autocast=AUTOCAST[precision])
        assert stored[precision] == [g.ref_rejected_logp for g in expected]
    assert stored["fp32"] != stored["bf16"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the error is for machines without a CUDA GPU")
def test_fp16_without_a_gpu_is_a_clear_error(tmp_path):
    cmd = ["ref-logps", "--groups", "g.jsonl", "--model", "m", "--output", str(tmp_path / "o.jsonl")]
    proc = subprocess.run(cli(*cmd, "--fp16"), capture_output=True, text=True)
    assert proc.returncode != 0 and "--fp16 needs a CUDA GPU" in proc.stderr


def test_deepspeed_bf16_is_bf16_weights_without_autocast():
    # DeepSpeed casts the model to bf16 and accelerate adds no autocast under it: ref-logps must do the same
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    common = ["--groups", "g.jsonl", "--model", "m", "--output", "o.jsonl"]
    assert forward_precision(parser.parse_args([*common, "--bf16"])) == (torch.float32, torch.bfloat16)
    deepspeed = parser.parse_args([*common, "--bf16", "--deepspeed", "recipes/tts/conf/ds_zero2.json"])
    assert forward_precision(deepspeed) == (torch.bfloat16, None)
    assert forward_precision(parser.parse_args(common)) == (torch.float32, None)
