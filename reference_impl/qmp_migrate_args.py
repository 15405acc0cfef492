"""The arguments of raw ``migrate`` / ``migrate-incoming`` besides ``uri``: ``channels``, ``resume``, ``blk``,
``inc``, ``exit-on-error`` (``detach`` is ignored by QEMU: qapi/migration.json).

Read from qmp_migrate / migrate_prepare / qmp_migrate_incoming / qemu_start_incoming_migration
(migration/migration.c) of every profile: 7.2.22 (Debian), 8.0.0, 8.1.0, 8.2.0, 9.0.0 and 9.1.0 (the release
commits, in a public fork's copy of qemu/qemu's history), 9.2 (qemu/qemu master of 2024-11-04, the 9.2 soft
freeze, and the 10.0-cycle patches that changed it after 9.2.0), 10.0.2 and 10.2.2 (Debian, built);
measured on 7.2.22, 10.0.2 and 10.2.2 (docs/real-qemu-facts.md, "QMP surface" and "8.x and 9.x rules: sources").
The handlers come in two shapes:

- 7.2-8.1 ("old"): ``uri`` only; migrate_prepare's ``resume`` and ``blk``/``inc`` checks come before the URI is
  dispatched on (8.0+ first asks migration_channels_and_uri_compatible).
- 8.2+ ("new"): ``uri`` or ``channels``, the URI parsed (migrate_uri_parse) and the transport checked before
  migrate_prepare; 8.2's texts for ``uri`` with ``channels`` and for neither differ from 9.0's, and 8.2-9.2 say
  "Channel list has more than one entries" where 10.0 names the channel type.

Each function turns the arguments into the ``uri`` the existing URI model follows (a ``main`` channel of socket
type is its URI), or returns QEMU's refusal, or raises NotModelled.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from reference_impl.capabilities import N8_0, N8_1, N8_2, N9_0, N9_1, N9_2, N10_0
from reference_impl.limits import NotModelled
from reference_impl.machine import Machine
from reference_impl.migration_prechecks import transport_check

NEED_URI_OR_CHANNELS = "need either 'uri' or 'channels' argument"
NO_MAIN_CHANNEL = "Channel list has no main entry"  # qmp_migrate (10.0.2, 10.2.2), after the NULL read
NO_PAUSED_MIGRATION = "Cannot resume if there is no paused migration"
# 8.2-9.2 (qmp_migrate, qemu_start_incoming_migration): "channels->next" refused whatever the types.
SEVERAL_CHANNELS = "Channel list has more than one entries"
N7_2 = 702  # capabilities.vnum(V7_2)
BOOLEANS = frozenset({"blk", "inc", "detach", "resume", "exit-on-error"})
# migrate_uri_parse (8.2.0 to 10.2.2, the same text): the prefixes it knows; anything else is "unknown migration
# protocol" before migrate_prepare runs.
PARSED_SCHEMES = frozenset({"exec", "rdma", "tcp", "unix", "vsock", "fd", "file"})


def _uri_and_channels(command: str) -> str:
    """8.2.0's qmp_migrate / qemu_start_incoming_migration: ``uri`` given with ``channels`` (even an empty list:
    the test is ``uri && has_channels``). Replaced in 9.0 by NEED_URI_OR_CHANNELS (commit 0770ad438d
    "migration: Simplify initial conditionals in migration for better readability", January 2024)."""
    return (
        "'uri' and 'channels' arguments are mutually exclusive; exactly one of the two should be present in "
        f"'{command}' qmp command "
    )


def _neither(command: str) -> str:
    """8.2.0's text for no ``uri`` and no (or an empty) ``channels`` list (same commit as _uri_and_channels)."""
    return f"neither 'uri' or 'channels' argument are specified in '{command}' qmp command "


class Schema(NamedTuple):
    """One version's QAPI ``data`` of a command: its members in order, and whether ``uri`` is mandatory
    (None: it changed inside the release series, so the profile cannot say)."""

    members: tuple[str, ...]
    uri_mandatory: bool | None


def _schemas(vn: int) -> dict[str, Schema]:
    """qapi/migration.json's ``migrate`` / ``migrate-incoming`` per profile (read in each release's file).

    - 7.2, 8.0, 8.1: ``uri`` mandatory; migrate has blk/inc/detach/resume, migrate-incoming only uri.
    - 8.2: ``channels`` added to both (commit 074dbce5fcce), migrate-incoming's ``uri`` optional, migrate's
      still mandatory in 8.2.0/8.2.1: commit 57fd4b4e10 "Make 'uri' optional for migrate QAPI" (9.0, January
      2024; its diff touches only the schema) reached the stable branch in 8.2.2 (qemu-devel, "[Stable-8.2.2
      04/60]"): None for the 8.2 profile. MigrationChannelType has only ``main`` until 10.0 adds ``cpr``.
    - 9.0: migrate's ``uri`` optional.
    - 9.1: ``blk`` and ``inc`` removed, ``exit-on-error`` added to migrate-incoming.
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


def _schema(vm: Machine) -> str:
    """ "old" (7.2-8.1: no channels) or "new" (8.2+) for the handler's shape (see the module doc)."""
    return "old" if vm.vn < N8_2 else "new"


