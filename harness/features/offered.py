"""What one QEMU binary offers of the optional features harness.features.needs derives, and which need it lacks.

Most come from the QOM type list the binary probe already asks (qom-list-types loads every module first, so
a module-built feature counts when its module is installed): a device or ``-object`` is its type, a chardev
backend is type ``chardev-<backend>`` (char_get_class, chardev/char.c), an accelerator ``<name>-accel``
(accel_find, accel/accel-common.c), the RDMA migration transport the ``qio-channel-rdma`` type that
migration/rdma.c registers only when QEMU is configured with RDMA (the QAPI enum MigrationAddressType lists
``rdma`` either way). Netdev backends and block drivers are not QOM types: ``-netdev help`` (show_netdevs,
net/net.c: ``user`` only with slirp) and ``-drive format=help`` (bdrv_iterate_format, block.c) list them.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass

from contract.versions import Version
from harness.binaries import QemuBinary
from harness.features.needs import Need

HELP_TIMEOUT_S = 15.0

# qdev_alias_table (system/qdev-monitor.c, read from 10.2.2): the short names -device also takes (x86 only:
# the PCI forms of the virtio aliases).
DEVICE_ALIASES = {
    "ac97": "AC97", "e1000-82540em": "e1000", "es1370": "ES1370", "ahci": "ich9-ahci", "lsi": "lsi53c895a",
    **{
        f"virtio-{name}": f"virtio-{name}-pci"
        for name in (
            "9p", "balloon", "blk", "gpu", "gpu-gl", "gpu-rutabaga", "input-host", "iommu", "keyboard", "mouse",
            "net", "rng", "scsi", "serial", "sound", "tablet",
        )
    },
}  # fmt: skip

# The transports every version that has them builds in; only RDMA depends on how QEMU was configured.
RDMA_TYPE = "qio-channel-rdma"


@dataclass(frozen=True)
class Offered:
    """What the binary has. ``netdevs`` and ``block_drivers`` are None when their help listing could not be
    read: then no need of that kind is judged (not known is not "absent")."""

    types: frozenset[str]
    netdevs: frozenset[str] | None = None
    block_drivers: frozenset[str] | None = None
    # MultiFDCompression's values in the binary's QAPI schema (query-qmp-schema); None: not read.
    multifd_compression: frozenset[str] | None = None

    @property
    def has_rdma(self) -> bool:
        return RDMA_TYPE in self.types

    def has(self, need: Need) -> bool | None:
        """Whether the binary offers ``need`` (None: not known)."""
        if need.kind in ("device", "object"):
            return need.name in self.types or DEVICE_ALIASES.get(need.name, "") in self.types
        if need.kind == "chardev":
            return f"chardev-{need.name}" in self.types
        if need.kind == "accel":
            return f"{need.name}-accel" in self.types
        if need.kind == "transport":
            return self.has_rdma if need.name == "rdma" else True
        if need.kind == "netdev":
            return None if self.netdevs is None else need.name in self.netdevs
        if need.kind == "block-driver":
            return None if self.block_drivers is None else need.name in self.block_drivers
        if need.kind == "multifd-compression":
            return None if self.multifd_compression is None else need.name in self.multifd_compression
        return None


def modelled_absence(need: Need, version: Version) -> bool:
    """Whether the model itself predicts that ``version`` lacks ``need`` (a device newer than the version,
    reference_impl.catalog ``since``): then the refusal is behaviour to compare, not a build's gap."""
    if need.kind == "multifd-compression":
        # The model predicts the refusal of the methods Debian's builds lack (qpl, qatzip, uadk).
        from reference_impl.parameters import compression_methods

        return need.name not in compression_methods()
    if need.kind != "device":
        return False
    from reference_impl.catalog import model_for

    model = model_for(need.name)
    return model is not None and model.since is not None and version < model.since


# What a QOM type or backend name can be (type_register checks nothing, but every name QEMU registers is of this
# form, and QemuOpts would split a name at a comma): anything else is no feature a build could lack.
_FEATURE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:+-]*$")


def lacking(needs: Iterable[Need], offered: Offered, version: Version) -> Need | None:
    """The first need the binary does not offer and the model does not expect ``version`` to lack. A name no
    QEMU could register (``virtio-net-pci,id=evil``) is not a missing feature: QEMU's refusal is compared."""
    for need in needs:
        if not _FEATURE_NAME.match(need.name):
            continue
        if offered.has(need) is False and not modelled_absence(need, version):
            return need
    return None


def parse_netdev_help(text: str) -> frozenset[str] | None:
    """``Available netdev backend types:`` then the names, one a line (7.2 to 10.2)."""
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if line.strip().startswith("Available netdev backend types"):
            return frozenset(name.strip() for name in lines[index + 1 :] if name.strip())
    return None


def parse_format_help(text: str) -> frozenset[str] | None:
    """``Supported formats: a b c`` (the read-write list; the read-only list after it is a subset)."""
    for line in text.splitlines():
        if line.startswith("Supported formats:"):
            return frozenset(line.split(":", 1)[1].split())
    return None


def _help(binary: QemuBinary, *args: str) -> str:
    try:
        done = subprocess.run(
            binary.argv("-machine", "none", "-nodefaults", "-display", "none", *args),
            env=binary.environ(),
            capture_output=True,
            text=True,
            timeout=HELP_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout


def parse_multifd_compression(schema: object) -> frozenset[str] | None:
    """MultiFDCompression's values from ``query-qmp-schema``: the type of migrate-set-parameters' member
    ``multifd-compression`` (type names other than commands' are masked, so it is found through the command).
    Enum entities list ``values`` (7.2) and, from 9.1, ``members`` too. None when the schema does not say."""
    if not isinstance(schema, list):
        return None
    entities = {str(e.get("name")): e for e in schema if isinstance(e, dict)}
    command = entities.get("migrate-set-parameters", {})
    members = entities.get(str(command.get("arg-type")), {}).get("members", [])
    kind = next(
        (m.get("type") for m in members if isinstance(m, dict) and m.get("name") == "multifd-compression"), None
    )
    values = entities.get(str(kind), {}).get("values")
    if not isinstance(values, list):
        return None
    return frozenset(str(v) for v in values)


def probe_offered(
    binary: QemuBinary, types: frozenset[str], multifd_compression: frozenset[str] | None = None
) -> Offered:
    """``types`` (qom-list-types, from harness.probe) and ``multifd_compression`` (its query-qmp-schema) plus
    the two help listings (two short QEMU runs that print and exit). Blocking."""
    return Offered(
        types=types,
        netdevs=parse_netdev_help(_help(binary, "-netdev", "help")),
        block_drivers=parse_format_help(_help(binary, "-drive", "format=help")),
        multifd_compression=multifd_compression,
    )
