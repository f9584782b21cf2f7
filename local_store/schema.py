"""The store's schema: every migration of ``gateway.db``, in order, and the checks made before
migrating a file.

A migration is never edited once released: a change is a new migration at the end.
"""

from __future__ import annotations

import json
from pathlib import Path

import sqlite_utils
from sqlite_utils.migrations import Migrations

from local_store.emission_rows import HOURLY_GROUP, HOURLY_SELECT
from local_store.errors import SchemaError
from local_store.readings import SCHEMA, SeriesCache

migrations = Migrations("local_store")


@migrations()
def m001_initial(db: sqlite_utils.Database) -> None:
    db.executescript("""
    CREATE TABLE readings (
        id INTEGER PRIMARY KEY AUTOINCREMENT,      -- AUTOINCREMENT: ids never reused after pruning
        meter_id TEXT NOT NULL,
        point TEXT NOT NULL,
        timestamp REAL NOT NULL,                   -- UTC epoch seconds
        value REAL,                                -- NULL when quality = 'invalid'
        unit TEXT NOT NULL,
        quantity TEXT NOT NULL,
        quality TEXT NOT NULL DEFAULT 'ok',        -- from the driver: ok | invalid
        reason TEXT NOT NULL DEFAULT '',
        origin TEXT NOT NULL DEFAULT 'poll',       -- poll | import:<file>
        status TEXT,                               -- preprocessing: measured | estimated | invalid
        flags INTEGER NOT NULL DEFAULT 0           -- preprocessing reasons (preprocess.Reason bits)
    );
    CREATE INDEX readings_series_ts ON readings(meter_id, point, timestamp);
    CREATE INDEX readings_series_id ON readings(meter_id, point, id);
    CREATE TABLE latest_readings (
        meter_id TEXT NOT NULL, point TEXT NOT NULL, reading_id INTEGER NOT NULL,
        timestamp REAL NOT NULL, value REAL, unit TEXT NOT NULL, quantity TEXT NOT NULL,
        quality TEXT NOT NULL, reason TEXT NOT NULL,
        PRIMARY KEY (meter_id, point)
    );
    CREATE TABLE sources (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,                        -- meter | manual
        activity TEXT NOT NULL,
        meter_id TEXT, point TEXT, quantity TEXT,
        settings TEXT NOT NULL DEFAULT '{}',       -- JSON of SourceSettings
        description TEXT NOT NULL DEFAULT '',
        enabled INTEGER NOT NULL DEFAULT 1,
        processed_reading_id INTEGER NOT NULL DEFAULT 0,
        updated_at REAL NOT NULL
    );
    CREATE TABLE intervals (
        source_id TEXT NOT NULL,
        start_ts INTEGER NOT NULL,
        end_ts INTEGER NOT NULL,
        amount REAL NOT NULL,                      -- canonical unit of the activity
        unit TEXT NOT NULL,
        status TEXT NOT NULL,                      -- measured | estimated | invalid
        measured_fraction REAL NOT NULL,
        flags INTEGER NOT NULL DEFAULT 0,
        covered_s REAL NOT NULL,                   -- seconds between first and last reading inside
        complete INTEGER NOT NULL,                 -- 0 for the still-open interval
        PRIMARY KEY (source_id, start_ts)
    ) WITHOUT ROWID;
    CREATE TABLE activity_data (
        id INTEGER PRIMARY KEY,
        source_id TEXT NOT NULL, activity TEXT NOT NULL,
        start_ts INTEGER NOT NULL, end_ts INTEGER NOT NULL,
        amount REAL NOT NULL, unit TEXT NOT NULL,
        amount_original REAL NOT NULL, unit_original TEXT NOT NULL,
        origin TEXT NOT NULL, row INTEGER
    );
    CREATE TABLE factors (
        id TEXT NOT NULL, version INTEGER NOT NULL, valid_from TEXT NOT NULL, valid_to TEXT,
        activity TEXT NOT NULL, parameter TEXT NOT NULL, value REAL NOT NULL, unit TEXT NOT NULL,
        region TEXT NOT NULL, year INTEGER NOT NULL, source TEXT NOT NULL, file TEXT NOT NULL,
        priority INTEGER NOT NULL, first_loaded_at REAL NOT NULL,
        PRIMARY KEY (id, version, valid_from)
    );
    CREATE TABLE emissions (
        id INTEGER PRIMARY KEY,
        source_id TEXT NOT NULL, activity TEXT NOT NULL,
        origin TEXT NOT NULL,                      -- interval | activity
        start_ts INTEGER NOT NULL, end_ts INTEGER NOT NULL,
        amount REAL NOT NULL, unit TEXT NOT NULL, energy_gj REAL NOT NULL,
        co2_t REAL NOT NULL, ch4_t REAL NOT NULL, n2o_t REAL NOT NULL, co2e_t REAL NOT NULL,
        scope INTEGER NOT NULL, iso_category INTEGER NOT NULL,
        factor_id TEXT NOT NULL, factor_version INTEGER NOT NULL, factor_refs TEXT NOT NULL,
        gwp TEXT NOT NULL, region TEXT NOT NULL,
        status TEXT NOT NULL, measured_fraction REAL NOT NULL,
        calculated_at REAL NOT NULL,
        superseded_at REAL                         -- set when a factor change replaced this row
    );
    CREATE INDEX emissions_current ON emissions(start_ts, source_id) WHERE superseded_at IS NULL;
    CREATE INDEX emissions_source ON emissions(source_id, origin, start_ts);
    CREATE TABLE instruments (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,                        -- certificate | ppa | green_power
        source_id TEXT,                            -- NULL: all electricity of the site
        start_ts INTEGER NOT NULL, end_ts INTEGER NOT NULL,
        mwh REAL NOT NULL, factor_t_per_mwh REAL NOT NULL,
        reference TEXT NOT NULL DEFAULT ''
    );
    CREATE TABLE store_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """)



