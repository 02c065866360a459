"""Sample n candidate responses per prompt from a model (transformers or vLLM), in resumable shards.

The paper's recipe samples the SFT model at temperature 1.0 and top_p 1.0 (no top-k); make-pairs turns
the candidates into preference groups. Output directory:

- ``generate.json``: the settings; a re-run with other settings is refused rather than mixing shards.
- ``shard-00000.jsonl`` ...: one row per prompt, ``{id, task, lang, text, prompt_ids, reference_ids,
  candidates: [{ids, hit_max_new_tokens}], skipped}``; a prompt that cannot be generated for (empty
  transcript, too long for the model) is a row with ``skipped`` set to the reason and no candidates.
  Each shard is written to a temporary file and renamed into place when complete, so a killed run
  leaves only whole shards, and a re-run generates just the missing ones. Seeds depend on the shard
  and batch, not on the run, so a resumed run gives the same files as an uninterrupted one.
- ``report.json``: prompts, skips by reason, candidates, how many hit max_new_tokens (and the ids of
  their prompts) or are empty, failed shards, throughput.

Without ``--max-new-tokens`` the limit comes from the data (``length_limit``): the longest reference
answer in tokens (ASR and text: the tokenised transcript; TTS: the reference duration times the codec's
tokens per second), with a margin, so that no answer as long as a reference is cut.

Candidate ids run up to and including the first stop token (``<|im_end|>``; TTS also ``<|audio_end|>``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm
from transformers import LogitsProcessorList

from speech_lpo.codecs import read_codec_meta
from speech_lpo.codecs.constrain import CodebookOrder
from speech_lpo.prompts import (
    asr_prompt_ids,
    asr_response_ids,
    im_end_id,
    tts_prompt_ids,
    tts_response_ids,
)
from speech_lpo.vocab import AudioVocab

log = logging.getLogger(__name__)

TASKS = ("asr", "tts", "text")
SETTINGS_FILE = "generate.json"
REPORT_FILE = "report.json"


@dataclass
class Item:
    """One prompt to sample for, with its ground-truth response (the chosen one, later)."""

    id: str
    task: str
    lang: str
    text: str  # ASR: the reference transcript; TTS: the text spoken; text: the reference answer
    prompt_ids: list[int]
    reference_ids: list[int]
    skipped: str | None = None  # why no candidates are sampled for it
    duration: float | None = None  # seconds of the reference audio (asr, tts)


@dataclass
class SamplingConfig:
    n: int = 3
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    stop_ids: tuple[int, ...] = ()
    codebook_order: CodebookOrder | None = None  # TTS: keeps answers in codebook order, whole frames
    num_beams: int = 1  # greedy only (decode --beam-size); the transformers backend alone searches beams


@dataclass
class Candidate:
    ids: list[int]
    hit_max_new_tokens: bool


def cut_at_stop(ids: list[int], stop_ids: tuple[int, ...]) -> Candidate:
    """Keep tokens up to and including the first stop token; none found means max_new_tokens was hit."""
    for i, t in enumerate(ids):
        if t in stop_ids:
            return Candidate(ids[: i + 1], False)
    return Candidate(ids, True)


class TransformersBackend:
    """``model.generate``: left-padded batches, KV cache, ``num_return_sequences`` samples per prompt."""

    name = "transformers"

    def __init__(self, model_dir: str | Path, batch_size: int = 16, device: str | None = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = AutoModelForCausalLM.from_pretrained(model_dir).to(self.device).eval()
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else im_end_id(tokenizer)
        self.batch_size = batch_size

    def close(self) -> None:
        """Nothing to stop (the vLLM backends stop their engines here)."""

    def generate(self, prompts: list[list[int]], cfg: SamplingConfig, seed: int) -> list[list[Candidate]]:
        from speech_lpo.decode import generate_batch  # decode imports this module

        self.torch.manual_seed(seed)
        greedy = cfg.temperature == 0
        if greedy:  # greedy decoding returns one sequence; its n samples are that one, repeated
            search = {"do_sample": False, "num_beams": cfg.num_beams}
        else:
            search = {"do_sample": True, "temperature": cfg.temperature, "top_p": cfg.top_p, "top_k": 0}
            search["num_return_sequences"] = cfg.n
        if cfg.codebook_order is not None:
            search["logits_processor"] = LogitsProcessorList([cfg.codebook_order])
        new = generate_batch(
            self.model, prompts, self.pad_id, list(cfg.stop_ids), max_new_tokens=cfg.max_new_tokens, **search
        )
        per_prompt = 1 if greedy else cfg.n
        return [
            [cut_at_stop(new[i * per_prompt + (0 if greedy else j)], cfg.stop_ids) for j in range(cfg.n)]
            for i in range(len(prompts))
        ]


class VLLMBackend:
    """``vllm.LLM`` on the saved model dir; prompts go in as token ids, one seed per request; TTS answers
    under ``CodebookOrder`` through vLLM's logits-processor interface (speech_lpo.codecs.constrain_vllm)."""

    name = "vllm"
    batch_size = None  # vLLM schedules its own batches: it gets a whole shard at once

    def __init__(
        self,
        model_dir: str | Path,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.9,
        enforce_eager: bool = False,
        dtype: str = "auto",
    ):
        from vllm import LLM

        from speech_lpo.codecs.constrain_vllm import VLLMCodebookOrder

        # the V1 model runner: its logits-processor interface is the one VLLMCodebookOrder implements (the
        # V2 runner, vLLM's GPU default, refuses V1 processors); it is also the runner vLLM uses on CPU
        os.environ["VLLM_USE_V2_MODEL_RUNNER"] = "0"
        self.llm = LLM(
            model=str(model_dir),
            logits_processors=[VLLMCodebookOrder],
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            enforce_eager=enforce_eager,
            dtype=dtype,
            skip_tokenizer_init=True,  # ids in, ids out: no detokenisation needed
        )

    def close(self) -> None:
        """Stop the engine's processes now, not at interpreter exit (where their logging fails)."""
        self.llm.llm_engine.engine_core.shutdown()

    def generate(self, prompts: list[list[int]], cfg: SamplingConfig, seed: int) -> list[list[Candidate]]:
        return self.generate_seeded(prompts, cfg, request_seeds(seed, len(prompts), cfg))

    def generate_seeded(
        self, prompts: list[list[int]], cfg: SamplingConfig, seeds: list[int]
    ) -> list[list[Candidate]]:
        """Candidates with one seed per prompt (speech_lpo.generate.request_seeds)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        from speech_lpo.codecs.constrain_vllm import extra_args

        if cfg.num_beams > 1:
            raise ValueError(f"beam search ({cfg.num_beams} beams) runs on --backend transformers only")
        greedy = cfg.temperature == 0
        constraint = None if cfg.codebook_order is None else extra_args(cfg.codebook_order)
        params = [
            SamplingParams(
                n=samples_per_request(cfg),
                temperature=cfg.temperature,
                top_p=cfg.top_p,
                max_tokens=cfg.max_new_tokens,
                stop_token_ids=list(cfg.stop_ids),
                seed=seed,
                detokenize=False,
                extra_args=constraint,
            )
            for seed in seeds
        ]
        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False
        )
        return [
            [cut_at_stop(list(out.outputs[0 if greedy else j].token_ids), cfg.stop_ids) for j in range(cfg.n)]
            for out in outputs
        ]


def samples_per_request(cfg: SamplingConfig) -> int:
    """vLLM refuses n > 1 when greedy: its n samples are one, repeated."""
    return 1 if cfg.temperature == 0 else cfg.n


def request_seeds(seed: int, n_prompts: int, cfg: SamplingConfig) -> list[int]:
    """One seed per prompt of a batch, by its place in the batch: the same whichever engine samples it.
    vLLM seeds the j-th of n samples with seed + j, so requests' seeds are n apart."""
    return [seed + i * samples_per_request(cfg) for i in range(n_prompts)]


