"""`mos report` on synthetic ratings with known means: means, scipy's t-interval, rater screening, outputs."""

from __future__ import annotations

import csv
import json
import random
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import yaml
from scipy import stats

from speech_lpo.mos.definition import DefinitionError, load_definition
from speech_lpo.mos.report import agreement, paired_tests, screen, summarize, t_interval, write_report
from speech_lpo.mos.store import Store
from speech_lpo.stats import holm
from tests.test_mos_kit import REPO, Clock, listen, make_test

BASE = {"original": 4.0, "telephone": 3.0, "noisy": 2.0}  # true MOS of each system
DIM_SHIFT = {"fidelity": 0.0, "stability": 0.5, "naturalness": -0.5, "emotional_expressiveness": 0.0}


def rate_all(store: Store, token: str, answer) -> None:
    """Rate every sample of ``token`` through the store, answers from ``answer(item, dimension)``."""
    browser = f"browser-{token}"
    store.enter(token, browser)
    for _ in range(100):
        item, *_ = store.next_item(token, browser)
        if item is None:
            return
        listen(store, token, browser, item)
        store.submit(
            token, browser, item, {d: answer(store.defn.items[item], d) for d in store.defn.dimension_names()}
        )
    raise AssertionError("rater did not finish")


def keyed_noise(rater: int, item, dim: str, levels: list[float]) -> float:
    """A rater's noise on one sample and dimension. Keyed, not drawn in serving order: the order
    follows the random invite tokens, and every run should rate the same way."""
    return random.Random(f"{rater}/{item.id}/{dim}").choice(levels)


@pytest.fixture(scope="module")
def rated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict, dict]:
    """10 raters who rated everything: 8 attentive ones, a straight-liner and one who fails a check."""
    tmp_path = tmp_path_factory.mktemp("rated")
    definition = make_test(tmp_path, n_utts=4)
    db = tmp_path / "ratings.sqlite"
    store = Store(db, load_definition(definition), clock=Clock())
    tokens = store.invite(10, expires=None)
    expected = defaultdict(list)
    for k, token in enumerate(tokens[:8]):  # attentive raters: noise around the true MOS

        def attentive(item, dim, k=k):
            if item.expect:
                return 4.5 if item.expect == "high" else 1.0
            noise = keyed_noise(k, item, dim, [-1.0, -0.5, 0.0, 0.5, 1.0])
            score = min(5.0, BASE[item.system] + DIM_SHIFT[dim] + noise)
            expected[item.system, dim].append(score)
            return score

        rate_all(store, token, attentive)
    rate_all(store, tokens[8], lambda item, dim: 3.0)  # straight-liner
    rate_all(store, tokens[9], lambda item, dim: 5.0 if item.expect == "low" else 4.0 - (dim == "stability"))
    why = {tokens[8]: "same score for everything", tokens[9]: "failed attention check"}
    return definition, db, expected, why


def test_t_interval_matches_scipy() -> None:
    rng = np.random.default_rng(0)
    for n in (2, 3, 10, 57):
        x = rng.choice(np.arange(0, 5.5, 0.5), size=n).tolist()
        mean, low, high = t_interval(x)
        ref_low, ref_high = stats.t.interval(0.95, n - 1, loc=np.mean(x), scale=stats.sem(x))
        assert mean == pytest.approx(np.mean(x), abs=1e-12)
        assert (low, high) == pytest.approx((ref_low, ref_high), abs=1e-12)
    assert np.isnan(t_interval([3.0])[1])


def test_report_reproduces_known_means(rated) -> None:
    definition, db, expected, why = rated
    defn = load_definition(definition)
    rows = Store(db, defn).ratings()
    verdict = screen(defn, rows)
    assert {r: v for r, v in verdict.items() if v} == why and sum(v is None for v in verdict.values()) == 8
    cells = {(c.system, c.dimension): c for c in summarize(defn, rows, verdict)}
    assert set(cells) == set(expected)
    for key, scores in expected.items():
        c = cells[key]
        assert c.n == len(scores) == 8 * 4  # 8 raters x 4 utterances, checks left out
        assert c.mean == pytest.approx(np.mean(scores), abs=1e-12)
        assert (c.low, c.high) == pytest.approx(
            stats.t.interval(0.95, len(scores) - 1, loc=np.mean(scores), scale=stats.sem(scores)), abs=1e-12
        )
        assert c.boot_low < c.mean < c.boot_high
        system, dim = key
        assert abs(c.mean - BASE[system] - DIM_SHIFT[dim]) < 0.4  # the noise averages out


