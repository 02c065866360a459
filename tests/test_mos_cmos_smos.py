"""CMOS (A/B against a baseline, -3..+3, A and B in random order) and SMOS (similarity to the reference,
1..5) tests: each rated in the real browser, then reported."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import yaml

from speech_lpo.mos.definition import load_definition
from speech_lpo.mos.report import screen, write_report
from speech_lpo.mos.store import Store
from tests.test_mos_browser import CHROMIUM, CHROMIUM_ARGS, play_through, radio
from tests.test_mos_kit import Clock, free_port, listen, make_test, start_server, stop_server

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's chromium: apt-get install -y chromium"
)


def typed_test(folder: Path, kind: str, seconds: float = 1.0) -> Path:
    definition = make_test(folder, n_utts=2, systems=["original", "noisy"], seconds=seconds)
    raw = yaml.safe_load(definition.read_text())
    for key in ("scale", "dimensions", "attention_checks", "attention"):
        raw.pop(key)
    raw.update(type=kind, items_per_rater=2 if kind == "cmos" else 4)
    if kind == "cmos":
        raw.update(baseline="noisy")
    definition.write_text(yaml.safe_dump(raw, sort_keys=False))
    return definition


def rate_in_browser(definition: Path, db: Path, log: Path, answers: list) -> list[str]:
    """One invited rater per function in ``answers`` rates everything in Chromium; ``answer(store, token,
    item)`` is the score clicked."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    expect, sync_playwright = sync_api.expect, sync_api.sync_playwright
    expect.set_options(timeout=30_000)
    defn = load_definition(definition)
    store = Store(db, defn)
    tokens = store.invite(len(answers), expires=None)
    (dim,) = defn.dimension_names()
    port = free_port()
    server = start_server(definition, db, port, log)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            for token, answer in zip(tokens, answers, strict=True):
                context = browser.new_context(viewport={"width": 1000, "height": 1400})
                context.set_default_timeout(30_000)
                page = context.new_page()
                page.goto(f"http://127.0.0.1:{port}/?token={token}")
                for step in range(defn.items_per_rater):
                    expect(page.locator("#mos-progress")).to_contain_text(f"{step} of {defn.items_per_rater}")
                    play_through(page, expect, [dim])
                    item = store.shown(token)  # the sample the server shows
                    radio(page, dim, answer(store, token, item)).click()
                    page.locator("#mos-submit").click()
                expect(page.locator("#mos-done")).to_be_visible()
                context.close()
            browser.close()
    finally:
        stop_server(server)
    return tokens


def test_cmos_in_the_browser(tmp_path: Path) -> None:
    definition = typed_test(tmp_path, "cmos")
    defn = load_definition(definition)
    assert defn.systems == ["original"] and defn.baseline == "noisy"
    assert [label for label, _ in defn.scale.named_choices()][::3] == [
        "-3 Much worse",
        "0 About the same",
        "3 Much better",
    ]
    db = tmp_path / "ratings.sqlite"
    # the original is better than the noisy baseline by 2 or 1 points (by utterance), wherever it plays
    better = {u: 2.0 - k for k, u in enumerate(sorted({it.utterance for it in defn.system_items}))}

    def answer(store: Store, token: str, item: str) -> float:
        gain = better[store.defn.items[item].utterance]
        return -gain if store.flipped(token, item) else gain

    def always_b(store: Store, token: str, item: str) -> float:
        return 3.0 if store.flipped(token, item) else 2.0  # B better, whichever system B is

    tokens = rate_in_browser(definition, db, tmp_path / "server.log", [answer, answer, always_b])
    rows = Store(db, defn).ratings()
    assert sorted(
        (defn.items[r["item"]].utterance, r["score"]) for r in rows if r["rater"] != tokens[2]
    ) == sorted(
        (u, gain) for u, gain in better.items() for _ in range(2)
    )  # stored as system vs baseline, whichever was A
    table, cells = write_report(defn, rows, tmp_path / "report")
    assert [(c.system, c.mean) for c in cells] == [("original", 1.5)]
    assert "CMOS against noisy on a -3 to 3 scale" in table
    summary = json.loads((tmp_path / "report" / "mos_summary.json").read_text())
    assert summary["kept"] == sorted(tokens[:2]) and summary["excluded"] == {tokens[2]: "always preferred B"}
    (test,) = summary["cmos_against_zero"]  # one system against the baseline: a test against 0
    assert test["cmos"] == 1.5 and 1.0 <= test["low"] <= 1.5 <= test["high"] <= 2.0 and 0 < test["p"] <= 1
    assert f"| original | B compared with A | +1.50 [{test['low']:+.2f}, {test['high']:+.2f}] | 2 |" in table


