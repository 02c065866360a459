"""Ratings store on a real SQLite file: bad input refused with nothing written, updates not duplicated,
orders balanced; the same refusals through the running panel's API."""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import pytest
import yaml
from gradio_client import Client

from speech_lpo.mos.definition import load_definition
from speech_lpo.mos.store import AlreadyRated, Refused, Store, Unanswered
from tests.test_mos_kit import Clock, free_port, listen, make_test, start_server, stop_server

MESSAGE = 2  # index of the message among the panel's API outputs (BrowserState, page JSON, message, ...)
GOOD = {"fidelity": 4.0, "stability": 3.5, "naturalness": 4.5, "emotional_expressiveness": 2.0}


def dump(db: Path) -> list[str]:
    with sqlite3.connect(db) as con:
        return list(con.iterdump())


def order_of(store: Store, token: str) -> list[str]:
    with sqlite3.connect(store.path) as con:
        return json.loads(con.execute("SELECT items FROM raters WHERE token = ?", (token,)).fetchone()[0])


@pytest.fixture
def store(tmp_path: Path) -> Store:
    defn = load_definition(make_test(tmp_path, items_per_rater=3))
    return Store(tmp_path / "ratings.sqlite", defn, clock=Clock())


def entered(store: Store, browser: str = "browser-a") -> tuple[str, str]:
    """A rater who entered and heard the first sample to its end: (token, item)."""
    (token,) = store.invite(1, expires=None)
    store.enter(token, browser)
    item, *_ = store.next_item(token, browser)
    listen(store, token, browser, item)
    return token, item


def test_wal_and_update_not_duplicate(store: Store) -> None:
    token, item = entered(store)
    store.submit(token, "browser-a", item, GOOD)
    time.sleep(0.01)
    with pytest.raises(AlreadyRated, match="rated already, in another tab"):  # not sent as a revision
        store.submit(token, "browser-a", item, {**GOOD, "naturalness": 1.0})
    store.submit(token, "browser-a", item, {**GOOD, "naturalness": 1.0}, revise=True)
    rows = {r["dimension"]: r for r in store.ratings()}
    assert len(store.ratings()) == 4
    assert rows["naturalness"]["score"] == 1.0 and rows["fidelity"]["score"] == 4.0
    assert all(
        r["revisions"] == 1 and r["plays"] == r["heard"] == 1 and r["updated"] > r["first_submitted"]
        for r in rows.values()
    )
    with sqlite3.connect(store.path) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.next_item(token, "browser-a")[1] == 1  # one sample done


def test_previous_gives_back_stored_answers(store: Store) -> None:
    token, first = entered(store)
    assert store.previous(token, "browser-a", first) is None  # nothing before the first sample
    store.submit(token, "browser-a", first, GOOD)
    second, *_ = store.next_item(token, "browser-a")
    assert store.previous(token, "browser-a", second) == (first, GOOD, 0)
    with pytest.raises(Refused, match="in use in another browser, so this page has ended"):
        store.previous(token, "browser-b", second)


