"""LPO against the closed forms of DESIGN.md (the authors' lpo-ste formula), and the baselines' values."""

import math

import numpy as np
import pytest
import torch
from transformers import TrainerCallback

from speech_lpo.groups import PreferenceGroup
from speech_lpo.losses import (
    DEFAULT_BETA,
    LOSSES,
    default_r2,
    dpo_loss,
    dpop_loss,
    hinge_loss,
    ipo_loss,
    lpo_loss,
    simpo_loss,
)
from speech_lpo.modeling import tiny_qwen2
from speech_lpo.packing import collate_groups, response_logps
from speech_lpo.trainer import PreferenceConfig, PreferenceTrainer

BETA, GAMMA, R1 = 0.2, 10.0, 1.0


def random_inputs(seed: int, n: int = 400):
    g = torch.Generator().manual_seed(seed)
    x1 = (torch.randn(n, generator=g, dtype=torch.float64) * 3).requires_grad_()
    x2 = (torch.randn(n, generator=g, dtype=torch.float64) * 3).requires_grad_()
    d = (x1 - x2 - 1 / (2 * BETA)).detach()
    # the inputs must cover both signs of D and both sides of 0 for x1, or the test proves little
    assert (d > 0).any() and (d < 0).any() and (x1 < 0).any() and (x1 > 0).any()
    return x1, x2, d


def authors_forward(x1: np.ndarray, x2: np.ndarray, r1: float, r2) -> np.ndarray:
    """DESIGN.md's L, evaluated in numpy: each absolute value has the value |D|."""
    d = x1 - x2 - 1 / (2 * BETA)
    return 2 * BETA * 2 / (r1 + r2) * (r1 * np.abs(d) + r2 * np.abs(d)) + GAMMA * np.maximum(0, -x1)


@pytest.mark.parametrize("r2", [0.1, 0.4, 1.0, 2.0, 3.0])
def test_lpo_ste_matches_closed_form(r2):
    x1, x2, d = random_inputs(int(r2 * 10))
    losses, extras = lpo_loss(x1, x2, beta=BETA, r1=R1, r2=r2, gamma=GAMMA, variant="ste")
    np.testing.assert_allclose(
        losses.detach().numpy(), authors_forward(x1.detach().numpy(), x2.detach().numpy(), R1, r2), rtol=1e-12
    )
    losses.sum().backward()
    sgn = torch.sign(d)
    expected_g1 = 4 * BETA * R1 / (R1 + r2) * sgn - GAMMA * (x1.detach() < 0).double()
    expected_g2 = -4 * BETA * r2 / (R1 + r2) * sgn
    torch.testing.assert_close(x1.grad, expected_g1, rtol=0, atol=1e-12)
    torch.testing.assert_close(x2.grad, expected_g2, rtol=0, atol=1e-12)
    torch.testing.assert_close(extras["positive_active"], (x1.detach() < 0).double())


def test_r2_shifts_gradient_from_chosen_to_rejected():
    x1, x2, d = random_inputs(7)
    active = (x1.detach() > 0) & (d < 0)  # positive term off, margin not yet reached
    grads = []
    for r2 in (0.4, 1.0, 3.0):
        a, b = x1.detach().clone().requires_grad_(), x2.detach().clone().requires_grad_()
        lpo_loss(a, b, beta=BETA, r2=r2)[0].sum().backward()
        grads.append((-a.grad[active].mean().item(), b.grad[active].mean().item()))
    # gradient descent raises x1 by -dL/dx1 and lowers x2 by dL/dx2: larger r2, slower rise, faster fall
    assert grads[0][0] > grads[1][0] > grads[2][0] > 0
    assert 0 < grads[0][1] < grads[1][1] < grads[2][1]
    assert grads[2][1] / grads[2][0] == pytest.approx(3.0)


