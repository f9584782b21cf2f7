"""Polls keep their rhythm down to 100 ms, and late and skipped polls are counted (issue 17)."""

from __future__ import annotations

from pathlib import Path

from drivers import BusConfig, BusPoller, MeterConfig, SimulatedDevice, SimulatorServer, load_profiles

PROFILES = load_profiles(Path(__file__).resolve().parents[2] / "config" / "profiles")


def test_a_100_ms_meter_keeps_its_rhythm_and_counts_late_and_skipped_polls() -> None:
    server = SimulatorServer([SimulatedDevice(1, PROFILES["eastron-sdm120"])]).start()
    poller = BusPoller(BusConfig("t", "tcp", port=server.port, timeout_s=2.0),
                       [MeterConfig("m", "t", 1, "eastron-sdm120", 0.1)], PROFILES)
    try:
        # Times are the poll loop's monotonic clock, given by the test; the first poll sets the rhythm.
        assert poller.poll_due(0.0)                 # due 0.1 next
        assert poller.poll_due(0.1)                 # on time: due 0.2
        assert poller.poll_due(0.27)                # 0.07 s after 0.2: more than half an interval, late; due 0.3
        assert poller.poll_due(0.55)                # 0.25 s after 0.3: late, and the 0.4 and 0.5 slots skipped
        assert poller.poll_due(0.58) == []          # next due at 0.3 + 3 x 0.1 = 0.6, not before
        assert 0.019 < poller.next_due_in(0.58) < 0.021
        stats = poller.stats()["m"]
        assert (stats.polls, stats.late_polls, stats.skipped_polls) == (4, 2, 2)
    finally:
        poller.close()
        server.stop()
