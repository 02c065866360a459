"""Tokenize audio: manifests -> codec codes, as Arrow shards, in parallel workers; resumable.

On disk (``--out``):

  codec/                   the codec every shard was made with (``speech_lpo.codecs.load_codec`` reads it);
                           melvq / worldvq is fitted here on the train manifest the first time
  <name>/shard-00000.arrow one Arrow IPC stream per ``--shard-size`` manifest lines (<name> = manifest
                           file stem, e.g. train), written atomically (tmp + rename); a re-run skips the
                           shards that exist, so a killed run continues where it stopped
  <name>/plan.json         the manifest's SHA-1 and the shard size: a re-run with another manifest or
                           shard size is refused rather than mixing two cuts
  <name>/skipped-00000.tsv utterances of that shard that could not be encoded: id, file, reason
  <name>/skipped.tsv       all of them, and report.json, written when the manifest is finished

Rows (``load_tokenized``): id, text, speaker, lang, split, duration, audio (path), codes (list of int64,
values in [0, codec.codebook_size)). Codes, not token ids: ids depend on the model's vocabulary and are
``AudioVocab.codes_to_ids(codes)`` (speech_lpo.vocab).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import random
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import yaml
from tqdm import tqdm

from speech_lpo.codecs import CODEC_FILE, FITTED_CODECS, Codec, codec_class, load_audio, load_codec
from speech_lpo.prepare import read_manifest

CODEC_DIR = "codec"
ENCODE_BATCH = 16  # utterances per codec batch
PLAN_FILE = "plan.json"  # manifest hash and shard size the shards were cut with
SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("text", pa.string()),
        ("speaker", pa.string()),
        ("lang", pa.string()),
        ("split", pa.string()),
        ("duration", pa.float64()),
        ("audio", pa.string()),
        ("codes", pa.list_(pa.int64())),
    ]
)


# -- the codec ----------------------------------------------------------------------------------------------
def fit_codec(spec: dict, manifest: Path) -> Codec:
    """Fit a codebook codec (melvq, worldvq) on a seeded sample of a (train) manifest's audio."""
    cls = codec_class(spec["codec"])
    params = {k: spec[k] for k in cls.param_names() if k in spec}
    lines = read_manifest(manifest)
    random.Random(spec.get("fit_seed", 0)).shuffle(lines)
    max_frames = spec.get("fit_max_frames", 200_000)
    frame_rate = params.get("sample_rate", 16000) / params.get("hop_length", 400)

    def audio():
        frames = 0.0
        for line in tqdm(lines, desc=f"{spec['codec']} fit on {manifest.name}"):
            if frames >= max_frames:
                return
            try:
                wav, sr = load_audio(line["audio"])
            except ValueError:
                continue  # reported when the manifest itself is tokenised
            frames += len(wav) / sr * frame_rate
            yield wav, sr

    return cls.fit(
        audio(),
        codebook_size=spec["codebook_size"],
        seed=spec.get("fit_seed", 0),
        max_frames=max_frames,
        **params,
    )


def prepare_codec(
    codec_arg: str, out: Path, fit_manifest: Path | None, num_quantizers: int | None = None
) -> Codec:
    """The codec in ``out/codec``: made from ``codec_arg`` the first time, reused (and checked) after.
    ``num_quantizers`` is required for a bare checkpoint or hub id (speech_lpo.codecs.load_codec)."""
    saved = out / CODEC_DIR
    spec = yaml.safe_load(Path(codec_arg).read_text()) if codec_arg.endswith((".yaml", ".yml")) else None
    if (saved / CODEC_FILE).is_file():
        codec = load_codec(saved, num_quantizers)
        if spec:
            for key in ("codec", "codebook_size", "sample_rate"):
                if key in spec and spec[key] != codec.spec()[key]:
                    raise ValueError(
                        f"{saved} holds a {codec.spec()} codec but {codec_arg} asks for {key}={spec[key]}; "
                        "use a new --out or delete the old one"
                    )
        return codec
    if spec and spec["codec"] in FITTED_CODECS:
        if fit_manifest is None:
            raise ValueError(f"{spec['codec']} must be fitted: pass --fit-manifest (the train manifest)")
        codec = fit_codec(spec, fit_manifest)
    else:
        codec = load_codec(codec_arg, num_quantizers)
    codec.save(saved)
    return codec