def test_bad_submissions_are_refused_and_write_nothing(store: Store) -> None:
    token, item = entered(store)
    other, other_item = entered(store, "browser-b")
    foreign = next(i for i in store.defn.items if i not in order_of(store, token))
    (expired,) = store.invite(1, expires=time.time() - 60)
    before = dump(store.path)
    cases = [
        (
            (token, "browser-a", item, {**GOOD, "fidelity": 5.5}),
            "fidelity: score 5.5 is outside the scale 0 to 5",
        ),
        ((token, "browser-a", item, {**GOOD, "fidelity": -1}), "outside the scale"),
        ((token, "browser-a", item, {**GOOD, "fidelity": 3.3}), "not on the scale's steps of 0.5"),
        ((token, "browser-a", item, {**GOOD, "fidelity": "4"}), "is not a number"),
        ((token, "browser-a", item, {**GOOD, "loudness": 3.0}), "Unknown dimension 'loudness'"),
        ((token, "browser-a", item, {"fidelity": 3.0}), "missing: stability, naturalness"),
        ((token, "browser-a", "utt9@lpo", GOOD), "Unknown item 'utt9@lpo'"),
        ((token, "browser-a", foreign, GOOD), "not one of this rater's items"),
        ((other, "browser-a", other_item, GOOD), "in use in another browser"),
        (("no-such-token", "browser-a", item, GOOD), "Unknown invitation code"),
        ((expired, "browser-x", item, GOOD), "This invitation expired on"),
    ]
    for args, message in cases:
        with pytest.raises(Refused, match=message):
            store.submit(*args)
    with pytest.raises(Refused, match="An invitation code is required"):
        store.enter(None, "browser-c")
    with pytest.raises(Refused, match="This invitation expired"):
        store.enter(expired, "browser-c")
    with pytest.raises(Refused, match="in use in another browser"):  # a remembered token: no takeover
        store.enter(token, "browser-c")
    with pytest.raises(Unanswered) as missing:
        store.submit(token, "browser-a", item, {**GOOD, "stability": None, "naturalness": None})
    assert missing.value.missing == ["stability", "naturalness"]
    assert dump(store.path) == before


def test_invitation_follows_the_rater(store: Store) -> None:
    """The code itself moves a token to another browser and ends the old page; release frees it."""
    token, item = entered(store, "laptop")
    store.enter(token, "phone", takeover=True)
    with pytest.raises(Refused, match="this page has ended. Enter the invitation code"):
        store.submit(token, "laptop", item, GOOD)
    assert store.next_item(token, "phone")[0] == item  # same order, same place
    store.submit(token, "phone", item, GOOD)
    assert store.release(token) and not store.release("no-such-code")
    store.enter(token, "tablet")  # released: a remembered token may enter again
    assert store.next_item(token, "tablet")[1] == 1


def test_rating_needs_a_full_listen(store: Store) -> None:
    """The gate: no play, an end without a play, skipping or fast playback leave the sample unrated."""
    (token,) = store.invite(1, expires=None)
    store.enter(token, "b")
    item, *_ = store.next_item(token, "b")
    duration = store.defn.items[item].duration
    assert 1.9 < duration <= 2.0
    before = dump(store.path)
    with pytest.raises(Refused, match=r"Listen to the whole sample at normal speed .*heard 0.0 s of 2.0 s"):
        store.submit(token, "b", item, GOOD)  # plays = 0
    with pytest.raises(Refused, match="ended without being played"):  # /heard without /play
        store.heard(token, "b", item)
    assert store.play(token, "b", item) == 1
    store.clock.advance(0.06)  # seeked to 97% and played the rest
    assert store.heard(token, "b", item) == (False, pytest.approx(0.06))
    store.clock.advance(5)  # time passing while paused is not listening
    with pytest.raises(Refused, match=r"heard 0.1 s of 2.0 s"):
        store.submit(token, "b", item, GOOD)
    assert store.play(token, "b", item) == 2
    store.clock.advance(duration / 2)  # 2x speed: the end comes after half the time
    assert store.heard(token, "b", item)[0] is False
    with pytest.raises(Refused, match="Listen to the whole sample at normal speed"):
        store.submit(token, "b", item, GOOD)
    assert store.ratings() == []
    store.play(token, "b", item)  # paused half-way, resumed: both spans count
    store.clock.advance(0.4)
    so_far = 0.06 + duration / 2 + 0.4
    assert store.pause(token, "b", item) == pytest.approx(so_far)
    store.clock.advance(3)
    store.play(token, "b", item)
    store.clock.advance(duration - so_far - 0.2)  # within the tolerance for event latency
    assert store.heard(token, "b", item)[0] is True
    store.submit(token, "b", item, GOOD)
    rows = store.ratings()
    assert {(r["plays"], r["heard"]) for r in rows} == {(4, 1)}
    assert all(r["heard_s"] == pytest.approx(duration - 0.2) for r in rows)
    assert dump(store.path) != before