def vllm_engines(config, ngpu: int, tensor_parallel_size: int = 1, visible: str | None = None) -> list[str]:
    """``CUDA_VISIBLE_DEVICES`` of each vLLM engine: ``ngpu // tensor_parallel_size`` data-parallel
    engines on the first ``ngpu`` of the parent's devices (``visible``: its ``CUDA_VISIBLE_DEVICES``, as
    SLURM or a user sets it; None: devices 0..ngpu-1). Tensor parallelism (for a model that does not fit
    one GPU) must divide the attention heads, and the KV heads must split evenly or be replicated evenly;
    anything else is refused naming them."""
    tp = tensor_parallel_size
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    if tp < 1 or ngpu < tp or ngpu % tp:
        raise ValueError(f"--ngpu {ngpu} is not a multiple of --tensor-parallel-size {tp}")
    if heads % tp or (kv_heads % tp and tp % kv_heads):
        fits = [d for d in range(1, heads + 1) if heads % d == 0 and (kv_heads % d == 0 or d % kv_heads == 0)]
        raise ValueError(
            f"--tensor-parallel-size {tp} does not split the model's {heads} attention heads and "
            f"{kv_heads} KV heads; sizes that do: {fits}"
        )
    devices = [str(g) for g in range(ngpu)] if visible is None else [d for d in visible.split(",") if d]
    if len(devices) < ngpu:
        raise ValueError(f"--ngpu {ngpu}, but CUDA_VISIBLE_DEVICES={visible!r} makes {len(devices)} visible")
    return [",".join(devices[first : first + tp]) for first in range(0, ngpu, tp)]