def _version_schema(vm: Machine, command: str) -> Schema:
    """The profile's schema (10.0+ share 10.0's: the same members in 10.0.2 and 10.2.2)."""
    key = min(vm.vn, N10_0) if vm.vn >= N8_0 else N7_2
    return SCHEMAS[key][command]


def _qapi_error(vm: Machine, command: str, arguments: Mapping[str, Any], schema: Schema) -> str | None:
    """The QAPI input visitor, in member order: a missing mandatory ``uri`` first, then ``channels`` (8.2-9.2:
    a channel type the enum lacks), then an unexpected member (qobject_input_check_struct, at the end). Several
    unexpected members come out in QDict hash order: not modelled."""
    if "uri" not in arguments:
        if schema.uri_mandatory is None:
            raise NotModelled(f"{command} without uri on 8.2 (mandatory in 8.2.0/8.2.1, optional from 8.2.2)")
        if schema.uri_mandatory:
            return "Parameter 'uri' is missing"
    if "channels" in schema.members and vm.vn < N10_0:
        error = _channel_type_error(command, arguments.get("channels"))
        if error is not None:
            return error
    for name in BOOLEANS & set(arguments):
        if name in schema.members and not isinstance(arguments[name], bool):
            raise NotModelled(f"{command} argument {name!r} that is not a boolean")
    unexpected = sorted(set(arguments) - set(schema.members))
    if len(unexpected) > 1:
        raise NotModelled(f"{command} with several unexpected arguments {unexpected} (reported in hash order)")
    if unexpected:
        return f"Parameter '{unexpected[0]}' is unexpected"
    return None


def _channel_type_error(command: str, channels: Any) -> str | None:
    """8.2-9.2: MigrationChannelType is ``main`` alone, so another type is refused while the list is visited:
    input_type_enum (qapi/qapi-visit-core.c, the same text 8.2.0 to 10.0.2) names the member, not its path.
    Each channel's ``addr`` is visited after its type, so an earlier channel must be one the model reads."""
    if not isinstance(channels, list):
        return None
    for channel in channels:
        kind = channel.get("channel-type") if isinstance(channel, Mapping) else None
        if kind == "main":
            _channel_uri(command, channel)
            continue
        if isinstance(kind, str):
            return f"Parameter 'channel-type' does not accept value '{kind}'"
        raise NotModelled(f"{command} channel-type {kind!r}")
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


def _uri_or_channels(vm: Machine, command: str, arguments: Mapping[str, Any]) -> str | None:
    """The first check of both handlers (8.2+) on which of ``uri`` / ``channels`` came, and (8.2-9.2) the
    list's length; 10.0's channel-type checks follow in the callers."""
    channels = _channels(command, arguments)
    if vm.vn < N9_0:
        if "uri" in arguments and "channels" in arguments:
            return _uri_and_channels(command)
        if channels is None and "uri" not in arguments:
            return _neither(command)
    elif ("uri" in arguments) == (channels is not None):
        return NEED_URI_OR_CHANNELS
    if channels is not None and len(channels) > 1 and vm.vn < N10_0:
        return SEVERAL_CHANNELS
    return None