@migrations()
def m002_hourly_rollup(db: sqlite_utils.Database) -> None:
    """Hourly sums of current interval emissions, so a year's report reads 1/4 of the rows.

    Also a partial index on readings that are not plainly measured, for the report's reading counts.
    """
    db.executescript("""
    CREATE TABLE emissions_hourly (
        source_id TEXT NOT NULL, activity TEXT NOT NULL, unit TEXT NOT NULL, scope INTEGER NOT NULL,
        iso_category INTEGER NOT NULL, factor_refs TEXT NOT NULL, hour_ts INTEGER NOT NULL,
        amount REAL NOT NULL, energy_gj REAL NOT NULL, co2_t REAL NOT NULL, ch4_t REAL NOT NULL,
        n2o_t REAL NOT NULL, co2e_t REAL NOT NULL, amount_measured REAL NOT NULL,
        rows INTEGER NOT NULL, rows_estimated INTEGER NOT NULL, rows_invalid INTEGER NOT NULL,
        PRIMARY KEY (source_id, activity, factor_refs, hour_ts)
    );
    CREATE INDEX emissions_hourly_ts ON emissions_hourly(hour_ts);
    CREATE INDEX readings_flagged ON readings(meter_id, point, timestamp, status) WHERE status IS NOT 'measured';
    """)
    db.execute("INSERT INTO emissions_hourly" + HOURLY_SELECT + HOURLY_GROUP)


@migrations()
def m003_audit_log(db: sqlite_utils.Database) -> None:
    """The hash-chained audit log (``local_store/audit.py``); its head lives in ``store_meta``."""
    db.executescript("""
    CREATE TABLE audit_log (
        id INTEGER PRIMARY KEY,                    -- contiguous from 1: a gap means a deleted entry
        ts REAL NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL, target TEXT NOT NULL,
        detail TEXT NOT NULL,                      -- canonical JSON
        prev_hash TEXT NOT NULL, hash TEXT NOT NULL
    );
    CREATE INDEX audit_log_action ON audit_log(action);
    """)


@migrations()
def m004_web_users(db: sqlite_utils.Database) -> None:
    """Web UI users, server-side sessions and login throttling (``local_store/users.py``)."""
    db.executescript("""
    CREATE TABLE web_users (
        name TEXT PRIMARY KEY, password_hash TEXT NOT NULL,
        role TEXT NOT NULL CHECK (role IN ('admin', 'technician', 'viewer')),
        created_at REAL NOT NULL, password_changed_at REAL NOT NULL
    );
    CREATE TABLE web_sessions (
        id_hash TEXT PRIMARY KEY,                  -- SHA-256 of the cookie's random id, never the id itself
        user TEXT,                                 -- NULL before login (holds the CSRF token and language)
        data TEXT NOT NULL, created_at REAL NOT NULL, last_seen REAL NOT NULL
    );
    CREATE INDEX web_sessions_user ON web_sessions(user);
    CREATE TABLE web_login_failures (
        name TEXT PRIMARY KEY,                     -- per user name, known or not (no account enumeration)
        failures INTEGER NOT NULL, locked_until REAL NOT NULL
    );
    CREATE TABLE web_settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """)


@migrations()
def m005_sync_outbox(db: sqlite_utils.Database) -> None:
    """The sync outbox (sealed batches until acknowledged) and sync state (sequence, cursor, hash chain).

    ``sync/outbox.py`` created these itself before (``IF NOT EXISTS`` keeps stores that already have them).
    """
    db.executescript("""
    CREATE TABLE IF NOT EXISTS sync_outbox (
        seq INTEGER PRIMARY KEY,
        first_reading_id INTEGER NOT NULL,
        last_reading_id INTEGER NOT NULL,
        count INTEGER NOT NULL,
        message BLOB NOT NULL,
        created_at REAL NOT NULL,
        sent_at REAL,
        attempts INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE IF NOT EXISTS sync_state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """)


@migrations()
def m006_sync_stream(db: sqlite_utils.Database) -> None:
    """The sync stream each outbox batch was sealed in (issue 16; ``''`` is the first stream).

    ``sync/outbox.py`` added the column itself for a while: a store that has it already keeps it.
    """
    columns = {row[1] for row in db.execute("PRAGMA table_info(sync_outbox)").fetchall()}
    if "stream" not in columns:
        db.execute("ALTER TABLE sync_outbox ADD COLUMN stream TEXT NOT NULL DEFAULT ''")


