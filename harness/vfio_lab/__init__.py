"""The hardware-free VFIO lab: a nested TCG guest running Debian's kernel with the mtty mdev sample.

build (the guest image from Debian packages), kernel (the Debian kernel it runs), boot (the L1 QEMU),
inside (the runner in the guest), mdev (the allocator that hands each QEMU launch a fresh mdev).
docs/vfio-lab.md explains the whole lab.
"""