def migrate(vm: Machine, arguments: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(refusal, uri): the refusal qmp_migrate gives before the URI model takes over, else the URI to follow.

    7.2-8.1: migrate_prepare runs first (8.0+ after migration_channels_and_uri_compatible): ``resume`` without a
    paused postcopy is refused whatever the URI; ``blk`` / ``inc`` then set the block capability for this
    migration (refused with ``x-colo`` or ``block`` already on).
    8.2+: ``uri`` xor ``channels`` (:func:`_uri_or_channels`); 10.0+ a channel type twice; the URI parse and
    migration_channels_and_transport_compatible; only then migrate_prepare's resume check, and (8.2/9.0) the
    ``blk``/``inc`` ones. A 10.0+ list without a ``main`` channel dereferences NULL
    (channelv[MIGRATION_CHANNEL_TYPE_MAIN]->addr) and the source dies with SIGSEGV on 10.0.2 and 10.2.2: a QEMU
    bug; the model predicts the refusal the code goes on to make (known bug qemu-10-migrate-channels-no-main).
    """
    error = _qapi_error(vm, "migrate", arguments, _version_schema(vm, "migrate"))
    if error is not None:
        return error, None
    resume = bool(arguments.get("resume", False))
    if resume and vm.status in ("postcopy-paused", "postcopy-recover"):
        raise NotModelled("migrate resume of a paused postcopy")
    block = bool(arguments.get("blk") or arguments.get("inc"))
    if _schema(vm) == "old":
        return _migrate_old(vm, str(arguments["uri"]), resume=resume, block=block)
    error = _uri_or_channels(vm, "migrate", arguments)
    if error is not None:
        return error, None
    channels = _channels("migrate", arguments)
    uri = arguments.get("uri")
    if channels is not None:
        seen: set[str] = set()
        for channel in channels:
            kind = channel["channel-type"]
            if kind in seen:
                return f"Channel list has more than one {kind} entry", None
            seen.add(kind)
        if "main" not in seen:
            # What qmp_migrate means (10.0.2, 10.2.2): its "no main entry" check comes after it has read
            # channelv[MAIN]->addr through NULL, so real QEMU dies instead (docs/qemu-bugs.md section 12).
            return NO_MAIN_CHANNEL, None
        if "cpr" in seen:
            raise NotModelled("migrate with a cpr channel")
        uri = _channel_uri("migrate", channels[0])
    # With resume, the URI parse and the transport check still come first (qmp_migrate_uri.migrate_command).
    if block and not resume:
        error = _block_migration(vm, str(uri))
        if error is not None:
            return error, None
    return None, str(uri)


def _migrate_old(vm: Machine, uri: str, *, resume: bool, block: bool) -> tuple[str | None, str | None]:
    """7.2-8.1 qmp_migrate: migrate_prepare before the URI's dispatch, so the resume refusal whatever the URI."""
    if vm.vn >= N8_0:
        # migration_channels_and_uri_compatible (8.0/8.1): multifd and postcopy-preempt need tcp/unix/vsock.
        scheme = uri.partition(":")[0]
        error = transport_check(vm, "tcp" if scheme in ("tcp", "unix", "vsock") else "invalid")
        if error is not None:
            return error, None
    if resume:
        return NO_PAUSED_MIGRATION, None
    error = _block_migration(vm, uri) if block else None
    return (error, None) if error is not None else (None, uri)


def _block_migration(vm: Machine, uri: str) -> str | None:
    """migrate_prepare with blk/inc (7.2.22, 8.0.0-9.0.0; 8.2/9.0 also warn that they are deprecated): after
    its resume check, a running migration, an incoming runstate, a postmigrate one and a blocker (refused as
    without blk/inc by migration_prechecks.migrate, so None here), COLO first, then a block capability already
    on; then migrate_set_block_enabled / migrate_cap_set runs migrate_caps_check with ``block`` added (not
    modelled beyond ``events``). 8.2+ parses the URI before (migrate_uri_parse: an unknown scheme is refused by
    qmp_migrate_uri.migrate_uri first)."""
    scheme = uri.partition(":")[0]
    if vm.vn >= N8_2 and scheme not in PARSED_SCHEMES:
        return None
    if vm.migration is not None or vm.runstate in ("inmigrate", "postmigrate") or vm.blockers.is_blocked():
        return None
    if vm.vn >= N9_0 and vm.params.get("mode", "normal") != "normal":
        raise NotModelled("migrate blk/inc in a CPR mode")
    if "x-colo" in vm.caps:
        return "No disk migration is required in COLO mode"
    if "block" in vm.caps:
        return "Command options are incompatible with current migration capabilities"
    if vm.caps - {"events"}:
        raise NotModelled(f"migrate blk/inc with capabilities {sorted(vm.caps)}")
    return None


def incoming_qapi_error(vm: Machine, arguments: Mapping[str, Any]) -> str | None:
    """The QAPI refusals of migrate-incoming's arguments: the marshaller runs before qmp_migrate_incoming."""
    return _qapi_error(vm, "migrate-incoming", arguments, _version_schema(vm, "migrate-incoming"))


def migrate_incoming(vm: Machine, arguments: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(refusal, uri) for qmp_migrate_incoming's arguments (checked after the 'once' flag and the runstate).

    8.2+: :func:`_uri_or_channels`; 10.0+: more than one channel: "Channel list must have only one entry, for
    type 'main'" (the channel's type is not looked at). ``exit-on-error`` false (9.1+) keeps a failed
    destination alive: not modelled."""
    if arguments.get("exit-on-error") is False:
        raise NotModelled("migrate-incoming exit-on-error false")
    if _schema(vm) == "old":
        return None, str(arguments["uri"])
    error = _uri_or_channels(vm, "migrate-incoming", arguments)
    if error is not None:
        return error, None
    channels = _channels("migrate-incoming", arguments)
    if channels is None:
        return None, str(arguments["uri"])
    if len(channels) > 1:
        return "Channel list must have only one entry, for type 'main'", None
    if channels[0]["channel-type"] != "main":
        raise NotModelled("migrate-incoming with a cpr channel")
    return None, _channel_uri("migrate-incoming", channels[0])
