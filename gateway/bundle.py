"""Release bundles: build the wheels of a release, and the signed, offline bundle that carries them.

A bundle is ``carbon-gateway-<version>-<platform>.tar`` holding::

    wheels/*.whl          the project wheel and every dependency wheel for the platform
    systemd/              install.sh and carbon-gateway.service of the release (a box needs no checkout)
    MANIFEST.json         {"name", "version", "platform", "python", "files": {path: sha256}}
    MANIFEST.json.sig     Ed25519 signature over the MANIFEST.json bytes, by the release key

``scripts/release`` builds one per platform; :mod:`gateway.upgrade` verifies and installs one with
``pip --no-index --find-links`` (nothing is downloaded on the box).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

PROJECT = "carbon-edge-gateway"
MANIFEST = "MANIFEST.json"
SIGNATURE = "MANIFEST.json.sig"

#: pip --platform tags per bundle platform (manylinux wheels for glibc 2.28+ boxes; Raspberry Pi OS 64-bit
#: bookworm has glibc 2.36, Debian 12 the same).
PLATFORMS: dict[str, tuple[str, ...]] = {
    "linux_x86_64": ("manylinux_2_28_x86_64", "manylinux2014_x86_64", "manylinux_2_17_x86_64",
                     "manylinux_2_34_x86_64", "linux_x86_64"),
    "linux_aarch64": ("manylinux_2_28_aarch64", "manylinux2014_aarch64", "manylinux_2_17_aarch64",
                      "manylinux_2_34_aarch64", "linux_aarch64"),
}
# Files of a source tree that never go into a build (state, caches, other builds).
_NOT_SOURCE = (".git", ".venv", "build", "dist", "var", "__pycache__", "*.egg-info", ".pytest_cache",
               ".mypy_cache", ".hypothesis", "test-artifacts", "*.pyc")


class BundleError(Exception):
    """A bundle that cannot be built, or is refused; the message names the reason and the fix."""


def _run(command: Sequence[str | Path], what: str, cwd: Path | None = None) -> str:
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True, cwd=cwd, timeout=900)
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-15:])
        raise BundleError(f"{what} failed (exit {result.returncode}):\n{tail}")
    return result.stdout


def build_wheel(source: Path, out_dir: Path, version: str | None = None) -> Path:
    """Build the project wheel from a clean copy of ``source`` (no stale build/ files, no local state).

    :param version: build this version instead of the one in pyproject.toml (tests bump it).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="carbon-gateway-build-") as scratch:
        tree = Path(scratch) / "src"
        shutil.copytree(source, tree, ignore=shutil.ignore_patterns(*_NOT_SOURCE), symlinks=True)
        if version is not None:
            set_version(tree, version)
        before = set(out_dir.glob("*.whl"))
        _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--disable-pip-version-check",
              "--wheel-dir", out_dir, tree], "building the project wheel")
        built = [p for p in out_dir.glob("carbon_edge_gateway-*.whl")
                 if p not in before or (version and f"-{version}-" in p.name)]
        if not built:
            raise BundleError(f"pip built no carbon_edge_gateway wheel in {out_dir}")
        return max(built, key=lambda p: p.stat().st_mtime)


def set_version(tree: Path, version: str) -> None:
    """Write ``version`` into a source tree's pyproject.toml and gateway/__init__.py."""
    for relative, prefix in (("pyproject.toml", "version = "), ("gateway/__init__.py", "__version__ = ")):
        path = tree / relative
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        for index, line in enumerate(lines):
            if line.startswith(prefix):
                lines[index] = f'{prefix}"{version}"\n'
                break
        else:
            raise BundleError(f"{path}: no line starting with {prefix!r} to set the version in")
        path.write_text("".join(lines), encoding="utf-8")


def download_dependencies(wheel: Path, out_dir: Path, platform: str | None = None,
                          python_version: str = f"{sys.version_info.major}.{sys.version_info.minor}") -> None:
    """Every dependency of ``wheel`` as a wheel in ``out_dir`` (binary only: a box has no compiler).

    :param platform: a key of :data:`PLATFORMS`; None: this machine's platform.
    :raises BundleError: a dependency has no wheel for the platform (pip's message names it).
    """
    command: list[str | Path] = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                                 "--only-binary=:all:", "--dest", out_dir, "--find-links", out_dir]
    if platform is not None:
        command += _platform_args(platform, python_version)
    _run([*command, wheel], f"downloading the dependency wheels for {platform or 'this machine'}")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path}: not a readable PEM private key ({exc}); make one with "
                          "scripts/release --new-key FILE") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise BundleError(f"{path}: not an Ed25519 key; release keys are Ed25519")
    return key


