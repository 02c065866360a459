"""The rating panel in a real browser: headless Chromium (Debian's ``chromium``) driven by playwright.

Rates a small test completely and goes down every refusal on the way, each of which must leave the
page usable with the answers kept: Previous on the first sample (disabled), seeking to the end and
playing the rest (questions stay locked), Submit with a question unanswered (one note beside it),
the server stopped (a banner) and restarted under the open page (Submit goes through and says so),
a second tab submitting a sample already rated (a warning, nothing overwritten), the invitation
opened in another browser (the old page ends). Then it goes back one sample and changes an answer.
The database must hold exactly the answers that were clicked, the changed one updated in place.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import httpx
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


def radio(page, dim: str, score: float):
    return page.locator(f'#mos-{dim} label:has(input[value="{score:g}"])')


def play_through(page, expect, dims: list[str]) -> None:
    """Press Play on each player (the reference first, when shown) and wait for its end (retried: a click
    while the clip loads plays nothing); the questions open only at the last one's end."""
    first = page.locator(f"#mos-{dims[0]} input[type=radio]").first
    page.wait_for_timeout(1000)  # let the players fetch and decode the new clips
    players = ["reference recording", "sample"] if page.locator("#mos-reference").is_visible() else ["sample"]
    for k, player in enumerate(players):
        for attempt in range(3):
            page.locator(f'button[aria-label="Play ({player})"]').click()
            assert attempt or first.is_disabled()  # playing is not enough: they open at the last end
            try:
                if k + 1 < len(players):
                    expect(page.locator("#mos-message")).to_contain_text("Now play", timeout=8_000)
                else:
                    expect(first).to_be_enabled(timeout=8_000)
                break
            except AssertionError:
                if attempt == 2:
                    raise


def answer(page, answers: dict[str, float]) -> None:
    for d, score in answers.items():
        radio(page, d, score).click()


def test_rate_through_every_refusal(tmp_path: Path) -> None:
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
            message, submit = page.locator("#mos-message"), page.locator("#mos-submit")
            for step in range(total):
                expect(page.locator("#mos-progress")).to_contain_text(f"{step} of {total} samples rated")
                html = page.content()
                assert not any(f"{s}/" in html or f"@{s}" in html for s in defn.systems)  # names hidden
                answers = answers_for(step, dims)
                if step == 0:
                    expect(page.locator("#mos-back")).to_be_disabled()  # nothing before the first sample
                    # seek to 97% and play the rest: the end comes, the questions stay locked
                    page.wait_for_timeout(1000)
                    wave = page.locator("#mos-sample #waveform")
                    box = wave.bounding_box()
                    wave.click(position={"x": box["width"] * 0.97, "y": box["height"] / 2})
                    page.locator('#mos-sample button[aria-label="Play (sample)"]').click()
                    expect(message).to_contain_text("Part of the sample was skipped")
                    expect(page.locator(f"#mos-{dims[0]} input[type=radio]").first).to_be_disabled()
                    play_through(page, expect, dims)
                    # one question left out: a note beside it, the other answers kept, nothing else
                    answer(page, {d: s for d, s in answers.items() if d != dims[1]})
                    submit.click()
                    label = defn.dimensions[1].label
                    expect(page.locator(f"#mos-{dims[1]}-missing")).to_have_text(f"Please answer “{label}”.")
                    for d, score in answers.items():
                        if d != dims[1]:
                            expect(radio(page, d, score).locator("input")).to_be_checked()
                    expect(submit).to_be_enabled()
                    expect(page.locator("#mos-progress")).to_contain_text(f"0 of {total} samples rated")
                    assert page.locator(".error").count() == 0  # no component turned into an error box
                    answer(page, {dims[1]: answers[dims[1]]})
                elif step == 1:
                    play_through(page, expect, dims)
                    answer(page, answers)
                    stop_server(server)  # the page stays open
                    expect(page.locator("#mos-offline")).to_contain_text("Connection to the server lost")
                    server = start_server(definition, db, port, tmp_path / "server.log")
                    expect(page.locator("#mos-offline")).to_be_hidden()
                    expect(message).to_contain_text("Connection restored")
                    for d, score in answers.items():
                        expect(radio(page, d, score).locator("input")).to_be_checked()
                elif step == 2:  # a second tab on the same sample submits after the first one did
                    play_through(page, expect, dims)
                    other = context.new_page()
                    other.goto(base)  # no link: the token comes from localStorage, no takeover
                    expect(other.locator("#mos-progress")).to_contain_text(f"2 of {total} samples rated")
                    answer(page, answers)
                    submit.click()
                    clicked.append(answers)
                    answer(other, answers_for(7, dims))
                    other.locator("#mos-submit").click()
                    expect(other.locator("#mos-message")).to_contain_text("rated already, in another tab")
                    expect(other.locator("#mos-progress")).to_contain_text(f"3 of {total} samples rated")
                    other.close()
                    continue
                elif step == 3:  # go back, change one answer of the previous sample, come forward again
                    page.locator("#mos-back").click()
                    expect(message).to_contain_text("changing an earlier answer")
                    expect(radio(page, dims[0], clicked[2][dims[0]]).locator("input")).to_be_checked()
                    clicked[2] = {**clicked[2], dims[0]: 0.0}
                    radio(page, dims[0], 0.0).click()
                    submit.click()
                    expect(message).to_contain_text("Play both recordings from start to end")
                    play_through(page, expect, dims)
                    answer(page, answers)
                    page.screenshot(path=str(tmp_path / "mos_panel.png"), full_page=True)
                else:  # the rater moves to another browser with the link: this page ends
                    moved = browser.new_context(viewport={"width": 1000, "height": 1400})
                    new_page = moved.new_page()
                    new_page.goto(f"{base}?token={token}")
                    expect(new_page.locator("#mos-progress")).to_contain_text(f"{step} of {total}")
                    page.locator("#mos-back").click()
                    expect(message).to_contain_text("this page has ended")
                    page = new_page
                    message, submit = page.locator("#mos-message"), page.locator("#mos-submit")
                    play_through(page, expect, dims)
                    answer(page, answers)
                submit.click()
                if step == 1:
                    expect(message).to_contain_text("The server was restarted meanwhile")
                clicked.append(answers)
            expect(page.locator("#mos-done")).to_be_visible()
            expect(page.locator("#mos-progress")).to_contain_text(f"{total} of {total} samples rated")
            browser.close()
    finally:
        stop_server(server)
    assert (tmp_path / "mos_panel.png").stat().st_size > 10_000  # docs/mos_panel.png is such a screenshot
    log = (tmp_path / "server.log").read_text()
    assert "refused submit: unanswered" in log and "Traceback" not in log  # one line per refusal

    with sqlite3.connect(db) as con:
        (order,) = con.execute("SELECT items FROM raters WHERE token = ?", (token,)).fetchone()
        rows = con.execute(
            "SELECT rater, item, dimension, score, plays, heard, heard_s, revisions FROM ratings"
        ).fetchall()
    order = json.loads(order)
    expected = {
        (token, item, d, score)
        for item, answers in zip(order, clicked, strict=True)
        for d, score in answers.items()
    }
    assert {r[:4] for r in rows} == expected
    assert len(rows) == total * len(dims)
    durations = {item: defn.items[item].duration for item in order}
    assert all(
        plays >= heard >= 1 and heard_s >= durations[item] - 0.3
        for _, item, _, _, plays, heard, heard_s, _ in rows
    )
    assert sorted(r[7] for r in rows) == [0] * (len(rows) - len(dims)) + [1] * len(
        dims
    )  # one update, no copy
    assert {r[1] for r in rows if r[7] == 1} == {order[2]}


