"""`speech-lpo make-pairs`: TTS, ASR model-based, ASR perturbation-based and text-task groups.

Groups are read back with speech_lpo.groups.load_groups, whose cleaning must find nothing to drop.
"""

# ruff: noqa: F811 (the fixtures imported from test_generate are parameters of the tests here)
from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from speech_lpo.cli import main as cli
from speech_lpo.generate import check_settings, shard_path, write_shard
from speech_lpo.groups import load_groups, write_groups
from speech_lpo.normalize import get_normalizer
from speech_lpo.prompts import asr_response_ids, im_end_id, response_text, tts_response_ids
from speech_lpo.vocab import AudioVocab
from tests.test_generate import (  # noqa: F401
    corpus_columns,
    data_dir,
    generate_args,
    model_dir,
)

pytest_plugins = ["tests.fixtures_corpus"]  # mini_corpus, melvq_codec_dir


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    return AutoTokenizer.from_pretrained(model_dir)


def load_valid_groups(path: Path):
    groups, skipped = load_groups(path)
    assert not skipped, skipped.summary()
    return groups


def read_report(out: Path) -> dict:
    assert out.with_name(out.stem + ".edit_distance.png").stat().st_size > 0
    return json.loads(out.with_name(out.stem + ".report.json").read_text())


def write_candidates(path: Path, rows: list[dict]) -> Path:
    """A `speech-lpo generate` output directory holding ``rows``."""
    check_settings(path, {"prompts": len(rows), "shard_size": len(rows)})
    write_shard(shard_path(path, 0), rows)
    return path


def cand(ids: list[int], hit_max: bool = False) -> dict:
    return {"ids": ids, "hit_max_new_tokens": hit_max}


def test_tts_group_is_one_chosen_against_the_candidates(model_dir, tokenizer, tmp_path):
    vocab = AudioVocab.load(model_dir)
    end = im_end_id(tokenizer)
    ref = tts_response_ids(tokenizer, vocab, [3, 1, 4, 1, 5, 9, 2, 6])
    other = tts_response_ids(tokenizer, vocab, [3, 1, 4, 1, 5, 9, 2])
    row = {
        "id": "u1",
        "task": "tts",
        "lang": "en",
        "text": "HELLO",
        "prompt_ids": [1, 2, 3],
        "reference_ids": ref,
    }
    row["candidates"] = [
        cand(ref),  # identical to the reference: dropped
        cand(ref[:6], hit_max=True),  # ran out of tokens mid-audio: dropped by default, or kept and flagged
        cand(other[:-1]),  # stopped at <|audio_end|>: kept, closed with <|im_end|>
        cand([vocab.audio_start_id, 11, 12, end]),  # text tokens only: no audio codes, dropped
    ]
    empty = {**row, "id": "u2", "candidates": [cand([end]), cand(ref)]}
    skipped = {**row, "id": "u3", "candidates": [], "skipped": "empty or missing transcript"}
    row["skipped"] = empty["skipped"] = None
    candidates = write_candidates(tmp_path / "c", [row, empty, skipped])
    argv = ["make-pairs", "--model", str(model_dir), "--candidates", str(candidates), "--out"]
    dropped = {"identical to the reference": 2, "decodes to no audio codes": 2}
    dropped_groups = {
        "no usable rejected response": 1,
        "skipped by generate: empty or missing transcript": 1,
    }
    cli(argv + [str(tmp_path / "default.jsonl")])  # the cut candidate is dropped, counted
    (group,) = load_valid_groups(tmp_path / "default.jsonl")
    assert group.rejected_ids == [other] and group.meta["hit_max_new_tokens"] == [False]
    report = read_report(tmp_path / "default.jsonl")
    assert report["dropped_responses"] == {**dropped, "hit max_new_tokens": 1} and report["flagged"] == {}

    out = tmp_path / "groups.jsonl"
    cli(argv + [str(out), "--keep-cut-candidates"])
    (group,) = load_valid_groups(out)
    assert group.chosen_ids == ref and group.rejected_ids == [ref[:6], other]
    assert group.meta["hit_max_new_tokens"] == [True, False]
    assert group.meta["edit_distance"] == [3, 1]  # in audio codes: 3 cut off; 1 missing
    report = read_report(out)
    assert report["groups"] == 1 and report["rejected"] == 2 and report["prompts"] == 3
    assert report["dropped_responses"] == dropped and report["dropped_groups"] == dropped_groups
    assert report["flagged"] == {"hit max_new_tokens": 1}


