"""``migconform qemus``: the QEMU binaries found and what the probes say about them, as a table."""

from __future__ import annotations

from collections.abc import Sequence

from harness.binaries import QemuBinary
from harness.errors import HostEnvironmentError
from harness.linux_boot import probe_linux_boot
from harness.probe import choose_accel, probe_binary, probe_host


def format_qemus(binaries: Sequence[QemuBinary]) -> str:
    """A readable table of the binaries and what the probes found (``migconform qemus``). Runs the Linux boot
    probe too (its first run on a host may take :data:`harness.linux_boot.LINUX_BOOT_BOUND_S` per binary)."""
    host = probe_host()
    lines = [
        f"host: Linux {host.kernel}",
        f"  userfaultfd: {'yes' if host.userfaultfd else 'no'} ({host.userfaultfd_detail})",
        f"  UFFD write-protect: {'yes' if host.uffd_wp else 'no'} ({host.uffd_wp_detail})",
        f"  KVM: {host.kvm_detail}",
        f"  KVM Hyper-V: {host.kvm_hyperv_detail}",
        "",
    ]
    if not binaries:
        lines.append("no QEMU binaries found: set QEMU_BINARY, run scripts/setup.sh, or put qemu-system-x86_64 on PATH")
        return "\n".join(lines)
    rows = [("version", "path", "accel(auto)", "KVM", "caps", "vfio-pci")]
    details: list[str] = []
    for binary in binaries:
        try:
            probe = probe_binary(binary)
        except HostEnvironmentError as exc:
            rows.append((str(binary.version), binary.path, "-", "-", "probe failed", "-"))
            details.append(f"{binary.label}")
            details.append(f"  probe failed: {exc}")
            continue
        linux = probe_linux_boot(binary)
        auto, why = choose_accel("auto", probe, host)
        kvm = f"yes, -cpu {probe.kvm.cpu}" if probe.kvm.usable else "no"
        vfio = "no"
        if probe.has_device("vfio-pci"):
            migration_prop = next(
                (p for p in ("enable-migration", "x-enable-migration") if p in probe.vfio_pci_properties), "?"
            )
            vfio = f"yes ({migration_prop})"
        caps = str(len(probe.capabilities))
        rows.append((str(binary.version), binary.path, auto or "-", kvm, caps, vfio))
        details.append(f"{binary.label}")
        if binary.env or binary.extra_args:
            env = " ".join(f"{k}={v}" for k, v in binary.env.items())
            details.append(f"  runs with: {' '.join(filter(None, (env, *binary.extra_args)))}")
        details.append(f"  accel auto -> {auto}: {why}")
        details.append(f"  KVM: {probe.kvm.reason}")
        for cpu, result in probe.kvm.attempts:
            details.append(f"    -cpu {cpu}: {result}")
        details.append(f"  invtsc under KVM (requires kvm-invtsc): {probe.kvm.invtsc_detail}")
        cached = " (answer kept from an earlier boot probe)" if linux.from_disk else ""
        details.append(f"  boots Linux under KVM: {linux.detail}{cached}")
        details.append(f"  migration capabilities: {', '.join(probe.capabilities)}")
        if probe.offered is not None:  # what a scenario may need of the build (harness.features)
            chardevs = sorted(t.removeprefix("chardev-") for t in probe.offered.types if t.startswith("chardev-"))
            details.append(f"  chardev backends: {', '.join(chardevs)}")
            if probe.offered.netdevs is not None:
                details.append(f"  netdev backends: {', '.join(sorted(probe.offered.netdevs))}")
            details.append(f"  RDMA migration: {'yes' if probe.offered.has_rdma else 'no'}")
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
    lines.append("")
    lines.extend(details)
    return "\n".join(lines)
