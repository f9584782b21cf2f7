"""Thin wrapper over paho-mqtt 2.x: one client, TLS and credentials from settings, connection state."""

from __future__ import annotations

import logging
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BrokerSettings:
    host: str = "127.0.0.1"
    port: int = 1883
    tls: bool = False
    ca_file: Path | None = None          # None with tls: the system's trust store
    client_cert: Path | None = None
    client_key: Path | None = None
    username: str | None = None
    password: str | None = None
    keepalive_s: int = 30
    backoff_min_s: float = 1.0           # reconnect delay doubles from here ...
    backoff_max_s: float = 60.0          # ... up to here, each wait drawn from [delay/2, delay] (jitter)
    max_inflight: int = 20               # QoS 1 messages paho keeps unacknowledged by the broker
    #: MQTT 5 session expiry: the broker keeps the session (subscriptions, QoS 1 messages queued while we
    #: are away) this long after a disconnect, and we reconnect with clean_start false (issue 16). 0: none.
    session_expiry_s: int = 0


def _published(info: mqtt.MQTTMessageInfo) -> bool:
    """Handed to the broker, or failed for good (paho raises for a publish made while disconnected)."""
    try:
        return info.is_published()
    except (RuntimeError, ValueError):
        return True


class Link:
    """A paho client that reconnects by itself and remembers why it is not connected."""

    def __init__(self, broker: BrokerSettings, client_id: str,
                 on_message: Callable[[mqtt.MQTTMessage], None] | None = None,
                 subscriptions: tuple[str, ...] = (), manual_ack: bool = False) -> None:
        """:param manual_ack: QoS 1 messages are acknowledged to the broker only by :meth:`ack` (after
            they were handled), so one not handled before a disconnect is delivered again."""
        self.broker = broker
        self.connected = threading.Event()
        self.last_error = ""
        self.connected_at = 0.0            # wall clock of the current session's start
        self.connects = 0                 # sessions so far; a new one means in-flight messages may be lost
        self._stopping = False
        self._unsent: list[mqtt.MQTTMessageInfo] = []     # QoS 1 publishes not yet handed to the broker
        self._unsent_lock = threading.Lock()
        self._subscriptions = subscriptions
        self._on_message = on_message
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        if broker.username:
            self.client.username_pw_set(broker.username, broker.password)
        if broker.tls:
            self.client.tls_set(ca_certs=str(broker.ca_file) if broker.ca_file else None,
                                certfile=str(broker.client_cert) if broker.client_cert else None,
                                keyfile=str(broker.client_key) if broker.client_key else None,
                                cert_reqs=ssl.CERT_REQUIRED)
        self.client.max_inflight_messages_set(broker.max_inflight)
        self.client.manual_ack_set(manual_ack)
        self._failures = 0           # attempts since the last successful connect
        self.client.on_connect = self._connected
        self.client.on_disconnect = self._disconnected
        self.client.on_message = self._message
        self.client.on_connect_fail = self._connect_failed

    def _schedule_reconnect(self) -> None:
        # paho doubles its delay but without jitter; a fleet of gateways coming back after a broker
        # outage would reconnect in lock-step. We pick each wait ourselves: exponential, "equal jitter".
        delay = min(self.broker.backoff_max_s, self.broker.backoff_min_s * 2 ** min(self._failures, 30))
        wait = random.uniform(delay / 2, delay)
        self.client.reconnect_delay_set(min_delay=wait, max_delay=wait)  # type: ignore[arg-type]
        self._failures += 1

    def start(self) -> None:
        properties = None
        if self.broker.session_expiry_s:
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = self.broker.session_expiry_s
        try:
            self.client.connect_async(self.broker.host, self.broker.port, keepalive=self.broker.keepalive_s,
                                      clean_start=not self.broker.session_expiry_s, properties=properties)
        except (OSError, ValueError) as exc:
            self.last_error = f"broker {self.broker.host}:{self.broker.port}: {exc}"
        self.client.loop_start()

    def stop(self) -> None:
        self.flush()
        self._stopping = True
        try:
            self.client.disconnect()   # a normal disconnect: the broker keeps a persistent session
        finally:
            self.client.loop_stop()

    def pause(self) -> None:
        """Disconnect on purpose (e.g. the receiver's database is down) and stay away until :meth:`resume`.

        With a persistent session (``session_expiry_s``) the broker keeps the subscriptions and queues
        the QoS 1 messages for us, so nothing is dropped meanwhile; peers in a share group go on.
        """
        self.flush()
        self._stopping = True
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()
        self.connected.clear()

    def resume(self) -> None:
        """Connect again after :meth:`pause`."""
        self._stopping = False
        self.start()

    def _connected(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self.last_error = (f"broker {self.broker.host}:{self.broker.port} refused the connection: {reason_code}; "
                               "check the username, password or client certificate")
            log.error(self.last_error)
            self._schedule_reconnect()
            return
        self.last_error = ""
        self._failures = 0
        for topic in self._subscriptions:
            client.subscribe(topic, qos=1)
        self.connects += 1
        self.connected_at = time.time()
        self.connected.set()
        log.info("connected to broker %s:%d", self.broker.host, self.broker.port)

    def _disconnected(self, client, userdata, flags, reason_code, properties) -> None:
        if self.connected.is_set() and not self._stopping:
            self.last_error = (f"cannot reach broker {self.broker.host}:{self.broker.port} (connection lost: "
                               f"{reason_code}); data waits on disk until it can")
            log.warning(self.last_error)
        elif not self._stopping:
            # Closed before the broker accepted us. Under TLS 1.3 a refused client certificate shows up
            # only here, as a read error after the handshake; paho reports "Unspecified error".
            self._record_failure(self._diagnose(closed_early=str(reason_code)))
        self.connected.clear()
        self._schedule_reconnect()

    def _connect_failed(self, client, userdata) -> None:
        self._schedule_reconnect()
        self._record_failure(self._diagnose())

    def _record_failure(self, error: str) -> None:
        if error != self.last_error:  # log the first occurrence; identical repeats stay quiet
            log.error(error)
        self.last_error = error

    def _diagnose(self, closed_early: str = "") -> str:
        """Why a connection attempt failed, in words an installer can act on (paho only says "failed").

        :param closed_early: paho's reason when the broker closed an opened connection before accepting it.
        """
        where = f"broker {self.broker.host}:{self.broker.port}"
        tail = "; data waits on disk until it can"
        try:
            sock = socket.create_connection((self.broker.host, self.broker.port), timeout=5)
        except socket.gaierror as exc:
            return f"cannot resolve {where} ({exc.strerror}); check sync.broker_host{tail}"
        except OSError as exc:
            return f"cannot reach {where} ({exc.strerror or exc}){tail}"
        with sock:
            if not self.broker.tls:
                return f"cannot connect to {where}{tail}"
            try:
                context = ssl.create_default_context(cafile=str(self.broker.ca_file) if self.broker.ca_file else None)
                if self.broker.client_cert:
                    context.load_cert_chain(str(self.broker.client_cert),
                                            str(self.broker.client_key) if self.broker.client_key else None)
                with context.wrap_socket(sock, server_hostname=self.broker.host) as tls:
                    # TLS 1.3 servers judge the client certificate after the handshake: their refusal
                    # arrives as an alert on the first read. A broker that accepts waits for CONNECT.
                    tls.settimeout(1.0)
                    try:
                        tls.recv(1)
                    except (TimeoutError, socket.timeout):
                        pass
            except ssl.SSLCertVerificationError as exc:
                return (f"TLS: {where} presented a certificate that was refused ({exc.verify_message}); "
                        f"check sync.ca_file and sync.broker_host{tail}")
            except (ssl.SSLError, OSError) as exc:
                return (f"TLS handshake with {where} failed ({getattr(exc, 'reason', None) or exc}); check "
                        f"sync.client_cert and sync.client_key{tail}")
        if closed_early:
            return (f"{where} closed the connection before accepting it ({closed_early}); check sync.tls, "
                    f"sync.client_cert and the credentials{tail}")
        return f"cannot connect to {where}{tail}"

    def _message(self, client, userdata, message: mqtt.MQTTMessage) -> None:
        if self._on_message is not None:
            self._on_message(message)

    def publish(self, topic: str, payload: bytes) -> mqtt.MQTTMessageInfo:
        info = self.client.publish(topic, payload, qos=1)
        with self._unsent_lock:
            self._unsent = [i for i in self._unsent if not _published(i)]
            self._unsent.append(info)
        return info

    def ack(self, message: mqtt.MQTTMessage) -> None:
        """PUBACK a message taken with ``manual_ack`` (after it was handled)."""
        if message.qos > 0:
            self.client.ack(message.mid, message.qos)

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until what was published has reached the broker (before a deliberate disconnect: a
        receiver's acks queued behind incoming batches would otherwise be dropped with the connection,
        and their gateways would wait out the ack timeout). True if everything went."""
        deadline = time.monotonic() + timeout_s
        with self._unsent_lock:
            pending = list(self._unsent)
        for info in pending:
            while not _published(info) and self.connected.is_set() and time.monotonic() < deadline:
                time.sleep(0.01)
        with self._unsent_lock:
            self._unsent = [i for i in self._unsent if not _published(i)]
            return not self._unsent
