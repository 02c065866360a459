"""Ratings store: one SQLite file in WAL mode (DESIGN.md, Real components and defaults).

One row per (rater, item, dimension) in ``ratings``; a rating changed later is updated in place (its
``revisions`` count goes up), never duplicated. Every call that writes is one ``BEGIN IMMEDIATE``
transaction that either validates and commits everything or writes nothing, so a submission the
panel acknowledged is on disk even if the server is killed the next moment.

A rater is identified by a token: an invitation made with ``mos invite``, or a UUID the server
issues when the test is open. The first browser that enters with a token owns it; another browser
presenting the same token is refused.
"""

from __future__ import annotations

import csv
import io
import json
import secrets
import sqlite3
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from speech_lpo.mos.definition import Definition
from speech_lpo.mos.order import assign_items

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS raters (
    token TEXT PRIMARY KEY,
    kind TEXT NOT NULL,              -- 'invitation' or 'uuid'
    created REAL NOT NULL,
    expires REAL,                    -- unix time; NULL: never
    browser TEXT,                    -- the browser that owns the token, set on first entry
    rater_index INTEGER,             -- order of first entry; rotates the system balance
    items TEXT                       -- JSON list of item ids in the order this rater hears them
);
CREATE TABLE IF NOT EXISTS plays (
    rater TEXT NOT NULL,
    item TEXT NOT NULL,
    shown REAL NOT NULL,
    first_play REAL,
    plays INTEGER NOT NULL DEFAULT 0,  -- playbacks started
    heard INTEGER NOT NULL DEFAULT 0,  -- playbacks that reached the end
    PRIMARY KEY (rater, item)
);
CREATE TABLE IF NOT EXISTS ratings (
    rater TEXT NOT NULL,
    item TEXT NOT NULL,
    dimension TEXT NOT NULL,
    score REAL NOT NULL,
    plays INTEGER NOT NULL,          -- plays of the item when this score was (last) submitted
    heard INTEGER NOT NULL,          -- ... and how many of them reached the end
    shown REAL NOT NULL,
    first_submitted REAL NOT NULL,
    updated REAL NOT NULL,
    revisions INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (rater, item, dimension)
);
"""
RATING_COLUMNS = [
    "rater",
    "item",
    "dimension",
    "score",
    "plays",
    "heard",
    "shown",
    "first_submitted",
    "updated",
    "revisions",
]


class Refused(Exception):
    """A request the store turns down; the message is meant for the rater or the client."""


def _date(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


class Store:
    def __init__(self, path: str | Path, defn: Definition):
        self.path = Path(path)
        self.defn = defn
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)
            db.execute("INSERT OR IGNORE INTO meta VALUES ('test', ?)", (defn.name,))
            (name,) = db.execute("SELECT value FROM meta WHERE key = 'test'").fetchone()
            assigned = {
                i
                for (js,) in db.execute("SELECT items FROM raters WHERE items IS NOT NULL")
                for i in json.loads(js)
            }
        finally:
            db.close()
        if name != defn.name:
            raise Refused(f"{self.path} holds ratings of test {name!r}, not {defn.name!r} ({defn.path})")
        gone = sorted(assigned - set(defn.items))
        if gone:
            raise Refused(
                f"{self.path}: raters were given items that {defn.path} no longer defines: {gone[:5]}"
            )

    def _connection(self) -> sqlite3.Connection:
        """This thread's connection (the panel calls from many threads). Connections stay open: closing
        the last one checkpoints and deletes the WAL, which costs more than the transaction."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            db.execute("PRAGMA synchronous=FULL")  # an acknowledged rating survives power loss too
        return db

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: everything in it is committed, or nothing."""
        db = self._connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def secret(self, key: str) -> str:
        """A random value made once per database (admin token, browser-state key)."""
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO meta VALUES (?, ?)", (key, secrets.token_urlsafe(18)))
            return db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0]

    def invite(self, n: int, expires: float | None) -> list[str]:
        tokens = [secrets.token_urlsafe(9) for _ in range(n)]
        with self._tx() as db:
            db.executemany(
                "INSERT INTO raters (token, kind, created, expires) VALUES (?, 'invitation', ?, ?)",
                [(t, time.time(), expires) for t in tokens],
            )
        return tokens

    def _rater(self, db: sqlite3.Connection, token: str, browser: str) -> tuple[int | None, list[str] | None]:
        """Check that ``browser`` may act as rater ``token``; return (rater_index, items)."""
        row = db.execute(
            "SELECT expires, browser, rater_index, items FROM raters WHERE token = ?", (token,)
        ).fetchone()
        if row is None:
            raise Refused("Unknown invitation code. Check the link you were sent.")
        expires, owner, index, items = row
        if expires is not None and expires < time.time():
            raise Refused(f"This invitation expired on {_date(expires)}.")
        if owner is not None and owner != browser:
            raise Refused("This invitation is already in use in another browser.")
        return index, None if items is None else json.loads(items)

    def enter(self, token: str | None, browser: str) -> str:
        """Let a browser in; returns the rater token (a new UUID when the test is open and none is given)."""
        if not browser:
            raise Refused("Missing browser id.")
        with self._tx() as db:
            if not token:
                if self.defn.invitations != "open":
                    raise Refused("An invitation code is required to take part in this test.")
                token = str(uuid.uuid4())
                db.execute(
                    "INSERT INTO raters (token, kind, created) VALUES (?, 'uuid', ?)", (token, time.time())
                )
            index, items = self._rater(db, token, browser)
            if items is None:
                index = db.execute("SELECT COUNT(*) FROM raters WHERE items IS NOT NULL").fetchone()[0]
                taken = Counter(
                    item
                    for (js,) in db.execute("SELECT items FROM raters WHERE items IS NOT NULL")
                    for item in json.loads(js)
                )
                # the order is stored, so it needs no reproducible seed
                items = assign_items(self.defn, secrets.randbits(32), index, taken)
            db.execute(
                "UPDATE raters SET browser = ?, rater_index = ?, items = ? WHERE token = ?",
                (browser, index, json.dumps(items), token),
            )
        return token

    def next_item(self, token: str, browser: str) -> tuple[str | None, int, int, int]:
        """(first unrated item or None when finished, items done, items in total, its full plays so far).

        Records when the item was first shown.
        """
        n_dims = len(self.defn.dimensions)
        with self._tx() as db:
            _, items = self._rater(db, token, browser)
            if items is None:
                raise Refused("Enter the test first.")
            done = {
                item
                for (item,) in db.execute(
                    "SELECT item FROM ratings WHERE rater = ? GROUP BY item HAVING COUNT(*) = ?",
                    (token, n_dims),
                )
            }
            todo = [item for item in items if item not in done]
            if not todo:
                return None, len(items), len(items), 0
            db.execute(
                "INSERT OR IGNORE INTO plays (rater, item, shown) VALUES (?, ?, ?)",
                (token, todo[0], time.time()),
            )
            (heard,) = db.execute(
                "SELECT heard FROM plays WHERE rater = ? AND item = ?", (token, todo[0])
            ).fetchone()
            return todo[0], len(items) - len(todo), len(items), heard

    def _assigned(self, db: sqlite3.Connection, token: str, browser: str, item: str) -> None:
        _, items = self._rater(db, token, browser)
        if item not in self.defn.items:
            raise Refused(f"Unknown item {item!r}.")
        if items is None or item not in items:
            raise Refused(f"Item {item!r} is not one of this rater's items.")

    def previous(self, token: str, browser: str, item: str | None) -> tuple[str, dict[str, float]] | None:
        """The rated sample before ``item`` (the last one when ``item`` is None) and its stored answers,
        so that a rater can go back and change them; None before the first sample."""
        with self._tx() as db:
            _, items = self._rater(db, token, browser)
            if items is None:
                raise Refused("Enter the test first.")
            at = len(items) if item is None else items.index(item)
            if at == 0:
                return None
            answers = dict(
                db.execute(
                    "SELECT dimension, score FROM ratings WHERE rater = ? AND item = ?",
                    (token, items[at - 1]),
                )
            )
            return items[at - 1], answers

    def play(self, token: str, browser: str, item: str, to_end: bool = False) -> int:
        """Count a playback of ``item`` starting, or (``to_end``) reaching its end; returns that count."""
        now = time.time()
        column = "heard" if to_end else "plays"
        with self._tx() as db:
            self._assigned(db, token, browser, item)
            db.execute(
                f"INSERT INTO plays (rater, item, shown, first_play, {column}) VALUES (?, ?, ?, ?, 1) "
                f"ON CONFLICT (rater, item) DO UPDATE SET {column} = {column} + 1, "
                "first_play = COALESCE(first_play, ?)",
                (token, item, now, now, now),
            )
            return db.execute(
                f"SELECT {column} FROM plays WHERE rater = ? AND item = ?", (token, item)
            ).fetchone()[0]

    def submit(self, token: str, browser: str, item: str, scores: dict[str, float]) -> None:
        """Store one answer per dimension for ``item``, all or nothing."""
        dims = self.defn.dimension_names()
        unknown = sorted(set(scores) - set(dims))
        if unknown:
            raise Refused(f"Unknown dimension {unknown[0]!r} (this test rates {', '.join(dims)}).")
        missing = [d for d in dims if scores.get(d) is None]
        if missing:
            raise Refused(f"Please answer every question; missing: {', '.join(missing)}.")
        for d in dims:
            problem = self.defn.scale.problem(scores[d])
            if problem:
                raise Refused(f"{d}: {problem}.")
        now = time.time()
        with self._tx() as db:
            self._assigned(db, token, browser, item)
            row = db.execute(
                "SELECT shown, plays, heard FROM plays WHERE rater = ? AND item = ?", (token, item)
            ).fetchone()
            if row is None or row[2] == 0:
                raise Refused("Listen to the whole sample before rating it.")
            shown, plays, heard = row
            db.executemany(
                "INSERT INTO ratings (rater, item, dimension, score, plays, heard, shown, first_submitted, "
                "updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (rater, item, dimension) DO UPDATE "
                "SET score = excluded.score, plays = excluded.plays, heard = excluded.heard, "
                "updated = excluded.updated, revisions = revisions + 1",
                [(token, item, d, float(scores[d]), plays, heard, shown, now, now) for d in dims],
            )

    def ratings(self) -> list[dict]:
        rows = self._connection().execute(
            f"SELECT {', '.join(RATING_COLUMNS)} FROM ratings ORDER BY rater, item, dimension"
        )
        return [dict(zip(RATING_COLUMNS, row, strict=True)) for row in rows]

    def ratings_csv(self) -> str:
        """Every rating with its system, utterance and attention-check kind (from the definition)."""
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["system", "utterance", "check", *RATING_COLUMNS])
        for row in self.ratings():
            item = self.defn.items.get(row["item"])
            labels = (item.system, item.utterance, item.expect) if item else (None, None, None)
            writer.writerow([x or "" for x in labels] + [row[c] for c in RATING_COLUMNS])
        return out.getvalue()

    def progress(self) -> list[dict]:
        """One entry per rater: kind, items assigned and done, last submission (for the admin page)."""
        n_dims = len(self.defn.dimensions)
        db = self._connection()
        done = dict(
            db.execute(
                "SELECT rater, COUNT(*) FROM (SELECT rater FROM ratings GROUP BY rater, item "
                "HAVING COUNT(*) = ?) GROUP BY rater",
                (n_dims,),
            )
        )
        last = dict(db.execute("SELECT rater, MAX(updated) FROM ratings GROUP BY rater"))
        out = []
        for token, kind, created, expires, items in db.execute(
            "SELECT token, kind, created, expires, items FROM raters ORDER BY created"
        ):
            out.append(
                {
                    "rater": token,
                    "kind": kind,
                    "created": _date(created),
                    "expires": _date(expires) if expires else "",
                    "total": len(json.loads(items)) if items else 0,
                    "done": done.get(token, 0),
                    "last": _date(last[token]) if token in last else "",
                }
            )
        return out
