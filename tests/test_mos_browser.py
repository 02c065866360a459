"""The rating panel in a real browser: headless Chromium (Debian's ``chromium``) driven by playwright.

Rates a small test completely; half-way it closes the page, restarts the server, comes back without
the invitation link and must resume where it stopped; then it goes back one sample and changes an
answer. The database must then hold exactly the answers that were clicked, the changed one updated
in place.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from speech_lpo.mos.definition import load_definition
from speech_lpo.mos.store import Store
from tests.test_mos_kit import free_port, make_test, start_server, stop_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's chromium: apt-get install -y chromium"
)


def answers_for(step: int, dims: list[str]) -> dict[str, float]:
    """Distinct, checkable answers for the step-th sample."""
    return {d: [4.5, 3.0, 1.5, 0.5, 5.0, 2.0][(step + j) % 6] for j, d in enumerate(dims)}


def test_rate_reload_restart_resume(tmp_path: Path) -> None:
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="pip install playwright (no `playwright install`)"
    )
    expect, sync_playwright = sync_api.expect, sync_api.sync_playwright

    expect.set_options(timeout=30_000)  # a loaded machine; the default is 5 s

    definition = make_test(tmp_path, n_utts=2, systems=["original", "noisy"], items_per_rater=3)
    defn = load_definition(definition)
    db = tmp_path / "ratings.sqlite"
    (token,) = Store(db, defn).invite(1, expires=None)
    dims = defn.dimension_names()
    total = 3 + len(defn.check_items)
    port = free_port()
    base = f"http://127.0.0.1:{port}/"
    server = start_server(definition, db, port, tmp_path / "server.log")
    clicked: list[dict[str, float]] = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            context = browser.new_context(viewport={"width": 1000, "height": 1400})  # one localStorage
            context.set_default_timeout(30_000)
            page = context.new_page()
            page.goto(f"{base}?token={token}")
            for step in range(total):
                if step == 2:  # leave half-way, restart the server, come back without the link
                    page.close()
                    stop_server(server)
                    server = start_server(definition, db, port, tmp_path / "server.log")
                    page = context.new_page()
                    page.goto(base)
                expect(page.locator("#mos-progress")).to_contain_text(f"{step} of {total} samples rated")
                if step == 3:  # go back, change one answer of the previous sample, come forward again
                    page.locator("#mos-back").click()
                    expect(page.locator("#mos-message")).to_contain_text("changing an earlier answer")
                    changed = page.locator(
                        f'#mos-{dims[0]} [data-testid="{clicked[2][dims[0]]:g}-radio-label"] input'
                    )
                    expect(changed).to_be_checked()
                    clicked[2] = {**clicked[2], dims[0]: 0.0}
                    page.locator(f'#mos-{dims[0]} [data-testid="0-radio-label"]').click()
                    page.locator("#mos-submit").click()
                    expect(page.locator("#mos-message")).to_contain_text("Listen to the whole sample")
                html = page.content()
                assert not any(f"{s}/" in html or f"@{s}" in html for s in defn.systems)  # names hidden
                first = page.locator(f"#mos-{dims[0]} input[type=radio]").first
                expect(first).to_be_disabled()  # nothing can be answered before the sample is heard
                page.wait_for_timeout(1000)  # let the player fetch and decode the new clip
                for attempt in range(3):  # a click that lands while the new clip still loads plays nothing
                    page.locator('#mos-sample button[aria-label="Play"]').click()
                    assert (
                        attempt or first.is_disabled()
                    )  # playing is not enough: they open at the clip's end
                    try:
                        expect(first).to_be_enabled(timeout=8_000)
                        break
                    except AssertionError:
                        if attempt == 2:
                            raise
                answers = answers_for(step, dims)
                for d, score in answers.items():
                    page.locator(f'#mos-{d} [data-testid="{score:g}-radio-label"]').click()
                if step == 1:
                    page.screenshot(path=str(tmp_path / "mos_panel.png"), full_page=True)
                page.locator("#mos-submit").click()
                clicked.append(answers)
            expect(page.locator("#mos-done")).to_be_visible()
            expect(page.locator("#mos-progress")).to_contain_text(f"{total} of {total} samples rated")
            browser.close()
    finally:
        stop_server(server)
    assert (tmp_path / "mos_panel.png").stat().st_size > 10_000  # docs/mos_panel.png is such a screenshot

    with sqlite3.connect(db) as con:
        (order,) = con.execute("SELECT items FROM raters WHERE token = ?", (token,)).fetchone()
        rows = con.execute(
            "SELECT rater, item, dimension, score, plays, heard, revisions FROM ratings"
        ).fetchall()
    order = json.loads(order)
    expected = {
        (token, item, d, score)
        for item, answers in zip(order, clicked, strict=True)
        for d, score in answers.items()
    }
    assert {r[:4] for r in rows} == expected
    assert len(rows) == total * len(dims)
    assert all(plays >= 1 and heard >= 1 for *_, plays, heard, _ in rows)
    assert sorted(r[6] for r in rows) == [0] * (len(rows) - len(dims)) + [1] * len(
        dims
    )  # one update, no copy
    assert {r[1] for r in rows if r[6] == 1} == {order[2]}
