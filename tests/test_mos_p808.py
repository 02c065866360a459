"""A P.808-style test in the real browser: the five-category ACR scale, a qualification (which number
does a voice say), training examples, a trapping question (a real sample, then espeak-ng asks for "2 Poor"),
a completion code and a comment. One rater passes everything, one gives the trap another answer, one
fails the qualification; the report keeps only the first."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import soundfile as sf
import yaml

from speech_lpo.mos.definition import load_definition
from speech_lpo.mos.report import write_report
from speech_lpo.mos.store import Store
from speech_lpo.mos.trap import spliced_trap
from speech_lpo.synth_corpus import SAMPLE_RATE, synthesize
from tests.test_mos_browser import CHROMIUM, CHROMIUM_ARGS, play_through, radio
from tests.test_mos_kit import UTTERANCES, free_port, make_test, start_server, stop_server

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's chromium: apt-get install -y chromium"
)


def p808_test(folder: Path) -> Path:
    definition = make_test(folder, n_utts=2, systems=["original", "noisy"], items_per_rater=2)
    root = folder / "audio"
    carrier, rate = sf.read(root / "noisy" / f"{UTTERANCES[0]}.wav", dtype="float32")
    for name, (audio, sr) in {
        "traps/poor.wav": (spliced_trap(carrier, rate, "2 Poor"), rate),
        "checks/seven.wav": (synthesize("The number is seven.", "en-us+f2"), SAMPLE_RATE),
    }.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        sf.write(root / name, audio, sr)
    raw = yaml.safe_load(definition.read_text())
    raw.update(
        scale="acr",
        dimensions=[{"name": "quality", "label": "Quality", "question": "How is the speech quality?"}],
        trapping_questions=[{"id": "poor", "audio": "traps/poor.wav", "answer": 2}],
        qualification=[
            {
                "audio": "checks/seven.wav",
                "question": "Which number did you hear?",
                "choices": ["three", "seven", "nine"],
                "answer": "seven",
            }
        ],
        training=[
            {"audio": f"reference/{UTTERANCES[0]}.wav", "caption": "An example of 5 Excellent"},
            {"audio": f"anchors/{UTTERANCES[1]}.wav", "caption": "An example of 1 Bad"},
        ],
        completion_code=True,
        comment=True,
        attention={"high_min": 4, "low_max": 2},
    )
    definition.write_text(yaml.safe_dump(raw, sort_keys=False))
    return definition


def test_p808_qualification_training_trap_code(tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    expect, sync_playwright = sync_api.expect, sync_api.sync_playwright
    expect.set_options(timeout=30_000)

    definition = p808_test(tmp_path)
    defn = load_definition(definition)
    assert defn.scale.named_choices()[1] == ("2 Poor", 2.0)
    db = tmp_path / "ratings.sqlite"
    store = Store(db, defn)
    careful, trapped, deaf = store.invite(3, expires=None)
    port = free_port()
    base = f"http://127.0.0.1:{port}/"
    server = start_server(definition, db, port, tmp_path / "server.log")

    def answer_for(item_id: str, trap_answer: float) -> float:
        item = defn.items[item_id]
        if item.expect == "trap":
            return trap_answer
        if item.expect:
            return 5.0 if item.expect == "high" else 1.0
        return 4.0 if item.system == "original" else 3.0

    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            for token, heard_number, trap_answer in [
                (careful, "seven", 2.0),
                (trapped, "seven", 5.0),
                (deaf, "three", 0),
            ]:
                context = browser.new_context(viewport={"width": 1000, "height": 1400})
                context.set_default_timeout(30_000)
                page = context.new_page()
                page.goto(f"{base}?token={token}")
                page.locator(f'#mos-check0 [data-testid="{heard_number}-radio-label"]').click()
                page.locator("#mos-qualify").click()
                if heard_number != "seven":
                    expect(page.locator("#mos-disqualified")).to_be_visible()
                    context.close()
                    continue
                expect(page.get_by_text("An example of 5 Excellent")).to_be_visible()
                page.locator("#mos-trained").click()
                with sqlite3.connect(db) as con:
                    order = json.loads(
                        con.execute("SELECT items FROM raters WHERE token = ?", (token,)).fetchone()[0]
                    )
                assert "trap:poor" in order and len(order) == 5
                for step, item_id in enumerate(order):
                    expect(page.locator("#mos-progress")).to_contain_text(f"{step} of 5 samples rated")
                    play_through(page, expect, ["quality"])
                    radio(page, "quality", answer_for(item_id, trap_answer)).click()
                    page.locator("#mos-submit").click()
                expect(page.locator("#mos-done")).to_be_visible()
                expect(page.locator("#mos-code")).to_contain_text(store.completion_code(token))
                page.locator("#mos-comment textarea").fill(f"comment from {token}")
                page.locator("#mos-comment-save").click()
                expect(page.locator("#mos-message")).to_contain_text("your comment is saved")
                context.close()
            browser.close()
    finally:
        stop_server(server)

    progress = {r["rater"]: r for r in store.progress()}
    assert progress[deaf]["qualified"] == "no" and progress[deaf]["done"] == 0
    assert progress[careful]["comment"] == f"comment from {careful}"
    table, cells = write_report(defn, store.ratings(), tmp_path / "report")
    summary = json.loads((tmp_path / "report" / "mos_summary.json").read_text())
    assert summary["kept"] == [careful]
    assert summary["excluded"] == {trapped: "failed trapping question"}
    assert {(c.system, c.mean) for c in cells} == {("original", 4.0), ("noisy", 3.0)}