def test_cmos_order_is_balanced_within_each_rater(tmp_path: Path) -> None:
    """Each rater hears half of their samples with the system as A, which half at random."""
    defn = load_definition(typed_test(tmp_path, "cmos"))
    store = Store(tmp_path / "r.sqlite", defn, clock=Clock())
    flipped_items = Counter()
    for k, token in enumerate(store.invite(40, expires=None)):
        store.enter(token, f"b{k}")
        flips = [item for item in store.order(token, f"b{k}") if store.flipped(token, item)]
        assert len(flips) == 1  # of 2
        flipped_items.update(flips)
    assert len(flipped_items) == 2 and min(flipped_items.values()) >= 8  # either one, at random


def test_smos_in_the_browser(tmp_path: Path) -> None:
    definition = typed_test(tmp_path, "smos")
    defn = load_definition(definition)
    assert defn.dimensions[0].label == "Speaker similarity" and defn.scale.choices() == [1, 2, 3, 4, 5]
    db = tmp_path / "ratings.sqlite"
    rate_in_browser(
        definition,
        db,
        tmp_path / "server.log",
        [lambda store, token, item: 5.0 if store.defn.items[item].system == "original" else 3.0] * 2,
    )
    table, cells = write_report(defn, Store(db, defn).ratings(), tmp_path / "report")
    assert [(c.system, c.mean, c.n) for c in cells] == [("original", 5.0, 4), ("noisy", 3.0, 4)]
    assert "SMOS on a 1 to 5 scale" in table


def test_cmos_screening_on_raw_answers_and_position_bias(tmp_path: Path) -> None:
    """CMOS screening judges the answers as clicked: a rater who always prefers B (different sizes) is
    excluded, named; the identical pair is "about the same" within +-1 (an honest 0 is kept, a 3 is
    not). A/B is balanced within each rater, so a rater's liking for B shows as position bias and
    leaves the CMOS itself (system against baseline) true."""
    definition = typed_test(tmp_path, "cmos")
    raw = yaml.safe_load(definition.read_text())
    same = {"id": "same", "audio": "noisy/" + raw["utterances"][0] + ".wav", "expect": "same"}
    raw["attention_checks"] = [{**same, "reference": same["audio"]}]
    definition.write_text(yaml.safe_dump(raw, sort_keys=False))
    defn = load_definition(definition)
    store = Store(tmp_path / "r.sqlite", defn, clock=Clock())
    # (answer to the identical pair, answer as clicked given whether the system is A)
    raters = {
        **{f"honest{k}": (k % 2, lambda flipped: -1 + 1 if flipped else 1 + 1) for k in range(4)},
        "careless": (3, lambda flipped: -1 if flipped else 1),
        "sider": (0, lambda flipped: 3 - flipped),  # always B better: 3 or 2
    }
    tokens = dict(zip(raters, store.invite(len(raters), expires=None), strict=True))
    for name, token in tokens.items():
        store.enter(token, name)
        flips = [
            store.flipped(token, item) for item in store.order(token, name) if not item.startswith("check")
        ]
        assert sorted(flips) == [False, True]  # balanced within the rater
        while (item := store.next_item(token, name)[0]) is not None:
            listen(store, token, name, item)
            check, clicked = raters[name]
            score = check if item.startswith("check") else clicked(store.flipped(token, item))
            store.submit(token, name, item, {"comparison": float(score)})
    rows = store.ratings()
    verdict = screen(defn, rows)
    named = {name: verdict[token] for name, token in tokens.items()}
    assert named == {
        **{f"honest{k}": None for k in range(4)},
        "careless": "failed attention check",
        "sider": "always preferred B",
    }
    table, cells = write_report(defn, rows, tmp_path / "report")
    assert [(c.system, c.mean) for c in cells] == [("original", 1.0)]
    summary = json.loads((tmp_path / "report" / "mos_summary.json").read_text())
    (test,) = summary["cmos_against_zero"]
    assert test["cmos"] == 1.0 and test["low"] <= 1.0 <= test["high"] and 0 < test["p"] <= 1
    assert summary["position_bias"]["comparison"]["bias"] == 1.0  # every kept rater: B +1
    assert "| original | B compared with A | +1.00 [" in table and "Position bias" in table
    assert "1 always preferred B" in table and "1 failed attention check" in table