def strided(items: list, parts: int) -> list[list]:
    """``items`` dealt out over ``parts`` shares, item i to share i mod parts: on prompts sorted by
    length, every engine gets short and long ones alike (contiguous shares gave the last one the longest)."""
    return [items[e::parts] for e in range(parts)]


def unstrided(shares: list[list]) -> list:
    """The inverse of ``strided``: the shares' items back in their original order."""
    out = [None] * sum(map(len, shares))
    for e, share in enumerate(shares):
        out[e :: len(shares)] = share
    return out


_ENGINE: VLLMBackend | None = None


def _start_engine(devices: str, model_dir: str, engine_kwargs: dict) -> None:
    global _ENGINE
    os.environ["CUDA_VISIBLE_DEVICES"] = devices  # before vLLM initialises CUDA in this process
    _ENGINE = VLLMBackend(model_dir, **engine_kwargs)


def _engine_generate(
    prompts: list[list[int]], cfg: SamplingConfig, seeds: list[int]
) -> list[list[Candidate]]:
    return _ENGINE.generate_seeded(prompts, cfg, seeds)


def _engine_close() -> None:
    _ENGINE.close()


class DataParallelVLLM:
    """One vLLM engine per GPU group (``vllm_engines``), each in its own process: a batch of prompts is
    dealt out over the engines (``strided``), each engine samples its share with the seeds the prompts
    would have on one engine, and the outputs are put back in prompt order, so results do not depend on
    the GPU count."""

    name = "vllm"
    batch_size = None

    def __init__(self, model_dir: str | Path, engines: list[str], **engine_kwargs):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        context = multiprocessing.get_context("spawn")  # CUDA cannot be used in a forked child
        self.pools = [
            ProcessPoolExecutor(
                1, mp_context=context, initializer=_start_engine, initargs=(d, str(model_dir), engine_kwargs)
            )
            for d in engines
        ]

    def generate(self, prompts: list[list[int]], cfg: SamplingConfig, seed: int) -> list[list[Candidate]]:
        engines = len(self.pools)
        seeds = strided(request_seeds(seed, len(prompts), cfg), engines)
        futures = [  # None where there are fewer prompts than engines
            pool.submit(_engine_generate, share, cfg, share_seeds) if share else None
            for pool, share, share_seeds in zip(self.pools, strided(prompts, engines), seeds, strict=True)
        ]
        return unstrided([f.result() if f else [] for f in futures])

    def close(self) -> None:
        for pool in self.pools:
            pool.submit(_engine_close).result()
            pool.shutdown()