def test_lpo_plain_and_dynamic():
    x1, x2, d = random_inputs(3)
    losses, _ = lpo_loss(x1, x2, beta=BETA, gamma=GAMMA, variant="plain")
    losses.sum().backward()
    np.testing.assert_allclose(
        losses.detach().numpy(), 4 * BETA * np.abs(d.numpy()) + GAMMA * np.maximum(0, -x1.detach().numpy())
    )
    torch.testing.assert_close(x1.grad, 4 * BETA * torch.sign(d) - GAMMA * (x1.detach() < 0).double())
    torch.testing.assert_close(x2.grad, -4 * BETA * torch.sign(d))

    a, b = x1.detach().clone().requires_grad_(), x2.detach().clone().requires_grad_()
    losses, extras = lpo_loss(a, b, beta=BETA, r1=R1, gamma=GAMMA, variant="dynamic")
    losses.sum().backward()
    r2 = torch.exp(b.detach()) / torch.exp(a.detach())
    torch.testing.assert_close(extras["r2"], r2)
    np.testing.assert_allclose(
        losses.detach().numpy(),
        authors_forward(a.detach().numpy(), b.detach().numpy(), R1, r2.numpy()),
        rtol=1e-12,
    )
    torch.testing.assert_close(
        a.grad, 4 * BETA * R1 / (R1 + r2) * torch.sign(d) - GAMMA * (a.detach() < 0).double()
    )
    torch.testing.assert_close(b.grad, -4 * BETA * r2 / (R1 + r2) * torch.sign(d))


def test_unknown_variant_is_refused():
    with pytest.raises(ValueError, match="unknown LPO variant"):
        lpo_loss(torch.zeros(1), torch.zeros(1), variant="sigmoid")


def test_baseline_values():
    x1 = torch.tensor([1.5, -0.5], dtype=torch.float64)
    x2 = torch.tensor([-2.0, 0.25], dtype=torch.float64)
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    m = (x1 - x2).tolist()
    assert dpo_loss(x1, x2, beta=0.1)[0].tolist() == pytest.approx([-math.log(sig(0.1 * v)) for v in m])
    smoothed = [-0.9 * math.log(sig(0.1 * v)) - 0.1 * math.log(sig(-0.1 * v)) for v in m]
    assert dpo_loss(x1, x2, beta=0.1, label_smoothing=0.1)[0].tolist() == pytest.approx(smoothed)
    assert ipo_loss(x1, x2, beta=0.1)[0].tolist() == pytest.approx([(v - 5) ** 2 for v in m])
    assert hinge_loss(x1, x2, beta=0.5)[0].tolist() == pytest.approx([max(0, 1 - 0.5 * v) for v in m])
    assert simpo_loss(x1, x2, beta=2.0, gamma_beta_ratio=0.5)[0].tolist() == pytest.approx(
        [-math.log(sig(2.0 * (v - 0.5))) for v in m]
    )
    # DPOP: the penalty applies only where the chosen log-ratio is negative (second example)
    expected = [-math.log(sig(0.1 * m[0])), -math.log(sig(0.1 * (m[1] - 50 * 0.5)))]
    assert dpop_loss(x1, x2, beta=0.1, lam=50)[0].tolist() == pytest.approx(expected)
    assert set(LOSSES) == {"lpo", "dpo", "ipo", "hinge", "simpo", "dpop"}


def test_beta_defaults_by_loss():
    # LPO: the paper's Table 9; DPO and the other baselines: TRL's 0.1; SimPO: its paper's 2.0
    assert DEFAULT_BETA == {"lpo": 0.2, "dpo": 0.1, "ipo": 0.1, "hinge": 0.1, "simpo": 2.0, "dpop": 0.1}
    for loss, beta in DEFAULT_BETA.items():
        assert PreferenceConfig(output_dir="unused", loss_type=loss).beta == beta
    assert PreferenceConfig(output_dir="unused", loss_type="dpo", beta=0.3).beta == 0.3


