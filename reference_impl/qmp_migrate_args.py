"""The arguments of raw ``migrate`` / ``migrate-incoming`` besides ``uri``: ``channels``, ``resume``, ``blk``,
``inc``, ``exit-on-error`` (``detach`` is ignored by QEMU: qapi/migration.json).

Read from qmp_migrate / migrate_prepare / qmp_migrate_incoming / qemu_start_incoming_migration
(migration/migration.c) of 7.2.22 (7.2 profile) and 10.0.2 / 10.2.2 (10.0+ profiles), measured on all three
(docs/real-qemu-facts.md, "QMP surface").

The versions between (8.0 to 9.2) are modelled only at the QAPI layer (the generated marshaller refuses a
missing mandatory member or an unexpected one before any handler runs), from the schema each version has
(:data:`SCHEMAS`; docs/real-qemu-facts.md, "8.x and 9.x rules: sources"), and on 9.1/9.2 the handler checks the
9.1 development tree shares with 10.0.2 (:func:`_same_as_10_0`). The other handlers of 8.0-9.0 (migrate_prepare's
``blk``/``inc``/``resume`` checks, 8.2's ``channels`` parse, whose messages changed in 9.0) were not read: an
argument that reaches them is :class:`~reference_impl.limits.NotModelled` there.

Each function turns the arguments into the ``uri`` the existing URI model follows (a ``main`` channel of socket
type is its URI), or returns QEMU's refusal, or raises NotModelled.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from reference_impl.capabilities import N8_0, N8_1, N8_2, N9_0, N9_1, N9_2, N10_0
from reference_impl.limits import NotModelled
from reference_impl.machine import Machine

NEED_URI_OR_CHANNELS = "need either 'uri' or 'channels' argument"
NO_MAIN_CHANNEL = "Channel list has no main entry"  # qmp_migrate (10.0.2, 10.2.2), after the NULL read
NO_PAUSED_MIGRATION = "Cannot resume if there is no paused migration"
N7_2 = 702  # capabilities.vnum(V7_2)
BOOLEANS = frozenset({"blk", "inc", "detach", "resume", "exit-on-error"})


class Schema(NamedTuple):
    """One version's QAPI ``data`` of a command: its members in order, and whether ``uri`` is mandatory
    (None: it changed inside the release series, so the profile cannot say)."""

    members: tuple[str, ...]
    uri_mandatory: bool | None


def _schemas(vn: int) -> dict[str, Schema]:
    """qapi/migration.json's ``migrate`` / ``migrate-incoming`` per profile.

    - 7.2 (read in 7.2.22): ``uri`` mandatory; migrate has blk/inc/detach/resume, migrate-incoming only uri.
    - 8.2: ``channels`` added to both (commit 074dbce5fcce "migration: New migrate and migrate-incoming
      argument 'channels'"), migrate-incoming's ``uri`` optional, migrate's still mandatory in 8.2.0/8.2.1:
      commit 57fd4b4e10 "Make 'uri' optional for migrate QAPI" (Fixes: 074dbce5fcce) reached master for 9.0
      and the stable branch only in 8.2.2 (qemu-devel, "[Stable-8.2.2 04/60]", whose diff shows 8.2's
      ``'data': {'uri': 'str', '*channels': ..., '*blk': ..., '*inc': ...}``): None for the 8.2 profile.
    - 9.1: ``blk`` and ``inc`` removed (docs/about/removed-features.rst of 10.2.2: "removed in 9.1"),
      ``exit-on-error`` added to migrate-incoming ("(since 9.1)" in 10.2.2's qapi/migration.json).
    8.0 and 8.1 have 7.2's schema: inferred (neither argument nor removal names them), not read.
    """
    migrate = ["uri", "blk", "inc", "detach", "resume"]
    incoming = ["uri"]
    uri_mandatory: bool | None = True
    incoming_uri_mandatory = True
    if vn >= N8_2:
        migrate.insert(1, "channels")
        incoming.append("channels")
        uri_mandatory = None if vn < N9_0 else False
        incoming_uri_mandatory = False
    if vn >= N9_1:
        migrate.remove("blk")
        migrate.remove("inc")
        incoming.append("exit-on-error")
    return {
        "migrate": Schema(tuple(migrate), uri_mandatory),
        "migrate-incoming": Schema(tuple(incoming), incoming_uri_mandatory),
    }


SCHEMAS: dict[int, dict[str, Schema]] = {vn: _schemas(vn) for vn in (N7_2, N8_0, N8_1, N8_2, N9_0, N9_1, N9_2, N10_0)}


def _schema(vm: Machine, command: str, arguments: Mapping[str, Any]) -> str:
    """ "old" (7.2) or "new" (10.0+) for the handlers read in those versions; between them only what the QAPI
    layer decides, or the arguments the existing URI model covers (``uri``, ``detach``; 9.1+'s default
    ``exit-on-error`` true), is modelled (see the module doc)."""
    if vm.vn < N8_0:
        return "old"
    if vm.vn >= N10_0:
        return "new"
    if _qapi_error(command, arguments, _version_schema(vm, command)) is not None:
        return "old" if vm.vn < N8_2 else "new"
    # resume false skips migrate_prepare's ``if (resume)`` block in 7.2.22 and 10.0.2 alike; exit-on-error true
    # is 9.1's default (mis->exit_on_error). Both inferred for the versions between, not read there.
    defaults = {"resume": False, "exit-on-error": True}
    extra = sorted(a for a in set(arguments) - {"uri", "detach"} if defaults.get(a) is not arguments[a])
    if vm.vn >= N9_1:
        if _same_as_10_0(command, arguments):
            return "new"
        if "channels" in arguments and not extra[1:]:
            raise NotModelled(f"{command} with several channels on {vm.version} (message not read for 9.1/9.2)")
    if extra or "uri" not in arguments:
        raise NotModelled(f"{command} argument {extra[0] if extra else 'uri (missing)'!r} on {vm.version}")
    return "new"


def _same_as_10_0(command: str, arguments: Mapping[str, Any]) -> bool:
    """9.1/9.2: the handler checks whose text is the same in the 9.1 development tree (qemu/qemu at
    dbea1c89dad3, May 2024, after 9.0.0) and in 10.0.2, so the releases between run them too (inferred: 9.1.0
    and 9.2.x themselves were not read). qmp_migrate / qemu_start_incoming_migration: "need either 'uri' or
    'channels' argument" first, a single channel's address used as its URI would be, then the URI parse and
    migration_channels_and_transport_compatible, then (migrate) migrate_prepare's resume check. Not the same:
    a list of several channels ("Channel list has more than one entries" there; 10.0.2 names the type, and
    migrate-incoming says "Channel list must have only one entry, for type 'main'"), nor anything after the
    first check of a resumed migration that exists."""
    channels = arguments.get("channels")
    if isinstance(channels, list) and len(channels) > 1:
        return False
    return set(arguments) <= {"uri", "channels", "detach", "resume", "exit-on-error"}


def _version_schema(vm: Machine, command: str) -> Schema:
    """The profile's schema (10.0+ share 10.0's: the same members in 10.0.2 and 10.2.2)."""
    key = min(vm.vn, N10_0) if vm.vn >= N8_0 else N7_2
    return SCHEMAS[key][command]


def _qapi_error(command: str, arguments: Mapping[str, Any], schema: Schema) -> str | None:
    """The QAPI input visitor: a missing mandatory member first (``uri`` is visited first), then an unexpected
    one (qobject_input_check_struct). Several unexpected members come out in QDict hash order: not modelled."""
    if "uri" not in arguments:
        if schema.uri_mandatory is None:
            raise NotModelled(f"{command} without uri on 8.2 (mandatory in 8.2.0/8.2.1, optional from 8.2.2)")
        if schema.uri_mandatory:
            return "Parameter 'uri' is missing"
    for name in BOOLEANS & set(arguments):
        if name in schema.members and not isinstance(arguments[name], bool):
            raise NotModelled(f"{command} argument {name!r} that is not a boolean")
    unexpected = sorted(set(arguments) - set(schema.members))
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
    error = _qapi_error("migrate", arguments, _version_schema(vm, "migrate"))
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
    _schema(vm, "migrate-incoming", arguments)
    return _qapi_error("migrate-incoming", arguments, _version_schema(vm, "migrate-incoming"))


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