def load_dataset_items(
    data: str | Path,
    task: str,
    tokenizer,
    vocab: AudioVocab,
    split: str | None = None,
    max_prompts: int | None = None,
) -> list[Item]:
    """ASR/TTS items from a `speech-lpo tokenize` output (speech_lpo.tokenize_audio.load_tokenized);
    with ``max_prompts``, a random subset of that many utterances, the same one for every caller (fixed
    seed), so that generate and make-pairs --method perturb pick the same prompts."""
    from speech_lpo.tokenize_audio import load_tokenized

    ds = load_tokenized(data)
    if split is not None:
        ds = ds.filter(lambda s: s == split, input_columns="split")
    if max_prompts and max_prompts < len(ds):
        ds = ds.shuffle(seed=0).select(range(max_prompts))
    return dataset_items(ds, task, tokenizer, vocab, str(data))


def dataset_items(ds, task: str, tokenizer, vocab: AudioVocab, where: str = "dataset") -> list[Item]:
    """Items from a dataset with columns id, text, lang, codes; ``where`` names it in errors."""
    missing = {"id", "text", "lang", "codes"} - set(ds.column_names)
    if missing:
        raise ValueError(f"{where}: not a tokenised dataset, columns {sorted(missing)} are missing")
    items = []
    for row in ds:
        text = (row["text"] or "").strip()
        codes = row["codes"] or []
        item = Item(row["id"], task, row["lang"] or "", text, [], [], duration=row.get("duration"))
        if not text:
            item.skipped = "empty or missing transcript"
        elif not codes:
            item.skipped = "no audio codes"
        else:
            try:
                if task == "asr":
                    item.prompt_ids = asr_prompt_ids(tokenizer, vocab, codes)
                    item.reference_ids = asr_response_ids(tokenizer, text)
                else:
                    item.prompt_ids = tts_prompt_ids(tokenizer, text, row.get("speaker"))
                    item.reference_ids = tts_response_ids(tokenizer, vocab, codes)
            except ValueError as err:  # codes out of the codebook: the wrong model for this data
                raise ValueError(f"{where}: utterance {row['id']!r}: {err}") from err
        items.append(item)
    return items


def load_text_items(path: str | Path, tokenizer) -> list[Item]:
    """Text-task items from JSONL lines ``{id, prompt, response, lang?}``.

    A text task's turns are ChatML's user turn holding text and an assistant turn answering text: the
    TTS prompt and the ASR response.
    """
    items = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                item_id = str(row["id"])
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise ValueError(f"{path}:{lineno}: not a text example with an id: {err}") from err
            prompt, response = (row.get("prompt") or "").strip(), (row.get("response") or "").strip()
            item = Item(item_id, "text", row.get("lang", ""), response, [], [])
            if not prompt:
                item.skipped = "empty or missing prompt"
            elif not response:
                item.skipped = "empty or missing transcript"
            else:
                item.prompt_ids = tts_prompt_ids(tokenizer, prompt)
                item.reference_ids = asr_response_ids(tokenizer, response)
            items.append(item)
    return items


# the derived limit: longest reference x ratio + extra; room for an answer somewhat longer than any
# reference, while one that rambles on stops soon after
LENGTH_RATIO = 1.5
LENGTH_EXTRA = 16
TTS_FRAME_TOKENS = 3  # <|audio_start|>, <|audio_end|>, <|im_end|> around the audio tokens


def length_limit(reference_lengths: Iterable[int]) -> int:
    """``max_new_tokens`` derived from the longest reference answer (in tokens)."""
    longest = max(reference_lengths, default=0)
    return math.ceil(longest * LENGTH_RATIO) + LENGTH_EXTRA


def tts_answer_tokens(duration: float, tokens_per_second: float) -> int:
    """Tokens of a TTS answer as long as ``duration`` seconds of audio."""
    return math.ceil(duration * tokens_per_second) + TTS_FRAME_TOKENS


