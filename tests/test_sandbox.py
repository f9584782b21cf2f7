"""systemd/install.sh into a temporary root, then the installed daemon run as its unit runs it.

The unit's restrictions are reproduced without systemd as PID 1 (this machine has none):
- ProtectSystem=strict: a private mount namespace (``unshare -m``) where every file system is remounted
  read-only except the unit's ReadWritePaths= (and a private scratch directory for PrivateTmp=);
- TasksMax=, MemoryMax=: a pids and a memory cgroup (v1) with the unit's limits;
- User=/Group=, NoNewPrivileges=, CapabilityBoundingSet=: ``setpriv`` to the service user (here ``nobody``,
  as no user may be created on this machine), no new privileges, no capabilities.
Each part that the kernel refuses is skipped with the reason; none is skipped silently.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.cookiejar import CookieJar
from pathlib import Path

import pytest
import tomli_w

from tests.conftest import REPO, interrupt, Wheelhouse, base_python, clean_env, free_port, wait_until

pytestmark = pytest.mark.slow
SERVICE_USER = "nobody"
CGROUP_PIDS = Path("/sys/fs/cgroup/pids")


def unit_settings(text: str) -> dict[str, list[str]]:
    """Key -> values (in order) of a unit file's [Service] section."""
    settings: dict[str, list[str]] = {}
    section = ""
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    return settings


@dataclass(frozen=True)
class Installed:
    root: Path
    unit: dict[str, list[str]]

    @property
    def etc(self) -> Path:
        return self.root / "etc" / "carbon-gateway"

    @property
    def state(self) -> Path:
        return self.root / "var" / "lib" / "carbon-gateway"

    @property
    def exec_start(self) -> list[str]:
        return shlex.split(self.unit["ExecStart"][0])

    @property
    def writable(self) -> list[str]:
        return [p for value in self.unit.get("ReadWritePaths", []) for p in value.split()]

    @property
    def tasks_max(self) -> int:
        return int(self.unit["TasksMax"][0])

    @property
    def memory_max(self) -> int:
        value = self.unit["MemoryMax"][0]
        return int(value[:-1]) * {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[value[-1]]


def _own_cgroup(controller: str) -> Path | None:
    """This process's cgroup (v1) of ``controller``, under /sys/fs/cgroup/<controller>."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return Path("/sys/fs/cgroup") / controller / path.lstrip("/")
    return None


@pytest.fixture(scope="module")
def installed(wheelhouse: Wheelhouse) -> Iterator[Installed]:
    if os.geteuid() != 0:
        pytest.skip("install.sh --root and the sandbox need root (mount namespace, cgroup, setpriv)")
    # Not under pytest's tmp directory: that is 0700 root, and the service user must reach the release.
    root = Path(tempfile.mkdtemp(prefix="carbon-gateway-root-"))
    root.chmod(0o755)
    try:
        result = subprocess.run(["bash", str(REPO / "systemd" / "install.sh"), "--root", str(root), "--wheels",
                                 str(wheelhouse.directory), "--user", SERVICE_USER, "--python", base_python()],
                                capture_output=True, text=True, timeout=600, env=clean_env())
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"under {root}" in result.stdout
        unit = root / "etc" / "systemd" / "system" / "carbon-gateway.service"
        yield Installed(root, unit_settings(unit.read_text()))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_install_sh_lays_out_a_release_and_the_production_config(installed: Installed) -> None:
    current = installed.root / "opt" / "carbon-gateway" / "current"
    assert current.is_symlink() and os.readlink(current) == "releases/0.1.0"
    assert (current / "bin" / "python").exists()
    assert installed.exec_start[:4] == [str(current / "bin" / "python"), "-m", "gateway", "run"]
    config = tomllib.loads((installed.etc / "gateway.toml").read_text())
    # the production template: no simulated bus, no demo key, no public dashboard, HTTPS
    assert "buses" not in config and "meters" not in config
    assert "demo_receiver_key" not in config["sync"] and config["sync"]["enabled"] is False
    assert config["web"]["tls"] is True and "public_dashboard" not in config["web"]
    assert "first-boot setup" in (installed.etc / "gateway.toml").read_text()   # the commented template
    # what the service writes is the service's: its config directory and its state directory
    assert (installed.etc.stat().st_uid, installed.state.stat().st_uid) == (65534, 65534)
    assert sorted(installed.writable) == sorted([str(installed.etc), str(installed.state)])
    assert installed.tasks_max >= 100 + 100   # 100 buses, one thread each, plus at least as many to spare


class Sandbox:
    """The installed daemon under the unit's restrictions (see the module docstring)."""

    def __init__(self, installed: Installed, scratch: Path) -> None:
        self.installed = installed
        self.cgroup: Path | None = None
        self.memory_cgroup: Path | None = None
        self.skipped: list[str] = []
        self.scratch = scratch      # PrivateTmp=: the daemon's own writable temporary directory
        self.scratch.mkdir(exist_ok=True)
        os.chown(self.scratch, 65534, 65534)
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> None:
        unit, writable = self.installed.unit, [*self.installed.writable, str(self.scratch)]
        join_cgroup = ""
        if CGROUP_PIDS.is_dir() and os.access(CGROUP_PIDS, os.W_OK):
            self.cgroup = CGROUP_PIDS / f"carbon-gateway-test-{os.getpid()}-{time.monotonic_ns()}"
            self.cgroup.mkdir()
            (self.cgroup / "pids.max").write_text(str(self.installed.tasks_max))
            join_cgroup = f"echo $$ > {self.cgroup}/cgroup.procs"
        else:
            self.skipped.append("TasksMax: no writable pids cgroup (v1) on this machine")
        memory = _own_cgroup("memory")
        if memory is not None and os.access(memory, os.W_OK):
            self.memory_cgroup = memory / f"carbon-gateway-test-{os.getpid()}-{time.monotonic_ns()}"
            self.memory_cgroup.mkdir()
            (self.memory_cgroup / "memory.limit_in_bytes").write_text(str(self.installed.memory_max))
            join_cgroup += f"\necho $$ > {self.memory_cgroup}/cgroup.procs"
        else:
            self.skipped.append("MemoryMax: no writable memory cgroup (v1) on this machine")
        # Every mount of the system read-only (ProtectSystem=strict), then the allowed paths writable again.
        script = f"""
set -eu
{join_cgroup}
mount --make-rprivate /
for m in $(awk '{{print $5}}' /proc/self/mountinfo | grep -E '^/$|^/(tmp|var|etc|opt|usr|srv|home|root)(/|$)' | sort -u); do
  mount -o remount,bind,ro "$m"
done
for w in {" ".join(shlex.quote(w) for w in writable)}; do
  mount --bind "$w" "$w"
  mount -o remount,bind,rw "$w"
done
if touch {shlex.quote(str(self.installed.root / "opt" / ".rw-probe"))} 2>/dev/null; then
  echo "sandbox: the program directory is writable" >&2; exit 97
fi
exec setpriv --reuid {unit["User"][0]} --regid {unit["Group"][0]} --clear-groups --no-new-privs \
  --inh-caps=-all --bounding-set=-all -- "$@"
"""
        env = clean_env(TMPDIR=str(self.scratch), HOME=str(self.installed.state))
        for value in unit.get("Environment", []):
            key, _, setting = value.partition("=")
            env[key] = setting
        self.process = subprocess.Popen(["unshare", "-m", "--", "bash", "-c", script, "sandbox",
                                         *self.installed.exec_start], env=env, cwd="/",
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def output(self) -> str:
        if self.process is None or self.process.stdout is None or self.process.poll() is None:
            return ""
        return self.process.stdout.read()

    def pids_peak(self) -> int | None:
        if self.cgroup is None:
            return None
        peak = self.cgroup / "pids.peak"
        return int(peak.read_text()) if peak.exists() else None

    def memory_peak(self) -> int | None:
        if self.memory_cgroup is None:
            return None
        return int((self.memory_cgroup / "memory.max_usage_in_bytes").read_text())

    def stop(self) -> tuple[int, str]:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            output, _ = self.process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            output, _ = self.process.communicate(timeout=30)
        for cgroup in (self.cgroup, self.memory_cgroup):
            deadline = time.monotonic() + 10
            while cgroup is not None and time.monotonic() < deadline:
                try:
                    cgroup.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)
        return self.process.returncode, output


def _tls_context(installed: Installed) -> ssl.SSLContext:
    """Trust exactly the self-signed certificate the daemon made on first boot (as a technician compares
    its fingerprint)."""
    context = ssl.create_default_context(cafile=str(installed.state / "web" / "cert.pem"))
    context.check_hostname = False
    return context


def _answers(url: str, context: ssl.SSLContext | None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3, context=context):
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, ssl.SSLError):
        return False


