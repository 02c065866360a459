"""`speech-lpo generate` with the transformers backend on a tiny Qwen2 and the real Qwen2.5 tokenizer.

Prompts are the real AISHELL-1 and LibriSpeech transcripts of ../shared/data with seeded codes in
place of their audio tokens. The vLLM backend is tested in tests/vllm (its own environment).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from datasets import Dataset

from speech_lpo.cli import main as cli
from speech_lpo.codecs import MODEL_CODEC_DIR
from speech_lpo.codecs.melvq import MelVQ
from speech_lpo.generate import (
    SamplingConfig,
    TransformersBackend,
    dataset_items,
    item_answer_lengths,
    iter_rows,
    length_limit,
    request_seeds,
    run,
    skip_too_long,
    stop_ids_for,
    strided,
    tts_answer_tokens,
    unstrided,
    vllm_engines,
)
from speech_lpo.modeling import extend_tokenizer, tiny_qwen2
from speech_lpo.prompts import im_end_id
from speech_lpo.vocab import AudioVocab
from tests.test_perturb import DATA, read_corpus

TOKENIZER = DATA / "qwen2.5_tokenizer"
CODEBOOK = 64
MAX_POSITIONS = 512


def make_model_dir(path: Path) -> Path:
    """Real Qwen2.5 tokenizer + audio tokens; a tiny Qwen2 whose head size (32) vLLM's CPU attention takes."""
    from transformers import Qwen2TokenizerFast

    if not TOKENIZER.is_dir():
        pytest.skip(f"Qwen2.5 tokenizer files not found at {TOKENIZER}")
    tokenizer = Qwen2TokenizerFast.from_pretrained(TOKENIZER)
    vocab = extend_tokenizer(tokenizer, CODEBOOK)
    model = tiny_qwen2(len(tokenizer), num_heads=2, num_kv_heads=1, max_position_embeddings=MAX_POSITIONS)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    vocab.save(path)
    # its codec: a melvq at 25 frames/s (hop 640), the rate of corpus_columns' durations
    codec = MelVQ(np.zeros((CODEBOOK, 80), np.float32), hop_length=640, synthesis_hop=160)
    codec.save(path / MODEL_CODEC_DIR)
    return path


def corpus_columns(repeat: int = 1) -> dict[str, list]:
    """Tokenised-dataset columns (speech_lpo.tokenize_audio) for the real transcripts, seeded codes."""
    rng = random.Random(0)
    cols: dict[str, list] = {
        k: [] for k in ("id", "text", "speaker", "lang", "split", "duration", "audio", "codes")
    }
    for r in range(repeat):
        for utt, text, lang in read_corpus():
            codes = [rng.randrange(CODEBOOK) for _ in range(rng.randint(8, 30))]
            row = {"id": f"{utt}-{r}" if repeat > 1 else utt, "text": text, "speaker": utt[:6], "lang": lang}
            row |= {"split": "train", "duration": len(codes) / 25, "audio": f"{utt}.wav", "codes": codes}
            for k, v in row.items():
                cols[k].append(v)
    return cols


def add_bad_rows(cols: dict[str, list]) -> None:
    bad = [
        ("empty-text", "", [1, 2, 3]),
        ("missing-text", None, [1, 2, 3]),
        ("no-codes", "HELLO WORLD", []),
        ("too-long", "A VERY LONG ONE", [5] * MAX_POSITIONS),  # ASR prompt over the model's 512 positions
    ]
    for utt, text, codes in bad:
        row = {"id": utt, "text": text, "speaker": "x", "lang": "en", "split": "train", "duration": 1.0}
        for k, v in (row | {"audio": "x.wav", "codes": codes}).items():
            cols[k].append(v)


def write_tokenized(path: Path, cols: dict[str, list]) -> Path:
    from speech_lpo.tokenize_audio import write_shard

    path.mkdir(parents=True, exist_ok=True)
    write_shard(path / "shard-00000.arrow", cols)
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    cols = corpus_columns()
    add_bad_rows(cols)
    return write_tokenized(tmp_path_factory.mktemp("tokens") / "train", cols)


