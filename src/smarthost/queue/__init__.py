"""The mail queue: the only durable state, and the hand-off from receiving to delivering."""

from .ids import new_queue_id, queue_id_time
from .store import (
    CorruptEntry,
    Envelope,
    NoSuchEntry,
    QueueEntry,
    QueueError,
    QueueState,
    QueueStats,
    QueueStore,
    Recipient,
)

__all__ = [
    "CorruptEntry",
    "Envelope",
    "NoSuchEntry",
    "QueueEntry",
    "QueueError",
    "QueueState",
    "QueueStats",
    "QueueStore",
    "Recipient",
    "new_queue_id",
    "queue_id_time",
]
