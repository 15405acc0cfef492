"""The QMP events a :class:`harness.machine.QemuMachine` keeps (buffered from the moment QMP is up, so none
is lost between a command and the wait that follows it), and the bounded waits on them."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Any

from qemu.qmp import EventListener
from qemu.qmp.message import Message

from harness.errors import QmpEventTimeout, VmDied

# Events worth keeping for the outcome and for waits.
RECORDED_EVENTS = ("MIGRATION", "STOP", "RESUME", "VFIO_MIGRATION", "SHUTDOWN", "MIGRATION_PASS", "JOB_STATUS_CHANGE")


class EventRecorder(EventListener):
    """Keeps every interesting event in a list and wakes waiters; never drops anything."""

    def __init__(self, names: Sequence[str]) -> None:
        super().__init__(names)
        self.events: list[dict[str, Any]] = []
        self.changed = asyncio.Event()

    async def put(self, event: Message) -> None:
        if not self.accept(event):
            return
        self.events.append(dict(event))
        self.changed.set()


class RecordedEvents:
    """QemuMachine's event queries and waits (a base class of it: they need its process and name)."""

    name: str
    _recorder: EventRecorder

    @property
    def is_alive(self) -> bool:
        raise NotImplementedError

    def died(self) -> VmDied:
        raise NotImplementedError

    @property
    def events(self) -> list[dict[str, Any]]:
        """Every recorded event so far (:data:`RECORDED_EVENTS`)."""
        return list(self._recorder.events)

    def migration_events(self) -> list[str]:
        return [str(e["data"]["status"]) for e in self._recorder.events if e.get("event") == "MIGRATION"]

    def vfio_states(self) -> dict[str, list[str]]:
        """device id -> VFIO_MIGRATION device-state sequence (9.1+, with migration-events=on)."""
        states: dict[str, list[str]] = {}
        for event in self._recorder.events:
            if event.get("event") == "VFIO_MIGRATION":
                data = event.get("data", {})
                states.setdefault(str(data.get("device-id", "?")), []).append(str(data.get("device-state")))
        return states

    def clear_changed(self) -> None:
        """Start a "has anything arrived since?" window: clear before querying, then :meth:`wait_changed`."""
        self._recorder.changed.clear()

    async def wait_changed(self, timeout: float) -> None:
        """Return when an event arrived since :meth:`clear_changed`, or after ``timeout`` (no error)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._recorder.changed.wait(), timeout)

    async def wait_event(self, predicate: Callable[[dict[str, Any]], bool], timeout: float, start: int = 0) -> int:
        """Wait (bounded) for a recorded event at index >= ``start`` that matches; its index.

        Raises :class:`QmpEventTimeout`, or :class:`VmDied` if QEMU exits first.
        """
        deadline = time.monotonic() + timeout
        while True:
            events = self._recorder.events
            for index in range(start, len(events)):
                if predicate(events[index]):
                    return index
            start = len(events)
            if not self.is_alive:
                raise self.died()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise QmpEventTimeout(f"an event on {self.name}", timeout)
            self._recorder.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._recorder.changed.wait(), min(remaining, 0.5))
