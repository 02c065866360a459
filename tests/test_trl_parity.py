"""Our DPO equals TRL's DPOTrainer on the same tiny model and batch: loss and every parameter gradient."""

import copy

import pytest
import torch
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast
from trl import DPOConfig, DPOTrainer
from trl.trainer.dpo_trainer import DataCollatorForPreference

from speech_lpo.groups import PreferenceGroup
from speech_lpo.modeling import tiny_qwen2
from speech_lpo.trainer import PreferenceConfig, PreferenceTrainer
from tests.test_packing import random_groups

VOCAB = 97


def word_tokenizer() -> PreTrainedTokenizerFast:
    """A real (word-level) HF tokenizer; TRL needs one to build the trainer."""
    vocab = {"<pad>": 0, "<eos>": 1, **{f"w{i}": i for i in range(2, VOCAB)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")


def grads_of(model) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def trl_loss_and_grads(policy, ref, groups: list[PreferenceGroup], tmp_path):
    text = Dataset.from_dict({"prompt": ["w2 w3"], "chosen": ["w4"], "rejected": ["w5"]})
    args = DPOConfig(output_dir=str(tmp_path / "trl"), beta=0.1, report_to=[], use_cpu=True, bf16=False)
    trainer = DPOTrainer(
        model=policy, ref_model=ref, args=args, train_dataset=text, processing_class=word_tokenizer()
    )
    examples = [
        {"prompt_ids": g.prompt_ids, "chosen_ids": g.chosen_ids, "rejected_ids": g.rejected_ids[0]}
        for g in groups
    ]
    batch = DataCollatorForPreference(pad_token_id=0)(examples)
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    return loss.item(), grads_of(policy)


@pytest.mark.parametrize("shared_prefix", [True, False])
def test_dpo_matches_trl(tmp_path, shared_prefix):
    base = tiny_qwen2(VOCAB, hidden_size=32)
    groups = random_groups(k=1, seed=5)
    # a reference that differs from the policy, so the log-ratios are not all zero
    ref = copy.deepcopy(base)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))

    trl_loss, trl_grads = trl_loss_and_grads(copy.deepcopy(base), copy.deepcopy(ref), groups, tmp_path)

    policy = copy.deepcopy(base)
    args = PreferenceConfig(
        output_dir=str(tmp_path / "ours"),
        loss_type="dpo",
        beta=0.1,
        shared_prefix=shared_prefix,
        report_to=[],
        use_cpu=True,
    )
    trainer = PreferenceTrainer(model=policy, args=args, train_dataset=groups, ref_model=copy.deepcopy(ref))
    policy.train()
    batch = trainer.data_collator(groups)
    loss = trainer.compute_loss(policy, batch)
    loss.backward()

    assert loss.item() == pytest.approx(trl_loss, abs=1e-5)
    assert abs(loss.item() - 0.6931) > 1e-3, "reference equals policy: the comparison would be vacuous"
    torch.testing.assert_close(grads_of(policy), trl_grads, atol=1e-5, rtol=1e-4)
