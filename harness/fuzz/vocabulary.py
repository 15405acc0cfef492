"""What the fuzzer may put in a sequence: the step actions of contract.actions with arguments drawn from what the
binary under test offers (its capabilities and parameter names), as hypothesis strategies.

Pure (no QEMU): :func:`vocabulary_for` is the one function that asks the binary, and tests build a
:class:`Vocabulary` by hand. Parameter values sit on the edges of QEMU's checks (migrate_params_check in
migration/options.c: 100 for cpu-throttle-initial, 2001 for downtime-limit in seconds*1000...), where the model's
order of checks matters; raw ``qmp`` steps cover what has no action yet (postcopy recovery, hot-plugged
blockers, a destination started by hand).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hypothesis import strategies as st

from contract.scenario import TRANSPORTS, Step, VmSpec

if TYPE_CHECKING:
    from harness.binaries import QemuBinary

# Sequences stay short: each step costs one whole real run of its prefix (docs/fuzzing.md).
MAX_STEPS = 6
# Small VMs so a run costs a fraction of a second: 64M, firmware only, TCG. The root port takes hot-plugged
# devices (q35's pcie.0 does not hot-plug); no RAM backend on the command line, as one makes 10.0.2 under TCG
# abort while migrating (docs/qemu-bugs.md §1): object-add steps create it when a sequence wants one.
FUZZ_VM = VmSpec(memory="64M", accel="tcg", args=("-device", "pcie-root-port,id=rp0,chassis=1"))

PARAMETER_VALUES: Mapping[str, tuple[Any, ...]] = {
    "max-bandwidth": (0, 1000, 1 << 20, 1 << 62),
    "downtime-limit": (0, 300, 2000, 2001),
    "multifd-channels": (0, 1, 2, 4),
    "multifd-compression": ("none", "zlib", "zstd", "bogus"),
    "multifd-zlib-level": (0, 9, 10),
    "multifd-zstd-level": (0, 20, 21),
    "xbzrle-cache-size": (0, 4096, 4097, 1 << 20),
    "cpu-throttle-initial": (0, 1, 99, 100),
    "cpu-throttle-increment": (0, 10, 100),
    "throttle-trigger-threshold": (0, 50, 100, 101),
    "max-cpu-throttle": (0, 99, 100),
    "compress-level": (0, 9, 10),
    "compress-threads": (0, 1, 8),
    "max-postcopy-bandwidth": (0, 1000),
    "announce-initial": (0, 50, 100001),
    "x-checkpoint-delay": (0, 200),
    "avail-switchover-bandwidth": (0, 1 << 20),
    "vcpu-dirty-limit": (0, 1, 1000),
    "x-vcpu-dirty-limit-period": (0, 1, 1000, 1001),
    "zero-page-detection": ("none", "legacy", "multifd"),
    "mode": ("normal", "cpr-reboot"),
    "tls-creds": ("", "nope"),
    "tls-authz": ("", "nope"),
    "tls-hostname": ("", "nohost.invalid"),
}

# Blocker devices to hot-plug (reference_impl/catalog.py): an unmigratable vmsd (nvme, rocker), a migrate_add_blocker
# at realize (ivshmem-plain in peer mode, on a RAM backend an object-add step may or may not have created), and
# virtio-rng-pci, which blocks nothing.
HOTPLUG_DEVICES: tuple[Mapping[str, Any], ...] = (
    {"driver": "ivshmem-plain", "memdev": "mem0", "bus": "rp0", "id": "dev0"},
    {"driver": "nvme", "serial": "n0", "bus": "rp0", "id": "dev0"},
    {"driver": "rocker", "bus": "rp0", "id": "dev0"},
    {"driver": "virtio-rng-pci", "bus": "rp0", "id": "dev0"},
)

_INET_PORT_1 = {"transport": "socket", "type": "inet", "host": "127.0.0.1", "port": "1"}
_INET_PORT_0 = {**_INET_PORT_1, "port": "0"}

# Raw qmp steps: (command, sides, arguments).
QMP_COMMANDS: tuple[tuple[str, tuple[str, ...], Mapping[str, Any]], ...] = (
    ("migrate-pause", ("source",), {}),
    ("migrate-recover", ("destination",), {"uri": "tcp:127.0.0.1:0"}),
    ("migrate-incoming", ("destination",), {"uri": "tcp:127.0.0.1:0"}),
    ("migrate_cancel", ("source", "destination"), {}),
    ("query-migrate", ("source", "destination"), {}),
    ("object-add", ("source", "both"), {"qom-type": "memory-backend-ram", "id": "mem0", "size": 1048576}),
    ("object-add", ("source",), {"qom-type": "memory-backend-ram", "id": "mem1", "size": 1048576}),
    ("chardev-add", ("source", "destination"), {"id": "vd0", "backend": {"type": "qemu-vdagent", "data": {}}}),
    ("chardev-remove", ("source",), {"id": "vd0"}),
    ("device_del", ("source",), {"id": "dev0"}),
    # migrate / migrate-incoming arguments and objects during a migration (docs/real-qemu-facts.md "QMP surface").
    ("migrate", ("source",), {"uri": "tcp:127.0.0.1:1", "resume": True}),
    ("migrate", ("source",), {"uri": "tcp:127.0.0.1:1", "blk": True}),
    ("migrate", ("source",), {"channels": [{"channel-type": "main", "addr": _INET_PORT_1}]}),
    ("migrate-incoming", ("destination",), {"channels": [{"channel-type": "main", "addr": _INET_PORT_0}]}),
    ("object-del", ("source",), {"id": "mem0"}),
    ("object-add", ("source",), {"qom-type": "authz-simple", "id": "az0", "identity": "bob"}),
)

# Every action the fuzzer composes (contract.actions' whole table).
FUZZ_ACTIONS = (
    "set-capabilities",
    "set-parameters",
    "migrate",
    "start-postcopy",
    "cancel",
    "wait",
    "cont",
    "stop",
    "migrate-continue",
    "snapshot-save",
    "snapshot-load",
    "qmp",
)


@dataclass(frozen=True)
class Vocabulary:
    """The binary's words: capability and parameter names, hot-pluggable drivers; ``actions`` limits the rules
    (tests and the benchmark fuzz a part of the table)."""

    capabilities: tuple[str, ...]
    parameters: tuple[str, ...]
    devices: tuple[str, ...] = tuple(d["driver"] for d in HOTPLUG_DEVICES)
    actions: tuple[str, ...] = FUZZ_ACTIONS


def _sides(*sides: str) -> st.SearchStrategy[str]:
    return st.sampled_from(sides)


def _capabilities(vocab: Vocabulary) -> st.SearchStrategy[Step]:
    caps = st.dictionaries(
        st.sampled_from(vocab.capabilities), st.booleans().map(lambda b: not b), min_size=1, max_size=2
    )
    return st.builds(
        lambda side, c: Step("set-capabilities", side, capabilities=c),
        _sides("source", "destination", "both"),
        caps,
    )


def _parameters(vocab: Vocabulary) -> st.SearchStrategy[Step]:
    names = [n for n in vocab.parameters if n in PARAMETER_VALUES]
    pair = st.sampled_from(names).flatmap(lambda n: st.sampled_from(PARAMETER_VALUES[n]).map(lambda v: {n: v}))
    return st.builds(
        lambda side, p: Step("set-parameters", side, parameters=p), _sides("source", "destination", "both"), pair
    )


def _qmp_step(command: str, arguments: Mapping[str, Any]) -> Callable[[str], Step]:
    return lambda side: Step("qmp", side, command=command, arguments=dict(arguments))


def _qmp(vocab: Vocabulary) -> st.SearchStrategy[Step]:
    commands = [_sides(*sides).map(_qmp_step(command, arguments)) for command, sides, arguments in QMP_COMMANDS]
    devices = [d for d in HOTPLUG_DEVICES if d["driver"] in vocab.devices]
    if devices:
        commands.append(
            st.sampled_from(devices).map(lambda d: Step("qmp", "source", command="device_add", arguments=dict(d)))
        )
    return st.one_of(commands)


def step_strategies(vocab: Vocabulary) -> dict[str, st.SearchStrategy[Step]]:
    """One strategy per action of ``vocab.actions`` (a rule each in harness.fuzz.machine)."""
    table: dict[str, st.SearchStrategy[Step]] = {
        "set-capabilities": _capabilities(vocab),
        "migrate": st.builds(
            lambda side, t: Step("migrate", side, transport=t),
            st.sampled_from(("source", "source", "source", "destination")),
            st.sampled_from(TRANSPORTS),
        ),
        "cont": _sides("source", "destination", "both").map(lambda side: Step("cont", side)),
        "stop": _sides("source", "destination", "both").map(lambda side: Step("stop", side)),
        "snapshot-save": _sides("source", "destination").map(lambda side: Step("snapshot-save", side)),
        "snapshot-load": _sides("source", "destination").map(lambda side: Step("snapshot-load", side)),
        "qmp": _qmp(vocab),
    }
    for action in ("start-postcopy", "cancel", "wait", "migrate-continue"):
        table[action] = st.just(Step(action, "source"))
    if vocab.parameters and any(n in PARAMETER_VALUES for n in vocab.parameters):
        table["set-parameters"] = _parameters(vocab)
    if not vocab.capabilities:
        del table["set-capabilities"]
    return {name: table[name] for name in vocab.actions if name in table}


def vocabulary_for(binary: QemuBinary, actions: Sequence[str] = FUZZ_ACTIONS) -> Vocabulary:
    """The binary's capabilities (harness.sweep.binary_capabilities), parameter names (its own
    ``query-migrate-parameters``) and which hot-plug drivers it has (the probe's device types)."""
    from harness.probe import probe_binary
    from harness.sweep import binary_capabilities, query_qmp

    params = query_qmp(binary, "query-migrate-parameters")
    names = tuple(sorted(str(k) for k in params)) if isinstance(params, dict) else ()
    probe = probe_binary(binary)
    devices = tuple(d["driver"] for d in HOTPLUG_DEVICES if probe.has_device(str(d["driver"])))
    return Vocabulary(tuple(binary_capabilities(binary)), names, devices, tuple(actions))
