"""A broken profile file disables only the meters that use it, with an alarm; the gateway runs on (start and
reload), and ``doctor`` names the file with the fix."""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner
from markupsafe import escape

from drivers import ProfileSet, load_profile_set
from gateway.cli import main
from gateway.daemon import Gateway
from gateway.paths import DEFAULT_CONFIG, PROFILES_DIR
from tests.conftest import free_port, wait_until, with_web
from tests.gateway.conftest import fast_demo
from tests.gateway.test_health import TOKEN, _get

BROKEN = "generic-heat-meter"      # the demo's steam-header meter uses it
FIX = 'points[0].data_type = "float": use one of u16, i16, bcd16, u32, i32, f32, bcd32, u64, i64, f64'


def _break(directory: Path) -> Path:
    """A technician's typo in one register map."""
    path = directory / f"{BROKEN}.toml"
    path.write_text((PROFILES_DIR / f"{BROKEN}.toml").read_text().replace('data_type = "u32"', 'data_type = "float"', 1))
    return path


def _profile_dir(tmp_path: Path) -> Path:
    """Good copies of the demo's other two profiles and one broken file."""
    directory = tmp_path / "profiles"
    directory.mkdir()
    for name in ("eastron-sdm630", "generic-gas-totaliser"):
        shutil.copy(PROFILES_DIR / f"{name}.toml", directory)
    _break(directory)
    return directory


def _reason(directory: Path) -> str:
    return (f"profile {BROKEN} did not load, so the meter is not polled: {directory / BROKEN}.toml: {FIX}; "
            "then reload the config (systemctl reload carbon-gateway)")


def _stored(gateway: Gateway, meter_id: str) -> int:
    assert gateway.store is not None
    return gateway.store.db.execute("SELECT COUNT(*) FROM readings WHERE meter_id = ?", (meter_id,)).fetchone()[0]


