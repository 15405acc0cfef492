"""Host conditions the model takes as explicit inputs.

Real QEMU's answers depend on the host (userfaultfd, UFFD write-protect, KVM, the VFIO device's driver).
The harness probes them (harness.probe) and hands the same facts to the model, so a prediction is a pure
function of (scenario, version, host).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class HostFacts:
    userfaultfd: bool = True  # postcopy on the destination (migrate_caps_check rule c)
    uffd_wp: bool = True  # background-snapshot (rule f)
    kvm: bool = False  # the accelerator the VMs run with is KVM
    # KVM keeps the invtsc CPUID flag a vCPU asks for (probed: harness.probe, "+invtsc,enforce" starts); else
    # QEMU drops it with a warning and kvm_arch_init_vcpu adds no invtsc blocker (reference_impl.cpu).
    kvm_invtsc: bool = False
    # KVM offers Hyper-V (KVM_CAP_HYPERV, probed): without it no hv-* CPU flag adds a blocker
    # (reference_impl.cpu); None: not probed, or not KVM.
    kvm_hyperv: bool | None = None
    dirty_ring: bool = False  # KVM with dirty-ring-size set (rule r)
    # VFIO: whether the kernel's DMA-logging report works for devices that advertise DMA logging.
    # False on Debian's stock 6.12 vfio.ko (IOMMUFD_DRIVER unset: iova_bitmap stubs return -EOPNOTSUPP),
    # True with the lab's rebuilt vfio.ko or a kernel with IOMMUFD (docs/vfio-lab.md P3).
    vfio_dirty_report_works: bool = True
    # VFIO: whether the kernel speaks the v1 migration region (pre-5.18). Never on the kernels we use.
    vfio_v1_region: bool = False
    kernel: str | None = None