class Browser:
    """A logged-in HTTPS session with CSRF tokens taken from each form's page."""

    def __init__(self, base: str, context: ssl.SSLContext) -> None:
        self.base = base
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()),
                                                  urllib.request.HTTPSHandler(context=context))

    def get(self, path: str) -> str:
        with self.opener.open(self.base + path, timeout=30) as response:
            return response.read().decode()

    def post(self, path: str, form: dict[str, str], form_page: str | None = None) -> tuple[str, str]:
        token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', self.get(form_page or path))
        assert token, f"no form on {form_page or path}"
        data = urllib.parse.urlencode({**form, "csrf_token": token.group(1)}).encode()
        # over HTTPS the CSRF check also wants the Referer of a same-site page, as browsers send it
        request = urllib.request.Request(self.base + path, data=data,
                                         headers={"Referer": self.base + (form_page or path)})
        with self.opener.open(request, timeout=30) as response:
            return urllib.parse.urlparse(response.url).path, response.read().decode()


def _answering(browser: Browser) -> set[str]:
    """The meters that answered and have values, from the dashboard's JSON."""
    return {m["id"] for m in json.loads(browser.get("/api/status"))["meters"] if m["state"] == "ok" and m["points"]}


def _set_web_port(installed: Installed, port: int) -> None:
    """What a technician edits before the first start on a test bench: the UI on loopback, a free port."""
    path = installed.etc / "gateway.toml"
    text = path.read_text().replace('host = "0.0.0.0"', 'host = "127.0.0.1"').replace("port = 8443", f"port = {port}")
    path.write_text(text)


