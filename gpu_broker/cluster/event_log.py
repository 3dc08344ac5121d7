"""The cluster's event log: every scheduler decision and every operator action, numbered, for the event stream.

The scheduling core returns typed events with reasons (:mod:`.core.events`); the live cluster appends each one here
as a flat record (kind, time, reason, host, kernel, replica, and the rest under ``data``), beside what it does
itself (a replica killed as a fault drill, a host resized). Sequence numbers let a reader ask for what came after
the last record it saw, which is how the dashboard's server-sent event stream resumes after a reconnect.

Only the latest ``capacity`` records are kept: the log serves live views and recent history, not an audit trail.
"""

from __future__ import annotations

import dataclasses
import re
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from ..scheduler.events import Decision, Event

CAPACITY = 10_000
_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")
# Fields that have a column of their own in a record; the rest of an event's fields go under ``data``.
_HOST_FIELDS = ("host_id", "to_host")


def event_kind(event: Event) -> str:
    """``ReplicaMoved`` -> ``replica_moved``; every execution decision is ``decision``."""
    return "decision" if isinstance(event, Decision) else _CAMEL.sub("_", type(event).__name__).lower()


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return getattr(value, "value", value)  # enums by value


class EventLog:
    """Thread-safe: the cluster appends from the service's loop and from the threads that move replicas."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        self._records: deque[dict[str, Any]] = deque(maxlen=capacity)
        self._lock = threading.Lock()
        self.last_seq = 0
        self.listeners: list[Callable[[dict[str, Any]], None]] = []

    def record(self, event: Event) -> dict[str, Any]:
        """Append a core event."""
        fields = {f.name: getattr(event, f.name) for f in dataclasses.fields(event)}
        fields.pop("events", None)  # what a decision set off is logged as events of its own
        time, reason = fields.pop("time"), fields.pop("reason")
        host = next((fields.pop(name) for name in _HOST_FIELDS if fields.get(name) is not None), None)
        for name in _HOST_FIELDS:
            fields.pop(name, None)
        return self.append(
            event_kind(event),
            time,
            reason,
            host=host,
            kernel=fields.pop("kernel_id", None),
            replica=fields.pop("replica", None),
            data={k: _plain(v) for k, v in fields.items()},
        )

    def append(
        self,
        kind: str,
        time: float,
        reason: str,
        *,
        host: str | None = None,
        kernel: str | None = None,
        replica: int | None = None,
        data: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        with self._lock:
            self.last_seq += 1
            entry = {
                "seq": self.last_seq,
                "time": time,
                "kind": kind,
                "reason": reason,
                "host": host,
                "kernel": kernel,
                "replica": replica,
                "data": data or {},
            }
            self._records.append(entry)
        for listener in list(self.listeners):
            listener(entry)
        return entry

    def restore(self, records: list[dict[str, Any]]) -> None:
        """The records a previous service logged (oldest first): numbering goes on after the last of them, so a
        reader resuming from a number it saw misses nothing and sees nothing twice."""
        with self._lock:
            self._records.extend(records)
            self.last_seq = max(self.last_seq, records[-1]["seq"] if records else 0)

    def since(
        self,
        seq: int = 0,
        *,
        limit: int | None = None,
        host: str | None = None,
        kernel: str | None = None,
        kind: str | None = None,
    ) -> list[dict[str, Any]]:
        """Records after ``seq``, oldest first, matching every filter given; the latest ``limit`` of them."""
        with self._lock:
            found = [
                e
                for e in self._records
                if e["seq"] > seq
                and (host is None or e["host"] == host or e["data"].get("from_host") == host)
                and (kernel is None or e["kernel"] == kernel)
                and (kind is None or e["kind"] == kind)
            ]
        return found[-limit:] if limit else found
