"""CMOS (A/B against a baseline, -3..+3, A and B in random order) and SMOS (similarity to the reference,
1..5) tests: each rated in the real browser, then reported."""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from pathlib import Path

import pytest
import yaml

from speech_lpo.mos.definition import load_definition
from speech_lpo.mos.report import write_report
from speech_lpo.mos.store import Store
from tests.test_mos_browser import CHROMIUM, CHROMIUM_ARGS, play_through, radio
from tests.test_mos_kit import Clock, free_port, make_test, start_server, stop_server

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's chromium: apt-get install -y chromium"
)


def typed_test(folder: Path, kind: str) -> Path:
    definition = make_test(folder, n_utts=2, systems=["original", "noisy"])
    raw = yaml.safe_load(definition.read_text())
    for key in ("dimensions", "attention_checks", "attention"):
        raw.pop(key)
    raw.update(type=kind, items_per_rater=2 if kind == "cmos" else 4)
    if kind == "cmos":
        raw.update(baseline="noisy")
    definition.write_text(yaml.safe_dump(raw, sort_keys=False))
    return definition


def rate_in_browser(definition: Path, db: Path, log: Path, answer) -> list[str]:
    """Two invited raters rate everything in Chromium; ``answer(store, token, item)`` is the score clicked."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    expect, sync_playwright = sync_api.expect, sync_api.sync_playwright
    expect.set_options(timeout=30_000)
    defn = load_definition(definition)
    store = Store(db, defn)
    tokens = store.invite(2, expires=None)
    (dim,) = defn.dimension_names()
    port = free_port()
    server = start_server(definition, db, port, log)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            for token in tokens:
                context = browser.new_context(viewport={"width": 1000, "height": 1400})
                context.set_default_timeout(30_000)
                page = context.new_page()
                page.goto(f"http://127.0.0.1:{port}/?token={token}")
                for step in range(defn.items_per_rater):
                    expect(page.locator("#mos-progress")).to_contain_text(f"{step} of {defn.items_per_rater}")
                    play_through(page, expect, [dim])
                    item = store.next_item(token, store_browser(db, token))[0]
                    radio(page, dim, answer(store, token, item)).click()
                    page.locator("#mos-submit").click()
                expect(page.locator("#mos-done")).to_be_visible()
                context.close()
            browser.close()
    finally:
        stop_server(server)
    return tokens


def store_browser(db: Path, token: str) -> str:
    """The browser id the panel gave this rater (to ask the store which sample is on screen)."""
    with sqlite3.connect(db) as con:
        return con.execute("SELECT browser FROM raters WHERE token = ?", (token,)).fetchone()[0]


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

    rate_in_browser(definition, db, tmp_path / "server.log", answer)
    rows = Store(db, defn).ratings()
    assert sorted((defn.items[r["item"]].utterance, r["score"]) for r in rows) == sorted(
        (u, gain) for u, gain in better.items() for _ in range(2)
    )  # stored as system vs baseline, whichever was A
    table, cells = write_report(defn, rows, tmp_path / "report")
    assert [(c.system, c.mean) for c in cells] == [("original", 1.5)]
    assert "CMOS against noisy on a -3 to 3 scale" in table
    summary = json.loads((tmp_path / "report" / "mos_summary.json").read_text())
    assert len(summary["kept"]) == 2


def test_cmos_order_is_random_per_rater_and_item(tmp_path: Path) -> None:
    defn = load_definition(typed_test(tmp_path, "cmos"))
    store = Store(tmp_path / "r.sqlite", defn, clock=Clock())
    flips = Counter(store.flipped(f"rater{k}", item.id) for k in range(100) for item in defn.system_items)
    assert 80 < flips[True] < 120  # of 200
    assert store.flipped("rater0", defn.system_items[0].id) == store.flipped(
        "rater0", defn.system_items[0].id
    )


def test_smos_in_the_browser(tmp_path: Path) -> None:
    definition = typed_test(tmp_path, "smos")
    defn = load_definition(definition)
    assert defn.dimensions[0].label == "Speaker similarity" and defn.scale.choices() == [1, 2, 3, 4, 5]
    db = tmp_path / "ratings.sqlite"
    rate_in_browser(
        definition,
        db,
        tmp_path / "server.log",
        lambda store, token, item: 5.0 if store.defn.items[item].system == "original" else 3.0,
    )
    table, cells = write_report(defn, Store(db, defn).ratings(), tmp_path / "report")
    assert [(c.system, c.mean, c.n) for c in cells] == [("original", 5.0, 4), ("noisy", 3.0, 4)]
    assert "SMOS on a 1 to 5 scale" in table