@pytest.mark.slow  # Whisper and resemblyzer on Griffin-Lim audio: about 3 minutes on a loaded machine
def test_tts_metric_selection_hears_the_candidates(melvq_codec_dir, mini_manifests, tmp_path):
    """--select metric / metric-best with the real instruments: the melvq codec's audio, the bundled Whisper
    tiny.en and resemblyzer, on codes of real (synthesised) utterances."""
    import soundfile as sf

    from speech_lpo.build_model import build
    from speech_lpo.codecs import load_codec
    from speech_lpo.prepare import read_manifest
    from tests.fixtures_corpus import QWEN_TOKENIZER_DIR, need

    model = tmp_path / "model"
    tiny = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "num_kv_heads": 1}
    build(str(melvq_codec_dir), model, tokenizer_name=str(need(QWEN_TOKENIZER_DIR)), tiny_config=tiny)
    tokenizer, vocab, codec = AutoTokenizer.from_pretrained(model), AudioVocab.load(model), load_codec(model)
    utts = read_manifest(mini_manifests["librispeech"] / "train.jsonl")[:2]
    codes = [codec.encode(*sf.read(u["audio"], dtype="float32")) for u in utts]
    ids = [tts_response_ids(tokenizer, vocab, c) for c in codes]
    row = {"id": "u", "task": "tts", "lang": "en", "text": utts[0]["text"], "prompt_ids": [1, 2, 3]}
    row |= {"reference_ids": ids[0], "skipped": None}
    row["candidates"] = [
        cand(ids[0]),  # identical: dropped before anything is heard
        cand(tts_response_ids(tokenizer, vocab, codes[0][: len(codes[0]) * 2 // 5])),  # cut short
        cand(ids[1]),  # another sentence
        cand(tts_response_ids(tokenizer, vocab, codes[0][:-1])),  # one frame less: as good as the reference
    ]
    candidates = str(write_candidates(tmp_path / "c", [row]))
    argv = ["make-pairs", "--model", str(model), "--candidates", candidates, "--select"]
    cli([*argv, "metric", "--out", str(tmp_path / "metric.jsonl")])
    (group,) = load_valid_groups(tmp_path / "metric.jsonl")
    assert group.chosen_ids == ids[0] and group.meta["select"] == "metric"  # the reference stays chosen
    # the cut one is heard as cut (and in another voice), the other sentence as more errors; one frame less
    # is not worse by the margins
    assert group.rejected_ids == [row["candidates"][1]["ids"], ids[1]]
    assert "truncated" in group.meta["worse"][0] and group.meta["worse"][1] == ["intelligibility"]
    assert group.meta["wer_gap"][1] > 0.1 and all(-1 <= s <= 1 for s in group.meta["sim"])
    report = read_report(tmp_path / "metric.jsonl")
    assert report["dropped_responses"] == {
        "identical to the reference": 1,
        "not worse than the chosen response by a margin": 1,
    }
    assert report["pairs"] == 2 and report["wer_gap"]["count"] == report["sim_gap"]["count"] == 2
    # the measurements were kept as they were made; a re-run reads them (here edited so that every
    # candidate is heard as the reference is) instead of measuring again, and a line cut by a kill is dropped
    cache = tmp_path / "metric.measured.jsonl"
    (entry,) = [json.loads(line) for line in cache.read_text().splitlines()]
    assert len(entry["measured"]) == 4  # the reference and the three candidates heard
    entry["measured"] = [[0.0, 1.0, 3.0]] * 4
    cache.write_text(json.dumps(entry) + "\n" + '{"key": "cut by a ki')
    cli([*argv, "metric", "--out", str(tmp_path / "metric.jsonl")])
    assert read_report(tmp_path / "metric.jsonl")["pairs"] == 0
    assert cache.read_text() == json.dumps(entry) + "\n"

    cli([*argv, "metric-best", "--max-chosen-wer", "10", "--out", str(tmp_path / "best.jsonl")])
    (best,) = load_valid_groups(tmp_path / "best.jsonl")  # NeMo's: the best whole candidate is chosen
    assert best.chosen_ids == row["candidates"][3]["ids"] and best.meta["select"] == "metric-best"
    assert best.rejected_ids == [row["candidates"][1]["ids"], ids[1]]
    cli([*argv, "metric-best", "--max-chosen-wer", "0.05", "--out", str(tmp_path / "none.jsonl")])
    assert read_report(tmp_path / "none.jsonl")["dropped_groups"] == {
        "no candidate within --max-chosen-wer": 1
    }


def test_asr_and_text_groups_compare_normalised_text(model_dir, tokenizer, tmp_path):
    end = im_end_id(tokenizer)
    ref_text = "MISTER QUILTER IS THE APOSTLE OF THE MIDDLE CLASSES"
    asr = {"id": "a", "task": "asr", "lang": "en", "text": ref_text, "prompt_ids": [7, 8], "skipped": None}
    asr["reference_ids"] = asr_response_ids(tokenizer, ref_text)
    asr["candidates"] = [
        cand(asr_response_ids(tokenizer, "Mister Quilter, is the apostle of the middle classes.")),  # same
        cand(asr_response_ids(tokenizer, "MISTER QUILTER IS THE APOSTLE OF THE MIDDLE GLASSES")),
        cand(asr_response_ids(tokenizer, "MISTER QUILTER IS THE APOSTLE")[:-1], hit_max=True),
        cand([end]),  # decodes to nothing
    ]
    zh = {**asr, "id": "z", "lang": "zh", "text": "甚至出现交易几乎停滞的情况"}
    zh["reference_ids"] = asr_response_ids(tokenizer, zh["text"])
    zh["candidates"] = [
        cand(asr_response_ids(tokenizer, "甚至出现交易几乎停滞的情况。")),
        cand(asr_response_ids(tokenizer, "甚至出现交易停滞的情况")),
    ]
    text = {**asr, "id": "t", "task": "text", "lang": "", "text": "5"}
    text["reference_ids"] = asr_response_ids(tokenizer, "5")
    text["candidates"] = [cand(asr_response_ids(tokenizer, "5")), cand(asr_response_ids(tokenizer, "6"))]
    out = tmp_path / "groups.jsonl"
    cli(
        [
            "make-pairs",
            "--model",
            str(model_dir),
            "--candidates",
            str(write_candidates(tmp_path / "c", [asr, zh, text])),
            "--out",
            str(out),
        ]
    )
    g_asr, g_zh, g_text = load_valid_groups(out)
    assert [response_text(tokenizer, r) for r in g_asr.rejected_ids] == [
        "MISTER QUILTER IS THE APOSTLE OF THE MIDDLE GLASSES",  # the cut one is dropped
    ]
    assert g_asr.meta["edit_distance"] == [1] and g_asr.meta["normalizer"] == "librispeech"
    assert g_zh.meta["edit_distance"] == [2] and g_zh.meta["normalizer"] == "chinese"  # characters
    assert [response_text(tokenizer, r) for r in g_text.rejected_ids] == ["6"]
    report = read_report(out)
    assert report["dropped_responses"] == {
        "same as the reference after normalisation": 3,
        "decodes to empty text": 1,
        "hit max_new_tokens": 1,
    }
    assert report["edit_distance"]["count"] == 3 and report["edit_distance"]["max"] == 2


def test_near_miss_selection_keeps_the_most_likely_small_errors(model_dir, tokenizer, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    ref_text = "MISTER QUILTER IS THE APOSTLE OF THE MIDDLE CLASSES"  # 9 words
    near = [  # one word off each: edit rate 1/9
        "MISTER QUILTER IS THE APOSTLE OF THE MIDDLE GLASSES",
        "MISTER QUILTER WAS THE APOSTLE OF THE MIDDLE CLASSES",
        "MISTER QUILTER IS THE APOSTLE OF THE MIDDLE",
        "MISTER QUILTER IS A APOSTLE OF THE MIDDLE CLASSES",
    ]
    far = "MISTER QUILTER SAW A DOG IN THE PARK"  # 5 of 9 words off
    row = {"id": "a", "task": "asr", "lang": "en", "text": ref_text, "prompt_ids": [7, 8, 9], "skipped": None}
    row["reference_ids"] = asr_response_ids(tokenizer, ref_text)
    texts = [*near, near[0], far, ref_text]
    row["candidates"] = [cand(asr_response_ids(tokenizer, t)) for t in texts]
    out = tmp_path / "near.jsonl"
    candidates = str(write_candidates(tmp_path / "c", [row]))
    cli(["make-pairs", "--model", str(model_dir), "--candidates", candidates, "--out", str(out)]
        + ["--select", "near-miss", "--max-edit-rate", "0.2", "--max-rejected", "2"])  # fmt: skip
    (group,) = load_valid_groups(out)

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()

    def logp(text: str) -> float:  # a plain forward pass over prompt + response, not the packed one
        response = asr_response_ids(tokenizer, text)
        ids = torch.tensor([row["prompt_ids"] + response])
        with torch.no_grad():
            logps = model(ids).logits[0, :-1].log_softmax(-1)
        start = len(row["prompt_ids"]) - 1
        return float(logps[torch.arange(start, start + len(response)), torch.tensor(response)].sum())

    expected = sorted(near, key=logp, reverse=True)[:2]
    assert [response_text(tokenizer, r) for r in group.rejected_ids] == expected
    assert group.meta["logp"] == pytest.approx([logp(t) for t in expected], abs=1e-3)
    assert group.meta["edit_distance"] == [1, 1] and group.meta["select"] == "near-miss"
    report = read_report(out)
    assert report["select"] == "near-miss" and report["pairs"] == 2 and report["prompts"] == 1
    assert report["dropped_responses"] == {
        "same as the reference after normalisation": 1,
        "edit rate above --max-edit-rate": 1,
        "duplicate of another rejected response": 1,
        "near miss beyond the --max-rejected most likely": 2,
    }
    assert report["edit_rate"]["median"] == pytest.approx(1 / 9)

    cli(
        [
            "make-pairs",
            "--model",
            str(model_dir),
            "--candidates",
            candidates,
            "--out",
            str(tmp_path / "all.jsonl"),
        ]
    )
    (everything,) = load_valid_groups(tmp_path / "all.jsonl")  # --select all: every distinct error
    assert len(everything.rejected_ids) == 5 and read_report(tmp_path / "all.jsonl")["select"] == "all"

    # RESULTS.md's pair table, from the two reports
    from speech_lpo.result_tables import pair_table

    table = pair_table([out.with_name("near.report.json"), tmp_path / "all.report.json"])
    near_row = next(line for line in table.splitlines() if "| near-miss |" in line)
    assert near_row.startswith("| - | model | near-miss | 1 | 2 |") and "| 0.111 (0.111–0.111) |" in near_row
    assert "edit rate above --max-edit-rate: 1" in near_row and "| model | all | 1 | 5 |" in table


def test_asr_model_based_groups_from_real_generation(model_dir, data_dir, tokenizer, tmp_path):
    cli(generate_args(model_dir, data_dir, tmp_path / "cand", "asr"))  # a random model, cut at 12 tokens
    argv = ["make-pairs", "--model", str(model_dir), "--candidates", str(tmp_path / "cand"), "--out"]
    cli(argv + [str(tmp_path / "default.jsonl")])
    cut = json.loads((tmp_path / "cand" / "report.json").read_text())["hit_max_new_tokens"]
    dropped = read_report(tmp_path / "default.jsonl")["dropped_responses"]
    assert cut > 0 and dropped["hit max_new_tokens"] == cut
    out = tmp_path / "groups.jsonl"
    cli(argv + [str(out), "--keep-cut-candidates"])
    groups = load_valid_groups(out)
    report = read_report(out)
    assert report["prompts"] == len(groups) + 4 and len(groups) > 0
    assert sum(v for k, v in report["dropped_groups"].items() if k.startswith("skipped by generate")) == 4
    for g in groups:
        norm = get_normalizer(g.meta["normalizer"])
        ref = norm.units(response_text(tokenizer, g.chosen_ids))
        assert all(norm.units(response_text(tokenizer, r)) != ref for r in g.rejected_ids)
        assert len(g.rejected_ids) == len(g.meta["hit_max_new_tokens"]) <= 3


def test_asr_perturbation_groups(model_dir, data_dir, tokenizer, tmp_path):
    out = tmp_path / "groups.jsonl"
    args = ["make-pairs", "--method", "perturb", "--model", str(model_dir), "--data", str(data_dir)]
    cli([*args, "--out", str(out), "--eta", "0.1"])
    groups = load_valid_groups(out)
    report = read_report(out)
    assert len(groups) == report["groups"] == len(corpus_columns()["id"])
    assert report["dropped_groups"] == {
        "empty or missing transcript": 2,
        "no audio codes": 1,
        "prompt and longest response longer than the model's max_position_embeddings": 1,
    }
    assert set(report["operators"]) == {"insertion", "deletion", "repetition"}
    assert 0.05 < report["edit_rate"]["mean"] < 0.2
    for g in groups:
        assert g.meta["method"] == "perturb" and 1 <= g.k <= 3
        assert len(g.meta["operators"]) == g.k and all(d >= 1 for d in g.meta["edit_distance"])
    cli([*args, "--out", str(tmp_path / "again.jsonl"), "--eta", "0.1"])
    assert (tmp_path / "again.jsonl").read_text() == out.read_text()  # seeded
    prompts = {g.id: g.prompt_ids for g in groups}
    assert len(prompts) == len(groups)  # one group per utterance, ids unique


def test_make_pairs_refuses_an_unfinished_generation(model_dir, tmp_path):
    rows = [{"id": "a", "candidates": []}]
    check_settings(tmp_path / "c", {"prompts": 3, "shard_size": 1})
    write_shard(shard_path(tmp_path / "c", 0), rows)
    with pytest.raises(FileNotFoundError, match=r"shards \[1, 2\] are missing"):
        cli(
            [
                "make-pairs",
                "--model",
                str(model_dir),
                "--candidates",
                str(tmp_path / "c"),
                "--out",
                str(tmp_path / "g.jsonl"),
            ]
        )
    assert not (tmp_path / "g.jsonl").exists()


def test_preference_groups_come_from_the_pref_split_only(mini_corpus, melvq_codec_dir, tmp_path):
    """prepare --pref-utts -> tokenize -> generate / make-pairs on the pref split, as the recipes chain them:
    no group's utterance is in the manifest SFT trains on."""
    from speech_lpo.prepare import read_manifest
    from tests.conftest import build_speech_lm
    from tests.fixtures_corpus import MINI_CODEBOOK

    manifests, tokens = tmp_path / "manifests", tmp_path / "tokens"
    cli(["prepare", "--corpus", "librispeech", "--corpus-dir", str(mini_corpus / "librispeech")]
        + ["--out", str(manifests), "--pref-utts", "8"])  # fmt: skip
    cli(["tokenize", "--manifests", *map(str, sorted(manifests.glob("*.jsonl"))), "--out", str(tokens)]
        + ["--codec", str(melvq_codec_dir), "--jobs", "1"])  # fmt: skip
    model, _ = build_speech_lm(tmp_path / "lm", codebook_size=MINI_CODEBOOK)
    cli(generate_args(model, tokens / "pref", tmp_path / "cand", "asr", "--max-prompts", "6"))
    base = ["make-pairs", "--model", str(model), "--keep-cut-candidates", "--out"]
    cli([*base, str(tmp_path / "model.jsonl"), "--candidates", str(tmp_path / "cand")])
    cli([*base, str(tmp_path / "perturb.jsonl"), "--method", "perturb", "--data", str(tokens / "pref")]
        + ["--max-prompts", "6"])  # fmt: skip
    train = {x["id"] for x in read_manifest(manifests / "train.jsonl")}
    pref = {x["id"] for x in read_manifest(manifests / "pref.jsonl")}
    for method in ("model", "perturb"):
        sources = [g.meta["source_id"] for g in load_valid_groups(tmp_path / f"{method}.jsonl")]
        assert sources and set(sources) <= pref and not set(sources) & train


@pytest.mark.slow
def test_chain_sft_generate_make_pairs_ref_logps_train(speech_lm, tmp_path):
    """The pipeline's preference half on the shared tiny speech LM: every stage reads the last one's files."""
    base, tokens = speech_lm
    sft = tmp_path / "sft"
    cli(["sft", "--data", str(tokens), "--model", str(base), "--output_dir", str(sft), "--task", "both"]
        + ["--max_steps", "60", "--learning_rate", "3e-3", "--batch_size", "4"]
        + ["--lr_scheduler_type", "constant"])  # fmt: skip
    groups = {}
    for task in ("tts", "asr"):
        cand = tmp_path / f"cand-{task}"
        cli(["generate", "--model", str(sft), "--task", task, "--data", str(tokens), "--out", str(cand)]
            + ["--n", "3", "--max-new-tokens", "48"])  # fmt: skip
        groups[task] = tmp_path / f"{task}.jsonl"
        cli(["make-pairs", "--model", str(sft), "--candidates", str(cand), "--out", str(groups[task])])
    groups["perturb"] = tmp_path / "perturb.jsonl"
    cli(
        [
            "make-pairs",
            "--method",
            "perturb",
            "--model",
            str(sft),
            "--data",
            str(tokens),
            "--out",
            str(groups["perturb"]),
        ]
    )
    tts = load_valid_groups(groups["tts"])
    assert tts and all(g.k <= 3 for g in tts)  # the SFT model speaks audio tokens: TTS groups exist
    merged = []  # one training file: ids made unique across methods (each names its utterance)
    for method, path in groups.items():
        for g in load_valid_groups(path):
            g.id = f"{method}-{g.id}"
            merged.append(g)
    write_groups(tmp_path / "all.jsonl", merged)
    merged = tmp_path / "all.jsonl"
    ref = tmp_path / "ref.jsonl"
    cli(["ref-logps", "--groups", str(merged), "--model", str(sft), "--output", str(ref)])
    assert all(g.has_ref for g in load_valid_groups(ref))
    out = tmp_path / "lpo"
    cli(["train", "--groups", str(ref), "--model", str(sft), "--output_dir", str(out), "--max_steps", "4"]
        + ["--batch_size", "2", "--logging_steps", "1"])  # fmt: skip
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in m for m in metrics)


def test_position_limit_is_prompt_plus_longest_response_not_the_packed_length():
    from speech_lpo.make_pairs import LONGER_THAN_POSITIONS, PairReport, make_group

    row = {"id": "u1", "task": "asr", "lang": "en", "prompt_ids": [1] * 10, "reference_ids": [2] * 6}
    rejected = [
        ([3] * 8, {"edit_distance": 8}),
        ([4] * 5, {"edit_distance": 6}),
        ([5] * 7, {"edit_distance": 7}),
    ]
    report = PairReport()  # packed: 10 + 6 + 20 = 36 tokens; furthest position: 10 + 8 = 18
    group = make_group(row, "model", rejected, report, max_positions=18, reference_units=6)
    assert group is not None and group.packed_length() == 36
    assert make_group(row, "model", rejected, report, max_positions=17, reference_units=6) is None
    assert report.dropped_groups == {LONGER_THAN_POSITIONS: 1}
