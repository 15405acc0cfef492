"""Blockers, unmigratable devices, -only-migratable and PCI/USB naming, through predict().

Every expected string is a real QEMU answer from docs/real-qemu-facts.md#blockers, #only-migratable and
#slots-and-buses (10.0.2, and 7.2.22 where the device exists) unless a comment names a QEMU function.
"""

from __future__ import annotations

import pytest

from contract.host import HostFacts
from contract.outcome import Outcome
from contract.scenario import MigrationSpec, Scenario, VmSpec
from reference_impl import predict
from reference_impl.catalog import AUTO_NODE_NAME

HOST = HostFacts()
IVSHMEM = (
    "-object",
    "memory-backend-file,id=hb,size=1M,mem-path=/dev/shm/x,share=on",
    "-device",
    "ivshmem-plain,memdev=hb",
)
VMDK = ("-drive", "if=none,id=d0,file=/tmp/a.vmdk,format=vmdk")


def run(args: tuple[str, ...], version: str = "10.0", only_migratable: bool = False) -> Outcome:
    vm = VmSpec(args=args, only_migratable=only_migratable)
    return predict(Scenario("t", source=vm, destination=VmSpec(), migration=MigrationSpec()), version, HOST)


def blocked(idstr: str) -> str:
    return f"State blocked by non-migratable device '{idstr}'"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("-device", "nvme,serial=x"), blocked("0000:00:01.0/nvme")),
        (("-device", "virtio-net-pci", "-device", "nvme,serial=x"), blocked("0000:00:02.0/nvme")),
        (("-device", "nvme,serial=x,addr=05.0"), blocked("0000:00:05.0/nvme")),
        (("-device", "nvme,serial=x,addr=01.0", "-device", "nvme,serial=y"), blocked("0000:00:01.0/nvme")),
        (("-device", "nvme,serial=x", "-device", "nvme,serial=y"), blocked("0000:00:01.0/nvme")),
        (("-device", "ufs,serial=x"), blocked("0000:00:01.0/ufs")),
        (("-device", "rocker,name=sw0"), blocked("0000:00:01.0/rocker")),
        (("-device", "amd-iommu"), blocked("amd-iommu")),
        (("-device", "intel-iommu", "-device", "nvme,serial=x"), blocked("0000:00:01.0/nvme")),
        (("-device", "virtio-iommu-pci", "-device", "nvme,serial=x"), blocked("0000:00:02.0/nvme")),
        (("-device", "pcie-root-port,id=rp0", "-device", "nvme,serial=x"), blocked("0000:00:02.0/nvme")),
        # behind root ports (real 10.0.2 and 7.2.22, with and without -S: docs/real-qemu-facts.md#pci-paths)
        (
            ("-device", "pcie-root-port,id=rp0,chassis=1", "-device", "nvme,serial=x,bus=rp0"),
            blocked("0000:00:01.0:00.0/nvme"),
        ),
        (
            (
                "-device",
                "pcie-root-port,id=rp0,chassis=1",
                "-device",
                "pcie-root-port,id=rp1,chassis=2",
                "-device",
                "nvme,serial=x,bus=rp1",
            ),
            blocked("0000:00:02.0:00.0/nvme"),
        ),
        (("-device", "nvme,serial=x,addr=03.2,multifunction=on"), blocked("0000:00:03.2/nvme")),
        (("-device", "virtio-net-pci,addr=0x4", "-device", "nvme,serial=x"), blocked("0000:00:01.0/nvme")),
        (("-device", "nvme,serial=x,bus=pcie.0"), blocked("0000:00:01.0/nvme")),
        (
            ("-object", "cryptodev-backend-builtin,id=c", "-device", "virtio-crypto-pci,cryptodev=c"),
            blocked("0000:00:01.0/virtio-crypto"),
        ),
        (
            ("-audiodev", "none,id=a", "-device", "virtio-sound-pci,audiodev=a"),
            blocked("0000:00:01.0/virtio-sound-device"),
        ),
        (("-device", "qemu-xhci", "-device", "usb-wacom-tablet"), blocked("0000:00:01.0/1/usb-wacom")),
        (
            ("-device", "qemu-xhci", "-device", "usb-tablet", "-device", "usb-wacom-tablet"),
            blocked("0000:00:01.0/2/usb-wacom"),
        ),
        (
            ("-chardev", "null,id=s", "-device", "qemu-xhci", "-device", "usb-serial,chardev=s"),
            blocked("0000:00:01.0/1/usb-serial"),
        ),
        (("-device", "qemu-xhci", "-device", "usb-net"), blocked("0000:00:01.0/1/usb-net")),
        (("-device", "qemu-xhci", "-device", "usb-mtp,rootdir=/tmp"), blocked("0000:00:01.0/1/usb-mtp")),
        (("-device", "qemu-xhci", "-device", "usb-uas"), blocked("0000:00:01.0/1/usb-uas")),
        (("-device", "qemu-xhci", "-device", "usb-audio,audiodev=a"), blocked("0000:00:01.0/1/usb-audio")),
        (IVSHMEM, "Migration is disabled when using feature 'peer mode' in device 'ivshmem'"),
        (VMDK, f"The vmdk format used by node '{AUTO_NODE_NAME}' does not support live migration"),
        (
            ("-drive", "if=none,id=d0,node-name=fmt0,file=/tmp/a.vmdk,format=vmdk"),
            "The vmdk format used by node 'fmt0' does not support live migration",
        ),
        (
            (
                "-blockdev",
                "driver=file,filename=/tmp/a.vmdk,node-name=f0",
                "-blockdev",
                "driver=vmdk,file=f0,node-name=v0",
            ),
            "The vmdk format used by node 'v0' does not support live migration",
        ),
        (
            ("-drive", "if=none,id=d0,file=/tmp/a.vmdk"),
            f"The vmdk format used by node '{AUTO_NODE_NAME}' does not support live migration",
        ),
        (
            ("-drive", "if=none,id=d0,file=/tmp/a.vdi,format=vdi"),
            f"The vdi format used by node '{AUTO_NODE_NAME}' does not support live migration",
        ),
        (
            ("-drive", "if=none,id=d0,file=/tmp/a.vpc,format=vpc"),
            f"The vpc format used by node '{AUTO_NODE_NAME}' does not support live migration",
        ),
        (
            ("-drive", "if=none,id=d0,file=/tmp/a.qcow,format=qcow"),
            f"The qcow format used by node '{AUTO_NODE_NAME}' does not support live migration",
        ),
        (
            ("-drive", "if=none,id=d0,file=/tmp/a.vhdx,format=vhdx"),
            f"The vhdx format used by node '{AUTO_NODE_NAME}' does not support live migration",
        ),
        (
            ("-drive", "if=none,id=d0,file=/tmp/a.par,format=parallels"),
            f"The Parallels format used by node '{AUTO_NODE_NAME}' does not support live migration",
        ),
        (
            ("-drive", "if=none,id=d0,file=fat:rw:/tmp/vv,format=vvfat"),
            f"The vvfat (rw) format used by node '{AUTO_NODE_NAME}' does not support live migration",
        ),
        # which message wins when several apply
        (
            (*VMDK, "-drive", "if=none,id=d1,file=/tmp/a.vdi,format=vdi"),
            f"The vdi format used by node '{AUTO_NODE_NAME}' does not support live migration",
        ),
        ((*VMDK, "-device", "nvme,serial=x"), blocked("0000:00:01.0/nvme")),
        (
            ("-device", "qemu-xhci", "-device", "usb-wacom-tablet", "-device", "nvme,serial=x"),
            blocked("0000:00:01.0/1/usb-wacom"),
        ),
        ((*VMDK, *IVSHMEM), "Migration is disabled when using feature 'peer mode' in device 'ivshmem'"),
    ],
)
def test_migrate_is_blocked(args: tuple[str, ...], expected: str) -> None:
    outcome = run(args)
    assert (outcome.verdict, outcome.stage, outcome.error) == ("refused", "migrate", expected)
    # a refused migrate changes nothing on the source (migrate_prepare; real: status none, runstate running)
    assert outcome.source is not None and (outcome.source.status, outcome.source.runstate) == ("none", "running")
    # the destination already ran migrate-incoming: setup / inmigrate (real 10.0.2, #flow-precopy)
    assert outcome.destination is not None and outcome.destination.status == "setup"


