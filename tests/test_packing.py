"""Packed (shared-prefix) and unpacked (one row per pair) layouts give the same log-probs and gradients."""

import random

import pytest
import torch

from speech_lpo.groups import PreferenceGroup
from speech_lpo.modeling import tiny_qwen2
from speech_lpo.packing import collate_groups, packed_attention_mask, response_logps

VOCAB = 97


def random_groups(k: int, seed: int = 0) -> list[PreferenceGroup]:
    """Groups whose prompts and responses all differ in length within the batch."""
    rng = random.Random(seed)

    def ids(n: int) -> list[int]:
        return [rng.randrange(1, VOCAB) for _ in range(n)]

    return [
        PreferenceGroup(
            id=f"g{i}",
            task="text",
            prompt_ids=ids(rng.randint(3, 12)),
            chosen_ids=ids(rng.randint(1, 9)),
            rejected_ids=[ids(rng.randint(1, 9)) for _ in range(k)],
        )
        for i in range(4)
    ]


def pair_logps(model, groups, shared_prefix):
    batch = collate_groups(groups, shared_prefix=shared_prefix)
    logps = response_logps(model, batch)
    return logps[batch["pair_chosen"]], logps[batch["pair_rejected"]]


def brute_force_logp(model, prompt, response):
    """Log-prob of a response from a plain forward pass of prompt + response, no batching at all."""
    ids = torch.tensor([prompt + response])
    logits = model(input_ids=ids).logits[0].float().log_softmax(-1)
    return sum(logits[len(prompt) - 1 + t, tok].item() for t, tok in enumerate(response))


@pytest.mark.parametrize("k", [1, 3])
def test_packed_equals_unpacked_logps_and_grads(k):
    torch.manual_seed(0)
    model = tiny_qwen2(VOCAB, hidden_size=32)
    groups = random_groups(k)

    grads = {}
    values = {}
    for shared in (True, False):
        model.zero_grad()
        chosen, rejected = pair_logps(model, groups, shared)
        (chosen.sum() - 0.5 * rejected.sum()).backward()
        values[shared] = (chosen.detach(), rejected.detach())
        grads[shared] = torch.cat([p.grad.flatten() for p in model.parameters()])

    assert len(values[True][0]) == 4 * k
    torch.testing.assert_close(values[True][0], values[False][0], atol=1e-5, rtol=0)
    torch.testing.assert_close(values[True][1], values[False][1], atol=1e-5, rtol=0)
    rel = (grads[True] - grads[False]).norm() / grads[False].norm()
    assert rel < 1e-4, f"relative gradient difference {rel:.2e}"

    g = groups[1]
    expected = brute_force_logp(model, g.prompt_ids, g.rejected_ids[-1])
    assert values[True][1][2 * k - 1].item() == pytest.approx(expected, abs=1e-4)


def test_packed_mask_isolates_responses():
    seg = torch.tensor([[-1, 0, 0, 1, 1, 2, 2, 2]])
    allowed = packed_attention_mask(seg, torch.float32)[0, 0] == 0
    # a rejected token sees the prompt and its own earlier tokens, never the chosen response
    assert allowed[6].tolist() == [False, True, True, False, False, True, True, False]
    # the chosen response never sees a rejected one, and the left pad sees only itself
    assert allowed[4].tolist() == [False, True, True, True, True, False, False, False]
    assert allowed[0].tolist() == [True] + [False] * 7


def test_logits_before_prompt_end_are_not_computed():
    groups = random_groups(3)
    batch = collate_groups(groups, shared_prefix=True)
    prompt_end = max(len(g.prompt_ids) for g in groups)
    assert batch["keep_start"] == prompt_end - 1
    assert batch["tok_pred"].min() == 0
    # every first response token of a group is predicted from the shared last prompt column
    starts = torch.cumsum(torch.cat([torch.tensor([0]), batch["resp_len"][:-1]]), 0)
    assert (batch["tok_pred"][starts] == 0).all()
