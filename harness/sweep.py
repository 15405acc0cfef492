"""Capability sweep: every capability set of a given size, on every transport and mode, model against QEMU.

The hand-written suite tests the combinations someone thought of; the sweep tests all of them, so that a
check-order or version difference a reading of QEMU's source missed shows up as a divergence. The sets come from the
binary's own ``query-migrate-capabilities`` (a capability the binary lacks is not worth sweeping there),
and the scenarios exist only in memory.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from contract.scenario import MigrationSpec, Scenario, VmSpec
from harness import procutil
from harness.errors import MigconformError

if TYPE_CHECKING:
    from harness.binaries import QemuBinary

SWEEP_TRANSPORTS = ("tcp", "file")
SWEEP_MODES = ("precopy", "postcopy", "background-snapshot")
QUERY_TIMEOUT_S = 30.0


class SweepError(MigconformError):
    """The binary's capability list could not be read."""


def binary_capabilities(binary: QemuBinary) -> list[str]:
    """The probe's capability list (cached per binary), else a QMP query of our own."""
    from harness.probe import probe_binary

    probe = probe_binary(binary)
    if probe.capabilities:
        return list(probe.capabilities)
    return query_capabilities(binary)


def query_capabilities(binary: QemuBinary) -> list[str]:
    """The binary's migration capabilities, from QMP ``query-migrate-capabilities`` on an empty machine."""
    result = query_qmp(binary, "query-migrate-capabilities")
    if not isinstance(result, list):
        raise SweepError(f"{binary.path}: query-migrate-capabilities failed: answered {result!r}")
    return [str(item["capability"]) for item in result if isinstance(item, dict) and "capability" in item]


def query_qmp(binary: QemuBinary, command: str) -> Any:
    """The ``return`` of one argument-less QMP ``command`` on an empty machine (``-machine none``), e.g.
    ``query-migrate-parameters`` for the fuzzer's parameter names (harness.fuzz.vocabulary)."""
    argv = binary.argv("-machine", "none", "-nodefaults", "-display", "none", "-S", "-qmp", "stdio")
    commands = "".join(json.dumps({"execute": c, "id": c}) + "\n" for c in ("qmp_capabilities", command, "quit"))
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=binary.environ(),
        start_new_session=True,
        preexec_fn=procutil.child_preexec(os.getpid()),
    )
    procutil.register(proc.pid, f"{command} of {binary}")
    try:
        out, err = proc.communicate(commands, timeout=QUERY_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        procutil.kill_group(proc.pid)
        proc.communicate()
        raise SweepError(f"{binary.path}: {command} did not answer in {QUERY_TIMEOUT_S:g} s") from None
    finally:
        procutil.unregister(proc.pid)
    for line in out.splitlines():
        try:
            message: Any = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(message, dict) and message.get("id") == command and "return" in message:
            return message["return"]
    last = err.strip().splitlines()[-1] if err.strip() else "no answer"
    raise SweepError(f"{binary.path}: {command} failed: {last}")


def sweep_scenarios(
    capabilities: Iterable[str],
    size: int = 2,
    transports: Sequence[str] = SWEEP_TRANSPORTS,
    modes: Sequence[str] = SWEEP_MODES,
    memory: str = "64M",
) -> list[Scenario]:
    """Every ``size``-subset of ``capabilities`` x transports x modes, deduplicated.

    Postcopy needs postcopy-ram and a socket (so tcp, or unix when asked), background-snapshot needs a
    file (so file, or exec when asked); those modes add their own capability, and sets that become equal
    after that are swept once.
    """
    if size < 1:
        raise ValueError("--size must be at least 1")
    names = sorted(set(capabilities))
    vm = VmSpec(memory=memory)
    seen: set[tuple[frozenset[str], str, str]] = set()
    scenarios: list[Scenario] = []
    for combo in itertools.combinations(names, size):
        for mode in modes:
            caps = set(combo)
            if mode == "postcopy":
                caps.add("postcopy-ram")
                mode_transports = [t for t in transports if t in ("tcp", "unix")]
            elif mode == "background-snapshot":
                caps.add("background-snapshot")
                mode_transports = [t for t in transports if t in ("file", "exec")]
            else:
                mode_transports = list(transports)
            for transport in mode_transports:
                key = (frozenset(caps), mode, transport)
                if key in seen:
                    continue
                seen.add(key)
                ordered = sorted(caps)
                scenarios.append(
                    Scenario(
                        id=".".join(["sweep", *ordered, mode, transport]),
                        description=f"capabilities {', '.join(ordered)}; {mode} over {transport}",
                        source=vm,
                        destination=vm,
                        migration=MigrationSpec(
                            capabilities=dict.fromkeys(ordered, True), transport=transport, mode=mode
                        ),
                        tags=("sweep",),
                    )
                )
    return scenarios
