"""Signed offline bundles and `carbon-gateway upgrade`: install, upgrade, automatic rollback, refusals.

For speed, only the first bundle carries every dependency wheel (as scripts/release builds it, from the
session's wheelhouse instead of PyPI); the later ones carry the project wheel alone (``--no-dependencies``)
and the upgrade gets ``--find-links`` to the same wheelhouse. Everything is installed with ``--no-index``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import shutil
import subprocess
import tarfile
import sqlite3
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.bundle import (MANIFEST, SIGNATURE, load_private_key, new_release_key, release, verify_bundle,
                            write_bundle)
from gateway.upgrade import REQUEST, RESULT, stage_request, upgrade_dir
from tests.conftest import REPO, Wheelhouse, base_python, clean_env, free_port, wait_until

pytestmark = pytest.mark.slow
PLATFORM = "linux_aarch64" if platform.machine() in ("aarch64", "arm64") else "linux_x86_64"


@dataclass(frozen=True)
class Bundles:
    key: Path
    public: Path
    first: Path          # 1.0.0, with every dependency
    second: Path         # 1.1.0
    broken: Path         # 1.2.0: migrates the store, then never reports status ok
    other_key: Path      # 1.2.0's wheel signed by a key the box does not trust
    flipped: Path        # 1.2.0 with one byte of a wheel flipped
    unsigned: Path       # 1.2.0 without its signature


def _broken_tree(destination: Path) -> Path:
    """This tree, changed so that the release migrates the store and then is never healthy."""
    shutil.copytree(REPO, destination, ignore=shutil.ignore_patterns(".git", ".venv", "build", "dist", "var",
                                                                     "__pycache__", "*.egg-info", ".*_cache"))
    daemon = destination / "gateway" / "daemon.py"
    text = daemon.read_text()
    assert '"status": "ok" if healthy else "degraded",' in text
    daemon.write_text(text.replace('"status": "ok" if healthy else "degraded",', '"status": "degraded",'))
    with (destination / "local_store" / "schema.py").open("a") as schema:
        schema.write('\n\n@migrations()\ndef m900_upgrade_rollback_test(db: sqlite_utils.Database) -> None:\n'
                     '    db.execute("CREATE TABLE upgrade_rollback_test (x INTEGER)")\n')
    return destination


def _flip_a_byte(source: Path, destination: Path) -> None:
    """Copy ``source`` with one bit flipped in the middle of the project wheel's data (not a tar header)."""
    shutil.copy(source, destination)
    with tarfile.open(source) as tar:
        member = next(m for m in tar.getmembers() if m.name.startswith("wheels/carbon_edge_gateway-"))
    with destination.open("r+b") as handle:
        handle.seek(member.offset_data + member.size // 2)
        byte = handle.read(1)
        handle.seek(member.offset_data + member.size // 2)
        handle.write(bytes([byte[0] ^ 0x01]))


def _without_signature(source: Path, destination: Path) -> None:
    with tarfile.open(source) as tar, tarfile.open(destination, "w") as out:
        for member in tar.getmembers():
            if member.name != SIGNATURE:
                out.addfile(member, tar.extractfile(member))


@pytest.fixture(scope="module")
def bundles(wheelhouse: Wheelhouse, tmp_path_factory: pytest.TempPathFactory) -> Bundles:
    base = tmp_path_factory.mktemp("bundles")
    key, other = base / "keys" / "release.pem", base / "other" / "other.pem"
    public = new_release_key(key)
    new_release_key(other)
    out = base / "dist"
    first = release(REPO, key, out, [PLATFORM], "1.0.0", local_wheels=wheelhouse.directory)[0]
    second = release(REPO, key, out, [PLATFORM], "1.1.0", with_dependencies=False)[0]
    broken = release(_broken_tree(base / "broken-src"), key, out, [PLATFORM], "1.2.0", with_dependencies=False)[0]
    unpacked = verify_bundle(broken, [load_private_key(key).public_key()], base / "broken-unpacked")
    other_key = write_bundle(base / "bad" / "other-key.tar", sorted(unpacked.wheels.glob("*.whl")), "1.2.0", PLATFORM,
                             load_private_key(other))
    flipped, unsigned = base / "bad" / "flipped.tar", base / "bad" / "unsigned.tar"
    _flip_a_byte(broken, flipped)
    _without_signature(broken, unsigned)
    return Bundles(key, public, first, second, broken, other_key, flipped, unsigned)


def test_a_release_bundle_lists_and_signs_every_file(bundles: Bundles, tmp_path: Path) -> None:
    assert bundles.first.name == f"carbon-gateway-1.0.0-{PLATFORM}.tar"
    with tarfile.open(bundles.first) as tar:
        names = tar.getnames()
        manifest = json.loads(tar.extractfile(MANIFEST).read())   # type: ignore[union-attr]
        for name, digest in manifest["files"].items():
            assert hashlib.sha256(tar.extractfile(name).read()).hexdigest() == digest   # type: ignore[union-attr]
    assert names[:2] == [MANIFEST, SIGNATURE] and set(names[2:]) == set(manifest["files"])
    wheels = {n.split("/")[1].split("-")[0].lower() for n in manifest["files"]}
    # the project and every direct dependency (wheel names use _ for -)
    assert {"carbon_edge_gateway", "pymodbus", "cryptography", "numpy", "flask", "werkzeug", "markupsafe", "click",
            "sqlite_utils", "paho_mqtt", "cheroot", "apscheduler", "tomli_w", "wtforms", "flask_wtf"} <= wheels
    assert manifest["version"] == "1.0.0" and manifest["platform"] == PLATFORM
    assert manifest["dependencies"] == "included"
    assert {"systemd/install.sh", "systemd/carbon-gateway.service"} <= set(names)   # a box needs no checkout
    # the private key is not in it, and the public key verifies it
    assert b"PRIVATE KEY" not in bundles.first.read_bytes()
    assert verify_bundle(bundles.first, [load_private_key(bundles.key).public_key()], tmp_path / "u").version == "1.0.0"


@dataclass(frozen=True)
class Box:
    root: Path
    config: Path
    data: Path
    web_port: int
    scripts: Path

    @property
    def prefix(self) -> Path:
        return self.root / "opt" / "carbon-gateway"

    def current(self) -> str:
        return os.readlink(self.prefix / "current")

    def health(self) -> dict:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}/healthz", timeout=3) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return json.loads(exc.read())
        except OSError:
            return {}

    def cli(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.prefix / "current" / "bin" / "python"), "-m", "gateway", *args],
                              capture_output=True, text=True, timeout=timeout, env=clean_env(), cwd=self.root)

    def upgrade(self, bundle: Path | str, wheelhouse: Wheelhouse, *extra: str) -> subprocess.CompletedProcess[str]:
        """``upgrade BUNDLE`` (or ``upgrade --request FILE`` with bundle = "--request=FILE")."""
        return self.cli("upgrade", str(bundle), "--config", str(self.config), "--data-dir", str(self.data),
                        "--prefix", str(self.prefix), "--keys", str(self.root / "etc" / "carbon-gateway" / "release-keys"),
                        "--stop-command", f"sh {self.scripts / 'stop.sh'}", "--start-command",
                        f"sh {self.scripts / 'start.sh'}", "--python", base_python(), "--find-links",
                        str(wheelhouse.directory), "--health-timeout", "60", *extra)

    def start(self) -> None:
        subprocess.run(["sh", str(self.scripts / "start.sh")], check=True, timeout=30)

    def stop(self) -> None:
        subprocess.run(["sh", str(self.scripts / "stop.sh")], check=True, timeout=90)


