"""The server owns the page, in the real Chromium: a CMOS test (A and B both gated) where a script that
rewrites the page state to another item is refused with nothing stored (play, a second play span on
another item, submit), B heard alone leaves the questions locked until A is played through, and a
partial play of A followed by a seek does not unlock."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from speech_lpo.mos.definition import load_definition
from speech_lpo.mos.store import Store
from tests.test_mos_browser import CHROMIUM, CHROMIUM_ARGS, play_through, radio
from tests.test_mos_cmos_smos import typed_test
from tests.test_mos_kit import free_port, start_server, stop_server

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's chromium: apt-get install -y chromium"
)


def elsewhere(route) -> None:
    """What a script on the page would do: send the panel's request with the page state of another item."""
    body = route.request.post_data_json
    for value in body.get("data", []):
        if isinstance(value, dict) and isinstance(value.get("at"), int):
            value["at"] = 1 - value["at"]  # the rater's other sample (2 per rater)
    route.continue_(post_data=json.dumps(body))


def rows(db: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(db) as con:
        return con.execute(sql).fetchall()


def test_server_owns_the_page_and_gates_both_players(tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    expect, sync_playwright = sync_api.expect, sync_api.sync_playwright
    expect.set_options(timeout=30_000)
    definition = typed_test(tmp_path, "cmos", seconds=1.5)
    defn = load_definition(definition)
    db = tmp_path / "ratings.sqlite"
    store = Store(db, defn)
    (token,) = store.invite(1, expires=None)
    (dim,) = defn.dimension_names()
    port = free_port()
    server = start_server(definition, db, port, tmp_path / "server.log")
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1000, "height": 1400})
            page.set_default_timeout(30_000)
            page.goto(f"http://127.0.0.1:{port}/?token={token}")
            message, question = page.locator("#mos-message"), page.locator(f"#mos-{dim} input").first
            expect(message).to_contain_text("Play both recordings")
            on_screen = store.shown(token)
            page.wait_for_timeout(1000)  # the players load their clips

            # B played through: a span on the item on screen; then plays that name the other item
            page.locator('button[aria-label="Play (sample)"]').click()
            expect(message).to_contain_text("Now play A")
            expect(question).to_be_disabled()  # A is gated too
            page.route("**/gradio_api/queue/join*", elsewhere)
            page.locator('button[aria-label="Play (reference recording)"]').click()
            expect(message).to_contain_text("not the sample on your screen")
            page.wait_for_timeout(2500)  # A's end event, rewritten too, is refused as well
            page.unroute("**/gradio_api/queue/join*")
            assert rows(db, "SELECT DISTINCT item FROM listens") == [(on_screen,)]
            assert rows(db, "SELECT player, plays, through FROM listens") == [("sample", 1, 1)]
            assert rows(db, "SELECT span_item FROM raters") == [(None,)]
            assert rows(db, "SELECT item FROM plays") == [(on_screen,)]

            # A: 60% heard, paused, seeked back to 40% and played to the end (more than its length in
            # all, but not in one play): still locked
            page.locator('button[aria-label="Play (reference recording)"]').click()
            page.wait_for_timeout(900)
            page.locator('button[aria-label="Pause (reference recording)"]').click()
            wave = page.locator("#mos-reference #waveform")
            box = wave.bounding_box()
            wave.click(position={"x": box["width"] * 0.4, "y": box["height"] / 2})
            page.locator('button[aria-label="Play (reference recording)"]').click()
            expect(message).to_contain_text("Part of A was skipped or paused")
            expect(question).to_be_disabled()
            assert rows(db, "SELECT plays, through FROM listens WHERE player = 'reference'") == [(2, 0)]

            # A from its start to its end: the questions open; a submit naming the other item is refused
            wave.click(position={"x": 1, "y": box["height"] / 2})
            page.locator('button[aria-label="Play (reference recording)"]').click()
            expect(question).to_be_enabled()
            radio(page, dim, 2.0).click()
            page.route("**/gradio_api/queue/join*", elsewhere)
            page.locator("#mos-submit").click()
            expect(message).to_contain_text("not the sample on your screen")
            page.unroute("**/gradio_api/queue/join*")
            assert rows(db, "SELECT COUNT(*) FROM ratings") == [(0,)]
            page.locator("#mos-submit").click()
            expect(page.locator("#mos-progress")).to_contain_text("1 of 2 samples rated")
            play_through(page, expect, [dim])  # the next item: both players through, as a rater does
            browser.close()
    finally:
        stop_server(server)
    sign = -1 if store.flipped(token, on_screen) else 1  # stored as system vs baseline
    assert rows(db, "SELECT item, score FROM ratings") == [(on_screen, sign * 2.0)]
