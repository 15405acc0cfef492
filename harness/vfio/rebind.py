"""Rebinding host devices to vfio-pci for a run (only with --allow-rebind), and putting them back.

Separate from inspection because it is the one part that changes the host: it must restore the original
drivers afterwards, also after a failure or an interrupt.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
from types import FrameType
from typing import Any

from harness.vfio.host import HostVfioDevice, foreign_group_members
from harness.vfio.sysfs import ROOTS, VFIO_DRIVERS, SysfsRoots, link_name


class DriverRebinder:
    """Binds PCI devices to vfio-pci for a run and restores their original drivers afterwards.

    Restoring is registered with atexit and with SIGINT/SIGTERM handlers, so an interrupted run puts the
    host back as it found it.
    """

    def __init__(self, roots: SysfsRoots = ROOTS) -> None:
        self._roots = roots
        self._original: dict[str, str | None] = {}
        self._installed = False

    @property
    def rebound(self) -> dict[str, str | None]:
        """{address: original driver} of every device this rebinder moved to vfio-pci."""
        return dict(self._original)

    def bind_to_vfio(self, address: str) -> None:
        path = self._roots.pci_devices / address
        driver = link_name(path / "driver")
        if driver in VFIO_DRIVERS:
            return
        if not (self._roots.pci_bus / "drivers" / "vfio-pci").is_dir() and shutil.which("modprobe"):
            # vfio-pci must be loaded for drivers_probe to bind it (the kernel does not load it for us).
            subprocess.run(["modprobe", "vfio-pci"], capture_output=True, check=False)
        self._install()
        self._original[address] = driver
        (path / "driver_override").write_text("vfio-pci")
        if driver is not None:
            (path / "driver" / "unbind").write_text(address)
        (self._roots.pci_bus / "drivers_probe").write_text(address)

    def prepare(self, dev: HostVfioDevice) -> list[str]:
        """Binds the device and its group's foreign members to vfio-pci; the addresses it moved."""
        moved: list[str] = []
        if dev.kind != "pci":
            return moved
        for address in [dev.vbasedev_name, *foreign_group_members(dev, self._roots)]:
            before = address in self._original
            self.bind_to_vfio(address)
            if not before and address in self._original:
                moved.append(address)
        return moved

    def restore(self) -> None:
        while self._original:
            address, driver = self._original.popitem()
            path = self._roots.pci_devices / address
            try:
                if link_name(path / "driver") is not None:
                    (path / "driver" / "unbind").write_text(address)
                (path / "driver_override").write_text("\n")
                if driver is not None:
                    (self._roots.pci_bus / "drivers" / driver / "bind").write_text(address)
            except OSError:
                with contextlib.suppress(OSError):
                    (self._roots.pci_bus / "drivers_probe").write_text(address)

    def _install(self) -> None:
        if self._installed:
            return
        self._installed = True
        atexit.register(self.restore)
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous = signal.getsignal(sig)

            def handler(signum: int, frame: FrameType | None, previous: Any = previous) -> None:
                self.restore()
                if callable(previous):
                    previous(signum, frame)
                else:
                    signal.signal(signum, signal.SIG_DFL)
                    os.kill(os.getpid(), signum)

            signal.signal(sig, handler)