def _service_scripts(directory: Path, root: Path, config: Path, data: Path) -> None:
    """What systemctl start/stop would do, for a box without systemd: run current/bin/python -m gateway run."""
    directory.mkdir()
    pidfile, log = directory / "daemon.pid", directory / "daemon.log"
    (directory / "start.sh").write_text(
        f"cd {data}\nsetsid {root}/opt/carbon-gateway/current/bin/python -m gateway run --config {config} "
        f"--data-dir {data} >> {log} 2>&1 < /dev/null &\necho $! > {pidfile}\n")
    # wait for the process to end; a zombie (nobody reaps it in a container) counts as ended
    (directory / "stop.sh").write_text(
        f"pid=$(cat {pidfile} 2>/dev/null) || exit 0\nkill -TERM $pid 2>/dev/null || exit 0\n"
        "for i in $(seq 1 600); do\n"
        "  state=$(awk '{print $3}' /proc/$pid/stat 2>/dev/null) || exit 0\n"
        "  [ \"$state\" = Z ] && exit 0\n  sleep 0.1\ndone\nkill -KILL $pid\n")


def _db_state(box: Box) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(box.data.glob("gateway.db*"))}


def _box_state(box: Box) -> tuple:
    return (box.current(), sorted(p.name for p in (box.prefix / "releases").iterdir()),
            sorted(p.name for p in (box.data / "backups").glob("*")), _db_state(box))


