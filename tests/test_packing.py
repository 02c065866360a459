"""Packed (shared-prefix) and unpacked (one row per pair) layouts give the same log-probs and gradients."""

import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import Qwen2ForCausalLM

from speech_lpo.groups import PreferenceGroup, write_groups
from speech_lpo.modeling import tiny_qwen2, tiny_qwen2_config
from speech_lpo.packing import (
    collate_groups,
    packed_attention_mask,
    packed_block_mask,
    response_logps,
    token_logps,
)

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


def write_training_dir(d: Path) -> Path:
    """A tiny model in ``d/sft`` and 36 random groups (k = 3, ids g0..g35) in ``d/groups.jsonl``: what the
    training CLI tests start from."""
    tiny_qwen2(VOCAB, hidden_size=64, num_layers=2).save_pretrained(d / "sft")
    groups = [g for seed in range(6) for g in random_groups(k=3, seed=seed)]
    for i, g in enumerate(groups):
        g.id = f"g{i}"
    write_groups(d / "groups.jsonl", groups)
    return d


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


def full_logits_logps(model, batch):
    """The log-probs from the logits of every column, as the trainer computed them before chunking."""
    if "segment_ids" in batch:
        mask = packed_attention_mask(batch["segment_ids"], torch.float32)
        kwargs = {"attention_mask": mask, "position_ids": batch["position_ids"]}
    else:
        kwargs = {"attention_mask": batch["attention_mask"]}
    logits = model(input_ids=batch["input_ids"], **kwargs).logits
    picked = logits[batch["tok_row"], batch["tok_pred"]].float()
    token = picked.gather(1, batch["tok_target"][:, None]).squeeze(1) - picked.logsumexp(-1)
    return torch.zeros(len(batch["resp_len"])).index_add_(0, batch["tok_resp"], token)


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("shared_prefix", [True, False])
@pytest.mark.parametrize("padding_idx", [None, 5])  # 5: an id the groups use
def test_chunked_lm_head_equals_full_logits(tied, shared_prefix, padding_idx):
    # tied: the deferred head gradient adds the embedding's rows itself, as nn.Embedding would (no
    # embedding gradient for its padding_idx row, wherever that id occurs)
    config = tiny_qwen2_config(VOCAB, hidden_size=32)
    config.tie_word_embeddings, config.pad_token_id = tied, padding_idx
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied
    assert model.model.embed_tokens.padding_idx == padding_idx
    batch = collate_groups(random_groups(3), shared_prefix=shared_prefix)
    n_tokens = len(batch["tok_target"])
    weights = torch.randn(len(batch["resp_len"]))  # a loss that weighs every response differently

    results = {}
    for name, fn in {
        "full": full_logits_logps,
        "chunk 5": lambda m, b: response_logps(m, b, chunk_size=5),  # several chunks and a ragged last one
        "one chunk": lambda m, b: response_logps(m, b, chunk_size=n_tokens),
    }.items():
        model.zero_grad()
        logps = fn(model, batch)
        (logps * weights).sum().backward()
        results[name] = (logps.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})

    values, grads = results["full"]
    for name in ("chunk 5", "one chunk"):
        torch.testing.assert_close(results[name][0], values, atol=1e-5, rtol=0, msg=name)
        for param, grad in grads.items():
            torch.testing.assert_close(results[name][1][param], grad, atol=1e-5, rtol=1e-5, msg=param)


