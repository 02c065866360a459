"""Load on loopback: 20 raters at once through gradio_client, then SIGKILL of the server mid-wave.

Wave 1: 20 invited raters, 10 samples x 5 questions each = 50 ratings each, through the same
``enter`` / ``play`` / ``heard`` / ``submit`` endpoints the page uses: exactly 1,000 rows, no error.
Wave 2: 20 more raters start; after 40 acknowledged submissions the server is killed with SIGKILL.
Every acknowledged submission must be in the database and, after a restart, in the admin page's
CSV export; a rater who was cut off resumes with the same browser id and finishes.
"""

from __future__ import annotations

import csv as csv_module
import io
import json
import os
import random
import signal
import sqlite3
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import yaml
from gradio_client import Client

from speech_lpo.mos.definition import load_definition
from speech_lpo.mos.store import Store
from tests.test_mos_kit import free_port, make_test, start_server, stop_server

N_RATERS = 20
DIMENSIONS = [
    "fidelity",
    "stability",
    "naturalness",
    "emotional_expressiveness",
    {"name": "overall", "label": "Overall quality", "question": "How good is the sample overall?"},
]
SECONDS = 0.5  # clip length: the gate makes every rater wait this long per sample
ITEMS_PER_RATER = 8  # + 2 attention checks = 10 samples x 5 questions = 50 ratings
PROGRESS = 3  # index of the progress HTML among the API outputs of enter / submit


def finished(outputs: tuple) -> bool:
    done, total = outputs[PROGRESS].split("<p>")[1].split(" samples rated")[0].split(" of ")
    return done == total


def rate(url: str, token: str, browser: str, acked: list[str]) -> str:
    """Enter and rate until finished, appending ``token`` to ``acked`` per acknowledged submission.

    Returns "done" or the error that stopped it (expected only when the server is killed).
    """
    rng = random.Random(token)
    scores = [0.5 * k for k in range(11)]
    try:
        client = Client(url, download_files=False, verbose=False)
        out = client.predict("", {"token": token, "browser": browser}, api_name="/enter")
        for _ in range(20):  # bounded: 10 samples are expected
            if finished(out):
                return "done"
            kept, page = out[0], out[1]
            client.predict(kept, page, api_name="/play_sample")
            time.sleep(SECONDS)  # the listening gate measures the time heard
            client.predict(kept, page, api_name="/heard_sample")
            scores_now = [rng.choice(scores) for _ in DIMENSIONS]
            out = client.predict(kept, page, *scores_now, api_name="/submit")
            if out[2].startswith("**"):  # the panel's refusals are set in bold
                raise RuntimeError(f"refused: {out[2]}")
            acked.append(token)
        return "did not finish in 20 steps"
    except Exception as e:  # the test decides whether an error was expected
        return f"{type(e).__name__}: {e}"


def wave(url: str, raters: dict[str, str], acked: list[str]) -> list:
    pool = ThreadPoolExecutor(len(raters))
    return [pool.submit(rate, url, token, browser, acked) for token, browser in raters.items()]


def ratings_by_rater(db: Path) -> tuple[Counter, dict[str, list[str]]]:
    with sqlite3.connect(db) as con:
        rows = Counter(r for (r,) in con.execute("SELECT rater FROM ratings"))
        done = {}
        for token, items in con.execute("SELECT token, items FROM raters WHERE items IS NOT NULL"):
            rated = {i for (i,) in con.execute("SELECT item FROM ratings WHERE rater = ?", (token,))}
            done[token] = [item in rated for item in json.loads(items)]
        (unique,) = con.execute("SELECT COUNT(DISTINCT rater || item || dimension) FROM ratings").fetchone()
    assert unique == sum(rows.values())
    return rows, done


def test_twenty_raters_then_sigkill_and_resume(tmp_path: Path) -> None:
    definition = make_test(
        tmp_path, n_utts=4, dimensions=DIMENSIONS, items_per_rater=ITEMS_PER_RATER, seconds=SECONDS
    )
    raw = yaml.safe_load(definition.read_text())
    raw.pop("reference_pattern")  # one gated player per sample: the load, not the gate, is tested here
    for check in raw["attention_checks"]:
        check.pop("reference")
    definition.write_text(yaml.safe_dump(raw, sort_keys=False))
    defn = load_definition(definition)
    db = tmp_path / "ratings.sqlite"
    store = Store(db, defn)
    first = {token: str(uuid.uuid4()) for token in store.invite(N_RATERS, expires=None)}
    second = {token: str(uuid.uuid4()) for token in store.invite(N_RATERS, expires=None)}
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    log = tmp_path / "server.log"
    server = start_server(definition, db, port, log)
    try:
        acked: list[str] = []
        results = [f.result(timeout=300) for f in wave(url, first, acked)]
        assert results == ["done"] * N_RATERS
        rows, _ = ratings_by_rater(db)
        assert sum(rows.values()) == 1000 and set(rows.values()) == {50}
        assert len(acked) == 200

        acked2: list[str] = []
        futures = wave(url, second, acked2)
        for _ in range(1200):  # bounded: 120 s
            if len(acked2) >= 40 or all(f.done() for f in futures):
                break
            time.sleep(0.1)
        os.kill(server.pid, signal.SIGKILL)
        server.wait()
        results = [f.result(timeout=120) for f in futures]
        assert sum(r != "done" for r in results) > 0, "the kill landed after every rater had finished"
        counts = Counter(acked2)
        rows, done = ratings_by_rater(db)
        for token in second:
            # acknowledged = committed: the first counts[token] samples of its order are all stored
            assert all(done[token][: counts[token]]), token
            assert rows[token] in (5 * counts[token], 5 * counts[token] + 5)  # + one in flight at most

        # the restarted server recovers the WAL and serves every acknowledged rating, and a rater
        # who was cut off resumes at the first sample not stored
        server = start_server(definition, db, port, log)
        csv = httpx.get(f"{url}admin/ratings.csv", params={"token": store.secret("admin_token")}, timeout=30)
        exported = Counter(row["rater"] for row in csv_module.DictReader(io.StringIO(csv.text)))
        assert exported == rows and sum(exported.values()) == 1000 + sum(rows[t] for t in second)
        token = min(second, key=lambda t: rows[t])
        assert rate(url, token, second[token], []) == "done"
        assert ratings_by_rater(db)[0][token] == 50
    finally:
        stop_server(server)
