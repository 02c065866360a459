"""`speech-lpo decode` end to end: real AISHELL-1 audio -> prepare -> tokenize (melvq) -> build-model ->
a tiny Qwen2 trained here for a few seconds -> decode -> score; the report files must hold what they claim."""

import json
import shutil
from pathlib import Path

import jiwer
import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from speech_lpo.cli import main as cli_main
from speech_lpo.decode import generate_batch, load_vocab, read_done
from speech_lpo.generate import length_limit
from speech_lpo.modeling import tiny_qwen2
from speech_lpo.normalize import get_normalizer
from speech_lpo.prompts import asr_prompt_ids, asr_response_ids, tts_prompt_ids, tts_response_ids
from speech_lpo.tokenize_audio import SCHEMA, load_tokenized, write_shard

ROOT = Path(__file__).parents[1]
DATA = ROOT / ".." / "shared" / "data"
AISHELL = DATA / "aishell1"

needs_data = pytest.mark.skipif(not AISHELL.is_dir(), reason=f"real AISHELL-1 samples not found at {AISHELL}")


def build_pipeline(tmp: Path, codebook_size: int = 32) -> tuple[Path, Path]:
    """prepare -> tokenize -> build-model on the real AISHELL-1 test utterances: (model dir, tokens)."""
    cli_main(["prepare", "--corpus", "aishell", "--corpus-dir", str(AISHELL), "--out", str(tmp / "data")])
    spec = yaml.safe_load((ROOT / "tokenizers" / "melvq.yaml").read_text()) | {"codebook_size": codebook_size}
    (tmp / "melvq.yaml").write_text(yaml.safe_dump(spec))
    test = tmp / "data" / "test.jsonl"
    argv = [
        "tokenize",
        "--manifests",
        str(test),
        "--out",
        str(tmp / "tokens"),
        "--codec",
        str(tmp / "melvq.yaml"),
    ]
    cli_main(argv + ["--fit-manifest", str(test), "--jobs", "1"])
    argv = ["build-model", "--codec", str(tmp / "tokens" / "codec"), "--out", str(tmp / "model")]
    cli_main(argv + ["--text-manifests", str(test), "--bpe-vocab-size", "400", "--hidden-size", "64"])
    return tmp / "model", tmp / "tokens" / "test"


def train(model_dir: Path, tokens: Path, tasks: tuple[str, ...], steps: int, lr: float = 3e-3) -> None:
    """Memorise the utterances (loss on the responses only) and save the model in place."""
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer, vocab, _ = load_vocab(model_dir)
    examples = []
    for row in load_tokenized(tokens):
        if "asr" in tasks:
            examples.append(
                (asr_prompt_ids(tokenizer, vocab, row["codes"]), asr_response_ids(tokenizer, row["text"]))
            )
        if "tts" in tasks:
            examples.append(
                (
                    tts_prompt_ids(tokenizer, row["text"], row["speaker"]),
                    tts_response_ids(tokenizer, vocab, row["codes"]),
                )
            )
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        for prompt, response in examples:
            logits = model(input_ids=torch.tensor([prompt + response])).logits[0, len(prompt) - 1 : -1]
            torch.nn.functional.cross_entropy(logits, torch.tensor(response)).backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    model.save_pretrained(model_dir)


@pytest.fixture(scope="module")
def asr_model(tmp_path_factory) -> tuple[Path, Path]:
    if not AISHELL.is_dir():
        pytest.skip(f"real AISHELL-1 samples not found at {AISHELL}")
    tmp = tmp_path_factory.mktemp("asr")
    model_dir, tokens = build_pipeline(tmp)
    train(model_dir, tokens, ("asr",), steps=60)
    return model_dir, tokens


def test_left_padded_batches_decode_as_one_by_one():
    model = tiny_qwen2(300, seed=1).eval()
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 300, (n,), generator=g).tolist() for n in (5, 17, 9, 30)]
    for search in ({"num_beams": 1}, {"num_beams": 3}):
        batched = generate_batch(model, prompts, 0, [1, 2], do_sample=False, max_new_tokens=12, **search)
        single = [
            generate_batch(model, [p], 0, [1, 2], do_sample=False, max_new_tokens=12, **search)[0]
            for p in prompts
        ]
        assert batched == single
        for ids in batched:  # cut after the first stop token
            assert all(t not in (1, 2) for t in ids[:-1])