@migrations()
def m007_packed_readings(db: sqlite_utils.Database) -> None:
    """Readings for flash (issue 17): one row per poll (``local_store/readings.py``) instead of one per value.

    The v0.1 ``readings`` rows move over with their ids: consecutive ids of one meter at one time and of one
    origin become one poll. Statuses other than plainly measured go to ``reading_status``; the highest
    processed id per point to ``processed_points``. The old table, its three indexes and
    ``latest_readings`` are dropped; a ``readings`` view shows the same columns.
    """
    db.executescript(SCHEMA.replace("CREATE VIEW readings", "CREATE VIEW readings_packed"))
    floor = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'readings'").fetchone()
    cache = SeriesCache()
    polls: list[tuple] = []
    status: list[tuple] = []
    processed: dict[tuple[str, str], int] = {}
    run: list[tuple] = []

    def flush_run() -> None:
        if not run:
            return
        first = run[0]
        layout = tuple((r[2], r[5], r[6]) for r in run)
        sid = cache.series_id(db, first[1], layout)
        bad = {str(i): [r[7], r[8]] for i, r in enumerate(run) if r[7] != "ok" or r[8]}
        polls.append((first[0], sid, first[3], len(run), json.dumps([r[4] for r in run], separators=(",", ":")),
                      json.dumps(bad, separators=(",", ":")) if bad else None,
                      None if first[9] == "poll" else first[9]))
        run.clear()

    last_id = 0
    for row in db.execute("SELECT id, meter_id, point, timestamp, value, unit, quantity, quality, reason, origin,"
                          " status, flags FROM readings ORDER BY id"):
        rid = row[0]
        if run and (rid != run[-1][0] + 1 or row[1] != run[0][1] or row[3] != run[0][3] or row[9] != run[0][9]
                    or any(r[2] == row[2] for r in run)):
            flush_run()
        run.append(row)
        if row[10] is not None:
            key = (row[1], row[2])
            processed[key] = max(processed.get(key, 0), rid)
            if row[10] != "measured" or row[11]:
                status.append((rid, row[10], row[11]))
        last_id = rid
        if len(polls) >= 50_000:
            db.conn.executemany("INSERT INTO polls (id, series, timestamp, n, vals, bad, origin) VALUES (?,?,?,?,?,?,?)",
                                polls)
            polls.clear()
    flush_run()
    db.conn.executemany("INSERT INTO polls (id, series, timestamp, n, vals, bad, origin) VALUES (?,?,?,?,?,?,?)", polls)
    db.conn.executemany("INSERT INTO reading_status (id, status, flags) VALUES (?, ?, ?)", status)
    db.conn.executemany("INSERT INTO processed_points (meter_id, point, through_id) VALUES (?, ?, ?)",
                        [(m, p, i) for (m, p), i in processed.items()])
    # The newest poll per series, for the dashboard.
    db.execute("INSERT INTO series_latest (series, last_id, last_ts) SELECT s.id, p.id, p.timestamp FROM series s"
               " JOIN polls p ON p.id = (SELECT id FROM polls WHERE series = s.id ORDER BY timestamp DESC, id DESC"
               " LIMIT 1)")
    # Ids are never reused: the next reading id is past every id v0.1 handed out (deleted ones too).
    next_id = max(int(floor[0]) if floor else 0, last_id) + 1
    db.execute("INSERT INTO store_meta (key, value) VALUES ('next_reading_id', ?) ON CONFLICT (key) DO UPDATE"
               " SET value = excluded.value", (str(next_id),))
    db.executescript("""
    DROP TABLE readings;
    DROP TABLE latest_readings;
    DROP VIEW readings_packed;
    """)
    db.executescript(SCHEMA[SCHEMA.index("CREATE VIEW readings"):])


def apply_migrations(db: sqlite_utils.Database, path: Path) -> None:
    """Apply the pending migrations (call inside a write transaction).

    :raises SchemaError: when the file has migrations this version does not know.
    """
    known = {m.name for m in migrations._migrations}
    unknown = {m.name for m in migrations.applied(db)} - known
    if unknown:
        raise SchemaError(f"{path}: schema has migrations this version does not know "
                          f"({', '.join(sorted(unknown))}): upgrade carbon-gateway, or restore a backup "
                          f"made by this version")
    migrations.apply(db)


def refuse_foreign(db: sqlite_utils.Database, path: Path) -> None:
    """A SQLite file with tables but none of our migrations belongs to another program: never migrate it."""
    foreign = sorted(t for t in db.table_names() if t != migrations.migrations_table)
    if foreign:
        raise SchemaError(f"{path}: a SQLite database of another program (tables {', '.join(foreign[:5])}), "
                          f"not a gateway store; nothing was changed: pass --data-dir pointing at the gateway's "
                          f"state directory, or move the file away")


def schema_version(db: sqlite_utils.Database) -> int:
    """Number of ``local_store`` migrations applied to this file."""
    return len(migrations.applied(db))
