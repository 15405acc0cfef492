"""A scenario's guest (docs/guests.md) through a run: boot and workload before the steps, the memory check
where the guest lives afterwards: :class:`GuestRun`."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contract.guest import GuestSpec
from contract.guest_rules import checked_side
from contract.outcome import Outcome
from harness.errors import GuestCheckError, QmpCommandError, QmpConnectionError, VmDied
from harness.guest.console import ConsoleError, GuestConsole
from harness.guest.image import GuestImage
from harness.guest.session import GuestReport, guest_vm_args
from harness.guest.session import start as start_guest
from harness.guest.session import verify_blocking as verify_guest_blocking
from harness.machine import QemuMachine
from harness.pair import MigrationPair

# Bound for connecting to a freshly launched VM's serial console socket.
CONSOLE_CONNECT_TIMEOUT_S = 10.0
# Bound for a migrated guest's shell to answer before the check. A live guest answers within a second or two
# even under TCG on a loaded host (docs/guests.md: boot is 2-9 s, an already-booted shell much less); a guest
# that oopsed without panicking (seen on 7.2, docs/qemu-bugs.md 4) would otherwise cost the whole bound.
GUEST_PROMPT_TIMEOUT_S = 10.0
# Runstates the executor resumes before the guest check: the memory is there, the guest only has to run to
# answer (e.g. a source stopped by the scenario). Other non-running states have no guest (see reference_impl.guest).
RESUMABLE_RUNSTATES = frozenset({"paused", "postmigrate", "prelaunch"})


@dataclass
class GuestCheck:
    """What a hook sees just before the memory check: the VM the guest lives on, and its console.

    For tests that must prove the check can fail (tests/guest/test_guest_scenarios.py): a hook may change the
    guest's memory behind its back (harness.guest.poke) before :func:`harness.guest.session.verify` runs.
    """

    side: str
    vm: QemuMachine
    console: GuestConsole
    workdir: Path


GuestHook = Callable[[GuestCheck], Awaitable[None]]


def guest_dict(report: GuestReport) -> dict[str, Any]:
    """Outcome.guest: what the comparison looks at (alive, bad_pages) and the informative pages_checked."""
    guest: dict[str, Any] = {
        "alive": report.alive,
        "pages_checked": report.pages_checked,
        "bad_pages": report.bad_pages,
    }
    if report.bad_pages and report.first_bad is not None:
        guest["first_bad"] = report.first_bad
    return guest


class GuestRun:
    """The guest of one run: its consoles, whether it started, and the hook to call before the check."""

    def __init__(
        self, spec: GuestSpec, image: GuestImage, hook: GuestHook | None, workdir: Path, outcome: Outcome
    ) -> None:
        self.spec = spec
        self.image = image
        self.hook = hook
        self.workdir = workdir
        self.outcome = outcome
        self.consoles: dict[str, GuestConsole] = {}
        self.started = False

    def add_args(self, pair: MigrationPair) -> None:
        """Both sides boot the image, each with a console socket in the pair's private folder."""
        for side in ("source", "destination"):
            socket_path = pair.private / f"{side}.console"
            pair.side(side).append_args(guest_vm_args(self.image, self.spec, side, console_socket=socket_path))

    async def _connect_console(self, pair: MigrationPair, side: str) -> None:
        """Right after launch: QEMU's console socket (wait=off) drops what nobody reads, and a guest that
        panics after the switchover prints why only then."""
        path = pair.private / f"{side}.console"
        self.consoles[side] = await asyncio.to_thread(GuestConsole.connect, path, CONSOLE_CONNECT_TIMEOUT_S)

    async def start(self, pair: MigrationPair) -> None:
        """Boot to the prompt and start the workload on the source, every page filled, before the steps.

        A source guest that does not come up before any migration step is not QEMU's migration behaviour:
        the item ends with a :class:`GuestCheckError` (a harness error naming why), never a divergence and
        never an outcome whose guest check examined nothing."""
        try:
            await self._connect_console(pair, "destination")
            await self._connect_console(pair, "source")
            await start_guest(self.consoles["source"], self.spec)
        except ConsoleError as exc:
            raise GuestCheckError("source", "the guest did not start before the steps", str(exc)) from exc
        self.started = True

    async def check(self, pair: MigrationPair) -> None:
        """The memory check where the guest lives now (contract.guest_rules.checked_side)."""
        side = checked_side(self.outcome)
        vm = pair.side(side)
        report: GuestReport | None = None
        if not vm.is_alive:
            report = GuestReport(alive=False, detail=f"the {side} VM is gone: {vm.died()}")
        else:
            try:
                runstate = await vm.runstate()
                if runstate in RESUMABLE_RUNSTATES:
                    await vm.qmp("cont")
                elif runstate == "inmigrate":
                    report = GuestReport(alive=False, detail=f"the {side} never loaded a guest (runstate inmigrate)")
            except (QmpCommandError, QmpConnectionError, VmDied) as exc:
                report = GuestReport(alive=False, detail=f"the {side} VM did not answer QMP: {exc}")
        if report is None:
            console = self.consoles[side]
            if self.hook is not None:
                await self.hook(GuestCheck(side, vm, console, self.workdir))
            report = await asyncio.to_thread(verify_guest_blocking, console, GUEST_PROMPT_TIMEOUT_S, side)
        self.outcome.guest = guest_dict(report)
        self.outcome.extra["guest_check"] = {
            "side": side,
            "torn": report.torn,
            "stale": report.stale,
            "future": report.future,
            "generation": report.generation,
            "detail": report.detail,
        }

    def close(self) -> None:
        for console in self.consoles.values():
            console.close()
