"""``Gateway.reload``: a new config replaces the running one, or the running one stays."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from drivers import load_profiles
from gateway.config import GatewayConfig, load_config
from gateway.daemon import Gateway, ReloadError
from gateway.paths import PROFILES_DIR
from tests.conftest import wait_until


def _demo_config(data_dir: Path) -> GatewayConfig:
    config = load_config(None, load_profiles(PROFILES_DIR), data_dir_override=data_dir)
    return replace(config, web=replace(config.web, enabled=False), sync=replace(config.sync, enabled=False))


def _stored(gateway: Gateway, meter_id: str) -> int:
    assert gateway.store is not None
    return gateway.store.db.execute("SELECT COUNT(*) FROM readings WHERE meter_id = ?", (meter_id,)).fetchone()[0]


@pytest.fixture
def gateway(tmp_path: Path):
    gw = Gateway(_demo_config(tmp_path / "data"))
    gw.start()
    wait_until(lambda: all(_stored(gw, m.id) for m in gw.config.meters), timeout_s=15, message="first readings")
    yield gw
    gw.stop()


def test_reload_applies_the_new_meters_and_keeps_what_was_stored(gateway: Gateway) -> None:
    old = gateway.config
    kept = old.meters[0]
    new = replace(old, meters=(replace(kept, poll_interval_s=1.0),),
                  sources=tuple(s for s in old.sources if s.meter_id == kept.id))
    before = {m.id: _stored(gateway, m.id) for m in old.meters}
    gateway.reload(new)
    assert gateway.config is new and gateway.restart_needed == ""
    assert [m.meter_id for m in gateway.meter_status()] == [kept.id]
    wait_until(lambda: _stored(gateway, kept.id) > before[kept.id] + 2, timeout_s=15, message="polling after reload")
    for meter in old.meters:
        assert _stored(gateway, meter.id) >= before[meter.id]   # nothing read before the reload was lost
    dropped = old.meters[1].id
    count = _stored(gateway, dropped)
    gateway.flush_readings()
    assert _stored(gateway, dropped) == count                   # the removed meter is no longer polled
    assert sorted(t.name for t in __import__("threading").enumerate() if t.name.startswith("bus-")) == ["bus-demo-bus"]


def test_a_config_that_cannot_start_is_rolled_back(gateway: Gateway) -> None:
    old = gateway.config
    broken = replace(old, meters=(replace(old.meters[0], profile="no-such-profile"),) + old.meters[1:])
    with pytest.raises(ReloadError) as caught:
        gateway.reload(broken)
    assert str(caught.value) == ("the new config could not start (meter main-incomer: unknown profile "
                                 "'no-such-profile'); the previous config keeps running")
    assert gateway.config is old
    counts = {m.id: _stored(gateway, m.id) for m in old.meters}
    wait_until(lambda: all(_stored(gateway, m) > n for m, n in counts.items()), timeout_s=15,
               message="the previous config polling again")


def test_data_dir_and_web_changes_are_refused_or_deferred(gateway: Gateway, tmp_path: Path) -> None:
    old = gateway.config
    with pytest.raises(ReloadError, match=r"gateway.data_dir cannot change while running .*: restart the gateway"):
        gateway.reload(replace(old, data_dir=tmp_path / "elsewhere"))
    assert gateway.config is old and not (tmp_path / "elsewhere").exists()
    gateway.reload(replace(old, web=replace(old.web, port=old.web.port + 1)))
    assert gateway.restart_needed == "web settings changed: they take effect when the gateway restarts"
