"""The refusals of a migration URI's address itself, before any connection: socket_parse / inet_parse
(util/qemu-sockets.c), file_parse_offset (migration/file.c) and the fd: lookup (monitor_get_fd,
monitor_fd_param in monitor/monitor.c).

Where they run decides what they change, which is why they are apart from the scheme dispatch
(reference_impl.qmp_commands): 8.2+ parses the whole URI in migrate_uri_parse before migrate_prepare
(``migrate``) and before migration_incoming_state_setup (``migrate-incoming``), so the refusal leaves the
status ``none``; 7.2 parses inside the transport's start, after migrate_init (setup -> failed) or after the
incoming MIGRATION ``setup`` event. Read in 7.2 and 10.0.2; measured on 7.2.22, 10.0.2 and 10.2.2.
"""

from __future__ import annotations

import re

from reference_impl.limits import NotModelled

# inet_parse: "%64[^:]:%32[^,]" (hostname or IPv4), ":%32[^,]" (no host), "[%64[^]]]:%32[^,]" (IPv6).
_HOST_PORT = re.compile(r"[^:]{1,64}:[^,]{1,32}")
_PORT_ONLY = re.compile(r":[^,]{1,32}")
_IPV6 = re.compile(r"\[[^\]]{1,64}\]:[^,]{1,32}")


def _inet_error(address: str) -> str | None:
    """``inet_parse``'s address part; its options (``,to=``, ``,ipv4``...) are not read here."""
    if address.startswith(":"):
        pattern, error = _PORT_ONLY, f"error parsing port in address '{address}'"
    elif address.startswith("["):
        pattern, error = _IPV6, f"error parsing IPv6 address '{address}'"
    else:
        pattern, error = _HOST_PORT, f"error parsing address '{address}'"
    match = pattern.match(address)
    if match is None:
        return error
    if match.end() != len(address):
        raise NotModelled(f"tcp address options {address[match.end() :]!r}")
    return None


def socket_address_error(scheme: str, target: str) -> str | None:
    """socket_parse's refusal of a ``tcp:``/``unix:``/``fd:`` address (the same texts in 7.2 and 10.0.2:
    7.2 hands the tcp address to inet_parse without its prefix, 10.0 strips it in socket_parse)."""
    if scheme == "unix" and not target:
        return "invalid Unix socket address"
    if scheme == "fd" and not target:
        return "invalid file descriptor address"
    if scheme == "tcp":
        return _inet_error(target)
    return None


_SUFFIXES = {"": 0, "b": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5, "e": 6}


def file_offset(target: str) -> tuple[str, int | None, str | None]:
    """file_parse_offset (8.2+): (path, offset, refusal). The text after ``,offset=`` must be a size
    qemu_strtosz reads; qemu_strtosz's EINVAL is the only refusal modelled (a fraction or an overflow: not
    read here)."""
    path, found, text = target.partition(",offset=")
    if not found:
        return path, None, None
    hexa = re.fullmatch(r"0[xX]([0-9a-fA-F]+)", text)
    if hexa is not None:
        return path, int(hexa.group(1), 16), None
    dec = re.fullmatch(r"([0-9]+)([bBkKmMgGtTpPeE]?)", text)
    if dec is not None:
        return path, int(dec.group(1)) << (10 * _SUFFIXES[dec.group(2).lower()]), None
    if re.match(r"[0-9.]", text):
        raise NotModelled(f"file URI offset {text!r}")
    return path, None, f"file URI has bad offset {text}: Invalid argument"


def fd_lookup_error(name: str) -> str:
    """monitor_get_fd (outgoing) / monitor_fd_param (incoming) for a name no ``getfd`` registered: the harness
    passes no descriptor, so every name is unknown. A number is a descriptor of QEMU's own for
    monitor_fd_param: not modelled."""
    if name.isdigit():
        raise NotModelled(f"fd: URI with the descriptor number {name}")
    return f"File descriptor named '{name}' has not been found"