@pytest.mark.parametrize(
    "args",
    [
        (
            "-object",
            "memory-backend-file,id=hb,size=1M,mem-path=/dev/shm/x,share=on",
            "-device",
            "ivshmem-plain,memdev=hb,master=on",
        ),
        ("-drive", "if=none,id=d0,file=fat:/tmp/vv,format=vvfat"),
        ("-device", "virtio-net-pci"),
    ],
)
def test_not_blocked(args: tuple[str, ...]) -> None:
    # real 10.0.2: ivshmem master=on and read-only vvfat add no blocker; the migration starts. Both sides alike:
    # a destination without the source's device fails its load, over a socket a race (not modelled).
    vm = VmSpec(args=args)
    outcome = predict(Scenario("t", source=vm, destination=vm, migration=MigrationSpec()), "10.0", HOST)
    assert outcome.verdict == "completed"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("-device", "nvme,serial=x"), "Device nvme is not migratable, but --only-migratable was specified"),
        (("-device", "amd-iommu"), "Device amd-iommu is not migratable, but --only-migratable was specified"),
        (
            ("-object", "cryptodev-backend-builtin,id=c", "-device", "virtio-crypto-pci,cryptodev=c"),
            "Device virtio-crypto-device is not migratable, but --only-migratable was specified",
        ),
        (
            ("-audiodev", "none,id=a", "-device", "virtio-sound-pci,audiodev=a"),
            "Device virtio-sound-device is not migratable, but --only-migratable was specified",
        ),
        (
            ("-device", "qemu-xhci", "-device", "usb-wacom-tablet"),
            "Device usb-wacom-tablet is not migratable, but --only-migratable was specified",
        ),
        (
            IVSHMEM,
            "disallowing migration blocker (--only-migratable) for: Migration is disabled when using "
            "feature 'peer mode' in device 'ivshmem'",
        ),
        (
            VMDK,
            "disallowing migration blocker (--only-migratable) for: The vmdk format used by node "
            f"'{AUTO_NODE_NAME}' does not support live migration",
        ),
        (
            ("-drive", "if=none,id=d0,file=fat:rw:/tmp/vv,format=vvfat"),
            "disallowing migration blocker (--only-migratable) for: The qcow format used by node "
            f"'{AUTO_NODE_NAME}' does not support live migration",
        ),
        # drives are opened before any -device, whatever the command-line order
        (
            ("-device", "nvme,serial=x", *VMDK),
            "disallowing migration blocker (--only-migratable) for: The vmdk format used by node "
            f"'{AUTO_NODE_NAME}' does not support live migration",
        ),
        (
            ("-device", "qemu-xhci", "-device", "usb-wacom-tablet", *IVSHMEM),
            "Device usb-wacom-tablet is not migratable, but --only-migratable was specified",
        ),
    ],
)
def test_only_migratable_refuses_startup(args: tuple[str, ...], expected: str) -> None:
    outcome = run(args, only_migratable=True)
    assert (outcome.verdict, outcome.stage, outcome.error) == ("refused", "startup", expected)
    assert outcome.source is None and outcome.destination is None  # contract: both null