def new_release_key(path: Path) -> Path:
    """Write a new Ed25519 release key (PEM, 0600) at ``path`` and its public key beside it (``.pub``)."""
    key = Ed25519PrivateKey.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "xb", opener=lambda p, f: os.open(p, f, 0o600)) as handle:
        handle.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    public = path.with_suffix(".pub")   # release.pem -> release.pub
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return public


def write_bundle(out: Path, wheels: Iterable[Path], version: str, platform: str, key: Ed25519PrivateKey,
                 extra: Mapping[str, object] | None = None, systemd: Iterable[Path] = ()) -> Path:
    """Write the signed tar ``out`` holding ``wheels`` (and the install script and unit, under systemd/)."""
    files = {f"wheels/{w.name}": w for w in sorted(wheels, key=lambda p: p.name)}
    files.update({f"systemd/{f.name}": f for f in systemd})
    manifest = {"name": PROJECT, "version": version, "platform": platform,
                "files": {name: sha256_file(path) for name, path in files.items()}, **(extra or {})}
    manifest_bytes = (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()
    signature = key.sign(manifest_bytes)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in ((MANIFEST, manifest_bytes), (SIGNATURE, signature)):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
        for name, path in files.items():
            tar.add(path, arcname=name, recursive=False)
    return out


@dataclass(frozen=True)
class Bundle:
    """A verified bundle unpacked in ``directory``."""

    directory: Path
    version: str
    platform: str
    manifest: dict
    key_fingerprint: str

    @property
    def wheels(self) -> Path:
        return self.directory / "wheels"


def key_fingerprint(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def load_public_keys(paths: Iterable[Path]) -> list[Ed25519PublicKey]:
    """The trusted release keys (PEM public keys; a directory: every ``*.pub`` in it)."""
    keys: list[Ed25519PublicKey] = []
    for path in paths:
        for file in sorted(path.glob("*.pub")) if path.is_dir() else [path]:
            try:
                key = serialization.load_pem_public_key(file.read_bytes())
            except (OSError, ValueError) as exc:
                raise BundleError(f"{file}: not a readable PEM public key ({exc})") from exc
            if isinstance(key, Ed25519PublicKey):
                keys.append(key)
    return keys


def verify_bundle(bundle: Path, trusted: Sequence[Ed25519PublicKey], into: Path) -> Bundle:
    """Check ``bundle`` completely and unpack it into ``into``; nothing is installed.

    :raises BundleError: not a bundle, no signature (unsigned), a signature by no trusted key (untrusted),
        a file whose SHA-256 differs from the manifest, or a file the manifest does not list (tampered).
    """
    if not trusted:
        raise BundleError("no trusted release key on this box: put the release public key in "
                          "/etc/carbon-gateway/release-keys/ (docs/operations.md)")
    try:
        tar = tarfile.open(bundle, "r:")
    except (OSError, tarfile.TarError) as exc:
        raise BundleError(f"{bundle}: not a release bundle (not a readable tar file: {exc}); the file is damaged "
                          "or not what scripts/release writes") from exc
    with tar:
        members = {m.name: m for m in tar.getmembers()}
        if MANIFEST not in members:
            raise BundleError(f"{bundle}: refused, no {MANIFEST}: not a release bundle")
        if SIGNATURE not in members:
            raise BundleError(f"{bundle}: refused, unsigned (no {SIGNATURE}); only signed bundles are installed")
        manifest_bytes = _read_member(tar, members[MANIFEST])
        signature = _read_member(tar, members[SIGNATURE])
        signer = None
        for key in trusted:
            try:
                key.verify(signature, manifest_bytes)
            except InvalidSignature:
                continue
            signer = key
            break
        if signer is None:
            raise BundleError(f"{bundle}: refused, the signature is by no trusted release key (signed by another "
                              "key, or the manifest was changed); get the bundle from your release channel")
        manifest = json.loads(manifest_bytes)
        listed: dict[str, str] = manifest.get("files", {})
        extra = sorted(set(members) - set(listed) - {MANIFEST, SIGNATURE})
        if extra:
            raise BundleError(f"{bundle}: refused, tampered: {extra[0]} is not in the signed manifest")
        into.mkdir(parents=True, exist_ok=True)
        for name, expected in sorted(listed.items()):
            member = members.get(name)
            folder, _, file_name = name.partition("/")
            if member is None or not member.isfile() or folder not in ("wheels", "systemd") or "/" in file_name \
                    or not file_name or file_name.startswith("."):
                raise BundleError(f"{bundle}: refused, tampered: {name} is missing or not a plain file")
            data = _read_member(tar, member)
            if hashlib.sha256(data).hexdigest() != expected:
                raise BundleError(f"{bundle}: refused, tampered: the SHA-256 of {name} differs from the signed "
                                  "manifest; the bundle was changed or damaged in transit, copy it again")
            target = into / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
    return Bundle(into, str(manifest["version"]), str(manifest.get("platform", "")), manifest,
                  key_fingerprint(signer))


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    handle = tar.extractfile(member)
    if handle is None:
        raise BundleError(f"{member.name}: not a file in the bundle")
    return handle.read()


def project_version(source: Path) -> str:
    import tomllib

    return str(tomllib.loads((source / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"])


def release(source: Path, key_path: Path, out_dir: Path, platforms: Sequence[str], version: str | None = None,
            python_version: str = "3.11", with_dependencies: bool = True,
            local_wheels: Path | None = None) -> list[Path]:
    """Build one signed bundle per platform from the source tree; returns their paths.

    :param with_dependencies: False: only the project wheel (tests, which install the dependencies from
        a local wheel directory instead; such a bundle says so in its manifest).
    :param local_wheels: take dependency wheels from this directory only (no index).
    """
    key = load_private_key(key_path)
    version = version or project_version(source)
    bundles = []
    with tempfile.TemporaryDirectory(prefix="carbon-gateway-release-") as scratch:
        project = build_wheel(source, Path(scratch) / "project", version)
        for platform in platforms:
            wheels = Path(scratch) / platform
            wheels.mkdir()
            shutil.copy2(project, wheels / project.name)
            if with_dependencies:
                if local_wheels is not None:
                    for wheel in local_wheels.glob("*.whl"):
                        if wheel.name != project.name and not wheel.name.startswith("carbon_edge_gateway-"):
                            shutil.copy2(wheel, wheels / wheel.name)
                    _run([sys.executable, "-m", "pip", "download", "--quiet", "--no-index", "--find-links", wheels,
                          "--only-binary=:all:", "--dest", wheels, *_platform_args(platform, python_version),
                          wheels / project.name], f"checking the dependency wheels for {platform}")
                else:
                    download_dependencies(wheels / project.name, wheels, platform, python_version)
            extra = {"python": python_version, "dependencies": "included" if with_dependencies else
                     "not included: install with --find-links to a directory holding them"}
            out = out_dir / f"carbon-gateway-{version}-{platform}.tar"
            bundles.append(write_bundle(out, sorted(wheels.glob("*.whl")), version, platform, key, extra,
                                        systemd=sorted((source / "systemd").glob("*"))))
    return bundles


def _platform_args(platform: str, python_version: str) -> list[str]:
    if platform not in PLATFORMS:
        raise BundleError(f"platform {platform!r}: use one of {', '.join(PLATFORMS)}")
    args: list[str] = []
    for tag in PLATFORMS[platform]:
        args += ["--platform", tag]
    return [*args, "--python-version", python_version, "--implementation", "cp"]


def main(argv: Sequence[str] | None = None) -> int:
    """``scripts/release``: build signed offline bundles (see the module docstring)."""
    import argparse

    parser = argparse.ArgumentParser(prog="scripts/release", description=(
        "Build carbon-gateway-<version>-<platform>.tar: the project wheel and every dependency wheel, a manifest "
        "with the SHA-256 of each file, and an Ed25519 signature over it."))
    parser.add_argument("--key", type=Path, help="the release private key (PEM); it never leaves your build machine")
    parser.add_argument("--new-key", type=Path, metavar="FILE",
                        help="make a new release key pair (FILE and FILE.pub with .pem replaced) and stop")
    parser.add_argument("--platform", action="append", choices=sorted(PLATFORMS),
                        help="repeat for several; default: all (linux_x86_64 and linux_aarch64)")
    parser.add_argument("--out", type=Path, default=Path("dist"), help="where the bundles go (default: dist/)")
    parser.add_argument("--version", help="the version to build (default: pyproject.toml's)")
    parser.add_argument("--python", default="3.11", help="the boxes' Python (default 3.11: Debian 12, Raspberry Pi OS)")
    parser.add_argument("--source", type=Path, default=Path(__file__).resolve().parent.parent, help=argparse.SUPPRESS)
    parser.add_argument("--wheels-from", type=Path, help="take dependency wheels from this directory (no index)")
    parser.add_argument("--no-dependencies", action="store_true",
                        help="only the project wheel (for tests; the box then needs the dependencies another way)")
    args = parser.parse_args(argv)
    try:
        if args.new_key is not None:
            public = new_release_key(args.new_key)
            print(f"release key {args.new_key} (keep it secret, off the boxes); public key {public}: "
                  "install it on the boxes with install.sh --release-key")
            return 0
        if args.key is None:
            parser.error("--key FILE is required (make one with --new-key FILE)")
        for bundle in release(args.source, args.key, args.out, args.platform or sorted(PLATFORMS), args.version,
                              args.python, not args.no_dependencies, args.wheels_from):
            print(bundle)
    except BundleError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