def item_answer_lengths(items: list[Item], tokens_per_second: float | None) -> list[int]:
    """Reference answer lengths in tokens: the tokenised reference (ASR, text) or, for TTS, the reference
    duration through the codec's tokens per second."""
    return [
        tts_answer_tokens(i.duration, tokens_per_second)
        if i.task == "tts" and i.duration
        else len(i.reference_ids)
        for i in items
        if i.skipped is None
    ]


def skip_too_long(items: list[Item], max_new_tokens: int, max_length: int) -> None:
    for item in items:
        if item.skipped is None and len(item.prompt_ids) + max_new_tokens > max_length:
            item.skipped = "prompt too long for the model"


def stable_seed(*parts) -> int:
    return zlib.crc32(":".join(map(str, parts)).encode())


def shard_path(out_dir: Path, index: int) -> Path:
    return out_dir / f"shard-{index:05d}.jsonl"


@dataclass
class Throughput:
    prompts: int = 0
    candidates: int = 0
    new_tokens: int = 0
    seconds: float = 0.0

    def add(self, prompts: int, candidates: list[list[Candidate]], seconds: float) -> None:
        self.prompts += prompts
        self.candidates += sum(map(len, candidates))
        self.new_tokens += sum(len(c.ids) for cs in candidates for c in cs)
        self.seconds += seconds

    def summary(self) -> dict:
        s = max(self.seconds, 1e-9)
        return {**asdict(self), "candidates_per_s": self.candidates / s, "tokens_per_s": self.new_tokens / s}


def generate_shard(
    items: list[Item], backend, cfg: SamplingConfig, seed: int, shard: int, throughput: Throughput, pbar
) -> list[dict]:
    todo = sorted((i for i in items if i.skipped is None), key=lambda i: len(i.prompt_ids))  # less padding
    candidates: dict[str, list[Candidate]] = {}
    step = backend.batch_size or max(len(todo), 1)
    for b, start in enumerate(range(0, len(todo), step)):
        batch = todo[start : start + step]
        t0 = time.perf_counter()
        out = backend.generate([i.prompt_ids for i in batch], cfg, stable_seed(seed, shard, b))
        throughput.add(len(batch), out, time.perf_counter() - t0)
        candidates.update((i.id, cs) for i, cs in zip(batch, out, strict=True))
        pbar.update(len(batch))
        pbar.set_postfix(cand_per_s=f"{throughput.summary()['candidates_per_s']:.1f}")
    pbar.update(len(items) - len(todo))
    return [
        {**asdict(item), "candidates": [asdict(c) for c in candidates.get(item.id, [])]}
        for item in items  # dataset order, skipped prompts included, so every prompt is accounted for
    ]


def write_shard(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def check_settings(out_dir: Path, settings: dict) -> None:
    path = out_dir / SETTINGS_FILE
    if path.is_file():
        old = json.loads(path.read_text())
        changed = sorted(k for k in settings.keys() | old.keys() if old.get(k) != settings.get(k))
        if changed:
            raise SystemExit(
                f"{out_dir} holds shards generated with other settings ({', '.join(changed)}); "
                "use another output directory or delete this one"
            )
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(settings, indent=2) + "\n")
        tmp.replace(path)


def run(
    items: list[Item],
    backend,
    cfg: SamplingConfig,
    out_dir: Path,
    settings: dict,
    shard_size: int = 256,
    seed: int = 0,
) -> dict:
    """Generate every missing shard; returns the report (also written to ``report.json``)."""
    check_settings(out_dir, {**settings, "shard_size": shard_size, "seed": seed, "prompts": len(items)})
    shards = [items[i : i + shard_size] for i in range(0, len(items), shard_size)]
    todo = [k for k in range(len(shards)) if not shard_path(out_dir, k).is_file()]
    log.info("%d prompts in %d shards; %d shards to generate", len(items), len(shards), len(todo))
    throughput, failed = Throughput(), {}
    with tqdm(total=sum(len(shards[k]) for k in todo), desc="generate", unit="prompt") as pbar:
        for k in todo:
            try:
                rows = generate_shard(shards[k], backend, cfg, seed, k, throughput, pbar)
            except Exception as err:  # a backend failing mid-run costs this shard, not the finished ones
                log.exception("shard %d failed; it will be retried by a re-run", k)
                failed[k] = f"{type(err).__name__}: {err}"
                continue
            write_shard(shard_path(out_dir, k), rows)
    report = summarize(out_dir, len(shards))
    report["failed_shards"] = failed
    report["throughput"] = {"backend": backend.name, **throughput.summary()}
    t = report["throughput"]
    log.info(
        "%s: %d candidates in %.1f s: %.1f candidates/s, %.0f tokens/s",
        backend.name, t["candidates"], t["seconds"], t["candidates_per_s"], t["tokens_per_s"],
    )  # fmt: skip
    tmp = out_dir / (REPORT_FILE + ".tmp")
    tmp.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    tmp.replace(out_dir / REPORT_FILE)
    return report