@pytest.fixture()
def simulator(wheelhouse: Wheelhouse, installed: Installed) -> Iterator[int]:
    """100 simulated pulse counters (unit ids 1-100) on one loopback port, served by the installed program."""
    port = free_port()
    args = [str(installed.root / "opt" / "carbon-gateway" / "current" / "bin" / "python"), "-m", "gateway",
            "simulate", "--tcp", f"127.0.0.1:{port}"]
    for unit in range(1, 101):
        args += ["--profile", "generic-pulse-counter", "--unit", str(unit)]
    process = subprocess.Popen(args, env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield port
    finally:
        interrupt(process)


def test_the_installed_daemon_under_the_units_restrictions(installed: Installed, simulator: int,
                                                           tmp_path: Path) -> None:
    web_port = free_port()
    _set_web_port(installed, web_port)
    base = f"https://127.0.0.1:{web_port}"

    # --- first boot: the production config polls nothing and waits for the setup in the web UI -------------
    sandbox = Sandbox(installed, tmp_path / "private-tmp")
    sandbox.start()
    try:
        wait_until(lambda: not sandbox.alive() or (installed.state / "web" / "cert.pem").exists(), timeout_s=90,
                   interval_s=0.25, message="the self-signed certificate of the first boot")
        assert sandbox.alive(), sandbox.output()
        context = _tls_context(installed)
        wait_until(lambda: _answers(base + "/login", context), timeout_s=60, interval_s=0.25,
                   message="the web UI over HTTPS")
        browser = Browser(base, context)
        where, _ = browser.post("/setup", {"name": "admin", "password": "correct horse battery", "confirm":
                                           "correct horse battery"})
        assert where == "/", where
        # commission a meter: a TCP bus, then the meter on it; the web UI saves the config in /etc
        where, page = browser.post("/buses/new", {"name": "tcp-1", "transport": "tcp", "host": "127.0.0.1",
                                                  "port": str(simulator), "timeout_s": "1"})
        assert where == "/buses", page
        where, page = browser.post("/meters/new", {"id": "pulse-1", "bus": "tcp-1", "device_id": "1",
                                                   "profile": "generic-pulse-counter", "poll_interval_s": "1",
                                                   "activity": "none", "enabled": "y"})
        assert where == "/meters", page
        saved = tomllib.loads((installed.etc / "gateway.toml").read_text())
        assert [m["id"] for m in saved["meters"]] == ["pulse-1"] and saved["buses"][0]["port"] == simulator
        wait_until(lambda: _answering(browser) == {"pulse-1"}, timeout_s=60, interval_s=0.5,
                   message="the commissioned meter's first values")
    finally:
        code, output = sandbox.stop()
    assert code == 0, output
    assert "Traceback" not in output and "Read-only file system" not in output, output

    # --- 100 TCP buses (one per meter, as with one IP per meter on site) -------------------------------------
    config = installed.etc / "gateway.toml"
    data = tomllib.loads(config.read_text())
    for n in range(2, 101):
        data["buses"].append({"name": f"tcp-{n}", "transport": "tcp", "host": "127.0.0.1", "port": simulator,
                              "timeout_s": 1.0})
        data["meters"].append({"id": f"pulse-{n}", "bus": f"tcp-{n}", "device_id": n,
                               "profile": "generic-pulse-counter", "poll_interval_s": 2, "activity": "none"})
    config.write_text(tomli_w.dumps(data))
    sandbox = Sandbox(installed, tmp_path / "private-tmp")
    sandbox.start()
    try:
        wait_until(lambda: not sandbox.alive() or _answers(base + "/login", context), timeout_s=90,
                   interval_s=0.25, message="the web UI after the restart")
        assert sandbox.alive(), sandbox.output()
        browser = Browser(base, context)
        where, _ = browser.post("/login", {"name": "admin", "password": "correct horse battery"})
        assert where == "/", where
        wait_until(lambda: not sandbox.alive() or len(_answering(browser)) == 100, timeout_s=150, interval_s=1,
                   message="values from all 100 meters, each on its own bus")
        assert sandbox.alive(), sandbox.output()
        peak, memory_peak = sandbox.pids_peak(), sandbox.memory_peak()
    finally:
        code, output = sandbox.stop()
    assert code == 0, output
    assert "can't start new thread" not in output and "Traceback" not in output, output
    print(f"100 buses: pids.peak {peak} of TasksMax {installed.tasks_max}, memory peak {memory_peak} of "
          f"MemoryMax {installed.memory_max}")
    if memory_peak is not None:      # the daemon was not killed by the limit (it is alive above), and kept below it
        assert memory_peak < installed.memory_max, (memory_peak, installed.memory_max)
    if peak is not None:
        # one thread per bus and the rest: well inside TasksMax, with room for as many buses again
        assert 100 < peak <= installed.tasks_max // 2, (peak, installed.tasks_max)
    for reason in sandbox.skipped:
        print("skipped part of the sandbox:", reason)