def test_report_cli_writes_table_chart_and_summary(rated, tmp_path: Path) -> None:
    definition, db, expected, why = rated
    out = tmp_path / "report"
    cmd = [sys.executable, "-m", "speech_lpo.cli", "mos", "report", "--definition", str(definition)]
    run = subprocess.run(
        cmd + ["--db", str(db), "--out-dir", str(out)], capture_output=True, text=True, cwd=REPO
    )
    assert run.returncode == 0, run.stderr
    table = (out / "mos_table.md").read_text()
    assert table in run.stdout
    lines = table.splitlines()
    assert lines[0] == "| System | Fidelity | Stability | Naturalness | Emotional expressiveness |"
    assert [line.split(" | ")[0] for line in lines[2:5]] == ["| original", "| telephone", "| noisy"]
    summary = json.loads((out / "mos_summary.json").read_text())
    assert summary["excluded"] == why and len(summary["kept"]) == 8
    for cell in summary["cells"]:
        scores = expected[cell["system"], cell["dimension"]]
        half = stats.t.ppf(0.975, len(scores) - 1) * stats.sem(scores)
        assert cell["high"] - cell["low"] == pytest.approx(2 * half)  # the t-interval stays in the JSON
        assert f"{np.mean(scores):.2f} [{cell['boot_low']:.2f}, {cell['boot_high']:.2f}]" in table
    assert len(summary["paired_tests"]) == 3 * 4 and set(summary["krippendorff_alpha"]) == set(DIM_SHIFT)
    # about +2, with an interval around it
    assert re.search(
        r"\| Fidelity \| original \| noisy \| 8 \| \+[12]\.\d\d \[\+1\.\d\d, \+2\.\d\d\] \|", table
    )
    assert "8 raters kept, excluded: 1 failed attention check, 1 same score for everything" in table
    image = matplotlib.image.imread(out / "mos_bars.png")
    assert image.shape[0] > 300 and image.shape[1] > 600 and image[..., :3].std() > 0.05  # a drawn chart