def test_orders_are_random_and_balanced(tmp_path: Path) -> None:
    defn = load_definition(make_test(tmp_path, n_utts=4, items_per_rater=8))
    store = Store(tmp_path / "r.sqlite", defn)
    orders = []
    for token in store.invite(12, expires=None):
        store.enter(token, f"browser-{token}")
        orders.append(order_of(store, token))
    totals = Counter()
    for order in orders:
        systems = Counter(defn.items[i].system for i in order if defn.items[i].system)
        assert max(systems.values()) - min(systems.values()) <= 1 and sum(systems.values()) == 8
        assert sorted(i for i in order if i.startswith("check:")) == ["check:anchor", "check:hidden_ref"]
        assert not order[0].startswith("check:")
        utts = Counter(defn.items[i].utterance for i in order if defn.items[i].system)
        assert max(utts.values()) == 2  # 8 samples over 4 utterances: each exactly twice
        totals.update(i for i in order if not i.startswith("check:"))
    assert len({tuple(o) for o in orders}) == len(orders)  # randomised per rater
    # across raters every (utterance, system) is given out equally often: 12 x 8 / 12 items
    assert set(totals.values()) == {8}


def test_open_test_gives_a_uuid(tmp_path: Path) -> None:
    store = Store(tmp_path / "r.sqlite", load_definition(make_test(tmp_path, invitations="open")))
    token = store.enter(None, "b")
    assert str(uuid.UUID(token)) == token and store.next_item(token, "b")[2] == 8


def test_database_of_another_test_is_refused(tmp_path: Path) -> None:
    defn = load_definition(make_test(tmp_path))
    with sqlite3.connect(tmp_path / "r.sqlite") as con:
        con.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        con.execute("INSERT INTO meta VALUES ('test', 'other_test')")
    with pytest.raises(Refused, match="holds ratings of test 'other_test', not 'test_mos'"):
        Store(tmp_path / "r.sqlite", defn)


def test_definition_that_dropped_given_items_is_refused(tmp_path: Path) -> None:
    path = make_test(tmp_path)
    store = Store(tmp_path / "r.sqlite", load_definition(path))
    store.enter(store.invite(1, expires=None)[0], "b")
    raw = yaml.safe_load(path.read_text())
    raw.update(systems=["original", "telephone"], items_per_rater=4)  # "noisy" items were handed out
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(Refused, match=r"raters were given items that .* no longer defines: \['.*@noisy'"):
        Store(tmp_path / "r.sqlite", load_definition(path))


def test_served_copies_hide_names_and_stay_in_the_test(tmp_path: Path) -> None:
    from speech_lpo.mos.app import AudioCopies

    defn = load_definition(make_test(tmp_path))
    served = AudioCopies(defn.root, "key")
    hidden = defn.items["check:hidden_ref"]
    assert hidden.audio == hidden.reference
    as_sample, as_reference = served(hidden.audio, "sample"), served(hidden.reference, "reference")
    assert as_sample != as_reference  # the hidden reference does not give itself away by its URL
    assert Path(as_sample).read_bytes() == hidden.audio.read_bytes()
    urls = [served(item.audio, "sample") for item in defn.system_items]
    assert len(set(urls)) == len(urls) and all(Path(u).name == "sample.wav" for u in urls)
    assert not any(s in u for u in urls for s in defn.systems + [tmp_path.name])
    assert AudioCopies(defn.root, "other key")(hidden.audio, "sample") != as_sample  # not guessable
    with pytest.raises(Refused, match="is outside the test directory"):
        served(tmp_path / "mos_test.yaml", "sample")