# -- shards -------------------------------------------------------------------------------------------------
_CODEC: Codec | None = None


def _init_worker(codec_dir: str) -> None:
    global _CODEC
    import torch
    from threadpoolctl import threadpool_limits

    # one process per core: BLAS or torch threads on top would fight them (on a loaded 2-core machine
    # melvq's matrix products ran 5x slower with 2 BLAS threads than with 1). A neural codec runs on the
    # GPU when there is one (speech_lpo.codecs.neural).
    torch.set_num_threads(1)
    threadpool_limits(1)
    _CODEC = load_codec(codec_dir)


def encode_lines(
    codec: Codec, lines: list[dict], batch_size: int = ENCODE_BATCH
) -> tuple[dict[str, list], list[str]]:
    """Columns of the utterances that encode, and a ``id, file, reason`` row for each that does not.
    Utterances are encoded ``batch_size`` at a time (one padded batch for a neural codec); a batch that
    fails is encoded one at a time, so that the failure is named."""
    codes: dict[int, list[int]] = {}
    reasons: dict[int, str] = {}
    audio = []
    for i, line in enumerate(lines):
        try:
            wav, sr = load_audio(line["audio"])
            if wav.size == 0:
                raise ValueError("zero-length audio")
            bad = int((~np.isfinite(wav)).sum())  # float audio can hold NaN/Inf; codecs fail or emit noise
            if bad:
                raise ValueError(f"non-finite samples (NaN or Inf): {bad} of {wav.size}")
            audio.append((i, wav, sr))
        except ValueError as e:
            reasons[i] = str(e)
    for start in range(0, len(audio), batch_size):
        batch = audio[start : start + batch_size]
        try:
            encoded = codec.encode_batch([(wav, sr) for _, wav, sr in batch])
        except (ValueError, RuntimeError):
            encoded = None
        for k, (i, wav, sr) in enumerate(batch):
            try:
                c = encoded[k] if encoded is not None else codec.encode(wav, sr)
                if c.size == 0:
                    raise ValueError("no codes (audio too short)")
                codes[i] = c.tolist()
            except (ValueError, RuntimeError) as e:
                reasons[i] = str(e)
    columns: dict[str, list] = {name: [] for name in SCHEMA.names}
    for i, line in enumerate(lines):
        if i in codes:
            for name in SCHEMA.names:
                columns[name].append(codes[i] if name == "codes" else line[name])
    skipped = [f"{lines[i]['id']}\t{lines[i]['audio']}\t{reasons[i]}" for i in sorted(reasons)]
    return columns, skipped


def write_shard(path: Path, columns: dict[str, list]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    table = pa.table(columns, schema=SCHEMA)
    with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_stream(sink, SCHEMA) as writer:
        writer.write_table(table)
    os.replace(tmp, path)


def _encode_shard(task: tuple[Path, list[dict]]) -> int:
    path, lines = task
    columns, skipped = encode_lines(_CODEC, lines)
    skip_path = path.with_name(path.name.replace("shard-", "skipped-").replace(".arrow", ".tsv"))
    skip_tmp = skip_path.with_name(skip_path.name + ".tmp")
    skip_tmp.write_text("".join(row + "\n" for row in skipped), encoding="utf-8")
    os.replace(skip_tmp, skip_path)
    write_shard(path, columns)  # last: a shard file means its skips are recorded too
    return len(lines)


def check_plan(split_dir: Path, manifest: Path, shard_size: int) -> None:
    """Shards resume only if they cut the same manifest the same way: record the cut, then check it."""
    plan = {"manifest_sha1": hashlib.sha1(manifest.read_bytes()).hexdigest(), "shard_size": shard_size}
    path = split_dir / PLAN_FILE
    if path.is_file():
        done = json.loads(path.read_text())
        if done["manifest_sha1"] != plan["manifest_sha1"]:
            raise ValueError(f"{split_dir} holds shards of another version of {manifest}; use a new --out")
        if done["shard_size"] != shard_size:
            raise ValueError(f"{split_dir} was cut with --shard-size {done['shard_size']}; resume with it")
        return
    split_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(plan) + "\n")


