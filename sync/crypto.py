"""Sealing and signing batches.

A message on the wire is ``b"CEG1" | u16 header_len | header | u32 sealed_len | sealed | signature``:
the header is canonical JSON (gateway id, sequence, previous batch hash, key ids, reading count);
``sealed`` is HPKE (RFC 9180, X25519 / HKDF-SHA256 / AES-256-GCM, base mode) of the payload to the
receiver's public key with the header as ``info``, so a header cannot be moved onto other ciphertext;
``signature`` is Ed25519 by the gateway over everything before it (HPKE alone does not prove the sender).
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from sync.errors import BatchRejected

MAGIC = b"CEG1"
SIGNATURE_BYTES = 64
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
_SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)


#: What a batch carries (header ``kind``); a receiver refuses a kind it does not know as ``malformed``.
KINDS = ("readings", "derived")


@dataclass(frozen=True)
class BatchHeader:
    gateway_id: str
    seq: int
    prev_hash: str          # hex SHA-256 of the previous message, "" for the first
    gateway_key_id: str
    receiver_key_id: str
    count: int
    created_at: float
    #: The sync stream (epoch): "" is a gateway's first; a restore starts a new one (random hex), so
    #: (stream, seq) and (origin stream, reading id) are never reused (docs/sync-protocol.md, issue 16).
    stream: str = ""
    #: The streams this gateway's data came through, oldest first, each (stream, first seq, first
    #: reading id); the last is ``stream`` itself. A reading belongs to the last entry whose first
    #: reading id is at most its id. Empty for the first stream.
    lineage: tuple[tuple[str, int, int], ...] = ()
    kind: str = "readings"

    def to_bytes(self) -> bytes:
        """Canonical JSON; header version 1 when no version-2 key differs from its default, so a
        gateway that never restored stays readable by older receivers."""
        fields: dict = {k: v for k, v in self.__dict__.items() if k not in _V2_DEFAULTS}
        extra = {k: ([list(e) for e in v] if k == "lineage" else v) for k, v in self.__dict__.items()
                 if k in _V2_DEFAULTS and v != _V2_DEFAULTS[k]}
        return json.dumps({"v": 2 if extra else 1, **fields, **extra}, sort_keys=True, separators=(",", ":")).encode()

    def origin(self, reading_id: int) -> str:
        """The stream a reading of this batch was first written in (its identity is (origin, id))."""
        found = self.stream
        for stream, _, first_reading_id in self.lineage:
            if first_reading_id <= reading_id:
                found = stream
        return found


_V2_DEFAULTS: dict[str, object] = {"stream": "", "lineage": (), "kind": "readings"}


def message_hash(message: bytes) -> str:
    return hashlib.sha256(message).hexdigest()


def seal(header: BatchHeader, payload: bytes, receiver: X25519PublicKey, signer: Ed25519PrivateKey) -> bytes:
    header_bytes = header.to_bytes()
    sealed = _SUITE.encrypt(payload, receiver, info=header_bytes)
    body = MAGIC + struct.pack("<H", len(header_bytes)) + header_bytes + struct.pack("<I", len(sealed)) + sealed
    return body + signer.sign(body)


def parse_header(message: bytes) -> tuple[BatchHeader, bytes, bytes, bytes]:
    """Split a message; returns (header, header bytes, sealed, signed body). Raises BatchRejected."""
    if len(message) > MAX_MESSAGE_BYTES:
        raise BatchRejected("oversized", f"{len(message)} bytes, limit {MAX_MESSAGE_BYTES}")
    if not message.startswith(MAGIC):
        raise BatchRejected("malformed", "does not start with CEG1; not a Carbon Edge Gateway batch of version 1")
    try:
        (header_len,) = struct.unpack_from("<H", message, 4)
        header_bytes = message[6:6 + header_len]
        (sealed_len,) = struct.unpack_from("<I", message, 6 + header_len)
        start = 10 + header_len
        sealed = message[start:start + sealed_len]
        if len(sealed) != sealed_len or len(message) != start + sealed_len + SIGNATURE_BYTES:
            raise ValueError("lengths do not add up (truncated or padded)")
        fields = json.loads(header_bytes)
        if not isinstance(fields, dict):
            raise ValueError("header is not a JSON object")
        version = fields.pop("v", None)
        if version not in (1, 2) or isinstance(version, bool):
            raise ValueError("unknown header version")
        if version == 1 and set(fields) & set(_V2_DEFAULTS):
            raise ValueError("header version 1 with version-2 keys")
        if "lineage" in fields:
            fields["lineage"] = _lineage(fields["lineage"])
        header = BatchHeader(**fields)
        _check_header(header)
    except (struct.error, ValueError, TypeError) as exc:
        raise BatchRejected("malformed", str(exc)) from exc
    return header, header_bytes, sealed, message[:start + sealed_len]


_HEADER_TYPES = {"gateway_id": str, "seq": int, "prev_hash": str, "gateway_key_id": str, "receiver_key_id": str,
                 "count": int, "created_at": (int, float)}


def _lineage(value: object) -> tuple[tuple[str, int, int], ...]:
    if not isinstance(value, list) or not value or len(value) > 64:
        raise ValueError("header field lineage must be a non-empty list of at most 64 entries")
    entries = []
    for entry in value:
        if not (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], str)
                and all(isinstance(x, int) and not isinstance(x, bool) and 1 <= x < 2**63 for x in entry[1:])):
            raise ValueError("header field lineage: each entry is [stream, first seq, first reading id]")
        entries.append((entry[0], entry[1], entry[2]))
    if [e[2] for e in entries] != sorted(e[2] for e in entries):
        raise ValueError("header field lineage: first reading ids must not decrease")
    return tuple(entries)


def _check_header(header: BatchHeader) -> None:
    for name, kind in _HEADER_TYPES.items():
        value = getattr(header, name)
        if not isinstance(value, kind) or isinstance(value, bool):  # type: ignore[arg-type]
            raise ValueError(f"header field {name} has the wrong type ({type(value).__name__})")
    if not header.gateway_id or header.seq < 1 or header.count < 1 or not 0 <= header.seq < 2**63:
        raise ValueError("header gateway_id must be non-empty, seq and count at least 1")
    if not isinstance(header.stream, str) or len(header.stream) > 64 or not isinstance(header.kind, str):
        raise ValueError("header fields stream and kind must be short strings")
    if header.lineage and header.lineage[-1][0] != header.stream:
        raise ValueError("header field lineage must end with the batch's own stream")


def verify_signature(message: bytes, gateway_key: Ed25519PublicKey) -> BatchHeader:
    """Check the gateway's signature only. Raises BatchRejected ("bad_signature", "malformed", ...)."""
    header, _, _, body = parse_header(message)
    try:
        gateway_key.verify(message[len(body):], body)
    except InvalidSignature as exc:
        raise BatchRejected("bad_signature", f"gateway {header.gateway_id} seq {header.seq}: signature does not verify") from exc
    return header


def open_message(message: bytes, gateway_key: Ed25519PublicKey, receiver_key: X25519PrivateKey) -> tuple[BatchHeader, bytes]:
    """Verify the signature, then decrypt. Raises BatchRejected ("bad_signature", "undecryptable", ...)."""
    verify_signature(message, gateway_key)
    header, header_bytes, sealed, body = parse_header(message)
    try:
        payload = _SUITE.decrypt(sealed, receiver_key, info=header_bytes)
    except Exception as exc:  # the library raises InvalidTag or ValueError for a wrong key or bad bytes
        raise BatchRejected("undecryptable", f"gateway {header.gateway_id} seq {header.seq}: {type(exc).__name__}") from exc
    return header, payload
