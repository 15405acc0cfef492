"""Raw ``qmp`` snapshot-load and snapshot-delete: commands that create a job (migration/savevm.c).

The command answers once job_create accepted the job id; the job then runs in a bottom half of the main loop
and its error stays in query-jobs, which a raw step does not read. What a scenario sees is the command's answer
and what the job left behind (the runstate). The scenario VMs have no disk that can hold a snapshot unless
their ``args`` add one; with such a disk the job's result depends on the image, which the model does not
follow (NotModelled). Measured on 7.2.22 and 10.0.2: docs/real-qemu-facts.md, "QMP breadth".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from reference_impl.limits import NotModelled
from reference_impl.machine import Machine
from reference_impl.migration_state import Scene

# scene.extra key: the job ids each VM's raw snapshot commands created. The jobs are JOB_MANUAL_DISMISS and a
# raw step never dismisses them, so the ids stay taken (the executor's snapshot-save dismisses its own).
JOB_IDS = "raw_job_ids"
# The arguments QAPI requires (qapi/migration.json); a missing one is QAPI's error, not modelled.
_REQUIRED: dict[str, frozenset[str]] = {
    "snapshot-load": frozenset({"job-id", "tag", "vmstate", "devices"}),
    "snapshot-delete": frozenset({"job-id", "tag", "devices"}),
}


def id_wellformed(job_id: str) -> bool:
    """``id_wellformed`` (util/id.c, same in 7.2 and 10.0): a letter, then letters, digits, '-', '.', '_'."""
    if not job_id or not (job_id[0].isascii() and job_id[0].isalpha()):
        return False
    return all((c.isascii() and c.isalnum()) or c in "-._" for c in job_id[1:])


def _job_create(scene: Scene, vm: Machine, command: str, arguments: Mapping[str, Any]) -> str | None:
    """``job_create`` (job.c): the id must be well formed and unused; the job is then registered."""
    missing = sorted(_REQUIRED[command] - set(arguments))
    if missing:
        raise NotModelled(f"{command} without {missing[0]!r}")
    job_id = arguments["job-id"]
    if not isinstance(job_id, str):
        raise NotModelled(f"{command} with a job-id that is not a string")
    if not id_wellformed(job_id):
        return f"Invalid job ID '{job_id}'"
    taken: set[str] = scene.extra.setdefault(JOB_IDS, {}).setdefault(vm.role, set())
    if job_id in taken:
        return f"Job ID '{job_id}' already in use"
    if vm.drives:
        raise NotModelled(f"{command} on a VM with a disk (the job's result depends on the image)")
    if vm.migration is not None:
        raise NotModelled(f"{command} during a migration")
    taken.add(job_id)
    return None


def snapshot_load(scene: Scene, vm: Machine, arguments: Mapping[str, Any]) -> str | None:
    """``qmp_snapshot_load`` -> ``snapshot_load_job_bh``: vm_stop(RUN_STATE_RESTORE_VM), then load_snapshot,
    which fails without a disk ("At least one device is required for snapshot", in query-jobs); the VM is
    resumed only when the load succeeded (``if (s->ret)``: load_snapshot returns true on success, 7.2 and 10.0
    alike), so a running VM stays in restore-vm. vm_stop changes only a live VM (do_vm_stop: 7.2
    runstate_is_running, 10.0 runstate_is_live, which adds suspended): a paused or inmigrate VM keeps its
    runstate."""
    error = _job_create(scene, vm, "snapshot-load", arguments)
    if error is None and vm.runstate == "running":
        vm.runstate = "restore-vm"
    return error


def snapshot_delete(scene: Scene, vm: Machine, arguments: Mapping[str, Any]) -> str | None:
    """``qmp_snapshot_delete`` -> ``snapshot_delete_job_bh``: delete_snapshot touches only block nodes (without
    a disk the job fails like the load's); the runstate and the migration state are left alone."""
    return _job_create(scene, vm, "snapshot-delete", arguments)


# load_snapshot's error without a device (measured with the raw command's query-jobs and with the action,
# 7.2.22, 10.0.2, 10.2.2).
NO_DEVICE = "At least one device is required for snapshot"


def load_action(vm: Machine) -> str | None:
    """The ``snapshot-load`` action: the executor's job with snapshot-save's arguments, waited for until it
    concludes (snapshot_load_job_bh). Without a disk load_snapshot fails: the job's error is the refusal and a
    running VM stays in restore-vm (the resume needs a successful load). A disk (the image decides) and a
    migration in progress are not modelled. The job ids are the executor's own and dismissed."""
    if vm.drives:
        raise NotModelled("snapshot-load on a VM with a disk (the job's result depends on the image)")
    if vm.migration is not None:
        raise NotModelled("snapshot-load during a migration")
    if vm.runstate == "running":
        vm.runstate = "restore-vm"
    return NO_DEVICE


ARGUMENTS: dict[str, frozenset[str]] = dict(_REQUIRED)
HANDLERS = {
    "snapshot-load": snapshot_load,
    "snapshot-delete": snapshot_delete,
}