def test_invite_and_export_cli(rated, tmp_path: Path) -> None:
    definition, db, expected, why = rated
    base = [sys.executable, "-m", "speech_lpo.cli", "mos"]
    args = ["--definition", str(definition), "--db", str(db)]
    run = subprocess.run(
        base + ["export", *args, "--out", str(tmp_path / "r.csv")], capture_output=True, cwd=REPO
    )
    assert run.returncode == 0, run.stderr
    lines = (tmp_path / "r.csv").read_text().splitlines()
    assert len(lines) == 1 + 10 * (12 + 2) * 4  # 10 raters x (12 samples + 2 checks) x 4 questions
    rows = [line.split(",") for line in lines[1:]]
    assert all(r[0] and r[7] == f"{r[1]}@{r[0]}" or r[2] and r[7].startswith("check:") for r in rows)
    run = subprocess.run(
        base + ["invite", *args, "-n", "3", "--url", "https://mos.example.org"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    links = run.stdout.split()
    assert len(links) == 3 and all(link.startswith("https://mos.example.org/?token=") for link in links)
    assert len(Store(db, load_definition(definition)).progress()) == 13


def test_report_cli_names_a_malformed_definition(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nsystems: lpo\n")
    cmd = [sys.executable, "-m", "speech_lpo.cli", "mos", "report", "--definition", str(bad)]
    run = subprocess.run(
        cmd + ["--db", str(tmp_path / "r.sqlite"), "--out-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert run.returncode != 0
    assert f"error: {bad}: systems: expected a list of distinct system names" in run.stderr
    assert not (tmp_path / "r.sqlite").exists()


def test_holm_by_hand() -> None:
    assert list(holm(dict(enumerate([0.01, 0.04, 0.03]))).values()) == pytest.approx([0.03, 0.06, 0.06])
    assert list(holm(dict(enumerate([0.5, 0.001]))).values()) == pytest.approx([0.5, 0.002])


def test_paired_tests_and_agreement(rated) -> None:
    definition, db, expected, why = rated
    defn = load_definition(definition)
    rows = Store(db, defn).ratings()
    verdict = screen(defn, rows)
    tests = {(t["dimension"], t["a"], t["b"]): t for t in paired_tests(defn, rows, verdict)}
    assert len(tests) == 12
    for dim in DIM_SHIFT:
        far = tests[dim, "original", "noisy"]  # 2 points apart for every one of the 8 raters
        assert far["raters"] == 8 and far["mean_difference"] > 1.5
        assert far["p"] == pytest.approx(2 / 2**8)  # exact two-sided signed-rank p, all 8 the same sign
        # the smallest p there is with 8 raters; tied with others, Holm multiplies it by all 12 tests
        assert far["p_holm"] == pytest.approx(12 * far["p"])
    p = [t["p"] for t in tests.values()]
    assert [t["p_holm"] for t in tests.values()] == pytest.approx(list(holm(dict(enumerate(p))).values()))
    alphas = agreement(defn, rows, verdict)
    assert all(0.3 < a < 1 for a in alphas.values())  # systems 1 point apart, raters add +-1 of noise
    same = [{**r, "score": BASE.get(defn.items[r["item"]].system or "", 0.0)} for r in rows]
    assert set(agreement(defn, same, verdict).values()) == {1.0}  # raters who agree fully


def test_intervals_account_for_raters(rated) -> None:
    """Raters with their own offsets: the rater x utterance bootstrap is wider than the t-interval
    over single ratings, which treats them as independent."""
    definition, db, expected, why = rated
    defn = load_definition(definition)
    rows = Store(db, defn).ratings()
    verdict = screen(defn, rows)
    kept = sorted(r for r, v in verdict.items() if v is None)
    shift = {r: (k - 3.5) * 0.4 for k, r in enumerate(kept)}
    biased = [{**r, "score": r["score"] + shift.get(r["rater"], 0.0)} for r in rows]
    for c in summarize(defn, biased, verdict):
        assert c.boot_high - c.boot_low > 1.3 * (c.high - c.low), c


def test_screening_on_listening_data(rated) -> None:
    definition, db, expected, why = rated
    defn = load_definition(definition)
    rows = Store(db, defn).ratings()
    kept = sorted(r for r, v in screen(defn, rows).items() if v is None)
    forged = {kept[0]: {"plays": 0}, kept[1]: {"heard": 3, "plays": 1}}  # only via the API, around the gate
    rows = [{**r, **forged.get(r["rater"], {})} for r in rows]
    verdict = screen(defn, rows)
    assert verdict[kept[0]] == verdict[kept[1]] == "rated without a full listen"
    assert sum(v is None for v in verdict.values()) == 6


def test_each_screening_rule_trips_on_ratings_built_for_it(tmp_path: Path) -> None:
    """The P.808 toolkit's screens, thresholds from the definition: a rater whose answers hardly vary,
    a rater who rates against everyone else, and a clip with too few votes, each named in the report."""
    definition = make_test(tmp_path, n_utts=4)
    raw = yaml.safe_load(definition.read_text())
    raw["screening"] = {"min_variance": 0.1, "min_correlation": 0.25, "min_votes": 3}
    definition.write_text(yaml.safe_dump(raw, sort_keys=False))
    defn = load_definition(definition)
    store = Store(tmp_path / "ratings.sqlite", defn, clock=Clock())
    tokens = store.invite(7, expires=None)

    def checks_right(item) -> float:
        return 4.5 if item.expect == "high" else 1.0

    for k, token in enumerate(tokens[:5]):  # attentive: noise around the true MOS
        rate_all(
            store,
            token,
            lambda item, dim, k=k: (
                checks_right(item)
                if item.expect
                else BASE[item.system] + DIM_SHIFT[dim] + keyed_noise(k, item, dim, [-0.5, 0.0, 0.5])
            ),
        )
    flat, contrarian = tokens[5:]
    # 3.0 for everything but one dimension of one system: variance 0.02, not all the same
    rate_all(
        store,
        flat,
        lambda item, dim: (
            checks_right(item)
            if item.expect
            else 3.0 + 0.5 * (item.system == "original" and dim == "fidelity")
        ),
    )
    rate_all(
        store, contrarian, lambda item, dim: checks_right(item) if item.expect else 6.0 - BASE[item.system]
    )
    rows = store.ratings()
    verdict = screen(defn, rows)
    assert {t: verdict[t] for t in tokens[:5]} == dict.fromkeys(tokens[:5])
    assert verdict[flat] == "rating variance 0.02 below 0.1"
    assert re.fullmatch(r"correlation with the other raters -0\.\d\d below 0\.25", verdict[contrarian])

    # one clip that three of the attentive raters did not rate: 2 votes, fewer than 3
    clip = defn.system_items[0].id
    rows = [r for r in rows if not (r["item"] == clip and r["rater"] in tokens[:3])]
    table, cells = write_report(defn, rows, tmp_path / "report")
    assert f"Clips left out, fewer than 3 votes from kept raters: {clip} (2)." in table
    assert f"{flat} (rating variance 0.02 below 0.1)" in table and f"{contrarian} (correlation" in table
    system = defn.items[clip].system
    assert {c.n for c in cells if c.system == system} == {5 * 3}  # 5 raters x the 3 other utterances
    bad = yaml.safe_load(definition.read_text())
    bad["screening"] = {"min_votes": 2.5}
    definition.write_text(yaml.safe_dump(bad))
    with pytest.raises(DefinitionError, match="screening.min_votes: expected a whole number"):
        load_definition(definition)


def test_votes_per_clip_in_the_p808_toolkits_format(rated, tmp_path: Path) -> None:
    """One CSV per dimension, as the P.808 toolkit's result parser writes ``*_votes_per_clip.csv``: per
    clip the kept raters' votes, their number, mean, standard deviation and 95% CI half-width."""
    definition, db, _, _ = rated
    defn = load_definition(definition)
    rows = Store(db, defn).ratings()
    verdict = screen(defn, rows)
    write_report(defn, rows, tmp_path)
    path = tmp_path / f"{defn.name}_votes_per_clip_fidelity.csv"
    header = path.read_text().splitlines()[0].split(",")
    assert header == ["file_url", "n", "MOS", "std", "95%CI", "short_file_name", "system", "utterance"] + [
        f"vote_{i}" for i in range(1, 9)
    ]  # 8 kept raters
    clips = list(csv.DictReader(path.open()))
    assert sorted(c["short_file_name"] for c in clips) == sorted(i.id for i in defn.system_items)
    for clip in clips:
        item = defn.items[clip["short_file_name"]]
        votes = sorted(
            r["score"]
            for r in rows
            if r["item"] == item.id and r["dimension"] == "fidelity" and verdict[r["rater"]] is None
        )
        assert clip["file_url"] == str(item.audio.relative_to(defn.root)) and clip["system"] == item.system
        assert int(clip["n"]) == len(votes) == 8
        assert float(clip["MOS"]) == pytest.approx(np.mean(votes))
        assert float(clip["std"]) == pytest.approx(np.std(votes, ddof=1))
        assert float(clip["95%CI"]) == pytest.approx(1.96 * np.std(votes, ddof=1) / np.sqrt(8))
        assert sorted(float(clip[f"vote_{i}"]) for i in range(1, 9)) == votes


def test_gold_clips_accept_answers_within_one_per_dimension(tmp_path: Path) -> None:
    """P.808's gold questions: a clip of known score; every dimension's answer within 1 of it passes,
    one dimension off by more fails the rater (the mean over dimensions would have passed)."""
    definition = make_test(tmp_path, n_utts=2)
    raw = yaml.safe_load(definition.read_text())
    for check, score in zip(raw["attention_checks"], (5, 0), strict=True):
        check.update(expect="gold", score=score)
    definition.write_text(yaml.safe_dump(raw, sort_keys=False))
    defn = load_definition(definition)
    assert sorted(i.answer for i in defn.check_items) == [0.0, 5.0]
    store = Store(tmp_path / "ratings.sqlite", defn, clock=Clock())
    within, off = store.invite(2, expires=None)

    def answers(gold):
        return lambda item, dim: gold(item, dim) if item.expect else BASE[item.system] + DIM_SHIFT[dim]

    # 1 below the known score on every dimension: passes
    rate_all(store, within, answers(lambda item, dim: max(0.0, item.answer - 1)))
    # exact but for one dimension 1.5 off: fails, though the mean over dimensions (4.6) is within 1 of 5
    rate_all(
        store, off, answers(lambda item, dim: item.answer - 1.5 * (item.answer > 0 and dim == "stability"))
    )
    verdict = screen(defn, store.ratings())
    assert verdict == {within: None, off: "failed attention check"}
