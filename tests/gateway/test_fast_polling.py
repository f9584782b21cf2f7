"""100 ms polling through the real daemon (issue 17): every poll is stored, and polls the bus could not run on
time are counted (late, skipped) in ``MeterStats`` and ``/metrics`` rather than lost unseen.

The test is about accounting, not timing: on a loaded machine polls may run late or be skipped, and that is
allowed as long as the counters say so. What must hold exactly is that every poll that ran is stored, and
that polls + skipped polls cover the elapsed time on the meter's schedule.
"""

from __future__ import annotations

import math
import re
from dataclasses import replace
from pathlib import Path

from drivers import load_profiles
from gateway.daemon import Gateway
from gateway.metrics import render
from gateway.paths import PROFILES_DIR
from local_store import open_store
from tests.conftest import wait_until
from tests.gateway.conftest import fast_demo

INTERVAL_S = 0.1
POLLS = 30          # per meter: 3 s of polling at 0.1 s


def test_issue17_three_meters_at_100_ms_store_every_poll_and_count_late_and_skipped_ones(tmp_path: Path) -> None:
    config = fast_demo(tmp_path / "data")
    config = replace(config, meters=tuple(replace(m, poll_interval_s=INTERVAL_S) for m in config.meters))
    assert len(config.meters) == 3
    profiles = load_profiles(PROFILES_DIR)
    gateway = Gateway(config)
    gateway.start()
    try:
        poller = gateway.bus_poller("demo-bus")
        wait_until(lambda: all(s.polls >= POLLS for s in poller.stats().values()), timeout_s=60,
                   message=f"{POLLS} polls of each meter")
        metrics = render(gateway).splitlines()
    finally:
        gateway.stop()
    stats = poller.stats()     # final: the bus threads have stopped, and stop() stored what they read
    for meter in config.meters:
        for family in ("meter_polls_total", "meter_polls_late_total", "meter_polls_skipped_total"):
            sample = re.compile(rf'^carbon_gateway_{family}\{{meter="{meter.id}",bus="demo-bus"\}} [0-9]+$')
            assert any(sample.match(line) for line in metrics), (family, meter.id)
        assert f"# TYPE carbon_gateway_{family} counter" in metrics

    store = open_store(config.database)
    try:
        stored = store.readings_after(0, 1_000_000)
    finally:
        store.close()
    for meter in config.meters:
        s = stats[meter.id]
        assert (s.state, s.timeouts, s.exceptions) == ("ok", 0, 0), s
        points = len(profiles[meter.profile].points)
        mine = [r for r in stored if r.meter_id == meter.id]
        times = sorted({r.timestamp for r in mine})          # one timestamp per poll
        # Every poll that ran is stored, whole: readings = polls x points of the profile.
        assert len(times) == s.polls and len(mine) == s.polls * points, (meter.id, len(times), len(mine), s)
        # Polls + skipped polls cover the elapsed time on the schedule. The first poll starts the schedule; the
        # n-th slot after it is due at n x 0.1 s. A poll starts within half an interval of its slot unless it is
        # counted late, and then within one interval (beyond that the slot counts as skipped); its timestamp
        # is taken after the read (the first poll also connects; a slow read makes the next poll late or skip
        # slots, so it shows in the counters; the last read's latency is latency_ms). So (last - first) / 0.1
        # + 1 slots, give or take 1 (rounding) + late + skipped polls + the last read's latency in intervals.
        slots = (times[-1] - times[0]) / INTERVAL_S + 1
        tolerance = 1 + s.late_polls + s.skipped_polls + math.ceil((s.latency_ms or 0) / 1000 / INTERVAL_S)
        assert abs(slots - (s.polls + s.skipped_polls)) <= tolerance, (meter.id, slots, s)