def generate_args(model_dir: Path, data: Path, out: Path, task: str = "asr", *extra: str) -> list[str]:
    return ["generate", "--model", str(model_dir), "--task", task, "--data", str(data), "--out", str(out)] + [
        "--n", "3", "--max-new-tokens", "12", "--batch-size", "4", "--shard-size", "5", *extra,
    ]  # fmt: skip


def read_shards(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("shard-*.jsonl"))}


def test_generate_writes_n_candidates_per_prompt_and_reports_bad_prompts(model_dir, data_dir, tmp_path):
    cli(generate_args(model_dir, data_dir, tmp_path / "cand"))
    rows = list(iter_rows(tmp_path / "cand"))
    report = json.loads((tmp_path / "cand" / "report.json").read_text())
    n_good = len(read_corpus())
    assert len(rows) == n_good + 4 == report["prompts"]
    assert report["skipped"] == {
        "empty or missing transcript": 2,
        "no audio codes": 1,
        "prompt too long for the model": 1,
    }
    assert not list((tmp_path / "cand").glob("*.tmp"))
    assert report["finished_shards"] == report["shards"] == -(-(n_good + 4) // 5)
    end = im_end_id_from(model_dir)
    for row in rows:
        if row["skipped"]:
            assert row["candidates"] == []
            continue
        assert len(row["candidates"]) == 3 and row["reference_ids"][-1] == end
        for c in row["candidates"]:
            if c["hit_max_new_tokens"]:
                assert len(c["ids"]) == 12 and end not in c["ids"]
            else:
                assert c["ids"][-1] == end and end not in c["ids"][:-1]
    assert report["candidates"] == 3 * n_good
    assert report["throughput"]["candidates_per_s"] > 0


def im_end_id_from(model_dir: Path) -> int:
    from transformers import AutoTokenizer

    return im_end_id(AutoTokenizer.from_pretrained(model_dir))


def tts_items(model_dir: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    vocab = AudioVocab.load(model_dir)
    items = dataset_items(Dataset.from_dict(corpus_columns()), "tts", tokenizer, vocab)
    skip_too_long(items, 12, MAX_POSITIONS)
    return items, stop_ids_for("tts", tokenizer, vocab)


def test_greedy_left_padded_batches_equal_one_prompt_at_a_time(model_dir):
    items, stops = tts_items(model_dir)
    prompts = [i.prompt_ids for i in items]
    cfg = SamplingConfig(n=2, temperature=0, max_new_tokens=12, stop_ids=stops)
    batched = TransformersBackend(model_dir, batch_size=8).generate(prompts, cfg, seed=0)
    one = TransformersBackend(model_dir, batch_size=1)
    for prompt, cands in zip(prompts, batched, strict=True):
        (alone,) = one.generate([prompt], cfg, seed=0)
        assert cands[0].ids == cands[1].ids == alone[0].ids


def test_rerun_skips_finished_shards_and_settings_must_match(model_dir, tmp_path):
    items, stops = tts_items(model_dir)
    items = items[:10]
    backend = TransformersBackend(model_dir, batch_size=4)
    cfg = SamplingConfig(n=3, max_new_tokens=12, stop_ids=stops)
    first = run(items, backend, cfg, tmp_path / "a", {"model": "m"}, shard_size=4, seed=1)
    again = run(items, backend, cfg, tmp_path / "a", {"model": "m"}, shard_size=4, seed=1)
    assert first["throughput"]["prompts"] == len(items) and again["throughput"]["prompts"] == 0
    run(items, backend, cfg, tmp_path / "b", {"model": "m"}, shard_size=4, seed=1)
    assert read_shards(tmp_path / "a") == read_shards(tmp_path / "b")  # seeded
    run(items, backend, cfg, tmp_path / "c", {"model": "m"}, shard_size=6, seed=2)
    assert read_shards(tmp_path / "a") != read_shards(tmp_path / "c")
    with pytest.raises(SystemExit, match="other settings"):
        run(items, backend, SamplingConfig(n=2, stop_ids=stops), tmp_path / "a", {"model": "x"}, 4, seed=1)


class FailsOnSecondCall:
    """The real backend with one fault injected: its second call raises, as a backend dying mid-run."""

    def __init__(self, backend):
        self.backend, self.calls = backend, 0
        self.name, self.batch_size = backend.name, backend.batch_size

    def generate(self, prompts, cfg, seed):
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("engine died")
        return self.backend.generate(prompts, cfg, seed)


def test_backend_failure_mid_run_loses_no_finished_shard(model_dir, tmp_path):
    items, stops = tts_items(model_dir)
    backend = TransformersBackend(model_dir, batch_size=3)
    cfg = SamplingConfig(n=3, max_new_tokens=12, stop_ids=stops)
    run(items, backend, cfg, tmp_path / "whole", {}, shard_size=6, seed=0)
    report = run(items, FailsOnSecondCall(backend), cfg, tmp_path / "broken", {}, shard_size=6, seed=0)
    assert report["failed_shards"] == {0: "RuntimeError: engine died"}
    assert report["finished_shards"] == report["shards"] - 1
    with pytest.raises(FileNotFoundError, match=r"shards \[0\] are missing"):
        list(iter_rows(tmp_path / "broken"))
    report = run(items, backend, cfg, tmp_path / "broken", {}, shard_size=6, seed=0)
    assert report["failed_shards"] == {} and report["throughput"]["prompts"] == 6
    assert read_shards(tmp_path / "broken") == read_shards(tmp_path / "whole")


def test_sigkill_and_rerun_give_the_uninterrupted_result_without_duplicates(model_dir, tmp_path):
    cols = corpus_columns()
    data = write_tokenized(tmp_path / "tokens", cols)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def args(out: Path) -> list[str]:
        return generate_args(model_dir, data, out, "tts", "--max-new-tokens", "16", "--shard-size", "2")

    cli(args(tmp_path / "whole"))  # in this process, on one thread like the one killed
    proc = subprocess.Popen([sys.executable, "-m", "speech_lpo.cli", *args(tmp_path / "killed")], env=env)
    first = tmp_path / "killed" / "shard-00000.jsonl"
    while not first.exists() and proc.poll() is None:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = len(read_shards(tmp_path / "killed"))
    total = len(read_shards(tmp_path / "whole"))
    assert 0 < finished < total, "the run was not killed mid-way"
    cli(args(tmp_path / "killed"))
    assert read_shards(tmp_path / "killed") == read_shards(tmp_path / "whole")
    ids = [row["id"] for row in iter_rows(tmp_path / "killed")]
    assert len(ids) == len(set(ids)) == len(cols["id"])


def test_text_task_reads_jsonl_and_names_a_bad_line(model_dir, tmp_path):
    good = [
        {"id": "q1", "prompt": "What is 2 + 3?", "response": "5"},
        {"id": "q2", "prompt": "Hi", "response": ""},
    ]
    path = tmp_path / "text.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in good))
    cli(generate_args(model_dir, path, tmp_path / "cand", "text"))
    rows = list(iter_rows(tmp_path / "cand"))
    assert [r["skipped"] for r in rows] == [None, "empty or missing transcript"]
    assert len(rows[0]["candidates"]) == 3
    path.write_text(json.dumps(good[0]) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"text\.jsonl:2"):
        cli(generate_args(model_dir, path, tmp_path / "cand2", "text"))


def test_max_prompts_takes_one_fixed_subset_for_generate_and_perturb(model_dir, data_dir, tmp_path):
    from transformers import AutoTokenizer

    from speech_lpo.generate import load_dataset_items
    from speech_lpo.vocab import AudioVocab

    tokenizer, vocab = AutoTokenizer.from_pretrained(model_dir), AudioVocab.load(model_dir)
    every = {item.id for item in load_dataset_items(data_dir, "asr", tokenizer, vocab)}
    some = [item.id for item in load_dataset_items(data_dir, "asr", tokenizer, vocab, max_prompts=5)]
    assert len(set(some)) == 5 and set(some) < every
    assert some == [item.id for item in load_dataset_items(data_dir, "tts", tokenizer, vocab, max_prompts=5)]
    assert {
        item.id for item in load_dataset_items(data_dir, "asr", tokenizer, vocab, max_prompts=10**6)
    } == every
    cli(generate_args(model_dir, data_dir, tmp_path / "cand", "asr", "--max-prompts", "5"))
    assert sorted(row["id"] for row in iter_rows(tmp_path / "cand")) == sorted(some)
    cli(["make-pairs", "--method", "perturb", "--model", str(model_dir), "--data", str(data_dir)]
        + ["--max-prompts", "5", "--out", str(tmp_path / "perturb.jsonl")])  # fmt: skip
    groups = [json.loads(line) for line in (tmp_path / "perturb.jsonl").read_text().splitlines()]
    assert groups and {g["id"] for g in groups} <= set(some)


def test_derived_limits_cut_no_real_reference():
    """ASR: the real Qwen2.5 tokenizer on every real AISHELL-1 and LibriSpeech transcript; TTS: the real
    audio durations through Mimi at 8 codebooks (100 tokens/s). The old fixed caps (48, 150) cut some."""
    from transformers import Qwen2TokenizerFast

    if not TOKENIZER.is_dir():
        pytest.skip(f"Qwen2.5 tokenizer files not found at {TOKENIZER}")
    tokenizer = Qwen2TokenizerFast.from_pretrained(TOKENIZER)
    vocab = extend_tokenizer(tokenizer, CODEBOOK)
    items = dataset_items(Dataset.from_dict(corpus_columns()), "asr", tokenizer, vocab)
    asr = {i.id: len(i.reference_ids) for i in items}
    limit = length_limit(item_answer_lengths(items, None))
    assert max(asr.values()) <= limit
    assert 53 <= asr["1089-134686-0000"] <= limit  # 28 words: the old cap of 48 cut it
    assert sum(n > 48 for n in asr.values()) >= 1

    audio = sorted(DATA.glob("librispeech/**/*.flac")) + sorted(DATA.glob("aishell1/**/*.wav"))
    durations = [sf.info(str(p)).duration for p in audio]
    assert len(durations) >= 15
    tts = [tts_answer_tokens(d, 12.5 * 8) for d in durations]
    assert max(tts) <= length_limit(tts) and max(tts) > 150  # 150 tokens is 1.5 s of Mimi at 8 codebooks
    for item, d in zip(items, durations, strict=False):
        item.task, item.duration = "tts", d
    assert item_answer_lengths(items[: len(durations)], 100.0) == tts[: len(items)]


def test_cut_candidates_are_reported_by_id_and_the_default_limit_comes_from_the_data(
    model_dir, data_dir, tmp_path
):
    cli(generate_args(model_dir, data_dir, tmp_path / "cut"))  # --max-new-tokens 12: cuts
    rows = list(iter_rows(tmp_path / "cut"))
    report = json.loads((tmp_path / "cut" / "report.json").read_text())
    cut = [r["id"] for r in rows if any(c["hit_max_new_tokens"] for c in r["candidates"])]
    assert cut and report["hit_max_new_tokens_ids"] == cut
    assert report["hit_max_new_tokens"] == sum(c["hit_max_new_tokens"] for r in rows for c in r["candidates"])

    argv = generate_args(model_dir, data_dir, tmp_path / "derived", "asr", "--max-prompts", "4", "--n", "1")
    i = argv.index("--max-new-tokens")
    cli(argv[:i] + argv[i + 2 :])
    settings = json.loads((tmp_path / "derived" / "generate.json").read_text())
    refs = [len(r["reference_ids"]) for r in iter_rows(tmp_path / "derived") if not r["skipped"]]
    assert settings["max_new_tokens"] == length_limit(refs) > max(refs)
    for row in iter_rows(tmp_path / "derived"):
        for c in row["candidates"]:
            assert len(c["ids"]) <= settings["max_new_tokens"]
            assert c["hit_max_new_tokens"] == (len(c["ids"]) == settings["max_new_tokens"])


@pytest.mark.parametrize(
    ("name", "ngpu", "tp", "engines"),
    [
        ("Qwen2.5-0.5B", 4, 1, ["0", "1", "2", "3"]),  # data parallel: one engine per GPU
        ("Qwen2.5-0.5B", 4, 2, ["0,1", "2,3"]),
        ("Qwen2.5-7B", 8, 4, ["0,1,2,3", "4,5,6,7"]),
        ("Qwen2.5-7B", 1, 1, ["0"]),
    ],
)
def test_vllm_engines_for_the_qwen25_configs(name, ngpu, tp, engines):
    from transformers import Qwen2Config

    path = DATA / "qwen2.5_configs" / f"{name}.config.json"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    assert vllm_engines(Qwen2Config.from_json_file(path), ngpu, tp) == engines


def test_vllm_tensor_parallel_sizes_that_do_not_split_the_heads_are_refused():
    from transformers import Qwen2Config

    configs = DATA / "qwen2.5_configs"
    if not configs.is_dir():
        pytest.skip(f"{configs} not found")
    small = Qwen2Config.from_json_file(configs / "Qwen2.5-0.5B.config.json")  # 14 heads, 2 KV heads
    big = Qwen2Config.from_json_file(configs / "Qwen2.5-7B.config.json")  # 28 heads, 4 KV heads
    with pytest.raises(ValueError, match=r"14 attention heads and 2 KV heads; sizes that do: \[1, 2, 14\]"):
        vllm_engines(small, 4, 4)
    with pytest.raises(ValueError, match=r"14 attention heads and 2 KV heads"):
        vllm_engines(small, 7, 7)  # divides the heads, not the KV heads
    with pytest.raises(
        ValueError, match=r"28 attention heads and 4 KV heads; sizes that do: \[1, 2, 4, 28\]"
    ):
        vllm_engines(big, 3, 3)
    with pytest.raises(ValueError, match="--ngpu 3 is not a multiple of --tensor-parallel-size 2"):
        vllm_engines(big, 3, 2)


def test_engines_use_the_parents_visible_devices():
    from transformers import Qwen2Config

    config = Qwen2Config(num_attention_heads=4, num_key_value_heads=2)
    assert vllm_engines(config, 4, 1, "4,5,6,7") == ["4", "5", "6", "7"]  # SLURM's or the user's mask
    assert vllm_engines(config, 4, 2, "4,5,6,7") == ["4,5", "6,7"]
    assert vllm_engines(config, 2, 1, "4,5,6,7") == ["4", "5"]  # --ngpu 2: the first two of them
    assert vllm_engines(config, 2, 1, "GPU-a1,GPU-b2") == ["GPU-a1", "GPU-b2"]  # UUIDs pass through
    assert vllm_engines(config, 2, 1, None) == ["0", "1"]  # no mask: every device is visible
    with pytest.raises(ValueError, match=r"--ngpu 4, but CUDA_VISIBLE_DEVICES='6,7' makes 2 visible"):
        vllm_engines(config, 4, 1, "6,7")
    with pytest.raises(ValueError, match=r"--ngpu 1, but CUDA_VISIBLE_DEVICES='' makes 0 visible"):
        vllm_engines(config, 1, 1, "")


def test_prompts_are_dealt_out_over_engines_and_merged_back_in_order():
    assert strided(list(range(10)), 3) == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    for n in range(12):
        for engines in range(1, 6):
            assert unstrided(strided(list(range(n)), engines)) == list(range(n))
    # prompts sorted by length (generate_shard sorts them): each engine's tokens within one prompt's length
    # of every other's, where contiguous shares gave the last engine the longest prompts
    rng = random.Random(0)
    lengths = sorted(rng.randint(10, 1000) for _ in range(101))
    tokens = [sum(share) for share in strided(lengths, 4)]
    assert max(tokens) - min(tokens) <= max(lengths)
    contiguous = [sum(lengths[a : a + 26]) for a in range(0, 101, 26)]
    assert max(contiguous) - min(contiguous) > 10 * max(lengths)


def test_request_seeds_do_not_depend_on_the_engine_count():
    cfg = SamplingConfig(n=3, temperature=1.0)
    whole = request_seeds(7, 10, cfg)
    assert len(set(whole)) == 10 and whole[1] - whole[0] == 3  # n samples of a request: seed + j
    # DataParallelVLLM deals prompts and their seeds out alike: prompt i keeps seed whole[i] on any engine
    assert unstrided(strided(whole, 3)) == whole and strided(whole, 3)[1] == [whole[1], whole[4], whole[7]]
    assert request_seeds(7, 10, SamplingConfig(n=3, temperature=0))[:2] == [7, 8]  # greedy: one sample
