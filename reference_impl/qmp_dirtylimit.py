"""Raw ``qmp`` steps of the dirty-rate commands (system/dirtylimit.c, migration/dirtyrate.c; softmmu/ in 7.2).

They matter to migration through the dirty-limit capability, and a user meets their refusals on any VM without
a KVM dirty ring (TCG, or KVM without ``dirty-ring-size``). Only the refusals and the no-ops are modelled: an
accepted limit or measurement starts threads whose later state is timing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from reference_impl.capabilities import N10_0
from reference_impl.limits import NotModelled
from reference_impl.machine import Machine

# qmp_set_vcpu_dirty_limit's text, its stray quote included (the same in 7.2.22, 10.0.2 and 10.2.2; measured).
NO_DIRTY_RING = "dirty page limit feature requires KVM with accelerator property 'dirty-ring-size' set'"


def set_vcpu_dirty_limit(vm: Machine, arguments: Mapping[str, Any]) -> str | None:
    """``qmp_set_vcpu_dirty_limit``: ``!kvm_enabled() || !kvm_dirty_ring_enabled()`` is checked first."""
    if not vm.kvm_dirty_ring:
        return NO_DIRTY_RING
    raise NotModelled("set-vcpu-dirty-limit with a KVM dirty ring")


def cancel_vcpu_dirty_limit(vm: Machine, arguments: Mapping[str, Any]) -> str | None:
    """``qmp_cancel_vcpu_dirty_limit``: without a dirty ring it returns at once, with no error."""
    if not vm.kvm_dirty_ring:
        return None
    raise NotModelled("cancel-vcpu-dirty-limit with a KVM dirty ring")


def calc_dirty_rate(vm: Machine, arguments: Mapping[str, Any]) -> str | None:
    """``qmp_calc_dirty_rate``: calc-time range, then the sample-pages checks, then the mode's requirement
    ("mode dirty-ring is not enabled, use other method instead.", measured on 10.0.2 and 10.2.2 under TCG).

    7.2's test calls kvm_dirty_ring_enabled(), which reads kvm_state without checking it: under TCG the QEMU
    dies of SIGSEGV (measured on 7.2.22; docs/qemu-bugs.md), so 7.2 is not modelled. An accepted measurement
    runs a thread for calc-time seconds (a second command's answer is timing): not modelled either."""
    calc_time = arguments.get("calc-time")
    if set(arguments) - {"calc-time", "mode"} or not isinstance(calc_time, int) or not 1 <= calc_time <= 60:
        raise NotModelled(f"calc-dirty-rate with arguments {sorted(arguments)}")
    if arguments.get("mode") != "dirty-ring" or vm.kvm_dirty_ring:
        raise NotModelled("calc-dirty-rate that starts a measurement")
    if vm.vn < N10_0:
        # 10.0.2's kvm_dirty_ring_enabled checks kvm_state; where between 7.2 and 10.0 that came was not read.
        raise NotModelled("calc-dirty-rate mode dirty-ring without a dirty ring before 10.0 (kvm_state read unchecked)")
    return "mode dirty-ring is not enabled, use other method instead."


HANDLERS = {
    "set-vcpu-dirty-limit": set_vcpu_dirty_limit,
    "cancel-vcpu-dirty-limit": cancel_vcpu_dirty_limit,
    "calc-dirty-rate": calc_dirty_rate,
}
