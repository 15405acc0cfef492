"""The arguments of raw ``migrate`` / ``migrate-incoming`` besides ``uri``: ``channels``, ``resume``, ``blk``,
``inc``, ``exit-on-error`` (``detach`` is ignored by QEMU: qapi/migration.json).

Read from qmp_migrate / migrate_prepare / qmp_migrate_incoming / qemu_start_incoming_migration
(migration/migration.c) of 7.2.22 (7.2 profile) and 10.0.2 / 10.2.2 (10.0+ profiles), measured on all three
(docs/real-qemu-facts.md, "QMP surface"). The versions between (8.0 to 9.2: ``channels`` came in 8.2, ``blk`` and
``inc`` were deprecated in 8.2 and removed in 9.1, the URI parse moved before migrate_prepare in 8.2) were not
read: an argument whose handling differs there is :class:`~reference_impl.limits.NotModelled` on them.

Each function turns the arguments into the ``uri`` the existing URI model follows (a ``main`` channel of socket
type is its URI), or returns QEMU's refusal, or raises NotModelled.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from reference_impl.capabilities import N8_0, N10_0
from reference_impl.limits import NotModelled
from reference_impl.machine import Machine

NEED_URI_OR_CHANNELS = "need either 'uri' or 'channels' argument"
NO_MAIN_CHANNEL = "Channel list has no main entry"  # qmp_migrate (10.0.2, 10.2.2), after the NULL read
NO_PAUSED_MIGRATION = "Cannot resume if there is no paused migration"
# The QAPI schema of 7.2 (uri mandatory) and of 10.0+ (both optional, channels added, blk/inc removed).
MIGRATE_ARGS = {"old": ("uri", "blk", "inc", "detach", "resume"), "new": ("uri", "channels", "detach", "resume")}
INCOMING_ARGS = {"old": ("uri",), "new": ("uri", "channels", "exit-on-error")}
BOOLEANS = frozenset({"blk", "inc", "detach", "resume", "exit-on-error"})


def _schema(vm: Machine, command: str, arguments: Mapping[str, Any]) -> str:
    """ "old" (7.2) or "new" (10.0+); NotModelled between when an argument outside ``uri``/``detach`` is used."""
    if vm.vn < N8_0:
        return "old"
    if vm.vn >= N10_0:
        return "new"
    extra = sorted(set(arguments) - {"uri", "detach"})
    if extra or "uri" not in arguments:
        raise NotModelled(f"{command} argument {extra[0] if extra else 'uri (missing)'!r} on {vm.version}")
    return "new"


def _qapi_error(command: str, arguments: Mapping[str, Any], known: tuple[str, ...], schema: str) -> str | None:
    """The QAPI input visitor: a missing mandatory member first (7.2's ``uri``), then an unexpected one
    (qobject_input_check_struct). Several unexpected members come out in QDict hash order: not modelled."""
    if schema == "old" and "uri" not in arguments:
        return "Parameter 'uri' is missing"
    for name in BOOLEANS & set(arguments):
        if name in known and not isinstance(arguments[name], bool):
            raise NotModelled(f"{command} argument {name!r} that is not a boolean")
    unexpected = sorted(set(arguments) - set(known))
    if len(unexpected) > 1:
        raise NotModelled(f"{command} with several unexpected arguments {unexpected} (reported in hash order)")
    if unexpected:
        return f"Parameter '{unexpected[0]}' is unexpected"
    return None


def _channel_uri(command: str, channel: Any) -> str:
    """A MigrationChannel's address as the URI migrate_uri_parse would have built it (socket inet / unix)."""
    addr = channel.get("addr") if isinstance(channel, Mapping) else None
    if not isinstance(addr, Mapping) or addr.get("transport") != "socket":
        raise NotModelled(f"{command} channel address {addr!r}")
    kind = addr.get("type")
    if kind == "inet" and set(addr) <= {"transport", "type", "host", "port"}:
        return f"tcp:{addr.get('host', '')}:{addr.get('port', '')}"
    if kind == "unix" and set(addr) <= {"transport", "type", "path"}:
        return f"unix:{addr.get('path', '')}"
    raise NotModelled(f"{command} channel address {dict(addr)!r}")


def _channels(command: str, arguments: Mapping[str, Any]) -> list[Any] | None:
    """The ``channels`` list (None when absent or empty: QAPI hands QEMU a NULL list for [])."""
    channels = arguments.get("channels")
    if channels is None:
        return None
    if not isinstance(channels, list):
        raise NotModelled(f"{command} channels that are not a list")
    for channel in channels:
        kind = channel.get("channel-type") if isinstance(channel, Mapping) else None
        if kind not in ("main", "cpr"):
            raise NotModelled(f"{command} channel-type {kind!r}")
    return channels or None


def migrate(vm: Machine, arguments: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(refusal, uri): the refusal qmp_migrate gives before the URI model takes over, else the URI to follow.

    7.2: migrate_prepare runs first: ``resume`` without a paused postcopy is refused whatever the URI; ``blk`` /
    ``inc`` then set the block capability for this migration (refused with ``x-colo`` or ``block`` already on).
    10.0+: ``uri`` xor ``channels``; a channel type twice; the URI parse and migration_channels_and_transport_
    compatible; only then migrate_prepare's resume check. A list without a ``main`` channel dereferences NULL
    (channelv[MIGRATION_CHANNEL_TYPE_MAIN]->addr) and the source dies with SIGSEGV on 10.0.2 and 10.2.2: a QEMU
    bug; the model predicts the refusal the code goes on to make (known bug qemu-10-migrate-channels-no-main).
    """
    schema = _schema(vm, "migrate", arguments)
    error = _qapi_error("migrate", arguments, MIGRATE_ARGS[schema], schema)
    if error is not None:
        return error, None
    resume = bool(arguments.get("resume", False))
    if resume and vm.status in ("postcopy-paused", "postcopy-recover"):
        raise NotModelled("migrate resume of a paused postcopy")
    if schema == "old":
        if resume:
            return NO_PAUSED_MIGRATION, None
        if arguments.get("blk") or arguments.get("inc"):
            error = _block_migration(vm)
            if error is not None:
                return error, None
        return None, str(arguments["uri"])
    channels = _channels("migrate", arguments)
    if ("uri" in arguments) == (channels is not None):
        return NEED_URI_OR_CHANNELS, None
    uri = arguments.get("uri")
    if channels is not None:
        seen: set[str] = set()
        for channel in channels:
            kind = channel["channel-type"]
            if kind in seen:
                return f"Channel list has more than one {kind} entry", None
            seen.add(kind)
        if "main" not in seen:
            if vm.vn < N10_0:
                raise NotModelled("migrate channels without a main channel before 10.0 (no cpr type: not read)")
            # What qmp_migrate means (10.0.2, 10.2.2): its "no main entry" check comes after it has read
            # channelv[MAIN]->addr through NULL, so real QEMU dies instead (docs/qemu-bugs.md section 12).
            return NO_MAIN_CHANNEL, None
        if "cpr" in seen:
            raise NotModelled("migrate with a cpr channel")
        uri = _channel_uri("migrate", channels[0])
    # With resume, the URI parse and the transport check still come first (qmp_commands.migrate_command).
    return None, str(uri)


def _block_migration(vm: Machine) -> str | None:
    """7.2 migrate_prepare with blk/inc: COLO first, then a block capability already on; then
    migrate_set_block_enabled runs migrate_caps_check with ``block`` added (not modelled beyond ``events``)."""
    if "x-colo" in vm.caps:
        return "No disk migration is required in COLO mode"
    if "block" in vm.caps:
        return "Command options are incompatible with current migration capabilities"
    if vm.caps - {"events"}:
        raise NotModelled(f"migrate blk/inc with capabilities {sorted(vm.caps)}")
    return None


def incoming_qapi_error(vm: Machine, arguments: Mapping[str, Any]) -> str | None:
    """The QAPI refusals of migrate-incoming's arguments: the marshaller runs before qmp_migrate_incoming."""
    schema = _schema(vm, "migrate-incoming", arguments)
    return _qapi_error("migrate-incoming", arguments, INCOMING_ARGS[schema], schema)


def migrate_incoming(vm: Machine, arguments: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(refusal, uri) for qmp_migrate_incoming's arguments (checked after the 'once' flag and the runstate).

    10.0+: ``uri`` xor ``channels``; more than one channel: "Channel list must have only one entry, for type
    'main'" (the channel's type is not looked at). ``exit-on-error`` false keeps a failed destination alive:
    not modelled."""
    schema = _schema(vm, "migrate-incoming", arguments)
    if arguments.get("exit-on-error") is False:
        raise NotModelled("migrate-incoming exit-on-error false")
    if schema == "old":
        return None, str(arguments["uri"])
    channels = _channels("migrate-incoming", arguments)
    if ("uri" in arguments) == (channels is not None):
        return NEED_URI_OR_CHANNELS, None
    if channels is None:
        return None, str(arguments["uri"])
    if len(channels) > 1:
        return "Channel list must have only one entry, for type 'main'", None
    if channels[0]["channel-type"] != "main":
        raise NotModelled("migrate-incoming with a cpr channel")
    return None, _channel_uri("migrate-incoming", channels[0])
