"""The structured devices of each launch, VFIO host sides allocated per launch: :class:`LaunchDevices`."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

from contract.outcome import Outcome
from contract.scenario import VmSpec
from harness.vfio.allocator import AllocatedDevice, VfioDeviceAllocator

# Outcome.extra keys of the host names QEMU prints for each side's VFIO devices (the comparison substitutes
# them for the model's placeholders, reference_impl.vfio.api.placeholder_name).
NAMES_KEY = {"source": "vfio_names", "destination": "vfio_names_destination"}


class LaunchDevices:
    """Allocates as each side launches, not before: a source that refuses to start never costs the
    destination's host devices, and the mtty lab needs a fresh mdev for every QEMU (docs/vfio-lab.md P4)."""

    def __init__(self, allocator: VfioDeviceAllocator | None, outcome: Outcome) -> None:
        self.allocator = allocator
        self.outcome = outcome
        self.allocated: dict[str, list[AllocatedDevice]] = {side: [] for side in NAMES_KEY}
        # side -> device id -> host name
        self.names: dict[str, dict[str, str]] = {side: {} for side in NAMES_KEY}

    def device_args(self, side: str, spec: VmSpec) -> list[str]:
        """The ``-device`` arguments of ``spec``'s structured devices. The names are recorded as each device is
        allocated, so that an outcome whose run ended halfway still says which host devices it had."""
        args: list[str] = []
        unnamed = 0
        for device in spec.devices:
            extra: Mapping[str, str] | None = None
            if device.driver == "vfio-pci":
                assert self.allocator is not None  # checked by preflight.unmet_requirement
                allocated = self.allocator.allocate(device)
                self.allocated[side].append(allocated)
                extra = allocated.properties
                # Keyed like the model's placeholders (reference_impl.vfio.api.placeholder_name).
                if device.id is None:
                    self.names[side][f"vfio-pci#{unnamed}"] = allocated.host_name
                    unnamed += 1
                else:
                    self.names[side][device.id] = allocated.host_name
                self._record_names()
            args += ["-device", device.device_arg(extra)]
        return args

    def _record_names(self) -> None:
        for side, key in NAMES_KEY.items():
            if self.names[side]:
                self.outcome.extra[key] = dict(self.names[side])

    def release(self) -> None:
        """Give every host device back; a release that fails must not hide how the run ended."""
        if self.allocator is None:
            return
        for devices in self.allocated.values():
            for allocated in devices:
                with contextlib.suppress(Exception):
                    self.allocator.release(allocated)
            devices.clear()
