"""Time: an unsynchronised clock is detected and its readings flagged; clock steps never produce negative
or overlapping intervals."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from drivers import Quantity, Reading
from gateway.clock import UNSYNCHRONISED_REASON, ClockState, clock_state
from gateway.daemon import Gateway
from local_store import SourceSettings, open_store
from tests.conftest import wait_until
from tests.gateway.conftest import fast_demo

NOW = 1_795_000_000.0


def _timedatectl(tmp_path: Path, answer: str, status: int = 0) -> str:
    """A stand-in for timedatectl: the container has no systemd-timedated to ask."""
    script = tmp_path / "timedatectl"
    script.write_text(f"#!/bin/sh\n[ \"$*\" = \"show -p NTPSynchronized --value\" ] || exit 64\necho {answer}\n"
                      f"exit {status}\n")
    os.chmod(script, 0o755)
    return str(script)


def test_clock_sources_in_order(tmp_path: Path) -> None:
    missing, no_flag = str(tmp_path / "no-such-timedatectl"), tmp_path / "no-flag"
    assert clock_state(now=0.0) == ClockState(False, "wall-clock",
                                              "the clock says 1970-01-01 00:00 UTC, before this software existed")
    assert clock_state(NOW, _timedatectl(tmp_path, "no")) == ClockState(False, "timedatectl",
                                                                        "timedatectl: NTPSynchronized=no")
    assert clock_state(NOW, _timedatectl(tmp_path, "yes")).synchronized is True
    # timedatectl without a running systemd fails: the timesyncd flag file answers next.
    flag = tmp_path / "synchronized"
    flag.touch()
    assert clock_state(NOW, _timedatectl(tmp_path, "", status=1), flag) == ClockState(True, "timesyncd",
                                                                                      f"{flag} exists")
    assert clock_state(NOW, missing, no_flag, use_adjtimex=False) == ClockState(
        None, "none", "no source could tell (no timedated, no timesyncd flag, adjtimex not allowed)")
    kernel = clock_state(NOW, missing, no_flag)      # the real kernel's answer, whatever it is here
    assert kernel.source in ("adjtimex", "none")


def test_readings_polled_while_unsynchronised_are_flagged_and_kept(tmp_path: Path) -> None:
    config = fast_demo(tmp_path / "data")
    state = {"now": ClockState(False, "timedatectl", "timedatectl: NTPSynchronized=no")}
    gw = Gateway(config, clock_probe=lambda: state["now"])
    gw.start()
    try:
        assert gw.store is not None
        db = gw.store.db

        def reasons() -> set[str]:
            return {r[0] for r in db.execute("SELECT DISTINCT reason FROM readings WHERE quality = 'ok'")}

        wait_until(lambda: UNSYNCHRONISED_REASON in reasons(), timeout_s=15, message="flagged readings")
        assert gw.health()["clock_synchronized"] is False
        state["now"] = ClockState(True, "timedatectl", "timedatectl: NTPSynchronized=yes")
        gw.check_clock()
        first_synced = db.execute("SELECT max(id) FROM readings").fetchone()[0]
        wait_until(lambda: db.execute("SELECT count(*) FROM readings WHERE id > ? AND reason = ''",
                                      (first_synced,)).fetchone()[0], timeout_s=15, message="unflagged readings")
        gw.process()
        statuses = {r[0] for r in db.execute("SELECT DISTINCT status FROM readings WHERE reason = ? AND "
                                             "quantity = 'energy_import'", (UNSYNCHRONISED_REASON,))}
        assert statuses <= {"measured", None}   # flagged, not thrown away; preprocessing keeps the reason
    finally:
        gw.stop()


@pytest.mark.parametrize("step_s", [-3600.0, -120.0, 86_400.0, 7 * 86_400.0])
def test_clock_steps_never_make_negative_or_overlapping_intervals(tmp_path: Path, step_s: float) -> None:
    """A meter's energy register read every 60 s; at reading 100 the system clock steps by ``step_s``."""
    start = 1_790_000_000.0
    readings, t, energy = [], start, 1000.0
    for i in range(300):
        if i == 100:
            t += step_s
        readings.append(Reading("m1", "energy_import", t, energy, "kWh", Quantity.ENERGY_IMPORT))
        t += 60.0
        energy += 0.5
    with open_store(tmp_path / "gateway.db") as store:
        store.configure_sources([SourceSettings(meter_id="m1", activity="electricity")])
        for i in range(0, len(readings), 20):            # stored as the daemon does, in batches, in order
            store.insert_readings(readings[i:i + 20])
        store.process(until=t + 3600)
        rows = store.db.execute("SELECT start_ts, end_ts, amount FROM intervals ORDER BY start_ts").fetchall()
    assert rows
    assert all(amount >= 0 for _, _, amount in rows), [r for r in rows if r[2] < 0]
    assert all(end > begin for begin, end, _ in rows)
    assert all(rows[i][1] <= rows[i + 1][0] for i in range(len(rows) - 1)), "overlapping intervals"
    # Energy is conserved across the step: the intervals hold exactly what the register advanced (MWh).
    assert sum(amount for _, _, amount in rows) == pytest.approx(299 * 0.5 / 1000)


class _Shift:
    """A wall clock that steps when the test says so; APScheduler and the scheduler both read it."""

    seconds = 0.0


def _stepped_datetime():  # type: ignore[no-untyped-def]
    from datetime import datetime, timedelta

    class SteppedDatetime(datetime):
        @classmethod
        def now(cls, tz=None):  # type: ignore[no-untyped-def, override]
            return datetime.now(tz) + timedelta(seconds=_Shift.seconds)

    return SteppedDatetime


@pytest.mark.parametrize("step_s", [-3600.0, 86_400.0])
def test_scheduled_jobs_keep_their_rhythm_when_the_wall_clock_steps(monkeypatch: pytest.MonkeyPatch,
                                                                    step_s: float) -> None:
    """A plain BackgroundScheduler stalls for the hour after the backward step; this one does not."""
    import time

    import apscheduler.executors.base
    import apscheduler.schedulers.base

    from gateway.scheduling import SteadyScheduler

    stepped = _stepped_datetime()
    monkeypatch.setattr(apscheduler.schedulers.base, "datetime", stepped)
    monkeypatch.setattr(apscheduler.executors.base, "datetime", stepped)
    monkeypatch.setattr(_Shift, "seconds", 0.0)
    runs: list[float] = []
    scheduler = SteadyScheduler(wall_clock=lambda: time.time() + _Shift.seconds,
                                job_defaults={"coalesce": True, "max_instances": 1})
    scheduler.add_job(lambda: runs.append(time.monotonic()), "interval", seconds=0.2, id="tick")
    scheduler.start()
    try:
        wait_until(lambda: len(runs) >= 3, timeout_s=10, message="runs before the step")
        _Shift.seconds = step_s
        stepped_at, before = time.monotonic(), len(runs)
        wait_until(lambda: len(runs) >= before + 5, timeout_s=5, message="runs after the step")
    finally:
        scheduler.shutdown(wait=True)
    after = [t for t in runs if t > stepped_at]
    gaps = [b - a for a, b in zip(after, after[1:])]
    assert gaps and all(0.1 < g < 0.6 for g in gaps), gaps    # neither stalled nor bursting
