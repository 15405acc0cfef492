"""userfaultfd as this host's kernel offers it, asked the way QEMU asks (uffd_open(), UFFDIO_API).

Only the kernel interface: harness.probe turns the answers into the host facts postcopy and background
snapshots depend on.
"""

from __future__ import annotations

import ctypes
import errno
import os

# Linux uapi (include/uapi/linux/userfaultfd.h), x86_64
SYS_USERFAULTFD = 323
UFFD_API = 0xAA
UFFDIO_API = 0xC018AA3F  # _IOWR(0xAA, 0x3F, struct uffdio_api)
USERFAULTFD_IOC_NEW = 0xAA00  # _IO(0xAA, 0x00) on /dev/userfaultfd
UFFD_FEATURE_PAGEFAULT_FLAG_WP = 1 << 0
UFFD_USER_MODE_ONLY = 1
O_CLOEXEC = os.O_CLOEXEC
O_NONBLOCK = os.O_NONBLOCK


class _UffdioApi(ctypes.Structure):
    _fields_ = (("api", ctypes.c_uint64), ("features", ctypes.c_uint64), ("ioctls", ctypes.c_uint64))


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def uffd_features(fd: int) -> tuple[int | None, str]:
    """UFFDIO_API with no requested features: the kernel answers with every feature it supports."""
    api = _UffdioApi(UFFD_API, 0, 0)
    libc = _libc()
    if libc.ioctl(fd, ctypes.c_ulong(UFFDIO_API), ctypes.byref(api)) != 0:
        err = ctypes.get_errno()
        return None, f"UFFDIO_API failed: {os.strerror(err)}"
    return int(api.features), ""


def open_uffd_syscall() -> tuple[int | None, str]:
    libc = _libc()
    fd = libc.syscall(SYS_USERFAULTFD, O_CLOEXEC | O_NONBLOCK)
    if fd < 0:
        err = ctypes.get_errno()
        hint = " (vm.unprivileged_userfaultfd=0 and no CAP_SYS_PTRACE?)" if err == errno.EPERM else ""
        return None, f"userfaultfd syscall: {os.strerror(err)}{hint}"
    return int(fd), ""


def open_uffd_dev() -> tuple[int | None, str]:
    try:
        dev = os.open("/dev/userfaultfd", os.O_RDWR | O_CLOEXEC)
    except OSError as exc:
        return None, f"/dev/userfaultfd: {exc.strerror}"
    try:
        fd = _libc().ioctl(dev, ctypes.c_ulong(USERFAULTFD_IOC_NEW), O_CLOEXEC | O_NONBLOCK)
        if fd < 0:
            return None, f"/dev/userfaultfd USERFAULTFD_IOC_NEW: {os.strerror(ctypes.get_errno())}"
        return int(fd), ""
    finally:
        os.close(dev)