def tokenize_manifest(manifest: Path, out: Path, codec_dir: Path, shard_size: int, jobs: int) -> dict:
    import torch

    lines = read_manifest(manifest)
    split_dir = out / manifest.name.removesuffix(".jsonl")
    check_plan(split_dir, manifest, shard_size)
    tasks = [
        (split_dir / f"shard-{i // shard_size:05d}.arrow", lines[i : i + shard_size])
        for i in range(0, len(lines), shard_size)
    ]
    todo = [t for t in tasks if not t[0].is_file()]
    bar = tqdm(
        total=len(lines), initial=len(lines) - sum(len(t[1]) for t in todo), desc=f"tokenize {manifest.name}"
    )
    # a forked child cannot use CUDA once the parent has: with a GPU the workers are spawned
    context = multiprocessing.get_context("spawn" if torch.cuda.is_available() else None)
    with ProcessPoolExecutor(
        jobs, mp_context=context, initializer=_init_worker, initargs=(str(codec_dir),)
    ) as pool:
        for n in pool.map(_encode_shard, todo):
            bar.update(n)
    bar.close()
    skipped = [row for p in sorted(split_dir.glob("skipped-*.tsv")) for row in p.read_text().splitlines()]
    (split_dir / "skipped.tsv").write_text("id\tfile\treason\n" + "".join(r + "\n" for r in skipped))
    report = {
        "manifest": str(manifest),
        "utterances": len(lines),
        "skipped": len(skipped),
        "shards": len(tasks),
    }
    (split_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def load_tokenized(path: str | Path) -> datasets.Dataset:
    """The tokenised utterances under ``path``: one split dir (``<out>/train``) or all of ``<out>``."""
    path = Path(path)
    shards = sorted(path.glob("shard-*.arrow")) or sorted(path.glob("*/shard-*.arrow"))
    if not shards:
        raise FileNotFoundError(f"{path}: no tokenised shards (shard-*.arrow); run `speech-lpo tokenize`")
    return datasets.concatenate_datasets([datasets.Dataset.from_file(str(p)) for p in shards])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--manifests", type=Path, nargs="+", required=True, help="manifest JSONL files")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--codec",
        default="tokenizers/melvq.yaml",
        help="tokenizer YAML, saved codec dir, model dir, or transformers codec checkpoint / hub id",
    )
    parser.add_argument(
        "--num-quantizers",
        type=int,
        help="codebooks a neural codec keeps (fewer: shorter sequences); required for a bare checkpoint or "
        "hub id, which holds up to 32; must agree with a tokenizer spec's num_quantizers",
    )
    parser.add_argument(
        "--fit-manifest",
        type=Path,
        help="manifest melvq / worldvq is fitted on (default: the one named train.jsonl)",
    )
    parser.add_argument("--shard-size", type=int, default=200, help="utterances per shard")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes")


def main(args: argparse.Namespace) -> None:
    fit = args.fit_manifest or next((m for m in args.manifests if m.name == "train.jsonl"), None)
    codec = prepare_codec(str(args.codec), args.out, fit, args.num_quantizers)
    print(f"codec: {codec.spec()}")
    for manifest in args.manifests:
        report = tokenize_manifest(manifest, args.out, args.out / CODEC_DIR, args.shard_size, args.jobs)
        print(
            f"{manifest}: {report['utterances'] - report['skipped']} tokenised, {report['skipped']} skipped"
        )
