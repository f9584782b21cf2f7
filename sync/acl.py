"""Broker access control for the gateways a receiver trusts: mosquitto's dynamic security plugin config.

Each gateway may publish only on ``<prefix>/<gateway_id>/batch`` and subscribe to and receive only
``<prefix>/<gateway_id>/ack``; receivers may take every gateway's batches (also through their shared
subscription) and publish acks. Everything else is denied by default (issue 16). The file is the JSON
``mosquitto_dynamic_security.so`` reads (``plugin_opt_config_file``); passwords are stored as that plugin
stores them: PBKDF2-HMAC-SHA512, 64 bytes, a random 12-byte salt, base64.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from sync.errors import SyncError

#: PBKDF2 rounds for the stored passwords (mosquitto_ctrl writes 101; more costs an attacker more).
PASSWORD_ITERATIONS = 1000


def trusted_gateway_ids(trusted_dir: Path) -> list[str]:
    """The gateways a receiver trusts: ``<id>.pub`` files and ``<id>/`` folders of its trusted dir."""
    if not trusted_dir.is_dir():
        return []
    ids = {p.stem for p in trusted_dir.glob("*.pub") if p.is_file()}
    ids |= {p.name for p in trusted_dir.iterdir() if p.is_dir() and any(p.glob("*.pub"))}
    return sorted(i for i in ids if i and not i.startswith("."))


def read_passwords(path: Path) -> dict[str, str]:
    """``username:password`` lines (``#`` comments and blank lines skipped).

    :raises SyncError: a line without a colon, or a name twice, naming the line.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SyncError(f"{path}: cannot read the password file ({exc})") from exc
    found: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, password = line.partition(":")
        if not sep or not name or not password:
            raise SyncError(f"{path}:{number}: expected username:password")
        if name in found:
            raise SyncError(f"{path}:{number}: {name} is listed twice")
        found[name] = password
    return found


def _client(username: str, roles: Iterable[str], password: str | None, text: str) -> dict:
    client: dict = {"username": username, "textName": text, "roles": [{"rolename": r} for r in roles]}
    if password is not None:
        salt = os.urandom(12)
        digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, PASSWORD_ITERATIONS, 64)
        client.update(password=base64.b64encode(digest).decode(), salt=base64.b64encode(salt).decode(),
                      iterations=PASSWORD_ITERATIONS)
    return client


def dynsec_config(gateway_ids: Iterable[str], receivers: Iterable[str], topic_prefix: str = "carbon",
                  share_group: str = "receivers", passwords: Mapping[str, str] | None = None) -> dict:
    """The dynamic security JSON for these gateways and receiver usernames.

    A client without a password in ``passwords`` can still connect with a client certificate when the
    listener sets ``use_identity_as_username`` (its certificate's CN is its username).
    """
    passwords = passwords or {}
    roles = [{"rolename": "receiver", "acls": [
        {"acltype": "subscribePattern", "topic": f"$share/{share_group}/{topic_prefix}/+/batch", "allow": True},
        {"acltype": "subscribePattern", "topic": f"{topic_prefix}/+/batch", "allow": True},
        {"acltype": "publishClientReceive", "topic": f"{topic_prefix}/+/batch", "allow": True},
        {"acltype": "publishClientSend", "topic": f"{topic_prefix}/+/ack", "allow": True},
    ]}]
    clients = [_client(name, ["receiver"], passwords.get(name), "carbon-gateway receiver") for name in receivers]
    for gateway_id in gateway_ids:
        if any(c in gateway_id for c in "+#/"):
            raise SyncError(f"gateway id {gateway_id!r} cannot be part of a topic (no +, # or /)")
        role = f"gateway-{gateway_id}"
        roles.append({"rolename": role, "acls": [
            {"acltype": "publishClientSend", "topic": f"{topic_prefix}/{gateway_id}/batch", "allow": True},
            {"acltype": "subscribePattern", "topic": f"{topic_prefix}/{gateway_id}/ack", "allow": True},
            {"acltype": "publishClientReceive", "topic": f"{topic_prefix}/{gateway_id}/ack", "allow": True},
        ]})
        clients.append(_client(gateway_id, [role], passwords.get(gateway_id), f"gateway {gateway_id}"))
    return {
        "defaultACLAccess": {"publishClientSend": False, "publishClientReceive": False, "subscribe": False,
                             "unsubscribe": True},
        "clients": clients, "groups": [], "roles": roles,
    }


__all__ = ["PASSWORD_ITERATIONS", "dynsec_config", "read_passwords", "trusted_gateway_ids"]