def test_install_offline_upgrade_roll_back_and_refuse(bundles: Bundles, wheelhouse: Wheelhouse,
                                                      tmp_path: Path) -> None:
    root = tmp_path / "root"
    # the first install: no network at all (a network namespace with no interface but loopback, down)
    install = ["bash", str(REPO / "systemd" / "install.sh"), "--root", str(root), "--bundle", str(bundles.first),
               "--release-key", str(bundles.public), "--user", "root", "--python", base_python(), "--no-start"]
    offline = subprocess.run(["unshare", "-n", "--", *install], capture_output=True, text=True, timeout=600,
                             env=clean_env())
    if offline.returncode != 0 and "unshare" in offline.stderr:
        pytest.skip(f"no network namespace on this machine ({offline.stderr.strip()})")
    assert offline.returncode == 0, offline.stdout + offline.stderr
    assert "bundle signature checked" in offline.stdout
    web_port = free_port()
    config = root / "etc" / "carbon-gateway" / "gateway.toml"
    shipped = next((root / "opt" / "carbon-gateway" / "current").glob("lib/python3*/site-packages/gateway/shipped"))
    config.write_text((shipped / "gateway.toml").read_text().replace("port = 8080", f"port = {web_port}")
                      .replace("[sync]\nenabled = true", "[sync]\nenabled = false"))
    box = Box(root, config, root / "var" / "lib" / "carbon-gateway", web_port, tmp_path / "service")
    _service_scripts(box.scripts, root, config, box.data)
    assert box.current() == "releases/1.0.0"
    box.start()
    try:
        wait_until(lambda: box.health().get("status") == "ok", timeout_s=90, interval_s=0.5,
                   message="1.0.0 healthy")
        assert box.health()["version"] == "1.0.0"

        # --- upgrade to 1.1.0, as the web UI asks for it: checked and staged by the daemon's code, run by the
        # root unit's command (carbon-gateway-upgrade.service runs `upgrade --request`) ----------------------
        upload = tmp_path / "upload.tar"
        shutil.copy(bundles.second, upload)
        stage_request(upload, "carbon-gateway-1.1.0.tar", box.data, [root / "etc" / "carbon-gateway" / "release-keys"],
                      "1.0.0", "admin")
        result = box.upgrade(f"--request={upgrade_dir(box.data) / REQUEST}", wheelhouse)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "upgraded 1.0.0 -> 1.1.0" in result.stdout
        outcome = json.loads((upgrade_dir(box.data) / RESULT).read_text())
        assert (outcome["outcome"], outcome["to"], outcome["requested_by"]) == ("upgraded", "1.1.0", "admin")
        assert not (upgrade_dir(box.data) / REQUEST).exists()
        assert box.current() == "releases/1.1.0" and box.health()["version"] == "1.1.0"
        assert (box.prefix / "releases" / "1.0.0").is_dir()     # the previous release stays, to go back to
        backups_after_second = sorted((box.data / "backups").glob("*"))
        assert len(backups_after_second) == 1

        # --- 1.2.0 migrates the store and never becomes healthy: rolled back by itself ---------------------
        result = box.upgrade(bundles.broken, wheelhouse, "--health-timeout", "20")
        assert result.returncode == 1, result.stdout + result.stderr
        assert "rolled back to 1.1.0" in result.stdout and "the pre-upgrade store was restored" in result.stdout
        assert "m900_upgrade_rollback_test" in result.stderr
        assert box.current() == "releases/1.1.0"
        assert sorted(p.name for p in (box.prefix / "releases").iterdir()) == ["1.0.0", "1.1.0"]   # 1.2.0 removed
        wait_until(lambda: box.health().get("status") == "ok", timeout_s=60, interval_s=0.5,
                   message="1.1.0 healthy again")
        assert box.health()["version"] == "1.1.0"
    finally:
        box.stop()

    # the store: the migration is gone, the readings and the audit log are intact and verify
    with sqlite3.connect(box.data / "gateway.db") as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert "upgrade_rollback_test" not in tables
        assert db.execute("SELECT COUNT(*) FROM readings").fetchone()[0] > 0
    verify = box.cli("audit", "verify", "--config", str(config), "--data-dir", str(box.data))
    assert verify.returncode == 0, verify.stdout + verify.stderr
    listed = box.cli("audit", "list", "--config", str(config), "--data-dir", str(box.data), "--json")
    entries = [json.loads(line) for line in listed.stdout.splitlines()]
    actions = [entry["action"] for entry in entries]
    assert "upgrade.done" in actions and "upgrade.rolled_back" in actions, actions
    rolled = next(e for e in entries if e["action"] == "upgrade.rolled_back")
    assert rolled["detail"]["store_restored"] is True and rolled["detail"]["from"] == "1.1.0"

    # --- refusals: each names its reason, and nothing changes ----------------------------------------------
    before = _box_state(box)
    for bundle, reason in ((bundles.flipped, "tampered"), (bundles.other_key, "no trusted release key"),
                           (bundles.unsigned, "unsigned"), (bundles.first, "downgrade")):
        result = box.upgrade(bundle, wheelhouse)
        assert result.returncode == 1, (bundle, result.stdout, result.stderr)
        assert reason in result.stderr and "Traceback" not in result.stderr, (bundle, result.stderr)
        assert _box_state(box) == before, bundle
