"""`score asr` against jiwer and kaldialign on real transcripts, and its handling of bad input."""

import json
import random
from pathlib import Path

import jiwer
import kaldialign
import pytest

from speech_lpo.cli import main as cli_main
from speech_lpo.normalize import get_normalizer
from speech_lpo.score import read_kaldi_text, score_asr

DATA = Path(__file__).parents[1] / ".." / "shared" / "data"
AISHELL_TRANSCRIPT = DATA / "aishell1" / "data_aishell" / "transcript" / "aishell_transcript_v0.8.txt"
LIBRISPEECH = DATA / "librispeech" / "LibriSpeech"

needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"real corpus samples not found at {DATA}")


def real_transcripts(lang: str) -> dict[str, str]:
    if lang == "zh":
        lines = AISHELL_TRANSCRIPT.read_text(encoding="utf-8").splitlines()
    else:
        lines = [
            line for f in sorted(LIBRISPEECH.glob("*/*/*/*.trans.txt")) for line in f.read_text().splitlines()
        ]
    return dict(line.split(maxsplit=1) for line in lines)


def perturbed(units: list[str], rng: random.Random, vocab: list[str]) -> list[str]:
    """Random substitutions, deletions and insertions: hypotheses with errors of every kind."""
    out = []
    for unit in units:
        x = rng.random()
        if x < 0.08:
            continue
        out.append(rng.choice(vocab) if x < 0.18 else unit)
        if x > 0.93:
            out.append(rng.choice(vocab))
    return out


def write_text(path: Path, rows: dict[str, str] | list[tuple[str, str]]) -> Path:
    rows = rows.items() if isinstance(rows, dict) else rows
    path.write_text("".join(f"{k} {v}\n" for k, v in rows), encoding="utf-8")
    return path


def noisy_system(refs: dict[str, str], normalizer, seed: int, copies: int) -> tuple[dict, dict]:
    """Several noisy hypotheses per real reference (ids suffixed), joined as the normaliser's units."""
    vocab = sorted({u for text in refs.values() for u in normalizer.units(text)})
    rng = random.Random(seed)
    sep = "" if normalizer.unit == "char" else " "
    ref_rows, hyp_rows = {}, {}
    for i in range(copies):
        for uttid, text in refs.items():
            ref_rows[f"{uttid}-{i}"] = text
            hyp_rows[f"{uttid}-{i}"] = sep.join(perturbed(normalizer.units(text), rng, vocab))
    return ref_rows, hyp_rows


@needs_data
@pytest.mark.parametrize("lang,normalizer_name", [("en", "librispeech"), ("zh", "chinese")])
def test_counts_agree_with_kaldialign_and_jiwer_on_real_transcripts(tmp_path, lang, normalizer_name):
    norm = get_normalizer(normalizer_name)
    refs, hyps = noisy_system(real_transcripts(lang), norm, seed=1, copies=40)
    summ = score_asr(
        write_text(tmp_path / "ref", refs),
        write_text(tmp_path / "hyp", hyps),
        norm,
        tmp_path / "out",
        "noisy",
    )
    assert summ["utterances"] == len(refs) and summ["problems"] == []
    assert summ["metric"] == ("CER" if lang == "zh" else "WER")
    # the per-utterance counts that comparisons across seeds resample add up to the pooled figures
    per_utt = summ["utterance_errors"]
    assert sorted(u[0] for u in per_utt) == sorted(refs)
    assert sum(u[1] for u in per_utt) == summ["errors"] and sum(u[2] for u in per_utt) == summ["ref_units"]

    ref_units = [norm.units(refs[k]) for k in refs]
    hyp_units = [norm.units(hyps[k]) for k in refs]
    # Kaldi's compute-wer counts (kaldialign): substitutions, deletions and insertions each, exactly
    kaldi = [kaldialign.edit_distance(r, h) for r, h in zip(ref_units, hyp_units, strict=True)]
    assert summ["substitutions"] == sum(k["sub"] for k in kaldi)
    assert summ["deletions"] == sum(k["del"] for k in kaldi)
    assert summ["insertions"] == sum(k["ins"] for k in kaldi)
    # jiwer: the same total error count and pooled rate; its Levenshtein breaks ties between
    # "deletion + insertion" and "two substitutions" the other way, so the split is not compared
    out = jiwer.process_words([" ".join(r) for r in ref_units], [" ".join(h) for h in hyp_units])
    assert summ["errors"] == out.substitutions + out.deletions + out.insertions
    assert summ["ref_units"] == out.hits + out.substitutions + out.deletions
    assert summ["error_rate"] == pytest.approx(100 * out.wer, abs=1e-9)
    if lang == "zh":
        cer = jiwer.cer([norm.normalize(refs[k]) for k in refs], [norm.normalize(hyps[k]) for k in refs])
        assert summ["error_rate"] == pytest.approx(100 * cer, abs=1e-9)
    assert 5 < summ["error_rate"] < 40
    ci = summ["ci95"]
    assert ci["low"] < summ["error_rate"] < ci["high"]
    assert summ["mean_utterance_error_rate"] != summ["error_rate"]  # a second, different figure

    errs = (tmp_path / "out" / "errs-noisy.txt").read_text(encoding="utf-8")
    assert errs.startswith(f"%{summ['metric']} = {summ['error_rate']:.2f}")
    assert f"Normaliser: {normalizer_name}" in errs
    first = next(iter(refs))
    assert f"{first}:\tS=" in errs
    for section in ("PER-UTT DETAILS:", "SUBSTITUTIONS:", "DELETIONS:", "INSERTIONS:", "PER-UNIT STATS:"):
        assert section in errs