def test_only_migratable_flag_in_raw_args() -> None:
    outcome = run(("-only-migratable", "-device", "rocker,name=sw0"))
    assert outcome.error == "Device rocker is not migratable, but --only-migratable was specified"


@pytest.mark.parametrize(
    ("args", "version", "expected"),
    [
        (("-device", "ufs,serial=x"), "7.2", "'ufs' is not a valid device model name"),
        (("-device", "virtio-sound-pci,audiodev=a"), "7.2", "'virtio-sound-pci' is not a valid device model name"),
        (
            (
                "-device",
                "usb-wacom-tablet",
            ),
            "10.0",
            "No 'usb-bus' bus found for device 'usb-wacom-tablet'",
        ),
        (
            ("-device", "nvme,serial=x,addr=01.0", "-device", "virtio-net-pci,addr=01.0"),
            "10.0",
            "PCI: slot 1 function 0 not available for virtio-net-pci, in use by nvme,id=(null)",
        ),
    ],
)
def test_startup_errors(args: tuple[str, ...], version: str, expected: str) -> None:
    outcome = run(args, version)
    assert (outcome.verdict, outcome.stage, outcome.error) == ("refused", "startup", expected)


def test_destination_refusing_to_start_keeps_the_source() -> None:
    # contract: the source started; the destination is null.
    bad = VmSpec(args=("-device", "usb-wacom-tablet"))
    outcome = predict(Scenario("t", destination=bad, migration=MigrationSpec()), "10.0", HOST)
    assert outcome.stage == "startup" and outcome.destination is None
    assert outcome.source is not None and outcome.source.runstate == "running"


def test_same_blockers_on_7_2() -> None:
    # real 7.2.22: same idstrs and texts as 10.0.2 for devices that exist there.
    assert run(("-device", "nvme,serial=x"), "7.2").error == blocked("0000:00:01.0/nvme")
    assert run(("-device", "qemu-xhci", "-device", "usb-uas"), "7.2").error == blocked("0000:00:01.0/1/usb-uas")
    assert run(IVSHMEM, "7.2").error == "Migration is disabled when using feature 'peer mode' in device 'ivshmem'"
