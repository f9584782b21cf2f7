"""The raw readings store, written for flash: one row per poll of a meter (issue 17).

A poll of a meter is one row of ``polls``: its values packed as one JSON array (``vals``, ``null`` where a
reading is invalid), the meter and its point layout as an integer series id, the poll's time, and the
quality and reason of the few readings that are not plainly ok (``bad``, NULL when all are). The row id is
the id of the poll's first reading; its readings are ``id .. id + n - 1``, so reading ids stay what sync,
pruning and the outbox count by: they only grow and are never reused.

One index, ``polls_time (timestamp, series)``, serves the writer (it only appends: polls arrive in time
order), preprocessing and reports (a time window, filtered by series) and the rest go by row id (sync:
``id > cursor``). The three per-series indexes of the one-row-per-value table each dirtied one page per
series at every commit, 6.6 KB written per reading; see docs/performance.md for the figures.

Preprocessing status is sparse: ``reading_status`` holds only processed readings that are not plainly
measured (estimated, invalid); ``processed_points`` says up to which reading id each meter point was
processed. The ``readings`` view shows the one-row-per-reading picture (with ``status`` and ``flags``) for
reading by hand, tests and tools; code in the hot path uses the functions here.
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import sqlite_utils

from drivers.model import Quantity, Reading

#: Timestamps before 2000-01-01 cannot be placed in time (an RTC that lost power).
PLAUSIBLE_FROM = 946_684_800.0

SCHEMA = """
CREATE TABLE series (
    id INTEGER PRIMARY KEY,
    meter_id TEXT NOT NULL,
    n INTEGER NOT NULL,                        -- values per poll
    layout TEXT NOT NULL,                      -- JSON [[point, unit, quantity], ...] in the poll's value order
    UNIQUE (meter_id, layout)
);
CREATE TABLE series_latest (                   -- small rows, so a commit rewrites one page, not one per series
    series INTEGER PRIMARY KEY,
    last_id INTEGER NOT NULL,                  -- its newest poll by time (the dashboard's latest values)
    last_ts REAL NOT NULL
);
CREATE TABLE series_points (
    series INTEGER NOT NULL, idx INTEGER NOT NULL, point TEXT NOT NULL, unit TEXT NOT NULL, quantity TEXT NOT NULL,
    PRIMARY KEY (series, idx)
) WITHOUT ROWID;
CREATE INDEX series_points_point ON series_points(point, series);
CREATE TABLE polls (
    id INTEGER PRIMARY KEY,                    -- its first reading's id; its readings are id .. id + n - 1
    series INTEGER NOT NULL,
    timestamp REAL NOT NULL,                   -- UTC epoch seconds
    n INTEGER NOT NULL,
    vals TEXT NOT NULL,                        -- JSON array of the values, null where invalid
    bad TEXT,                                  -- JSON {"index": [quality, reason]}; NULL: every reading ok
    origin TEXT                                -- NULL: poll; import:<file>
);
CREATE INDEX polls_time ON polls(timestamp, series);
CREATE TABLE reading_status (                  -- only processed readings that are not plainly measured
    id INTEGER PRIMARY KEY, status TEXT NOT NULL, flags INTEGER NOT NULL
);
CREATE TABLE processed_points (
    meter_id TEXT NOT NULL, point TEXT NOT NULL, through_id INTEGER NOT NULL,
    PRIMARY KEY (meter_id, point)
) WITHOUT ROWID;
CREATE VIEW readings AS
SELECT p.id + j.key AS id, s.meter_id AS meter_id, sp.point AS point, p.timestamp AS timestamp, j.value AS value,
       sp.unit AS unit, sp.quantity AS quantity,
       COALESCE(json_extract(p.bad, '$."' || j.key || '"[0]'), 'ok') AS quality,
       COALESCE(json_extract(p.bad, '$."' || j.key || '"[1]'), '') AS reason,
       COALESCE(p.origin, 'poll') AS origin,
       COALESCE(rs.status, CASE WHEN pp.through_id >= p.id + j.key THEN 'measured' END) AS status,
       COALESCE(rs.flags, 0) AS flags
FROM polls p JOIN series s ON s.id = p.series JOIN json_each(p.vals) j
     JOIN series_points sp ON sp.series = p.series AND sp.idx = j.key
     LEFT JOIN reading_status rs ON rs.id = p.id + j.key
     LEFT JOIN processed_points pp ON pp.meter_id = s.meter_id AND pp.point = sp.point;
"""


@dataclass(frozen=True)
class Poll:
    """Readings of one meter at one time, as they are stored together."""

    meter_id: str
    timestamp: float
    layout: tuple[tuple[str, str, str], ...]   # (point, unit, quantity) per value
    values: list[float | None]
    bad: dict[str, list[str]]                  # index -> [quality, reason], readings not plainly ok


def group_polls(readings: Sequence[Reading]) -> list[Poll]:
    """Readings in arrival order -> polls: consecutive readings of one meter at one time (a point seen twice
    starts a new poll). Invalid values (non-finite, or quality not ok) are stored as null with a reason."""
    polls: list[Poll] = []
    meter, ts = None, None
    layout: list[tuple[str, str, str]] = []
    values: list[float | None] = []
    bad: dict[str, list[str]] = {}
    seen: set[str] = set()

    def close() -> None:
        if layout:
            polls.append(Poll(str(meter), float(ts), tuple(layout), values, bad))  # type: ignore[arg-type]

    for r in readings:
        t = float(r.timestamp)
        if r.meter_id != meter or t != ts or r.point in seen:
            close()
            meter, ts, layout, values, bad, seen = r.meter_id, t, [], [], {}, set()
        value = r.value if r.quality == "ok" and r.value is not None and math.isfinite(r.value) else None
        quality = r.quality if value is not None else "invalid"
        reason = r.reason or ("" if value is not None or r.quality == "invalid" else "value is not a finite number")
        quantity = r.quantity.value if isinstance(r.quantity, Quantity) else str(r.quantity)
        if quality != "ok" or reason:
            bad[str(len(values))] = [quality, reason]
        layout.append((r.point, r.unit, quantity))
        values.append(None if value is None else float(value))
        seen.add(r.point)
    close()
    return polls


class SeriesCache:
    """Series ids by (meter, layout), remembered per store file (a series row is never changed)."""

    def __init__(self) -> None:
        self._ids: dict[tuple[str, tuple[tuple[str, str, str], ...]], int] = {}

    def series_id(self, db: sqlite_utils.Database, meter_id: str, layout: tuple[tuple[str, str, str], ...]) -> int:
        key = (meter_id, layout)
        found = self._ids.get(key)
        if found is not None:
            return found
        blob = json.dumps([list(p) for p in layout], separators=(",", ":"))
        row = db.execute("SELECT id FROM series WHERE meter_id = ? AND layout = ?", (meter_id, blob)).fetchone()
        if row is None:
            cur = db.execute("INSERT INTO series (meter_id, n, layout) VALUES (?, ?, ?)", (meter_id, len(layout), blob))
            sid = int(cur.lastrowid or 0)
            db.conn.executemany("INSERT INTO series_points (series, idx, point, unit, quantity) VALUES (?,?,?,?,?)",
                                [(sid, i, p, u, q) for i, (p, u, q) in enumerate(layout)])
        else:
            sid = int(row[0])
        self._ids[key] = sid
        return sid

    def forget(self) -> None:
        """After a rollback the ids handed out in it may not exist: look them up again."""
        self._ids.clear()


def next_reading_id(db: sqlite_utils.Database) -> int:
    """The id the next stored reading gets: after the newest poll, and never below the floor a migration
    or a full prune left (ids are never reused)."""
    row = db.execute("SELECT id + n FROM polls ORDER BY id DESC LIMIT 1").fetchone()
    floor = db.execute("SELECT value FROM store_meta WHERE key = 'next_reading_id'").fetchone()
    return max(int(row[0]) if row else 1, int(floor[0]) if floor else 1)


def _json_values(values: Sequence[float | None]) -> str:
    """``json.dumps`` of finite floats and None, 3x faster: ``repr`` is what json writes for a float."""
    return "[" + ",".join("null" if v is None else repr(v) for v in values) + "]"


def insert_polls(db: sqlite_utils.Database, cache: SeriesCache, polls: Sequence[Poll], origin: str | None,
                 ids: list[int] | None = None) -> int:
    """Append polls (inside the caller's write transaction); returns the number of readings stored.

    :param ids: filled with each poll's id (its first reading's), in order.
    """
    if not polls:
        return 0
    next_id = next_reading_id(db)
    rows = []
    newest: dict[int, tuple[float, int]] = {}
    count = 0
    for p in polls:
        sid = cache.series_id(db, p.meter_id, p.layout)
        n = len(p.values)
        rows.append((next_id, sid, p.timestamp, n, _json_values(p.values),
                     json.dumps(p.bad, separators=(",", ":")) if p.bad else None, origin))
        if p.timestamp >= newest.get(sid, (-math.inf, 0))[0]:
            newest[sid] = (p.timestamp, next_id)
        if ids is not None:
            ids.append(next_id)
        next_id += n
        count += n
    db.conn.executemany("INSERT INTO polls (id, series, timestamp, n, vals, bad, origin) VALUES (?,?,?,?,?,?,?)", rows)
    db.conn.executemany("INSERT INTO series_latest (series, last_id, last_ts) VALUES (?, ?, ?) ON CONFLICT (series)"
                        " DO UPDATE SET last_id = excluded.last_id, last_ts = excluded.last_ts"
                        " WHERE excluded.last_ts >= series_latest.last_ts",
                        [(sid, pid, ts) for sid, (ts, pid) in newest.items()])
    return count


class RecentPolls:
    """The polls this process stored last, kept as they were built, so sync seals a batch from them instead
    of reading the rows back from SQLite (issue 17: re-reading was 18 % of the CPU per reading).

    Only committed polls are added; :meth:`rows` answers only when the polls it holds run without a gap
    from the asked id to the newest id in the file (another process's import, a restore or a rollback in
    between: the caller reads SQLite as before).
    """

    def __init__(self, max_readings: int = 200_000) -> None:
        self._polls: deque[tuple[int, Poll, str | None]] = deque()
        self._readings = 0
        self._max = max_readings
        self._lock = threading.Lock()

    def add(self, ids: Sequence[int], polls: Sequence[Poll], origin: str | None) -> None:
        with self._lock:
            if self._polls and ids and ids[0] != self._polls[-1][0] + len(self._polls[-1][1].values):
                self._polls.clear()            # not contiguous with what is held: start again
                self._readings = 0
            for pid, poll in zip(ids, polls):
                self._polls.append((pid, poll, origin))
                self._readings += len(poll.values)
            while self._readings > self._max:
                _, old, _ = self._polls.popleft()
                self._readings -= len(old.values)

    def clear(self) -> None:
        with self._lock:
            self._polls.clear()
            self._readings = 0

    def rows(self, after_id: int, limit: int, last_id: int) -> list[tuple] | None:
        """Wire tuples of readings after ``after_id`` (at most ``limit``), or None when not held whole."""
        if after_id >= last_id:
            return []
        with self._lock:
            while self._polls and self._polls[0][0] + len(self._polls[0][1].values) - 1 <= after_id:
                _, old, _ = self._polls.popleft()          # already batched: never asked for again
                self._readings -= len(old.values)
            if not self._polls or self._polls[0][0] > after_id + 1:
                return None
            newest_id, newest, _ = self._polls[-1]
            if newest_id + len(newest.values) - 1 != last_id:
                return None
            out: list[tuple] = []
            for pid, poll, _origin in list(self._polls):
                for i, value in enumerate(poll.values):
                    rid = pid + i
                    if rid <= after_id:
                        continue
                    point, unit, quantity = poll.layout[i]
                    quality, reason = poll.bad.get(str(i), ("ok", ""))
                    out.append((rid, poll.meter_id, point, poll.timestamp, value, unit, quantity, quality, reason))
                    if len(out) >= limit:
                        return out
            return out


def meter_series(db: sqlite_utils.Database, meter_id: str, point: str) -> list[tuple[int, int]]:
    """(series id, index of the point) of every layout of the meter that has the point."""
    return [(int(r[0]), int(r[1])) for r in db.execute(
        "SELECT sp.series, sp.idx FROM series_points sp JOIN series s ON s.id = sp.series"
        " WHERE sp.point = ? AND s.meter_id = ?", (point, meter_id))]


def series_rows(db: sqlite_utils.Database, meter_id: str, point: str, where: str, params: tuple,
                columns: str = "p.id + ?idx, p.timestamp, json_extract(p.vals, '$[' || ?idx || ']')") -> list[tuple]:
    """Rows of one meter point from ``polls p`` matching ``where`` (over ``p.``), in reading id order.

    ``?idx`` in ``columns`` and ``where`` stands for the point's index in each layout.
    """
    out: list[tuple] = []
    layouts = meter_series(db, meter_id, point)
    for sid, idx in layouts:
        cols, cond = columns.replace("?idx", str(idx)), where.replace("?idx", str(idx))
        out.extend(db.execute(f"SELECT {cols} FROM polls p WHERE p.series = ? AND {cond}", (sid, *params)).fetchall())
    if len(layouts) > 1:
        out.sort(key=lambda r: r[0])
    return out


def status_between(db: sqlite_utils.Database, lo_id: int, hi_id: int) -> dict[int, tuple[str, int]]:
    """Stored non-measured statuses of reading ids in [lo_id, hi_id]."""
    return {int(r[0]): (r[1], int(r[2])) for r in db.execute(
        "SELECT id, status, flags FROM reading_status WHERE id BETWEEN ? AND ?", (int(lo_id), int(hi_id)))}


def poll_of(db: sqlite_utils.Database, reading_id: int) -> tuple | None:
    """(poll id, series, timestamp, n, vals, bad, origin) of the poll holding ``reading_id``."""
    row = db.execute("SELECT id, series, timestamp, n, vals, bad, origin FROM polls WHERE id <= ? ORDER BY id DESC"
                     " LIMIT 1", (int(reading_id),)).fetchone()
    if row is None or reading_id >= row[0] + row[3]:
        return None
    return tuple(row)


def layouts(db: sqlite_utils.Database, ids: set[int]) -> dict[int, tuple[str, list[tuple[str, str, str]]]]:
    """meter id and layout of these series."""
    if not ids:
        return {}
    rows = db.execute("SELECT id, meter_id, layout FROM series WHERE id IN (SELECT value FROM json_each(?))",
                      (json.dumps(sorted(ids)),)).fetchall()
    return {int(r[0]): (r[1], [tuple(x) for x in json.loads(r[2])]) for r in rows}  # type: ignore[misc]


def expand(db: sqlite_utils.Database, polls: Sequence[tuple], after_id: int = 0, limit: int | None = None,
           with_status: bool = False) -> list[tuple]:
    """Poll rows ``(id, series, timestamp, n, vals, bad, origin)`` -> reading tuples ``(id, meter_id, point,
    timestamp, value, unit, quantity, quality, reason)`` (+ ``status`` with ``with_status``), ids > ``after_id``."""
    meta = layouts(db, {int(p[1]) for p in polls})
    out: list[tuple] = []
    statuses: dict[int, tuple[str, int]] = {}
    processed: dict[tuple[str, str], int] = {}
    if with_status and polls:
        statuses = status_between(db, polls[0][0], polls[-1][0] + polls[-1][3])
        processed = {(r[0], r[1]): int(r[2]) for r in db.execute("SELECT meter_id, point, through_id FROM processed_points")}
    for pid, sid, ts, n, vals, bad, _origin in polls:
        meter_id, layout = meta[int(sid)]
        values = json.loads(vals)
        flags = json.loads(bad) if bad else {}
        for i in range(int(n)):
            rid = pid + i
            if rid <= after_id:
                continue
            point, unit, quantity = layout[i]
            quality, reason = flags.get(str(i), ("ok", ""))
            row: tuple = (rid, meter_id, point, ts, values[i], unit, quantity, quality, reason)
            if with_status:
                st = statuses.get(rid)
                status = st[0] if st else ("measured" if processed.get((meter_id, point), 0) >= rid else None)
                row = (*row, status)
            out.append(row)
            if limit is not None and len(out) >= limit:
                return out
    return out


def readings_after(db: sqlite_utils.Database, reading_id: int, limit: int, with_status: bool = False) -> list[tuple]:
    """Readings with id > ``reading_id`` in id order, at most ``limit``, as plain tuples."""
    first = poll_of(db, reading_id + 1) if reading_id > 0 else None
    start = first[0] if first else reading_id + 1
    out: list[tuple] = []
    while len(out) < limit:
        # Enough polls for ``limit`` readings: at least one reading per poll.
        polls = db.execute("SELECT id, series, timestamp, n, vals, bad, origin FROM polls WHERE id >= ? ORDER BY id"
                           " LIMIT ?", (start, min(limit - len(out), 100_000))).fetchall()
        if not polls:
            break
        out.extend(expand(db, polls, reading_id, limit - len(out), with_status))
        start = polls[-1][0] + 1
    return out


def reading_counts(db: sqlite_utils.Database, start: float, end: float) -> dict[str, int]:
    """Readings stamped in [start, end) by preprocessing status: measured, estimated, invalid, unprocessed."""
    counts = {"measured": 0, "estimated": 0, "invalid": 0, "unprocessed": 0}
    per_series = db.execute("SELECT series, COUNT(*) FROM polls WHERE timestamp >= ? AND timestamp < ? GROUP BY series",
                            (start, end)).fetchall()
    n = {int(r[0]): int(r[1]) for r in db.execute("SELECT id, n FROM series")}
    total = sum(n[sid] * k for sid, k in per_series)
    processed = 0
    for meter_id, point, through in db.execute("SELECT meter_id, point, through_id FROM processed_points").fetchall():
        for sid, idx in meter_series(db, meter_id, point):
            processed += db.execute("SELECT COUNT(*) FROM polls WHERE series = ? AND timestamp >= ? AND timestamp < ?"
                                    " AND id <= ?", (sid, start, end, through - idx)).fetchone()[0]
    flagged = 0
    for status, k in db.execute(
            "SELECT rs.status, COUNT(*) FROM reading_status rs JOIN polls p ON p.id = (SELECT MAX(id) FROM polls"
            " WHERE id <= rs.id) WHERE p.timestamp >= ? AND p.timestamp < ? AND rs.status != 'measured'"
            " GROUP BY rs.status", (start, end)):
        counts[status] = counts.get(status, 0) + int(k)
        flagged += int(k)
    counts["measured"] = processed - flagged
    counts["unprocessed"] = total - processed
    return counts


def highest_reading_id(conn: sqlite3.Connection) -> int:
    """The highest reading id a store file ever handed out (deleted ones included), packed or v0.1."""
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'polls'").fetchone():
        top = conn.execute("SELECT COALESCE(MAX(id + n - 1), 0) FROM polls").fetchone()[0]
        floor = conn.execute("SELECT value FROM store_meta WHERE key = 'next_reading_id'").fetchone()
        return max(int(top), int(floor[0]) - 1 if floor else 0)
    allocated = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM sqlite_sequence WHERE name = 'readings'").fetchone()[0]
    highest = conn.execute("SELECT COALESCE(MAX(id), 0) FROM readings").fetchone()[0]
    return max(int(allocated), int(highest))


def reading_count(conn: sqlite3.Connection) -> int:
    """Readings stored in a store file, packed or v0.1."""
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'polls'").fetchone():
        return int(conn.execute("SELECT COALESCE(SUM(n), 0) FROM polls").fetchone()[0])
    return int(conn.execute("SELECT COUNT(*) FROM readings").fetchone()[0])
