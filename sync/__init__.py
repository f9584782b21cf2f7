"""Store-and-forward sync: sealed, signed batches over MQTT, and the cloud receiver."""

from sync.errors import BatchRejected, KeyFileError, SyncError
from sync.mqtt import BrokerSettings
from sync.receiver import Receiver, ReceiverSettings, receiver_stats
from sync.service import SyncService, SyncSettings, SyncStatus

__all__ = [
    "BatchRejected", "BrokerSettings", "KeyFileError", "Receiver", "ReceiverSettings", "SyncError",
    "SyncService", "SyncSettings", "SyncStatus", "receiver_stats",
]
