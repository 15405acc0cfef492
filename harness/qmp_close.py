"""Closing a QMP connection so that nothing of it outlives the harness's own cleanup.

qemu.qmp's ``disconnect()`` waits for its bottom half (reader and writer tasks, gathered) and re-raises the
first error there: the EOF of a QEMU that was killed. Cancelled half way (a signal's cancel: harness.procutil),
it leaves those gathered futures holding that error with nobody to retrieve it, and asyncio prints "exception
was never retrieved" tracebacks when the run exits (seen once in CI, tests/qemu/test_signals.py). So the
disconnect runs as a task of its own, shielded; a cancel is passed on once the disconnect has ended.
"""

from __future__ import annotations

import asyncio
import contextlib

from qemu.qmp import QMPClient

# How long a disconnect may take (a QEMU that no longer reads its socket): after that the client is let go.
DISCONNECT_BOUND_S = 5.0


def _retrieve(task: asyncio.Future[None]) -> None:
    """Mark a finished disconnect's outcome as seen: its error (a dead QEMU's EOF) changes nothing here."""
    if not task.cancelled():
        task.exception()


async def close_qmp(client: QMPClient, bound: float = DISCONNECT_BOUND_S) -> None:
    """Disconnect ``client``; errors are swallowed (the QEMU is gone or going), a cancel is re-raised after."""
    task = asyncio.ensure_future(client.disconnect())
    task.add_done_callback(_retrieve)
    try:
        await asyncio.wait_for(asyncio.shield(task), bound)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(task, bound)
        raise
    except Exception:  # the bottom half's error or the bound: the connection is let go either way
        pass