def generation_settings(out_dir: str | Path) -> dict:
    """A generation's settings file (its prompt count among them)."""
    settings_path = Path(out_dir) / SETTINGS_FILE
    if not settings_path.is_file():
        raise FileNotFoundError(f"{out_dir}: no {SETTINGS_FILE}; is this a `speech-lpo generate` output?")
    return json.loads(settings_path.read_text())


def iter_rows(out_dir: str | Path) -> Iterator[dict]:
    """The rows of a finished generation, in prompt order; an unfinished one is an error."""
    out_dir = Path(out_dir)
    settings = generation_settings(out_dir)
    n_shards = -(-settings["prompts"] // settings["shard_size"])
    missing = [k for k in range(n_shards) if not shard_path(out_dir, k).is_file()]
    if missing:
        raise FileNotFoundError(f"{out_dir}: shards {missing[:10]} are missing; re-run `speech-lpo generate`")
    for k in range(n_shards):
        with shard_path(out_dir, k).open(encoding="utf-8") as f:
            yield from (json.loads(line) for line in f)


@dataclass
class _Counts:
    prompts: int = 0
    candidates: int = 0
    hit_max_new_tokens: int = 0
    hit_max_new_tokens_ids: list[str] = field(default_factory=list)  # prompts with a cut candidate
    empty_candidates: int = 0
    skipped: Counter = field(default_factory=Counter)


def summarize(out_dir: Path, n_shards: int) -> dict:
    counts, finished = _Counts(), 0
    for k in range(n_shards):
        if not shard_path(out_dir, k).is_file():
            continue
        finished += 1
        with shard_path(out_dir, k).open(encoding="utf-8") as f:
            for row in map(json.loads, f):
                counts.prompts += 1
                if row["skipped"]:
                    counts.skipped[row["skipped"]] += 1
                counts.candidates += len(row["candidates"])
                cut = sum(c["hit_max_new_tokens"] for c in row["candidates"])
                counts.hit_max_new_tokens += cut
                if cut:
                    counts.hit_max_new_tokens_ids.append(row["id"])
                counts.empty_candidates += sum(
                    len(c["ids"]) <= 1 and not c["hit_max_new_tokens"] for c in row["candidates"]
                )
    return {
        "shards": n_shards,
        "finished_shards": finished,
        **asdict(counts),
        "skipped": dict(counts.skipped),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", required=True, help="model dir (save_pretrained + tokenizer + audio_vocab.json)"
    )
    parser.add_argument("--task", choices=TASKS, required=True)
    parser.add_argument("--data", required=True, help="tokenised dataset dir (asr, tts) or JSONL (text)")
    parser.add_argument("--split", help="only utterances of this split (asr, tts)")
    parser.add_argument("--max-prompts", type=int, help="a fixed random subset of this many utterances")
    parser.add_argument("--out", required=True, help="output directory of shards")
    parser.add_argument("--n", type=int, default=3, help="candidates per prompt")
    parser.add_argument("--temperature", type=float, default=1.0, help="0 means greedy")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument(
        "--max-new-tokens", type=int, help="default: from the data, the longest reference plus a margin"
    )
    parser.add_argument("--batch-size", type=int, default=16, help="prompts per transformers batch")
    parser.add_argument("--shard-size", type=int, default=256, help="prompts per output shard")
    parser.add_argument("--seed", type=int, default=0)
    add_backend_arguments(parser)


def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    """The generation backend's options, the same in generate, decode and synthesize (``make_backend``)."""
    parser.add_argument("--backend", choices=("transformers", "vllm"), default="transformers")
    parser.add_argument("--device", help="transformers device (default: cuda if available)")
    parser.add_argument(
        "--ngpu", type=int, default=1, help="vllm: GPUs; one engine per --tensor-parallel-size of them"
    )
    parser.add_argument(
        "--tensor-parallel-size",
        type=int,
        default=1,
        help="vllm: GPUs per engine, only for a model that does not fit one (must divide its heads)",
    )
    parser.add_argument(
        "--gpu-memory-utilization",
        type=float,
        default=0.9,
        help="vllm: share of GPU memory to reserve (on CPU: of RAM, e.g. 0.3)",
    )
    parser.add_argument(
        "--enforce-eager", action="store_true", help="vllm: no graph compilation (faster start)"
    )


def stop_ids_for(task: str, tokenizer, vocab: AudioVocab) -> tuple[int, ...]:
    return (im_end_id(tokenizer), vocab.audio_end_id) if task == "tts" else (im_end_id(tokenizer),)


def make_backend(args: argparse.Namespace, model_dir: str | Path):
    """The backend that ``add_backend_arguments`` chose, on ``model_dir``."""
    if args.backend == "vllm":
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(model_dir)
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        engines = vllm_engines(config, args.ngpu, args.tensor_parallel_size, visible)
        engine_kwargs = {
            "tensor_parallel_size": args.tensor_parallel_size,
            "gpu_memory_utilization": args.gpu_memory_utilization,
            "enforce_eager": args.enforce_eager,
        }
        if len(engines) == 1:
            return VLLMBackend(model_dir, **engine_kwargs)
        return DataParallelVLLM(model_dir, engines, **engine_kwargs)
    return TransformersBackend(model_dir, args.batch_size, args.device)


def main(args: argparse.Namespace) -> None:
    from transformers import AutoConfig, AutoTokenizer

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    vocab = AudioVocab.load(args.model)
    if args.task == "text":
        items = load_text_items(args.data, tokenizer)
    else:
        items = load_dataset_items(args.data, args.task, tokenizer, vocab, args.split, args.max_prompts)
    max_new_tokens = args.max_new_tokens
    if max_new_tokens is None:
        tps = read_codec_meta(args.model)["tokens_per_second"] if args.task == "tts" else None
        max_new_tokens = length_limit(item_answer_lengths(items, tps))
        log.info("max_new_tokens %d, derived from the longest reference answer", max_new_tokens)
    skip_too_long(items, max_new_tokens, AutoConfig.from_pretrained(args.model).max_position_embeddings)
    cfg = SamplingConfig(
        args.n, args.temperature, args.top_p, max_new_tokens, stop_ids_for(args.task, tokenizer, vocab)
    )
    if args.task == "tts":
        cfg.codebook_order = CodebookOrder.for_model(args.model, vocab, im_end_id(tokenizer))
    settings = {
        "model": str(Path(args.model).resolve()),
        "data": str(Path(args.data).resolve()),
        **{
            k: getattr(args, k)
            for k in (
                "task",
                "split",
                "max_prompts",
                "backend",
                "n",
                "temperature",
                "top_p",
            )
        },
        "max_new_tokens": max_new_tokens,
    }
    if args.backend == "transformers":
        settings["batch_size"] = args.batch_size  # padding changes the numbers, so the samples
    backend = make_backend(args, args.model)
    try:
        report = run(items, backend, cfg, Path(args.out), settings, args.shard_size, args.seed)
    finally:
        backend.close()
    log.info(
        "report: %s", json.dumps({k: v for k, v in report.items() if k != "throughput"}, ensure_ascii=False)
    )
    if report["failed_shards"]:
        raise SystemExit(
            f"{len(report['failed_shards'])} shard(s) failed (see {Path(args.out) / REPORT_FILE}); "
            "finished shards are kept, re-run the same command to generate the rest"
        )