def test_most_frequent_substitution_deletion_insertion_are_reported(tmp_path):
    refs = {f"u{i}": "THE CAT SAT ON THE MAT" for i in range(6)}
    hyps = {f"u{i}": "A CAT SAT ON THE MAT TODAY" if i < 4 else "THE CAT ON THE MAT" for i in range(6)}
    norm = get_normalizer("librispeech")
    summ = score_asr(
        write_text(tmp_path / "ref", refs), write_text(tmp_path / "hyp", hyps), norm, tmp_path, "x"
    )
    assert (summ["substitutions"], summ["deletions"], summ["insertions"]) == (4, 2, 4)
    assert summ["error_rate"] == pytest.approx(100 * 10 / 36)
    assert summ["mean_utterance_error_rate"] == pytest.approx(100 * (4 * 2 / 6 + 2 * 1 / 6) / 6)
    errs = (tmp_path / "errs-x.txt").read_text()
    assert "SUBSTITUTIONS: count ref -> hyp\n4   THE -> A\n" in errs
    assert "DELETIONS: count ref\n2   SAT\n" in errs
    assert "INSERTIONS: count hyp\n4   TODAY\n" in errs
    assert "u0:\t(THE->A) CAT SAT ON THE MAT (*->TODAY)" in errs
    assert "\nTHE   8 4 12 8\n" in errs  # corr tot_errs count_in_ref count_in_hyp, as icefall counts them


def test_bad_input_is_named_and_counted_never_dropped(tmp_path):
    ref = tmp_path / "ref"
    ref.write_bytes(
        b"a HELLO WORLD\n"
        b"b GOOD MORNING\n"
        b"c\n"  # empty reference
        b"d SEE YOU\n"
        b"d DUPLICATE LINE\n"
        b"e CAF\xe9 AU LAIT\n"  # Latin-1, not UTF-8
    )
    hyp = tmp_path / "hyp"
    hyp.write_bytes(b"a HELLO WORD\nc SOMETHING\nd SEE YOU\nd SEE ME\nz EXTRA ONE\n\ne CAFE AU LAIT\n")
    summ = score_asr(ref, hyp, get_normalizer("librispeech"), tmp_path / "out", "bad")
    assert summ["problem_counts"] == {
        "duplicate_id": 2,
        "empty_line": 1,
        "empty_reference": 1,
        "extra_hypothesis": 1,
        "missing_hypothesis": 1,
        "non_utf8": 1,
        "unscorable_reference": 1,
    }
    by_kind = {(p["kind"], p["file"]): p for p in summ["problems"]}
    assert by_kind[("missing_hypothesis", str(hyp))]["id"] == "b"
    assert by_kind[("extra_hypothesis", str(hyp))]["id"] == "z"
    assert by_kind[("non_utf8", str(ref))]["line"] == 6
    assert by_kind[("duplicate_id", str(hyp))]["line"] == 4
    assert by_kind[("empty_reference", str(ref))]["id"] == "c"
    # a: 1 sub; b: 2 deletions (missing); c: 1 insertion over an empty reference; d: first line kept, correct
    assert (summ["substitutions"], summ["deletions"], summ["insertions"]) == (1, 2, 1)
    assert summ["ref_units"] == 6 and summ["utterances"] == 4
    assert summ["error_rate"] == pytest.approx(100 * 4 / 6)
    assert summ["mean_utterance_error_rate"] == pytest.approx(100 * (1 / 2 + 1 + 0) / 3)
    errs = (tmp_path / "out" / "errs-bad.txt").read_text()
    assert "b:\tS=0 D=2 I=0 N=2 WER=100.00% (hypothesis missing: all deletions)" in errs
    assert f"extra_hypothesis: 'z' ({hyp})" in errs
    assert f"non_utf8: 'e' ({ref}:6)" in errs
    assert "c:\tS=0 D=0 I=1 N=0 WER=n/a (empty reference)" in errs


def test_non_utf8_hypothesis_counts_as_missing(tmp_path):
    ref = write_text(tmp_path / "ref", {"a": "ONE TWO", "b": "THREE"})
    hyp = tmp_path / "hyp"
    hyp.write_bytes(b"a ONE TWO\nb THR\xffEE\n")
    parsed = read_kaldi_text(hyp)
    assert parsed.unreadable == {"b": 2}
    summ = score_asr(ref, hyp, get_normalizer("librispeech"), tmp_path, "x")
    missing = [p for p in summ["problems"] if p["kind"] == "missing_hypothesis"]
    assert missing == [
        {
            "kind": "missing_hypothesis",
            "file": str(hyp),
            "line": 2,
            "id": "b",
            "detail": "hypothesis line is not UTF-8",
        }
    ]
    assert summ["deletions"] == 1