def test_refusals_through_the_panel(tmp_path: Path) -> None:
    """The served panel: out-of-scale score, unplayed sample, wrong admin token, files outside the test."""
    definition = make_test(tmp_path)
    db = tmp_path / "ratings.sqlite"
    store = Store(db, load_definition(definition))
    (token,) = store.invite(1, expires=None)
    (expired,) = store.invite(1, expires=time.time() - 60)
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    server = start_server(definition, db, port, tmp_path / "server.log")
    try:
        client = Client(url, download_files=False, verbose=False)
        fresh = {"token": None, "browser": "b"}
        out = client.predict(expired, fresh, api_name="/enter")
        assert "This invitation expired" in out[MESSAGE]
        out = client.predict("", fresh, api_name="/enter")
        assert "Please enter the invitation code" in out[MESSAGE]
        out = client.predict(token, fresh, api_name="/enter")
        assert "0 of 8 samples rated" in out[MESSAGE + 1]
        kept, page, sample = out[0], out[1], out[MESSAGE + 3]["url"]
        assert all(s not in sample for s in ("original", "telephone", "noisy", "@"))  # names hidden
        duration = store.defn.items[store.order(token, "b")[page["at"]]].duration

        def submit(*scores: float | None) -> str:
            return client.predict(kept, page, *scores, api_name="/submit")[MESSAGE]

        assert "heard 0.0 s of 2.0 s" in submit(4.0, 4.0, 4.0, 4.0)  # plays = 0
        assert "ended without being played" in client.predict(kept, page, api_name="/heard")[0]
        client.predict(kept, page, api_name="/play")
        assert "Part of the sample was skipped" in client.predict(kept, page, api_name="/heard")[0]
        assert "Listen to the whole sample at normal speed" in submit(4.0, 4.0, 4.0, 4.0)
        client.predict(kept, page, api_name="/play")
        time.sleep(duration / 2)  # as if played at 2x
        assert "Part of the sample was skipped" in client.predict(kept, page, api_name="/heard")[0]
        assert "Listen to the whole sample at normal speed" in submit(4.0, 4.0, 4.0, 4.0)
        assert store.ratings() == []
        client.predict(kept, page, api_name="/play")
        time.sleep(duration)
        assert client.predict(kept, page, api_name="/heard")[0] == ""
        assert "fidelity: score 7.0 is outside the scale 0 to 5" in submit(7.0, 4.0, 4.0, 4.0)
        out = client.predict(kept, page, 4.0, None, 4.0, 4.0, api_name="/submit")
        assert "Please answer “Stability”." in out
        other = Client(url, download_files=False, verbose=False)
        out = other.predict("", {"token": token, "browser": "another"}, api_name="/enter")
        assert "in use in another browser" in out[MESSAGE]
        assert store.ratings() == []

        http = httpx.Client(base_url=url, timeout=30)
        assert http.get(sample).status_code == 200
        real_name = next((tmp_path / "audio" / "noisy").glob("*.wav"))
        for path in [definition, real_name, db, Path("/etc/passwd")]:  # only the neutral copies are served
            assert http.get(f"gradio_api/file={path}").status_code == 403
        assert http.get("admin").status_code == 403
        assert http.get("admin/ratings.csv", params={"token": "wrong"}).status_code == 403
        admin = store.secret("admin_token")
        page = http.get("admin", params={"token": admin})
        assert page.status_code == 200 and "0 / 8" in page.text and "2 raters, 0 finished" in page.text
        assert "release" in page.text
        assert http.post("admin/release", params={"token": "wrong"}, data={"rater": token}).status_code == 403
        released = http.post("admin/release", params={"token": admin}, data={"rater": token})
        assert released.status_code == 303  # back to the admin page
        store.enter(token, "another")  # a remembered token may enter again once released
        csv = http.get("admin/ratings.csv", params={"token": admin}).text
        assert csv.splitlines() == [
            "system,utterance,check,rater,item,dimension,score,plays,heard,heard_s,shown,first_submitted,updated,revisions"
        ]
    finally:
        stop_server(server)
