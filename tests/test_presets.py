"""Every recipe's stage configs (conf/, conf/ci/, conf/paper/) parse into their stage's options, and the
paper preset holds Table 9: what the Trainer gets from it, the learning-rate floor, the pairs per step."""

import argparse
import importlib
from pathlib import Path

import pytest
import torch
from transformers import get_scheduler

from speech_lpo.cli import STAGES, _add_spelling_aliases, _apply_config
from speech_lpo.training_args import trainer_kwargs

RECIPES = Path(__file__).parents[1] / "recipes"
STAGE_OF = {
    "corpus": "synth-corpus",
    "model": "build-model",
    "sft": "sft",
    "generate": "generate",
    "perturb": "make-pairs",
    "ref_logps": "ref-logps",
    "lpo": "train",
    "dpo": "train",
    "decode": "decode",
    "synthesize": "synthesize",
}
REQUIRED = {
    "train": ["--groups", "g.jsonl", "--model", "m", "--output_dir", "out"],
    "sft": ["--data", "d", "--model", "m", "--output_dir", "out"],
    "ref-logps": ["--groups", "g.jsonl", "--model", "m", "--output", "o.jsonl"],
}


def stage_options(stage: str, config: Path) -> argparse.Namespace | None:
    """The options a stage reads from ``config`` (an unknown key is an error); None for stages whose
    required options this test does not fill in."""
    parser = argparse.ArgumentParser()
    importlib.import_module(STAGES[stage]).add_arguments(parser)
    _add_spelling_aliases(parser)
    _apply_config(parser, str(config))
    return parser.parse_args(REQUIRED[stage]) if stage in REQUIRED else None


@pytest.mark.parametrize("recipe", ["aishell", "librispeech", "tts"])
@pytest.mark.parametrize("conf_dir", ["conf", "conf/ci", "conf/paper"])
def test_every_stage_config_parses(recipe, conf_dir):
    directory = RECIPES / recipe / conf_dir
    configs = sorted(p for p in directory.glob("*.yaml") if p.stem in STAGE_OF)
    # the stages the recipe reads from --conf_dir are all there, in every conf dir
    expected = {"corpus", "model", "sft", "generate", "ref_logps", "lpo", "dpo"}
    expected |= {"synthesize"} if recipe == "tts" else {"decode", "perturb"}
    assert {p.stem for p in configs} == expected
    for config in configs:
        options = stage_options(STAGE_OF[config.stem], config)
        if options is not None and STAGE_OF[config.stem] in ("train", "sft"):
            trainer_kwargs(options, has_eval=False)  # the Trainer's arguments build from it


@pytest.mark.parametrize("recipe", ["aishell", "librispeech", "tts"])
@pytest.mark.parametrize("conf_dir", ["conf", "conf/ci", "conf/paper"])
def test_ref_logps_computes_in_the_training_precision_and_batches(recipe, conf_dir):
    # train stops at step 0 otherwise (speech_lpo.trainer.STEP0_TOLERANCE)
    from speech_lpo.training_args import forward_precision

    directory = RECIPES / recipe / conf_dir
    ref = stage_options("ref-logps", directory / "ref_logps.yaml")
    for name in ("lpo", "dpo"):
        train = stage_options("train", directory / f"{name}.yaml")
        assert forward_precision(ref) == forward_precision(train), name
        assert ref.batch_size == train.batch_size, name
        assert ref.no_shared_prefix == train.no_shared_prefix, name


def paper(recipe: str, name: str) -> argparse.Namespace:
    return stage_options(STAGE_OF[name], RECIPES / recipe / "conf/paper" / f"{name}.yaml")


@pytest.mark.parametrize(("recipe", "pairs"), [("aishell", 24), ("librispeech", 24), ("tts", 120)])
def test_paper_preset_is_table_9(recipe, pairs):
    from speech_lpo.train import build_config

    for name in ("lpo", "dpo"):
        config = build_config(paper(recipe, name))
        assert config.beta == {"lpo": 0.2, "dpo": 0.1}[name]
        assert config.learning_rate == 2e-7 and config.adam_beta2 == 0.95 and config.weight_decay == 0.1
        assert config.bf16 and not config.fp16  # float32 master weights, bf16 autocast
        # fits 8 x 80 GB at 7B (docs/memory.md): recomputed activations, capped groups, model-only checkpoints
        options = paper(recipe, name)
        assert config.gradient_checkpointing and options.max_length == (12288 if recipe == "tts" else 4096)
        assert config.save_only_model and config.save_total_limit == 3  # one per epoch (Figure 2)
        # 3 rejected per group (3 candidates or perturbations per prompt), 8 GPUs
        assert config.per_device_train_batch_size * config.gradient_accumulation_steps * 8 * 3 == pairs
        # cosine decay from 2e-7 to a floor of 1e-7
        optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=config.learning_rate)
        kwargs = config.lr_scheduler_kwargs
        scheduler = get_scheduler(
            config.lr_scheduler_type, optimizer, 10, 1000, scheduler_specific_kwargs=kwargs
        )
        for _ in range(1000):
            optimizer.step()
            scheduler.step()
        assert scheduler.get_last_lr()[0] == pytest.approx(1e-7)
    lpo = build_config(paper(recipe, "lpo"))
    assert (lpo.gamma, lpo.r1, lpo.lpo_variant) == (10.0, 1.0, "ste")
    assert lpo.r2 == (0.4 if recipe == "tts" else None)  # ASR: from the recipe's --r2_grid
    sft = paper(recipe, "sft")
    assert sft.bf16 and sft.learning_rate == 2e-5 and sft.adam_beta2 == 0.95
    assert sft.gradient_checkpointing and sft.save_only_model and sft.save_total_limit == 1


def test_min_lr_goes_with_its_scheduler():
    options = paper("tts", "lpo")
    options.lr_scheduler_type = "cosine"
    with pytest.raises(SystemExit, match="--min_lr goes with"):
        trainer_kwargs(options, has_eval=False)


def test_warmup_stable_decay_holds_the_peak_until_its_decay():
    options = stage_options("sft", RECIPES / "aishell/conf/sft.yaml")
    options.lr_scheduler_type, options.decay_steps, options.warmup_steps = "warmup_stable_decay", 30, 10
    kwargs = trainer_kwargs(options, has_eval=False)
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=kwargs["learning_rate"])
    scheduler = get_scheduler(
        kwargs["lr_scheduler_type"],
        optimizer,
        10,
        100,
        scheduler_specific_kwargs=kwargs["lr_scheduler_kwargs"],
    )
    rates = []
    for _ in range(100):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert rates[10:70] == [kwargs["learning_rate"]] * 60  # the peak, warm-up to the decay's start
    assert rates[70] == kwargs["learning_rate"] and rates[-1] < 0.01 * kwargs["learning_rate"]
    options.decay_steps = None
    with pytest.raises(SystemExit, match="--decay_steps goes with"):
        trainer_kwargs(options, has_eval=False)


def test_train_states_the_pairs_per_optimiser_step():
    from speech_lpo.groups import PreferenceGroup
    from speech_lpo.train import build_config, pairs_per_step

    config = build_config(paper("tts", "lpo"))
    groups = [PreferenceGroup(f"g{i}", "tts", [1], [2], [[3], [4], [5]]) for i in range(4)]
    # one process here; the preset's 120 is with 8
    assert pairs_per_step(config, groups) == (
        "pairs per optimiser step: 1 groups x 5 accumulation x 1 processes x 3 rejected = 15"
    )
