"""``CodebookOrder`` inside vLLM, so that the vLLM backend keeps TTS answers in codebook order as the
transformers backend does (DESIGN.md, Candidates and pairs).

vLLM 0.32 has two logits-processor interfaces: V1's (per request, this one) and the V2 model runner's (GPU
only, needs Triton). The vLLM backend starts its engines with the V1 model runner (``VLLM_USE_V2_MODEL_RUNNER
=0``), which is also the runner vLLM uses on CPU, so that the one interface tested here is the one that runs
on a GPU. A request carries its constraint's fields in ``SamplingParams.extra_args[EXTRA_ARG]``; requests
without them (ASR, text) are left alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict

import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import AdapterLogitsProcessor

from speech_lpo.codecs.constrain import CodebookOrder

EXTRA_ARG = "codebook_order"


def extra_args(order: CodebookOrder) -> dict:
    """What a request's ``SamplingParams.extra_args`` holds to be generated under ``order``."""
    return {EXTRA_ARG: asdict(order)}


class VLLMCodebookOrder(AdapterLogitsProcessor):
    """vLLM's adapter from per-request processors: one ``CodebookOrder`` per request that asks for one."""

    def is_argmax_invariant(self) -> bool:
        return False  # it masks tokens, so greedy answers change too

    def new_req_logits_processor(self, params: SamplingParams) -> Callable | None:
        fields = (params.extra_args or {}).get(EXTRA_ARG)
        if fields is None:
            return None
        order = CodebookOrder(**fields)

        def constrain(prompt_ids: list[int], output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
            # the same rule as transformers' generate applies, on this request's whole sequence so far
            ids = torch.tensor([prompt_ids + output_ids], device=logits.device)
            return order(ids, logits[None])[0]

        return constrain
