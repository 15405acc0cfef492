"""The VFIO part of the reference model: what QEMU does with a vfio-pci device around migration.

- :mod:`.uapi`: the kernel's migration uAPI v2 state machine (states, flags, combination arcs, -EINVAL).
- :mod:`.personality`: what the device's kernel driver offers, and the vfio-pci properties per version.
- :mod:`.realize`: realize-time gating (blockers, realize errors) per QEMU version; entry point
  :func:`.realize.vfio_realize`, called by the core model through the interface in :mod:`.api`.
- :mod:`.handlers`: the savevm entry (``save_prepare`` gate) and the predicted migration failure.
- :mod:`.sequences`: the device-state sequences QEMU drives, as VFIO_MIGRATION events show them.
"""
