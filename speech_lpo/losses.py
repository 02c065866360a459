"""Preference losses on per-example log-ratios: LPO (three variants) and the baselines.

Every loss takes per-example tensors and returns ``(losses, extras)``: per-example losses and a dict of
per-example, detached tensors for logging. ``x1`` / ``x2`` are the policy-minus-reference log-ratios of the
chosen and the rejected response; whether they are summed or length-normalised is the trainer's choice
(``NORMALISE`` holds each loss's default, matching its paper and TRL).

LPO is written exactly as DESIGN.md gives the authors' released code (``lpo-ste``)::

    L = 2*beta * 2/(r1+r2) * ( r1*|x1 - sg(x2) - 1/(2beta)| + r2*|sg(x1) - x2 - 1/(2beta)| )
        + gamma * max(0, -x1)

Both absolute values have the value |D| with D = x1 - x2 - 1/(2beta), so the forward value is
4*beta*|D| + gamma*max(0, -x1) whatever r1 and r2 are; the stop-gradients only split the gradient:
dL/dx1 = 4*beta*r1/(r1+r2)*sgn(D) - gamma*[x1<0] and dL/dx2 = -4*beta*r2/(r1+r2)*sgn(D).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F

Tensor = torch.Tensor
LossOutput = tuple[Tensor, dict[str, Tensor]]

LPO_VARIANTS = ("ste", "plain", "dynamic")


def lpo_loss(
    x1: Tensor,
    x2: Tensor,
    *,
    beta: float = 0.2,
    r1: float = 1.0,
    r2: float = 1.0,
    gamma: float = 10.0,
    variant: str = "ste",
) -> LossOutput:
    """Linear Preference Optimization.

    ``ste``: the straight-through split above. ``plain``: no split, ``4*beta*|D| + gamma*max(0,-x1)``.
    ``dynamic``: ``ste`` with r2 = exp(x2)/exp(x1) per example, detached (r1 as given).
    """
    offset = 1.0 / (2.0 * beta)
    positive = gamma * torch.relu(-x1)
    if variant == "plain":
        linear = 4.0 * beta * (x1 - x2 - offset).abs()
    elif variant in ("ste", "dynamic"):
        if variant == "dynamic":
            r2 = torch.exp(x2 - x1).detach()
        scale = 2.0 * beta * 2.0 / (r1 + r2)
        linear = scale * (r1 * (x1 - x2.detach() - offset).abs() + r2 * (x1.detach() - x2 - offset).abs())
    else:
        raise ValueError(f"unknown LPO variant {variant!r}; expected one of {LPO_VARIANTS}")
    extras = {"positive_active": (x1 < 0).to(x1.dtype).detach()}
    if variant == "dynamic":
        extras["r2"] = torch.as_tensor(r2).expand_as(x1).detach()
    return linear + positive, extras


def dpo_loss(x1: Tensor, x2: Tensor, *, beta: float = 0.1, label_smoothing: float = 0.0) -> LossOutput:
    """DPO (sigmoid); with label_smoothing > 0 the conservative cDPO form."""
    logits = beta * (x1 - x2)
    losses = -F.logsigmoid(logits) * (1 - label_smoothing) - F.logsigmoid(-logits) * label_smoothing
    return losses, {}


def ipo_loss(x1: Tensor, x2: Tensor, *, beta: float = 0.1) -> LossOutput:
    """IPO: squared distance of the margin to 1/(2*beta) (TRL: on length-normalised log-ratios)."""
    return (x1 - x2 - 1.0 / (2.0 * beta)) ** 2, {}


def hinge_loss(x1: Tensor, x2: Tensor, *, beta: float = 0.1) -> LossOutput:
    """SLiC-style hinge on the scaled margin."""
    return torch.relu(1.0 - beta * (x1 - x2)), {}


def simpo_loss(
    logp_w: Tensor, logp_l: Tensor, *, beta: float = 2.0, gamma_beta_ratio: float = 0.5
) -> LossOutput:
    """SimPO: reference-free, on length-normalised policy log-probs, with a target margin."""
    return -F.logsigmoid(beta * (logp_w - logp_l - gamma_beta_ratio)), {}


def dpop_loss(x1: Tensor, x2: Tensor, *, beta: float = 0.1, lam: float = 50.0) -> LossOutput:
    """DPO-Positive: DPO with a penalty inside the sigmoid when the chosen log-ratio falls below 0."""
    penalty = torch.relu(-x1)
    losses = -F.logsigmoid(beta * (x1 - x2 - lam * penalty))
    return losses, {"positive_active": (x1 < 0).to(x1.dtype).detach()}


LOSSES: dict[str, Callable[..., LossOutput]] = {
    "lpo": lpo_loss,
    "dpo": dpo_loss,
    "ipo": ipo_loss,
    "hinge": hinge_loss,
    "simpo": simpo_loss,
    "dpop": dpop_loss,
}

# Whether each loss sees length-normalised (True) or summed (False) log-ratios by default:
# LPO as in the paper, IPO as TRL, SimPO by definition; DPO, hinge and DPOP on summed log-probs as TRL.
NORMALISE: dict[str, bool] = {
    "lpo": True,
    "dpo": False,
    "ipo": True,
    "hinge": False,
    "simpo": True,
    "dpop": False,
}

# Losses that need no reference model: they are given policy log-probs instead of log-ratios.
REFERENCE_FREE = frozenset({"simpo"})

# beta when none is given: each loss's own, as its signature above holds it (LPO 0.2, the paper's Table 9;
# DPO, IPO, hinge and DPOP 0.1, TRL's default; SimPO 2.0, its paper's: TRL's CPOConfig would give 0.1).
DEFAULT_BETA: dict[str, float] = {
    name: inspect.signature(fn).parameters["beta"].default for name, fn in LOSSES.items()
}

# LPO's r2 by task, from the paper's Table 9 (ASR: 1.0 of its grid 1.0 / 2.0 / 3.0; "text": general text).
R2_BY_TASK: dict[str, float] = {"tts": 0.4, "asr": 1.0, "text": 2.0, "math": 0.2}


def default_r2(tasks: Iterable[str]) -> float:
    """LPO's r2 for groups of these tasks (Table 9); groups of several tasks need an explicit r2."""
    found = sorted(set(tasks))
    unknown = [t for t in found if t not in R2_BY_TASK]
    if unknown or len(found) != 1:
        raise ValueError(
            f"no default r2 for groups of tasks {found} (defaults: {R2_BY_TASK}); give r2 (--r2) explicitly"
        )
    return R2_BY_TASK[found[0]]