def test_page_is_accessible_and_fits_a_phone(tmp_path: Path) -> None:
    """No API footer or API docs; named radio groups and player buttons; axe-core finds nothing
    serious; at 390 px each scale stays on one line; after Submit the next player is in view."""
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="pip install playwright (no `playwright install`)"
    )
    axe = pytest.importorskip("axe_playwright_python.sync_playwright")  # carries axe.min.js: no fetch
    expect, sync_playwright = sync_api.expect, sync_api.sync_playwright
    expect.set_options(timeout=30_000)

    definition = make_test(tmp_path, n_utts=2, systems=["original", "noisy"], items_per_rater=2)
    defn = load_definition(definition)
    db = tmp_path / "ratings.sqlite"
    tokens = Store(db, defn).invite(2, expires=None)
    dims = defn.dimension_names()
    port = free_port()
    base = f"http://127.0.0.1:{port}/"
    server = start_server(definition, db, port, tmp_path / "server.log")
    try:
        info = httpx.get(f"{base}gradio_api/info", timeout=30).json()
        assert info["named_endpoints"] == {} and info["unnamed_endpoints"] == {}  # nothing advertised
        assert httpx.get(f"{base}docs", timeout=30).status_code == 404
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            for token, (width, height, shot) in zip(
                tokens, [(1280, 1000, "desktop"), (390, 844, "390px")], strict=True
            ):
                context = browser.new_context(viewport={"width": width, "height": height})
                context.set_default_timeout(30_000)
                page = context.new_page()
                page.goto(f"{base}?token={token}")
                expect(page.locator("#mos-progress")).to_contain_text("0 of 4 samples rated")
                assert page.locator("footer").count() == 0 and page.get_by_text("Use via API").count() == 0
                for d in defn.dimensions:
                    expect(page.get_by_role("radiogroup", name=d.label)).to_have_count(1)
                for player in ("sample", "reference recording"):
                    expect(page.get_by_role("button", name=f"Play ({player})", exact=True)).to_have_count(1)
                play_through(page, expect, dims)
                answer(page, {d: 3.0 for d in dims[1:]})
                radio(page, dims[0], 0.0).locator("input").focus()  # one group: arrow keys move along it
                page.keyboard.press("ArrowRight")
                expect(radio(page, dims[0], 0.5).locator("input")).to_be_checked()
                for d in dims:  # the whole scale on one line
                    tops = [
                        box["y"]
                        for box in (lab.bounding_box() for lab in page.locator(f"#mos-{d} label").all())
                    ]
                    assert len(tops) == 11 and max(tops) - min(tops) < 2, (shot, d, tops)
                found = axe.Axe().run(page).response["violations"]
                serious = [
                    (v["id"], v["impact"], [(n["target"], n["failureSummary"][-160:]) for n in v["nodes"]])
                    for v in found
                    if v["impact"] in ("serious", "critical")
                ]
                assert serious == [], serious
                page.screenshot(path=str(tmp_path / f"mos_panel_{shot}.png"), full_page=True)
                page.locator("#mos-submit").click()
                expect(page.locator("#mos-progress")).to_contain_text("1 of 4 samples rated")
                expect(page.locator("#mos-sample")).to_be_in_viewport()
                context.close()
            browser.close()
    finally:
        stop_server(server)
    assert all((tmp_path / f"mos_panel_{shot}.png").stat().st_size > 10_000 for shot in ("desktop", "390px"))
