"""Source and destination VMs that run the guest image: what tests/guest and benchmarks/guest.py share.

The scenario executor will run guests through the hooks in :mod:`harness.guest.session`; until it does, and for
measurements that need finer control than a scenario gives (when to switch to postcopy, which side's RAM is a
shared file), this module launches guest VMs with :class:`harness.machine.QemuMachine` and waits on migrations.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.binaries import QemuBinary
from harness.errors import MigrationTimeout, RunstateTimeout
from harness.guest.console import ConsoleError, GuestConsole
from harness.guest.image import GuestImage
from harness.guest.session import GuestSpec, guest_vm_args
from harness.linux_boot import probe_linux_boot
from harness.machine import QemuMachine
from harness.probe import probe_binary

ENDED = ("completed", "failed", "cancelled")

# -cpu max gives a TCG guest the most features TCG emulates, and both QEMU versions accept it.
TCG_ARGS = ("-accel", "tcg", "-cpu", "max")


def guest_accel(binary: QemuBinary) -> tuple[tuple[str, ...], str]:
    """The accelerator arguments for a guest VM, and why. KVM only where harness.probe booted the guest image's
    kernel to its init under KVM (probe_linux_boot), with the probe's -cpu; else TCG."""
    probe = probe_binary(binary)
    if not probe.kvm.usable or probe.kvm.cpu is None:
        return TCG_ARGS, f"TCG: {probe.kvm.reason}"
    linux = probe_linux_boot(binary)
    if linux.boots is True:
        return ("-accel", "kvm", "-cpu", probe.kvm.cpu), f"KVM: boots Linux ({linux.detail})"
    return TCG_ARGS, f"TCG: KVM boots Linux? {linux.detail}"


@dataclass
class GuestVm:
    """A launched VM and its console socket."""

    machine: QemuMachine
    console_path: Path
    consoles: list[GuestConsole] = field(default_factory=list)

    async def console(self, timeout: float = 10.0) -> GuestConsole:
        """Connect to the VM's serial console; a VM that is gone (e.g. its guest panicked: -no-reboot) is said so."""
        if not self.machine.is_alive:
            raise ConsoleError(f"no console: {self.machine.died()}")
        console = await asyncio.to_thread(GuestConsole.connect, self.console_path, timeout)
        self.consoles.append(console)
        return console

    async def shutdown(self) -> None:
        for console in self.consoles:
            console.close()
        await self.machine.shutdown()


@dataclass
class GuestLab:
    """Launches guest VMs of one QEMU binary into one work folder (sockets, logs, snapshot files)."""

    binary: QemuBinary
    image: GuestImage
    spec: GuestSpec
    workdir: Path
    vm_memory: str = "128M"
    machine_type: str = "q35"
    vms: list[GuestVm] = field(default_factory=list)

    async def launch(
        self,
        name: str,
        side: str,
        *,
        incoming: bool = False,
        paused: bool = False,
        ram_file: Path | None = None,
        extra_args: Collection[str] = (),
    ) -> GuestVm:
        """Start one VM; the destination side listens with ``-incoming defer``. ``paused`` adds -S (a loaded
        destination then stays paused until ``cont``). Every VM uses a named RAM backend, so any pair matches."""
        console_path = self.workdir / f"{name}.console"
        args = [
            *guest_accel(self.binary)[0],
            "-machine", self.machine_type,
            "-m", self.vm_memory,
            *guest_vm_args(
                self.image, self.spec, side, console_socket=console_path, ram_file=ram_file, ram_size=self.vm_memory
            ),
            *extra_args,
        ]  # fmt: skip
        if incoming:
            args += ["-incoming", "defer"]
        if paused:
            args.append("-S")
        machine = QemuMachine(self.binary, args, name=name, log_dir=self.workdir, sock_dir=self.workdir)
        await machine.launch()
        vm = GuestVm(machine, console_path)
        self.vms.append(vm)
        return vm

    async def shutdown(self) -> None:
        for vm in self.vms:
            await vm.shutdown()
        self.vms.clear()


async def set_capabilities(vm: QemuMachine, **caps: bool) -> None:
    await vm.qmp(
        "migrate-set-capabilities",
        capabilities=[{"capability": name.replace("_", "-"), "state": on} for name, on in caps.items()],
    )


async def wait_status(vm: QemuMachine, wanted: Collection[str], timeout: float, poll: float = 0.05) -> dict[str, Any]:
    """Poll query-migrate until its status is one of ``wanted``; the last answer. Bounded; a VM that dies raises."""
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    while True:
        last = await vm.query_migrate()
        if last.get("status", "none") in wanted:
            return last
        if time.monotonic() > deadline:
            raise MigrationTimeout(f"{vm.name} migration status in {sorted(wanted)}", timeout, last.get("status"))
        await asyncio.sleep(poll)


async def wait_runstate(vm: QemuMachine, wanted: Collection[str], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        state = await vm.runstate()
        if state in wanted:
            return state
        if time.monotonic() > deadline:
            raise RunstateTimeout(f"{vm.name} runstate in {sorted(wanted)}", timeout, state)
        await asyncio.sleep(0.05)