def test_r2_defaults_by_task():
    assert [default_r2([t]) for t in ("tts", "asr", "text", "math")] == [0.4, 1.0, 2.0, 0.2]
    assert default_r2(["tts", "tts"]) == 0.4
    with pytest.raises(ValueError, match="tasks \\['asr', 'tts'\\].*--r2"):
        default_r2(["tts", "asr"])
    with pytest.raises(ValueError, match="tasks \\['poetry'\\]"):
        default_r2(["poetry"])


@pytest.mark.parametrize(
    ("task", "r2", "expected"), [("tts", None, 0.4), ("asr", None, 1.0), ("tts", 3.0, 3.0)]
)
def test_trainer_takes_r2_from_the_groups_task_unless_given(task, r2, expected, tmp_path):
    groups = [PreferenceGroup(f"g{i}", task, [5, 6], [7, 8], [[9], [10, 11]]) for i in range(2)]
    args = PreferenceConfig(output_dir=str(tmp_path), r2=r2, use_cpu=True, report_to=[])
    trainer = PreferenceTrainer(model=tiny_qwen2(16, hidden_size=16), args=args, train_dataset=groups)
    assert trainer.args.r2 == expected
    assert trainer.args.loss_kwargs()["r2"] == expected


class GradsAtStep(TrainerCallback):
    """Keeps the parameters' gradients as the optimiser is about to use them."""

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def test_a_pair_weighs_the_same_in_groups_of_different_k(tmp_path):
    vocab = 64
    rng = torch.Generator().manual_seed(0)

    def ids(n: int) -> list[int]:
        return torch.randint(1, vocab, (n,), generator=rng).tolist()

    # k = 1 and k = 3, one group per micro-batch, both in one optimiser step (2 accumulation steps)
    groups = [PreferenceGroup("g0", "tts", ids(5), ids(7), [ids(6)])]
    groups.append(PreferenceGroup("g1", "tts", ids(4), ids(6), [ids(5), ids(8), ids(3)]))
    model = tiny_qwen2(vocab, hidden_size=32)
    # a live reference that is another model, so that x1 and x2 differ from pair to pair
    reference = tiny_qwen2(vocab, hidden_size=32, seed=1)
    data = groups

    grads = GradsAtStep()
    args = PreferenceConfig(
        output_dir=str(tmp_path),
        use_cpu=True,
        report_to=[],
        per_device_train_batch_size=1,
        gradient_accumulation_steps=2,
        max_steps=1,
        max_grad_norm=0.0,
        learning_rate=0.0,
        save_strategy="no",
    )
    PreferenceTrainer(
        model=model, args=args, train_dataset=data, ref_model=reference, callbacks=[grads]
    ).train()

    def by_hand(weights: torch.Tensor) -> dict[str, torch.Tensor]:
        """Gradients of the weighted sum of the four pairs' LPO losses, computed in one batch."""
        policy = tiny_qwen2(vocab, hidden_size=32)
        batch = collate_groups(data)
        logps = response_logps(policy, batch)
        with torch.no_grad():
            ref = response_logps(reference, batch)
        lengths = batch["resp_len"].float()
        x = (logps - ref) / lengths
        losses, _ = lpo_loss(x[batch["pair_chosen"]], x[batch["pair_rejected"]], r2=0.4)
        (losses * weights).sum().backward()
        return {n: p.grad for n, p in policy.named_parameters()}

    per_pair = by_hand(torch.full((4,), 1 / 4))  # the mean over the 4 pairs of the step
    per_group = by_hand(torch.tensor([1 / 2, 1 / 6, 1 / 6, 1 / 6]))  # each group's mean, then their mean
    for name, grad in grads.grads.items():
        torch.testing.assert_close(grad, per_pair[name], rtol=1e-4, atol=1e-7)
    head = "model.embed_tokens.weight"  # tied with the LM head
    assert not torch.allclose(grads.grads[head], per_group[head], rtol=1e-3)