def test_a_torn_last_line_is_dropped_and_the_file_repaired(tmp_path):
    path = tmp_path / "hyps.jsonl"
    path.write_text('{"id": "a", "text": "x"}\n{"id": "b", "te')
    assert read_done(path) == {"a": {"id": "a", "text": "x"}}
    assert path.read_text() == '{"id": "a", "text": "x"}\n'
    path.write_text('{"id": "a"}\n{"id": "b", "te\n{"id": "c"}\n')
    with pytest.raises(ValueError, match="hyps.jsonl:2: corrupt line"):
        read_done(path)


@needs_data
def test_decode_and_score_a_trained_tiny_model(asr_model, tmp_path, capsys):
    model_dir, tokens = asr_model
    out = tmp_path / "greedy"
    # first a run cut short (--limit), then the full run continues it
    cli_main(
        ["decode", "--model", str(model_dir), "--data", str(tokens), "--out-dir", str(out), "--limit", "3"]
    )
    cli_main(
        [
            "decode",
            "--model",
            str(model_dir),
            "--data",
            str(tokens),
            "--out-dir",
            str(out),
            "--batch-size",
            "4",
        ]
    )
    report = json.loads((out / "decode.json").read_text())
    assert report["utterances"] == report["decoded"] == 7 and report["decoded_this_run"] == 4
    assert report["search"] == "greedy" and report["failed"] == {}

    hyps = [json.loads(line) for line in (out / "hyps.jsonl").read_text().splitlines()]
    rows = {r["id"]: r for r in load_tokenized(tokens)}
    assert sorted(h["id"] for h in hyps) == sorted(rows)
    kaldi = dict(line.split(" ", 1) for line in (out / "text").read_text().splitlines())
    assert kaldi == {h["id"]: h["text"] for h in hyps}
    assert report["unfinished"] == [h["id"] for h in sorted(hyps, key=lambda h: h["id"]) if not h["finished"]]
    # the limit came from the references (longest plus a margin); an explicit small one cuts, by id
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    refs = [len(asr_response_ids(tokenizer, r["text"])) for r in rows.values()]
    assert report["max_new_tokens"] == length_limit(refs) > max(refs)
    cli_main(["decode", "--model", str(model_dir), "--data", str(tokens), "--out-dir", str(tmp_path / "cut")]
             + ["--max-new-tokens", "4"])  # fmt: skip
    cut = json.loads((tmp_path / "cut" / "decode.json").read_text())
    cut_hyps = [json.loads(line) for line in (tmp_path / "cut" / "hyps.jsonl").read_text().splitlines()]
    assert cut["unfinished"] == sorted(h["id"] for h in cut_hyps if h["n_tokens"] == 4 and not h["finished"])
    assert len(cut["unfinished"]) >= 5  # AISHELL sentences are longer than 4 tokens

    argv = [
        "score",
        "asr",
        "--ref",
        str(out / "ref_text"),
        "--hyp",
        str(out / "text"),
        "--benchmark",
        "aishell1",
    ]
    cli_main(argv + ["--out-dir", str(tmp_path / "score"), "--tag", "method=sft"])
    assert "greedy: %CER" in capsys.readouterr().out
    summ = json.loads((tmp_path / "score" / "summary-greedy.json").read_text())
    norm = get_normalizer("chinese")
    ids = sorted(rows)
    cer = jiwer.cer([norm.normalize(rows[i]["text"]) for i in ids], [norm.normalize(kaldi[i]) for i in ids])
    assert summ["error_rate"] == pytest.approx(100 * cer) and summ["problems"] == []
    print(f"tiny model trained 60 steps, greedy: %CER {summ['error_rate']:.2f} on its 7 training utterances")
    assert summ["error_rate"] < 30  # it learnt them: the decode path really reads the audio tokens
    errs = (tmp_path / "score" / "errs-greedy.txt").read_text()
    for i in ids:  # the alignment shown is of the hypothesis decoded
        line = next(x for x in errs.splitlines() if x.startswith(f"{i}:\t") and "S=" not in x)
        shown = "".join(t.split("->")[1].rstrip(")") if "->" in t else t for t in line.split("\t")[1].split())
        assert shown.replace("*", "") == norm.normalize(kaldi[i])