@needs_data
def test_paired_bootstrap_against_a_baseline_through_the_cli(tmp_path, capsys):
    norm = get_normalizer("chinese")
    refs, worse = noisy_system(real_transcripts("zh"), norm, seed=2, copies=30)
    _, better = noisy_system(real_transcripts("zh"), norm, seed=3, copies=30)
    # a better system: every other utterance exactly right
    better = {k: (refs[k] if i % 2 else v) for i, (k, v) in enumerate(better.items())}
    ref_path = write_text(tmp_path / "ref", refs)
    (tmp_path / "sft").mkdir()
    (tmp_path / "lpo").mkdir()
    write_text(tmp_path / "sft" / "text", worse)
    write_text(tmp_path / "lpo" / "text", better)
    argv = ["score", "asr", "--ref", str(ref_path), "--hyp", str(tmp_path / "lpo" / "text"), "--benchmark"]
    argv += ["aishell1", "--out-dir", str(tmp_path / "out"), "--baseline-hyp", str(tmp_path / "sft" / "text")]
    cli_main(argv + ["--tag", "method=lpo", "--tag", "r2=2.0"])
    assert "lpo: %CER" in capsys.readouterr().out
    summ = json.loads((tmp_path / "out" / "summary-lpo.json").read_text())
    assert summ["normalizer"] == "chinese" and summ["tags"] == {"method": "lpo", "r2": "2.0"}
    base = summ["baseline"]
    assert base["system"] == "sft" and base["error_rate"] > summ["error_rate"]
    assert base["p_improvement"] > 0.99
    assert base["baseline_ci95"]["low"] < base["error_rate"] < base["baseline_ci95"]["high"]
    errs = (tmp_path / "out" / "errs-lpo.txt").read_text()
    assert "P(lpo better than baseline) = " in errs


@needs_data
def test_an_utterance_without_hypothesis_counts_as_deletions(tmp_path, capsys):
    """Scored against the data dir's Kaldi text, an utterance lost before decoding is all deletions."""
    from speech_lpo.prepare import prepare
    from speech_lpo.result_tables import asr_table

    prepare("librispeech", LIBRISPEECH.parent, tmp_path / "data", subsets=["test-clean"])
    ref = tmp_path / "data" / "kaldi" / "test-clean" / "text"
    refs = dict(line.split(" ", 1) for line in ref.read_text().splitlines())
    lost = "1089-134686-0000"
    hyps = {k: v for k, v in refs.items() if k != lost}
    hyps["1089-134686-0001"] = " ".join(refs["1089-134686-0001"].split()[2:])  # two words short
    hyp = write_text(tmp_path / "hyp", hyps)
    cli_main(
        ["score", "asr", "--ref", str(ref), "--hyp", str(hyp), "--benchmark", "librispeech"]
        + ["--out-dir", str(tmp_path / "out"), "--name", "sys"]
    )
    printed = capsys.readouterr().out
    summ = json.loads((tmp_path / "out" / "summary-sys.json").read_text())
    lost_words = len(refs[lost].split())
    assert summ["utterances"] == len(refs) == 7
    assert summ["missing_hypotheses"] == 1 and summ["missing_hypothesis_deletions"] == lost_words == 28
    assert summ["problem_counts"] == {"missing_hypothesis": 1}
    # the data dir's utt2spk, beside the reference text, names each utterance's speaker (LibriSpeech's
    # id prefix); 7 utterances of fewer than 20 speakers are resampled by utterance
    assert all(row[3] == row[0].split("-")[0] for row in summ["utterance_errors"])
    assert summ["ci95"]["resampled"] == "utterance"
    # jiwer, given an empty hypothesis for the lost utterance, counts the same deletions and rate
    norm = get_normalizer("librispeech")
    out = jiwer.process_words(
        [norm.normalize(refs[k]) for k in refs], [norm.normalize(hyps.get(k, "")) for k in refs]
    )
    assert (summ["deletions"], summ["substitutions"], summ["insertions"]) == (out.deletions, 0, 0)
    assert summ["deletions"] == lost_words + 2
    assert summ["error_rate"] == pytest.approx(100 * out.wer, abs=1e-9)
    assert f"1 missing hypotheses, {lost_words} of the deletions" in printed
    errs = (tmp_path / "out" / "errs-sys.txt").read_text()
    assert f"Missing hypotheses: 1 utterances, their {lost_words} reference words counted as" in errs
    assert f"{lost}:\tS=0 D={lost_words} I=0 N={lost_words} WER=100.00% (hypothesis missing" in errs
    row = asr_table([summ]).splitlines()[2]
    assert f"| 7 | 1 ({lost_words}) | missing_hypothesis 1 |" in row
