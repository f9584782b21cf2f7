"""The Upgrade page (admin only): an uploaded bundle is checked completely and then requested from the root
upgrade unit; a refused one names the reason and requests nothing. The upgrade itself: tests/test_upgrade.py."""

from __future__ import annotations

import html
import io
import json
import tarfile
from pathlib import Path

import pytest

import gateway.runtime
from gateway import __version__
from gateway.bundle import new_release_key, write_bundle
from gateway.upgrade import REQUEST, upgrade_dir
from tests.webui.conftest import add_users, login, post


def text(response) -> str:  # type: ignore[no-untyped-def]
    return html.unescape(response.get_data(as_text=True))


def _bundle(directory: Path, version: str, key: Path) -> bytes:
    """A signed bundle holding a stand-in wheel (the page checks signature, files and version, not the wheel)."""
    from gateway.bundle import load_private_key

    wheel = directory / f"carbon_edge_gateway-{version}-py3-none-any.whl"
    wheel.write_bytes(b"stand-in wheel " + version.encode())
    out = write_bundle(directory / f"b-{version}.tar", [wheel], version, "linux_x86_64", load_private_key(key))
    return out.read_bytes()


@pytest.fixture
def release_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    keys = tmp_path / "release-keys"
    key = tmp_path / "signing" / "release.pem"
    keys.mkdir()
    new_release_key(key).rename(keys / "release.pub")
    monkeypatch.setattr(gateway.runtime, "RELEASE_KEYS_DIR", keys)
    return key


def _upload(client, data: bytes, name: str = "bundle.tar"):  # type: ignore[no-untyped-def]
    return post(client, "/upgrade", {"file": (io.BytesIO(data), name), "confirm": "y"},
                content_type="multipart/form-data")


def test_a_checked_bundle_is_requested_and_audited(admin, gateway, release_keys: Path, tmp_path: Path) -> None:
    page = text(admin.get("/upgrade"))
    assert f"Running release: {__version__}" in page and "no-release-keys" not in page
    response = _upload(admin, _bundle(tmp_path, "99.0.0", release_keys))
    assert response.status_code == 302, text(response)
    request = json.loads((upgrade_dir(gateway.config.data_dir) / REQUEST).read_text())
    assert (request["from"], request["to"], request["requested_by"]) == (__version__, "99.0.0", "admin")
    assert Path(request["bundle"]).is_file()
    page = text(admin.get("/upgrade"))
    assert "The upgrade to 99.0.0 is waiting to run." in page
    assert "upgrade.requested" in text(admin.get("/audit"))


@pytest.mark.parametrize("case, reason", [("flipped", "tampered"), ("other key", "no trusted release key"),
                                          ("downgrade", "a downgrade"), ("not a bundle", "not a release bundle")])
def test_a_refused_bundle_names_the_reason_and_requests_nothing(admin, gateway, release_keys: Path, tmp_path: Path,
                                                                case: str, reason: str) -> None:
    if case == "flipped":
        data = bytearray(_bundle(tmp_path, "99.0.0", release_keys))
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            wheel = next(m for m in tar.getmembers() if m.name.startswith("wheels/"))
        data[wheel.offset_data + 3] ^= 0x01      # one bit of the wheel's bytes, not of a tar header
        data = bytes(data)
    elif case == "other key":
        other = tmp_path / "other.pem"
        new_release_key(other)
        data = _bundle(tmp_path, "99.0.0", other)
    elif case == "downgrade":
        data = _bundle(tmp_path, "0.0.1", release_keys)
    else:
        data = b"hello, this is no tar file" * 40
    response = _upload(admin, data)
    assert response.status_code == 400
    page = text(response)
    assert "Not upgraded:" in page and reason in page, page
    assert not (upgrade_dir(gateway.config.data_dir) / REQUEST).exists()
    assert not list(upgrade_dir(gateway.config.data_dir).glob("*.tar"))      # the upload is not kept
    assert "upgrade.refused" in text(admin.get("/audit"))


def test_only_an_admin_may_upgrade(admin, app, gateway, release_keys: Path, tmp_path: Path) -> None:
    add_users(admin)
    tech = app.test_client()
    login(tech, "tech")
    assert tech.get("/upgrade").status_code == 403
    response = tech.post("/upgrade", data={"file": (io.BytesIO(_bundle(tmp_path, "99.0.0", release_keys)), "b.tar"),
                                           "confirm": "y"}, content_type="multipart/form-data")
    assert response.status_code in (400, 403)     # no form to take a CSRF token from, and no permission
    assert not (upgrade_dir(gateway.config.data_dir) / REQUEST).exists()
    assert "Upgrade" not in text(tech.get("/"))
