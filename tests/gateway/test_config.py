"""Config errors: one message naming file, key, value and fix; exit status 2; nothing started."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from drivers import load_profiles
from gateway.cli import main
from gateway.config import ConfigError, load_config
from gateway.paths import DEFAULT_CONFIG, PROFILES_DIR

PROFILES = load_profiles(PROFILES_DIR)
DEMO = DEFAULT_CONFIG.read_text()


def test_the_embedded_default_is_the_demo() -> None:
    config = load_config(None, PROFILES)
    assert {m.profile for m in config.meters} == {"eastron-sdm630", "generic-gas-totaliser", "generic-heat-meter"}
    assert {s.activity for s in config.sources} == {"electricity", "natural_gas", "steam"}
    assert config.simulated_buses == {"demo-bus"}
    assert (config.web.host, config.web.port, config.web.public_dashboard) == ("127.0.0.1", 8080, True)


@pytest.mark.parametrize("edit,message", [
    (("device_id = 2", "device_id = 300"),
     "meters[1].device_id = 300: use a Modbus unit id from 1 to 247"),
    (('profile = "eastron-sdm630"', 'profile = "eastron-sdm999"'),
     'meters[0].profile = "eastron-sdm999": unknown profile; use one of '),
    (('bus = "demo-bus"\ndevice_id = 3', 'bus = "rs485-9"\ndevice_id = 3'),
     'meters[2].bus = "rs485-9": no such bus; use one of demo-bus'),
    (('transport = "tcp"\nsimulated', 'transport = "udp"\nsimulated'),
     'buses[0].transport = "udp": use one of tcp, rtu, rtu_over_tcp'),
    (('activity = "natural_gas"', 'activity = "gas"'),
     'meters[1].activity = "gas": use one of electricity, electricity_export, natural_gas'),
    (("device_id = 3", "device_id = 1"),
     "meters[2].device_id = 1: another meter on bus demo-bus has the same unit id"),
    (("port = 8080", 'port = "eighty"'),
     'web.port = "eighty": use a number'),
    (("batch_max_age_s = 30\n", "batch_max_age_s = 30\ndisk_budget_mb = 2\n"),
     "sync.disk_budget_mb = 2: use a value from 10 to 100000 MB"),
    (("batch_max_age_s = 30\n", "batch_max_age_s = 30\nbandwidth_bytes_per_s = \"2k\"\n"),
     'sync.bandwidth_bytes_per_s = "2k": use a number'),
    (('activity = "steam"', 'activity = "steam"\nfrozen_after_s = -5'),
     "meters[2].frozen_after_s = -5: use a value from 0 to 864000 s (0: off)"),
    (('activity = "steam"', 'activity = "steam"\nmax_gap_s = 3600\nlong_gap_s = 1800'),
     "meters[2].long_gap_s = 1800: use a value of at least max_gap_s (3600 s)"),
    (('host = "127.0.0.1"\nport = 8080', 'host = "0.0.0.0"\nport = 8080'),
     "web.public_dashboard = true: a dashboard without login is only for a UI on loopback (the demo): anyone on "
     "the network would see it; set public_dashboard = false"),
    (("batch_max_age_s = 30\n", "batch_max_age_s = 30\nraw_retention_days = 0.5\n"),
     "sync.raw_retention_days = 0.5: use a value from 1 to 36500 days"),
    (("poll_interval_s = 2\nactivity = \"electricity\"", "poll_intervall_s = 2\nactivity = \"electricity\""),
     "meters[0].poll_intervall_s: unknown key; use one of "),
    # Bad-input sweep: values that used to be accepted and failed (or were rounded) later.
    (('activity = "electricity"', 'activity = "electricity"\nrollover_at = nan'),
     "meters[0].rollover_at = nan: use a value from 1 to 1e+18"),
    (('method = "location"', 'method = "location"\nfactor_files = [1, 2]'),
     'emissions.factor_files = [1, 2]: use a list of file names, e.g. factor_files = ["plant.toml"]'),
    (("broker_port = 1883", "broker_port = 1883.5"),
     "sync.broker_port = 1883.5: use a whole number from 1 to 65535"),
    (('broker_host = "127.0.0.1"', 'broker_host = ""'), 'sync.broker_host = "": use a non-empty string'),
    (('topic_prefix = "carbon"', 'topic_prefix = "a/#"'),
     'sync.topic_prefix = "a/#": MQTT wildcards # and + are not allowed in a topic to publish on; '
     'use e.g. topic_prefix = "carbon"'),
    (('name = "demo-bus"', 'name = ""'), 'buses[0].name = "": give the bus a name, e.g. name = "rs485-1"'),
    (('transport = "tcp"\nsimulated = true', 'transport = "rtu"\nserial_port = "/dev/ttyUSB0"\nstopbits = 1.5'),
     "buses[0].stopbits = 1.5: use a whole number from 1 to 2"),
    (('id = "main-incomer"', 'id = ""'), 'meters[0].id = "": give the meter a unique id, e.g. id = "main-incomer"'),
    # These started the daemon, which then logged the same error every 10 s (or nothing: a point never read).
    (('region = "national"', 'region = "mars"'),
     'emissions.region = "mars": no emission factor has this region; use one of anhui, '),
    (('method = "location"', 'method = "location"\nfactor_files = ["/nonexistent.toml"]'),
     "emissions.factor_files: /nonexistent.toml: cannot read factor file: No such file or directory: check the file "
     "name (a relative path is taken from the working directory)"),
    (('activity = "electricity"', 'activity = "electricity"\npoint = "energy"'),
     'meters[0].point = "energy": profile eastron-sdm630 has no such point; use one of voltage_l1, '),
])
def test_bad_values_name_file_key_and_fix(tmp_path: Path, edit: tuple[str, str], message: str) -> None:
    old, new = edit
    assert old in DEMO
    path = tmp_path / "bad.toml"
    path.write_text(DEMO.replace(old, new, 1))
    with pytest.raises(ConfigError) as error:
        load_config(path, PROFILES)
    assert str(error.value).startswith(f"{path}: {message}")


def test_sync_bandwidth_cap_and_disk_budget(tmp_path: Path) -> None:
    default = load_config(None, PROFILES).sync
    assert (default.bandwidth_bytes_per_s, default.disk_budget_bytes) == (None, None)
    path = tmp_path / "capped.toml"
    path.write_text(DEMO.replace("batch_max_age_s = 30\n", "batch_max_age_s = 30\nbandwidth_bytes_per_s = 2000\n"
                                 "disk_budget_mb = 500\n", 1))
    sync = load_config(path, PROFILES).sync
    assert (sync.bandwidth_bytes_per_s, sync.disk_budget_bytes) == (2000.0, 500_000_000)


def test_preprocessing_rules_per_meter(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(DEMO.replace('activity = "steam"', 'activity = "steam"\nmax_gap_s = 3600\nlong_gap_s = 172800\n'
                                 'frozen_after_s = 0\nmax_rate_per_h = 50\nsteam_enthalpy_kj_per_kg = 2800', 1))
    steam = next(s for s in load_config(path, PROFILES).sources if s.activity == "steam")
    assert (steam.max_gap_s, steam.long_gap_s, steam.frozen_after_s, steam.max_rate_per_h,
            steam.steam_enthalpy_kj_per_kg) == (3600.0, 172_800.0, None, 50.0, 2800.0)
    rules = steam.rules()
    assert (rules.max_gap_s, rules.frozen_after_s, rules.max_rate_per_h) == (3600.0, None, 50.0)
    default = next(s for s in load_config(None, PROFILES).sources if s.activity == "steam")
    assert (default.max_gap_s, default.frozen_after_s) == (1800.0, 86_400.0)


def test_toml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[gateway]\nid = demo\n')
    with pytest.raises(ConfigError) as error:
        load_config(path, PROFILES)
    assert str(error.value).startswith(f"{path}: TOML syntax error: ")
    assert "line 2" in str(error.value)


def test_run_with_broken_config_exits_2_without_traceback(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(DEMO.replace("device_id = 2", "device_id = 0", 1))
    result = CliRunner().invoke(main, ["run", "--config", str(path), "--data-dir", str(tmp_path / "data")])
    assert result.exit_code == 2
    assert result.output == f"Error: {path}: meters[1].device_id = 0: use a Modbus unit id from 1 to 247\n"
    assert not (tmp_path / "data").exists(), "nothing may start on a broken config"


def test_run_with_missing_config_file(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["run", "--config", str(tmp_path / "nope.toml")])
    assert result.exit_code == 2
    assert "cannot read the config (No such file or directory); check the path given to --config" in result.output


@pytest.mark.parametrize("content,message", [
    (b"\xff\xfe\x00garbage", "not UTF-8 text (byte 0 is 0xff): save the config as UTF-8 (not UTF-16), "
                              "or check that --config names the TOML file"),
    ("[gateway]\n".encode("utf-16"), "not UTF-8 text (byte 0 is 0xff): save the config as UTF-8 (not UTF-16), "
                                      "or check that --config names the TOML file"),
])
def test_a_config_that_is_not_utf8_exits_2_without_traceback(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "gateway.toml"
    path.write_bytes(content)
    result = CliRunner().invoke(main, ["run", "--config", str(path)])
    assert (result.exit_code, result.output) == (2, f"Error: {path}: {message}\n")


def test_a_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_bytes(b"\xef\xbb\xbf" + DEMO.encode())
    assert load_config(path, PROFILES).gateway_id == "demo-gateway"


def test_a_meter_whose_profile_file_is_broken_is_kept_disabled_with_the_reason(tmp_path: Path) -> None:
    """STYLE.md: a broken meter entry disables that meter with an alarm; the rest of the config loads. The
    meter's point is not checked against a profile that did not load."""
    error = "/profiles/generic-heat-meter.toml: no [[points]]; add at least one point"
    profiles = {k: v for k, v in PROFILES.items() if k != "generic-heat-meter"}
    path = tmp_path / "gw.toml"
    path.write_text(DEMO.replace('activity = "steam"', 'activity = "steam"\npoint = "heat_energy"', 1))
    config = load_config(path, profiles, broken_profiles={"generic-heat-meter": error})
    assert [(m.id, m.enabled) for m in config.meters] == [("main-incomer", True), ("boiler-gas", True),
                                                          ("steam-header", False)]
    assert config.profile_errors == (("generic-heat-meter", error),)
    assert config.disabled_meters() == {"steam-header": (
        f"profile generic-heat-meter did not load, so the meter is not polled: {error}; "
        "then reload the config (systemctl reload carbon-gateway)")}
    with pytest.raises(ConfigError) as unknown:   # without the broken file it is an unknown profile, as before
        load_config(path, profiles)
    assert str(unknown.value) == (f'{path}: meters[2].profile = "generic-heat-meter": unknown profile; use one of '
                                  f'{", ".join(sorted(profiles))}')
