"""The wheel as a user installs it: built from this tree, installed without -e into a fresh virtual
environment, run from outside the repository. Nothing here imports the checkout's code into the commands.
"""

from __future__ import annotations

import json
import signal
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO, interrupt, Broker, Wheelhouse, base_python, clean_env, free_port, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def venv(wheelhouse: Wheelhouse, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv (no system site-packages) with the wheel installed offline from the wheelhouse."""
    path = tmp_path_factory.mktemp("installed") / "venv"
    subprocess.run([base_python(), "-m", "venv", str(path)], check=True, timeout=120, env=clean_env())
    subprocess.run([str(path / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    "--no-index", "--find-links", str(wheelhouse.directory), "carbon-edge-gateway"],
                   check=True, timeout=600, env=clean_env())
    return path


def _cli(venv: Path, *args: str, cwd: Path, env: dict[str, str] | None = None,
         timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(venv / "bin" / "carbon-gateway"), *args], cwd=cwd, env=env or clean_env(),
                          capture_output=True, text=True, timeout=timeout)


def test_the_wheel_carries_its_data_and_finds_it_installed(venv: Path, tmp_path: Path) -> None:
    probe = subprocess.run(
        [str(venv / "bin" / "python"), "-c",
         "import json, gateway, gateway.paths as p, local_store.factors as f, webui;"
         "from pathlib import Path;"
         "print(json.dumps({'pkg': gateway.__file__, 'config': str(p.CONFIG_DIR), 'factors': str(f.DEFAULT_FACTORS_DIR),"
         "'profiles': sorted(x.name for x in p.PROFILES_DIR.glob('*.toml')),"
         "'factor_files': sorted(x.name for x in f.DEFAULT_FACTORS_DIR.glob('*.toml')),"
         "'default': p.DEFAULT_CONFIG.is_file(),"
         "'mo': [str(x) for x in Path(webui.__file__).parent.glob('translations/*/LC_MESSAGES/messages.mo')],"
         "'templates': len(list(Path(webui.__file__).parent.glob('templates/*.html')))}))"],
        cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0, probe.stderr
    found = json.loads(probe.stdout)
    site_packages = str(venv)
    assert found["pkg"].startswith(site_packages) and not found["pkg"].startswith(str(REPO))
    assert found["config"].startswith(site_packages) and found["config"].endswith("gateway/shipped")
    assert found["factors"] == found["config"] + "/factors"
    # the same files as the repository's config/, which stays the editable source
    assert found["profiles"] == sorted(p.name for p in (REPO / "config" / "profiles").glob("*.toml"))
    assert found["factor_files"] == sorted(p.name for p in (REPO / "config" / "factors").glob("*.toml"))
    assert found["default"] and found["mo"] and found["templates"] >= 5


def test_simulate_read_scan_with_a_site_profile(venv: Path, tmp_path: Path) -> None:
    """simulate serves, read and scan find it; a profile in the site directory is used over the shipped one."""
    site = tmp_path / "site-profiles"
    site.mkdir()
    shipped = (REPO / "config" / "profiles" / "eastron-sdm630.toml").read_text()
    (site / "site-sdm630.toml").write_text(shipped.replace('id = "eastron-sdm630"', 'id = "site-sdm630"'))
    env = clean_env(CARBON_GATEWAY_SITE_PROFILES=str(site))
    port = free_port()
    server = subprocess.Popen([str(venv / "bin" / "carbon-gateway"), "simulate", "--profile", "site-sdm630",
                               "--unit", "1", "--tcp", f"127.0.0.1:{port}"], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def readable() -> subprocess.CompletedProcess[str] | None:
            result = _cli(venv, "read", "--tcp", f"127.0.0.1:{port}", "--unit", "1", "--profile", "site-sdm630",
                          "--json", cwd=tmp_path, env=env, timeout=60)
            return result if result.returncode == 0 else None
        result = wait_until(readable, timeout_s=60, interval_s=0.5, message="the installed read to answer")
        assert isinstance(result, subprocess.CompletedProcess)
        points = json.loads(result.stdout)
        assert points, result.stdout
        scan = _cli(venv, "scan", "--tcp", f"127.0.0.1:{port}", "--units", "1-3", "--json", cwd=tmp_path, env=env,
                    timeout=120)
        assert scan.returncode == 0, scan.stderr
        found = json.loads(scan.stdout)
        assert "1" in json.dumps(found) and "sdm630" in json.dumps(found), found
    finally:
        interrupt(server)
    # without the site directory the profile does not exist: the shipped library alone is read
    missing = _cli(venv, "read", "--tcp", f"127.0.0.1:{port}", "--unit", "1", "--profile", "site-sdm630",
                   cwd=tmp_path)
    assert missing.returncode != 0 and "Traceback" not in missing.stderr and "site-sdm630" in missing.stderr


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status)
    except urllib.error.HTTPError:
        return True        # an HTTP answer (e.g. 503 while a meter has no reading yet) is an answer
    except OSError:
        return False


def test_run_the_demo_then_report_import_doctor(venv: Path, tmp_path: Path, mqtt_broker: Broker) -> None:
    """The shipped demo config runs from the installed package (web UI answers, SIGTERM stops it cleanly),
    then report, import and doctor work on what it stored."""
    web_port = free_port()
    shipped = venv.glob("lib/python3*/site-packages/gateway/shipped/gateway.toml")
    demo = next(shipped).read_text()
    config = tmp_path / "gateway.toml"
    config.write_text(demo.replace("port = 8080", f"port = {web_port}")
                      .replace("broker_port = 1883", f"broker_port = {mqtt_broker.port}"))
    daemon = subprocess.Popen([str(venv / "bin" / "carbon-gateway"), "run", "--config", str(config)],
                              cwd=tmp_path, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(lambda: daemon.poll() is not None or _answers(f"http://127.0.0.1:{web_port}/healthz"),
                   timeout_s=90, interval_s=0.25, message="the installed daemon's web UI")
        assert daemon.poll() is None, daemon.stdout.read() if daemon.stdout else ""
        wait_until(lambda: (tmp_path / "var" / "gateway.db").is_file(), timeout_s=30, message="the store")
    finally:
        daemon.send_signal(signal.SIGTERM)
        output, _ = daemon.communicate(timeout=60)
    assert daemon.returncode == 0, output
    assert "Traceback" not in output, output

    # 12 000 kWh in January 2022 = 12 MWh x 0.5366 tCO2/MWh (national grid factor of 2022) = 6.4392 tCO2
    csv = tmp_path / "invoices.csv"
    csv.write_text("source,activity,start,end,amount,unit\noffice,electricity,2022-01-01,2022-02-01,12000,kWh\n")
    imported = _cli(venv, "import", str(csv), "--data-dir", "var", cwd=tmp_path)
    assert imported.returncode == 0, imported.stderr
    january = _cli(venv, "report", "--from", "2022-01-01", "--to", "2022-02-01", "--data-dir", "var", cwd=tmp_path)
    assert january.returncode == 0, january.stderr
    assert json.loads(january.stdout)["total_tco2e"] == pytest.approx(6.4392, abs=1e-4), january.stdout

    doctor = _cli(venv, "doctor", "--config", str(config), "--json", cwd=tmp_path)
    rows = {row["check"]: row for row in json.loads(doctor.stdout)}
    # every check about what was installed and stored passes; the clock depends on the test machine's NTP
    for check in ("config", "data directory", "signing key", "store"):
        assert rows[check]["status"] == "OK", rows[check]
    assert rows["broker " + f"127.0.0.1:{mqtt_broker.port}"]["status"] == "OK", rows
    assert doctor.returncode == (1 if any(r["status"] == "FAIL" for r in rows.values()) else 0)
    assert "Traceback" not in doctor.stderr
