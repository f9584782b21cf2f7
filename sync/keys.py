"""Key files: the gateway's Ed25519 signing key and the receiver's X25519 sealing key (files 0600)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from sync.errors import KeyFileError

GATEWAY_KEY = "gateway-signing.key"
GATEWAY_PUB = "gateway-signing.pub"
RECEIVER_KEY = "receiver-sealing.key"
RECEIVER_PUB = "receiver-sealing.pub"


def key_id(public_key: Ed25519PublicKey | X25519PublicKey) -> str:
    """Short fingerprint: the first 8 bytes of SHA-256 over the raw public key, in hex."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _write_private(path: Path, key: Ed25519PrivateKey | X25519PrivateKey) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise KeyFileError(f"{path.parent}: cannot create the keys directory ({exc.strerror}): check --data-dir "
                           "names a writable directory") from exc
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    fd = os.open(path.with_suffix(".pub"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # 0600 like every key file
    with os.fdopen(fd, "wb") as handle:
        handle.write(public)


def ensure_gateway_key(keys_dir: Path) -> Ed25519PrivateKey:
    """The gateway's signing key, generated on first use."""
    path = keys_dir / GATEWAY_KEY
    if not path.exists():
        _write_private(path, Ed25519PrivateKey.generate())
    key = load_private(path)
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: not an Ed25519 private key; move it away and restart to generate a new one")
    return key


def ensure_receiver_key(keys_dir: Path) -> X25519PrivateKey:
    """A receiver sealing key pair (the cloud side, or the demo's local stand-in)."""
    path = keys_dir / RECEIVER_KEY
    if not path.exists():
        _write_private(path, X25519PrivateKey.generate())
    key = load_private(path)
    if not isinstance(key, X25519PrivateKey):
        raise KeyFileError(f"{path}: not an X25519 private key")
    return key


def load_private(path: Path) -> Ed25519PrivateKey | X25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read ({exc.strerror})") from exc
    except ValueError as exc:
        raise KeyFileError(f"{path}: not a PEM private key (the file is damaged or holds something else): restore "
                           "it from your copy, or move it away and run `carbon-gateway keys` to make a new one "
                           "(then give the receiver the new public key)") from exc
    if not isinstance(key, (Ed25519PrivateKey, X25519PrivateKey)):
        raise KeyFileError(f"{path}: unsupported key type {type(key).__name__}; use Ed25519 or X25519")
    return key


def load_public(path: Path) -> Ed25519PublicKey | X25519PublicKey:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read ({exc.strerror}); copy the peer's public key there") from exc
    except ValueError as exc:
        raise KeyFileError(f"{path}: not a PEM public key (the file is damaged or holds something else): copy the "
                           "right .pub file there again") from exc
    if not isinstance(key, (Ed25519PublicKey, X25519PublicKey)):
        raise KeyFileError(f"{path}: unsupported key type {type(key).__name__}")
    return key


def _retire(path: Path) -> str:
    """Keep a replaced key pair next to the new one, named by its key id; returns that id."""
    old = load_private(path)
    old_id = key_id(old.public_key())
    path.rename(path.with_name(f"{path.stem}.{old_id}.key"))
    pub = path.with_suffix(".pub")
    if pub.exists():
        pub.rename(path.with_name(f"{path.stem}.{old_id}.pub"))
    return old_id


def rotate_gateway_key(keys_dir: Path) -> tuple[str, str]:
    """Replace the signing key; returns (old id, new id).

    Batches already in the outbox stay signed by the old key, so the receiver must trust both until
    they have drained: copy the new ``gateway-signing.pub`` to ``trusted/<gateway_id>/`` there.
    """
    path = keys_dir / GATEWAY_KEY
    if not path.exists():
        raise KeyFileError(f"{path}: no signing key to rotate; run `carbon-gateway keys` to create one")
    old_id = _retire(path)
    return old_id, key_id(ensure_gateway_key(keys_dir).public_key())


def rotate_receiver_key(keys_dir: Path) -> tuple[str, str]:
    """Replace the receiver's sealing key; returns (old id, new id).

    The old private key stays (``receiver-sealing.<id>.key``) so batches sealed to it, which may still
    sit in gateways' outboxes, can be opened; delete it only when no gateway uses it any more.
    """
    path = keys_dir / RECEIVER_KEY
    if not path.exists():
        raise KeyFileError(f"{path}: no receiver key to rotate; run `carbon-gateway keys --receiver` first")
    old_id = _retire(path)
    return old_id, key_id(ensure_receiver_key(keys_dir).public_key())


def receiver_keys(keys_dir: Path) -> dict[str, X25519PrivateKey]:
    """Every sealing key the receiver holds (current and retired), by key id."""
    found: dict[str, X25519PrivateKey] = {}
    for path in sorted(keys_dir.glob("receiver-sealing*.key")):
        key = load_private(path)
        if isinstance(key, X25519PrivateKey):
            found[key_id(key.public_key())] = key
    if not found:
        raise KeyFileError(f"{keys_dir / RECEIVER_KEY}: no receiver key; run `carbon-gateway keys --receiver "
                           f"--data-dir {keys_dir.parent}` to create one")
    return found


def trusted_gateway_keys(trusted_dir: Path, gateway_id: str) -> dict[str, Ed25519PublicKey]:
    """A gateway's trusted signing keys by key id: ``<gateway_id>.pub`` and ``<gateway_id>/*.pub``."""
    if not gateway_id or "/" in gateway_id or gateway_id.startswith("."):
        return {}
    paths = [trusted_dir / f"{gateway_id}.pub", *sorted((trusted_dir / gateway_id).glob("*.pub"))]
    found: dict[str, Ed25519PublicKey] = {}
    for path in paths:
        if path.is_file():
            key = load_public(path)
            if isinstance(key, Ed25519PublicKey):
                found[key_id(key)] = key
    return found