def _stored_in(db: Path, meter_id: str) -> int:
    """Readings of ``meter_id`` in a store another process writes (0 while it is busy)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return conn.execute("SELECT COUNT(*) FROM readings WHERE meter_id = ?", (meter_id,)).fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()


def _config(tmp_path: Path, found: ProfileSet, web_port: int):  # type: ignore[no-untyped-def]
    config = fast_demo(tmp_path / "data", found)
    return replace(config, web=replace(config.web, enabled=True, port=web_port, metrics_token=TOKEN))


def test_a_broken_profile_disables_its_meter_with_an_alarm_and_the_rest_runs(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    directory = _profile_dir(tmp_path)
    found = load_profile_set(directory)
    config = _config(tmp_path, found, free_port())
    assert [(m.id, m.enabled) for m in config.meters] == [("main-incomer", True), ("boiler-gas", True),
                                                          ("steam-header", False)]
    caplog.set_level(logging.ERROR, logger="gateway.daemon")
    gw = with_web(Gateway(config, found.profiles))
    gw.start()
    try:
        wait_until(lambda: _stored(gw, "main-incomer") and _stored(gw, "boiler-gas"), timeout_s=15,
                   message="the good meters polled")
        assert _stored(gw, "steam-header") == 0
        assert [r.getMessage() for r in caplog.records] == [
            f"profile {BROKEN} did not load: {directory / BROKEN}.toml: {FIX}; meter(s) steam-header disabled "
            "(not polled) until it is fixed and the config reloaded"]
        status = {m.meter_id: m.stats for m in gw.meter_status()}
        assert (status["steam-header"].state, status["steam-header"].last_error) == ("disabled", _reason(directory))
        assert status["main-incomer"].last_error == ""

        code, _, body = _get(gw, "/healthz")
        health = json.loads(body)
        assert (code, health["status"], health["disabled_meters"]) == (
            503, "degraded", {"steam-header": _reason(directory)})
        _, _, metrics = _get(gw, "/metrics", token=TOKEN)
        assert f'carbon_gateway_profile_broken{{profile="{BROKEN}"}} 1' in metrics.splitlines()
        _, _, page = _get(gw, "/")      # the demo's public dashboard shows the meter's state and error text
        assert f"not polled {escape(_reason(directory))}" in page

        # The technician fixes the file; a reload (SIGHUP re-reads the profiles) polls the meter again.
        shutil.copy(PROFILES_DIR / f"{BROKEN}.toml", directory)
        fixed = load_profile_set(directory)
        gw.reload(_config(tmp_path, fixed, gw.config.web.port), fixed.profiles)
        wait_until(lambda: _stored(gw, "steam-header"), timeout_s=15, message="the repaired meter polled")
        assert gw.health()["disabled_meters"] == {} and gw.config.profile_errors == ()

        # Broken again at a reload: the reload is applied, the rest runs, the meter is disabled with its alarm.
        caplog.clear()
        _break(directory)
        again = load_profile_set(directory)
        gw.reload(_config(tmp_path, again, gw.config.web.port), again.profiles)
        before = {m: _stored(gw, m) for m in ("main-incomer", "boiler-gas")}
        wait_until(lambda: all(_stored(gw, m) > n for m, n in before.items()), timeout_s=15,
                   message="the good meters polled after the reload")
        assert {m.meter_id: m.stats.state for m in gw.meter_status()}["steam-header"] == "disabled"
        assert len(caplog.records) == 1 and caplog.records[0].getMessage().startswith(f"profile {BROKEN} did not load")
    finally:
        gw.stop()


def test_run_and_doctor_with_a_broken_profile_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gateway.commands.operations as operations
    import gateway.paths

    directory = _profile_dir(tmp_path)
    monkeypatch.setattr(operations, "PROFILE_DIRS", (directory,))
    monkeypatch.setattr(gateway.paths, "PROFILE_DIRS", (directory,))
    config, profiles = operations.load_or_exit(None, tmp_path / "data")   # `run` starts instead of exiting 2
    assert config.disabled_meters() == {"steam-header": _reason(directory)} and BROKEN not in profiles

    good = tmp_path / "good.toml"
    good.write_text(DEFAULT_CONFIG.read_text().replace("[sync]\nenabled = true", "[sync]\nenabled = false"))
    result = CliRunner().invoke(main, ["doctor", "--config", str(good), "--data-dir", str(tmp_path / "data")])
    assert result.exit_code == 1
    assert result.output.splitlines()[1:3] == [
        f"FAIL  profile {BROKEN}: {directory / BROKEN}.toml: {FIX}",
        "      fix: meter(s) steam-header are not polled until it loads: correct the file as the message says "
        "(docs/profiles.md) or move it out of the profiles directory, then reload the gateway "
        "(systemctl reload carbon-gateway)"]

    # A meter naming a profile that does not exist at all is still a config error: exit 2, nothing started.
    missing = tmp_path / "missing.toml"
    missing.write_text(DEFAULT_CONFIG.read_text().replace('profile = "eastron-sdm630"', 'profile = "eastron-sdm999"'))
    result = CliRunner().invoke(main, ["run", "--config", str(missing), "--data-dir", str(tmp_path / "data")])
    assert (result.exit_code, result.output) == (
        2, f'Error: {missing}: meters[0].profile = "eastron-sdm999": unknown profile; use one of eastron-sdm630, '
           "generic-gas-totaliser\n")


def test_the_daemon_starts_with_a_broken_profile_and_sighup_reads_the_repaired_file(tmp_path: Path) -> None:
    """`carbon-gateway run` after a reboot with a technician's broken register map: it polls the other meters
    (before: exit 2, no metering at all), and a reload after the repair polls the meter again."""
    import os
    import signal
    import subprocess
    import sys

    from tests.gateway.test_daemon import HEADLESS

    config_dir = tmp_path / "etc"
    config_dir.mkdir()
    directory = _profile_dir(config_dir)            # etc/profiles: the profile dir CARBON_GATEWAY_CONFIG_DIR names
    (config_dir / "factors").symlink_to(PROFILES_DIR.parent / "factors")
    config, data = tmp_path / "gw.toml", tmp_path / "data"
    config.write_text(HEADLESS)
    env = {**os.environ, "CARBON_GATEWAY_CONFIG_DIR": str(config_dir)}
    env.pop("NOTIFY_SOCKET", None)
    log_path = tmp_path / "stderr.log"
    with log_path.open("w") as log_file:
        process = subprocess.Popen([str(Path(sys.executable).parent / "carbon-gateway"), "run", "--config", str(config),
                                    "--data-dir", str(data)], env=env, stdout=subprocess.DEVNULL, stderr=log_file)
        try:
            wait_until(lambda: "gateway demo-gateway started" in log_path.read_text(), timeout_s=20,
                       message="the daemon started")
            shutil.copy(PROFILES_DIR / f"{BROKEN}.toml", directory)
            process.send_signal(signal.SIGHUP)
            wait_until(lambda: f"config reloaded from {config}" in log_path.read_text(), timeout_s=20,
                       message="the reload")
            wait_until(lambda: _stored_in(data / "gateway.db", "steam-header"), timeout_s=20,
                       message="the repaired meter polled")
            assert process.poll() is None
        finally:
            process.terminate()
            process.wait(timeout=30)
    errors = [line.split(" ERROR ", 1)[1] for line in log_path.read_text().splitlines() if " ERROR " in line]
    assert errors == [f"gateway.daemon: profile {BROKEN} did not load: {directory / BROKEN}.toml: {FIX}; meter(s) "
                      "steam-header disabled (not polled) until it is fixed and the config reloaded"]
    assert process.returncode == 0
