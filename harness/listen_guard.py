"""The query guard of a destination whose postcopy teardown races ``query-migrate`` (docs/qemu-bugs.md section 10).

QEMU before 10.0 tears the incoming state down from the postcopy listen thread without the BQL, so the harness,
which reads the destination's status with ``query-migrate``, must not ask at that moment: the guard waits while
the listen thread may be tearing down. :class:`MigrationPair` installs it as the destination's
``query_migrate_guard``.
"""

from __future__ import annotations

import asyncio
import time

from contract.versions import Version
from harness.errors import QmpConnectionError, VmDied
from harness.machine import QemuMachine

# QEMU before 10.0 tears the incoming state down from the postcopy listen thread without the BQL
# (postcopy_ram_listen_thread -> migration_incoming_state_destroy -> migration_incoming_transport_cleanup
# frees mis->socket_address_list), while query-migrate on the main thread clones that list
# (fill_destination_migration_info): a query-migrate at that moment is a use-after-free. Read in 7.2.22's
# source (no lock) and 10.0.2's (bql_lock() around the call); versions in between are treated as 7.2, which
# costs only a wait. docs/qemu-bugs.md section 10.
LISTEN_DESTROY_LOCKED_SINCE = Version(10, 0)
LISTEN_THREAD = "postcopy/listen"
# Source statuses during which the destination's listen thread may finish (and tear down) at any moment.
LISTEN_MAY_FINISH = frozenset({"postcopy-active", "device", "completed"})
LISTEN_GUARD_TIMEOUT_S = 10.0
# How often the guard looks at the destination's threads while it waits.
GUARD_POLL_S = 0.005


def needs_listen_guard(version: Version) -> bool:
    """Whether a destination of this QEMU version tears its incoming state down without the BQL."""
    return version < LISTEN_DESTROY_LOCKED_SINCE


class ListenThreadGuard:
    """Awaited before every ``query-migrate`` on the destination; ``notes`` gets a line for each wait that hit
    its bound (the executor records them in ``extra.query_guard``)."""

    def __init__(self, source: QemuMachine, destination: QemuMachine, notes: list[str]) -> None:
        self.source = source
        self.destination = destination
        self.notes = notes

    async def __call__(self) -> None:
        """Before a query-migrate on a destination older than :data:`LISTEN_DESTROY_LOCKED_SINCE`: while
        its postcopy listen thread lives and may be tearing the incoming state down (the source is past the
        switchover), wait until that thread is gone. The source's status is asked each time round, so a
        postcopy that pauses (the listen thread then waits for a recovery, not tearing anything down) lets
        the query through at once. Bounded; a wait that hits the bound is noted and the query goes ahead."""
        deadline = time.monotonic() + LISTEN_GUARD_TIMEOUT_S
        while LISTEN_THREAD in self.destination.thread_names():
            if not self.source.is_alive:
                return
            try:
                source_status = await self.source.query_migrate_status()
            except (VmDied, QmpConnectionError):
                return
            if source_status not in LISTEN_MAY_FINISH:
                return
            if time.monotonic() >= deadline:
                self.notes.append(
                    f"the destination's {LISTEN_THREAD} thread outlived {LISTEN_GUARD_TIMEOUT_S:g} s "
                    f"(source {source_status}): query-migrate went ahead"
                )
                return
            await asyncio.sleep(GUARD_POLL_S)