@needs_data
def test_beam_search_and_prompts_too_long_for_the_model(asr_model, tmp_path):
    model_dir, tokens = asr_model
    out = tmp_path / "beam"
    argv = [
        "decode",
        "--model",
        str(model_dir),
        "--data",
        str(tokens),
        "--out-dir",
        str(out),
        "--beam-size",
        "3",
    ]
    cli_main(argv)
    report = json.loads((out / "decode.json").read_text())
    assert report["search"] == "beam 3" and report["decoded"] == 7
    # a run with other settings into the same dir is refused, not mixed in
    with pytest.raises(ValueError, match="other settings"):
        cli_main(argv[:-1] + ["1"])
    # the model has 4096 positions: no prompt leaves room for 4000 new tokens; every one is named
    out = tmp_path / "too_long"
    argv = ["decode", "--model", str(model_dir), "--data", str(tokens), "--out-dir", str(out)]
    cli_main(argv + ["--max-new-tokens", "4000", "--limit", "2"])
    report = json.loads((out / "decode.json").read_text())
    assert report["decoded"] == 0 and len(report["failed"]) == 2
    assert all("exceeds the model's 4096" in why for why in report["failed"].values())
    assert (out / "text").read_text() == ""
    summ_dir = tmp_path / "score"
    cli_main(
        [
            "score",
            "asr",
            "--ref",
            str(out / "ref_text"),
            "--hyp",
            str(out / "text"),
            "--normalizer",
            "chinese",
            "--out-dir",
            str(summ_dir),
        ]
    )
    summ = json.loads((summ_dir / "summary-too_long.json").read_text())
    assert summ["problem_counts"] == {"missing_hypothesis": 2} and summ["error_rate"] == 100.0


@needs_data
def test_duplicate_ids_and_codes_of_another_codec_are_refused_by_name(asr_model, tmp_path):
    model_dir, tokens = asr_model
    row = load_tokenized(tokens)[0]
    for name, codes, match in (
        ("dup", row["codes"], "1 utterance ids occur more than once"),
        ("range", [999, 3], f"utterance {row['id']!r}: audio code out of range"),
    ):
        bad = tmp_path / name
        shutil.copytree(tokens, bad)
        write_shard(bad / "shard-99999.arrow", {k: [codes if k == "codes" else row[k]] for k in SCHEMA.names})
        if name == "range":
            (bad / "shard-00000.arrow").unlink()
        with pytest.raises(ValueError, match=match):
            cli_main(
                [
                    "decode",
                    "--model",
                    str(model_dir),
                    "--data",
                    str(bad),
                    "--out-dir",
                    str(tmp_path / f"out_{name}"),
                ]
            )


@needs_data
def test_several_models_in_one_process_decode_as_one_each(asr_model, tmp_path):
    model_dir, tokens = asr_model
    one = ["decode", "--data", str(tokens), "--limit", "4", "--model", str(model_dir)]
    cli_main([*one, "--out-dir", str(tmp_path / "alone")])
    cli_main([*one, str(model_dir), "--out-dir", str(tmp_path / "a"), str(tmp_path / "b")])
    for out in ("a", "b"):
        assert (tmp_path / out / "text").read_text() == (tmp_path / "alone" / "text").read_text()
        assert json.loads((tmp_path / out / "decode.json").read_text())["decoded_this_run"] == 4
    with pytest.raises(SystemExit, match="2 --model dirs for 1 --out-dir"):
        cli_main([*one, str(model_dir), "--out-dir", str(tmp_path / "c")])
