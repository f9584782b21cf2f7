"""Thin wrapper over paho-mqtt 2.x: one client, TLS and credentials from settings, connection state."""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

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


class Link:
    """A paho client that reconnects by itself and remembers why it is not connected."""

    def __init__(self, broker: BrokerSettings, client_id: str,
                 on_message: Callable[[mqtt.MQTTMessage], None] | None = None,
                 subscriptions: tuple[str, ...] = ()) -> None:
        self.broker = broker
        self.connected = threading.Event()
        self.last_error = ""
        self._stopping = False
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
        self.client.reconnect_delay_set(min_delay=1, max_delay=60)  # paho backs off exponentially between these
        self.client.on_connect = self._connected
        self.client.on_disconnect = self._disconnected
        self.client.on_message = self._message
        self.client.on_connect_fail = self._connect_failed

    def start(self) -> None:
        try:
            self.client.connect_async(self.broker.host, self.broker.port, keepalive=self.broker.keepalive_s)
        except (OSError, ValueError) as exc:
            self.last_error = f"broker {self.broker.host}:{self.broker.port}: {exc}"
        self.client.loop_start()

    def stop(self) -> None:
        self._stopping = True
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()

    def _connected(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self.last_error = (f"broker {self.broker.host}:{self.broker.port} refused the connection: {reason_code}; "
                               "check the username, password or client certificate")
            log.error(self.last_error)
            return
        self.last_error = ""
        for topic in self._subscriptions:
            client.subscribe(topic, qos=1)
        self.connected.set()
        log.info("connected to broker %s:%d", self.broker.host, self.broker.port)

    def _disconnected(self, client, userdata, flags, reason_code, properties) -> None:
        if self.connected.is_set() and not self._stopping:
            self.last_error = (f"cannot reach broker {self.broker.host}:{self.broker.port} (connection lost: "
                               f"{reason_code}); data waits on disk until it can")
            log.warning(self.last_error)
        self.connected.clear()

    def _connect_failed(self, client, userdata) -> None:
        error = f"cannot reach broker {self.broker.host}:{self.broker.port}; data waits on disk until it can"
        if error != self.last_error:
            log.warning(error)
        self.last_error = error

    def _message(self, client, userdata, message: mqtt.MQTTMessage) -> None:
        if self._on_message is not None:
            self._on_message(message)

    def publish(self, topic: str, payload: bytes) -> mqtt.MQTTMessageInfo:
        return self.client.publish(topic, payload, qos=1)