class LogitsShapes(TorchDispatchMode):
    """Rows of every matrix product whose output is logits (the vocabulary wide)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[int] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default) and out.shape[-1] == VOCAB:
            self.rows.append(out.shape[0])
        return out


def test_lm_head_sees_response_tokens_only_in_chunks():
    model = tiny_qwen2(VOCAB, hidden_size=32)
    batch = collate_groups(random_groups(3), shared_prefix=True)
    with LogitsShapes() as shapes:
        response_logps(model, batch, chunk_size=16).sum().backward()
    n_tokens = int(batch["resp_len"].sum())
    # forward: the model asks its head for no logits, then one product per chunk; backward recomputes each
    # chunk for the hidden states' gradient, then again for the weight's once the decoder's backward is done
    chunks = [min(16, n_tokens - s) for s in range(0, n_tokens, 16)]
    assert shapes.rows == [0, *chunks, *chunks, *chunks]
    assert n_tokens < batch["input_ids"].numel()  # fewer rows than the logits of every column


def test_empty_response_is_an_error_naming_the_group():
    groups = random_groups(2)
    groups[2].rejected_ids[1] = []
    with pytest.raises(ValueError, match="'g2' has an empty response"):
        collate_groups(groups)


def test_first_response_token_is_predicted_from_the_last_prompt_column():
    groups = random_groups(3)
    batch = collate_groups(groups, shared_prefix=True)
    prompt_end = max(len(g.prompt_ids) for g in groups)
    starts = torch.cumsum(torch.cat([torch.tensor([0]), batch["resp_len"][:-1]]), 0)
    assert (batch["tok_pred"][starts] == prompt_end - 1).all()
    assert len(batch["tok_pred"]) == len(batch["tok_target"]) == int(batch["resp_len"].sum())


def test_wrapped_model_goes_through_its_wrappers_forward(tmp_path):
    """Under DDP (one gloo process here) the decoder runs inside DDP's forward, so its gradient reduction
    sees the step; log-probs and gradients equal the unwrapped model's."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    model = tiny_qwen2(VOCAB, hidden_size=32)
    batch = collate_groups(random_groups(3), shared_prefix=True)
    plain = response_logps(model, batch, chunk_size=7)
    plain.sum().backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        wrapped = DistributedDataParallel(model)
        forwards = []
        wrapped.register_forward_hook(lambda *_: forwards.append(1))
        logps = response_logps(wrapped, batch, chunk_size=7)
        logps.sum().backward()
    finally:
        dist.destroy_process_group()
    assert forwards == [1]
    torch.testing.assert_close(logps, plain, atol=1e-6, rtol=0)
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, expected[name], atol=1e-6, rtol=1e-5, msg=name)


def test_flex_attention_equals_sdpa_on_the_packed_mask():
    # the CUDA path (a BlockMask that skips blanked tiles) against the CPU one (SDPA, float mask), on the
    # attention itself; torch has no FlexAttention backward on CPU, so forward only here
    from torch.nn.attention.flex_attention import flex_attention

    segments = collate_groups(random_groups(3), shared_prefix=True)["segment_ids"]
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(len(segments), 2, segments.shape[1], 16, generator=g) for _ in range(3))
    expected = F.scaled_dot_product_attention(
        q, k, v, attn_mask=packed_attention_mask(segments, torch.float32)
    )
    torch.testing.assert_close(flex_attention(q, k, v, block_mask=packed_block_mask(segments)), expected)
    causal = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert not torch.allclose(causal, expected, atol=1e-3)  # the packed mask is not the causal one


@pytest.mark.slow  # transformers compiles FlexAttention: minutes on these CPUs
def test_a_flex_attention_model_gives_the_sdpa_models_logps():
    sdpa = tiny_qwen2(VOCAB, hidden_size=32)
    config = tiny_qwen2_config(VOCAB, hidden_size=32)
    config._attn_implementation = "flex_attention"
    flex = Qwen2ForCausalLM(config)
    flex.load_state_dict(sdpa.state_dict())
    batch = collate_groups(random_groups(3), shared_prefix=True)
    with torch.no_grad():
        expected = response_logps(sdpa, batch)
        torch.testing.assert_close(response_logps(flex, batch), expected, atol=1e-5, rtol=0)


def test_bf16_head_gradients_accumulate_in_float32():
    # 200 chunks of 4 tokens: summing the weight gradient's chunks in bf16 loses 1.5% of its largest entry
    # (measured); in float32 only the final rounding to bf16 remains (0.2%), against a float64 reference
    # on the same bf16 logits
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(800, 32, generator=g).bfloat16().requires_grad_()
    weight = torch.randn(VOCAB, 32, generator=g).bfloat16()
    targets = torch.randint(0, VOCAB, (800,), generator=g)
    head = torch.nn.Linear(32, VOCAB, bias=False, dtype=torch.bfloat16)
    head.weight = torch.nn.Parameter(weight.clone())
    token_logps(head, hidden, targets, chunk_size=4).sum().backward()

    logits = (hidden.detach() @ weight.T).double()  # the bf16 logits the head computes
    grad = torch.nn.functional.one_hot(targets, VOCAB).double() - logits.softmax(-1)
    expected = grad.T @ hidden.detach().double()
    error = (head.weight.grad.double() - expected).abs().max() / expected.abs().max()
    assert error < 5e-3, error
