"""QemuMachine.run_job against every discovered QEMU binary: a snapshot-save job awaited on its
JOB_STATUS_CHANGE events, concluded, dismissed, and its error raised as QEMU's refusal.

The snapshot needs a writable qcow2 node (bdrv_can_snapshot): made with the qemu-img beside the binary, or on
PATH; without one only the error paths run.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import pytest

from harness.binaries import QemuBinary
from harness.errors import QmpCommandError
from harness.machine import QemuMachine

VM = ["-machine", "q35", "-accel", "tcg", "-m", "64M"]
JOB_TIMEOUT_S = 30.0


def _qemu_img(binary: QemuBinary) -> str | None:
    beside = Path(binary.path).parent / "qemu-img"
    return str(beside) if beside.exists() else shutil.which("qemu-img")


def _statuses(vm: QemuMachine, job_id: str) -> list[str]:
    return [
        str(e["data"]["status"])
        for e in vm.events
        if e.get("event") == "JOB_STATUS_CHANGE" and e["data"].get("id") == job_id
    ]


def test_job_error_is_raised_as_a_refusal(qemu_binary: QemuBinary, tmp_path: Path) -> None:
    """No disk: the job concludes with save_snapshot's "At least one device is required for snapshot"."""

    async def scenario() -> None:
        async with QemuMachine(qemu_binary, VM, name="source", log_dir=tmp_path) as vm:
            arguments = {"job-id": "j1", "tag": "t", "vmstate": "", "devices": []}
            with pytest.raises(QmpCommandError) as refused:
                await vm.run_job("snapshot-save", arguments, JOB_TIMEOUT_S)
            assert refused.value.desc == "At least one device is required for snapshot"
            # job_state_transition's sequence (job_completed -> job_abort); "null" follows job-dismiss.
            assert _statuses(vm, "j1")[:4] == ["created", "running", "aborting", "concluded"]
            assert await vm.qmp("query-jobs") == []

    asyncio.run(scenario())


def test_refused_command_is_raised_before_any_wait(qemu_binary: QemuBinary, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with QemuMachine(qemu_binary, VM, name="source", log_dir=tmp_path) as vm:
            with pytest.raises(QmpCommandError) as refused:
                await vm.run_job("snapshot-save", {"job-id": "j1", "tag": "t"}, JOB_TIMEOUT_S)
            assert refused.value.command == "snapshot-save"
            assert _statuses(vm, "j1") == []

    asyncio.run(scenario())


def test_snapshot_job_concludes_and_is_dismissed(qemu_binary: QemuBinary, tmp_path: Path) -> None:
    qemu_img = _qemu_img(qemu_binary)
    if qemu_img is None:
        pytest.skip("no qemu-img to make a qcow2 image")
    image = tmp_path / "disk.qcow2"
    subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", str(image), "16M"], check=True, timeout=30)
    drive = ["-blockdev", f"driver=qcow2,node-name=disk0,file.driver=file,file.filename={image}"]

    async def scenario() -> None:
        async with QemuMachine(qemu_binary, [*VM, *drive], name="source", log_dir=tmp_path) as vm:
            arguments = {"job-id": "j1", "tag": "t", "vmstate": "disk0", "devices": ["disk0"]}
            await vm.run_job("snapshot-save", arguments, JOB_TIMEOUT_S)
            assert _statuses(vm, "j1")[:5] == ["created", "running", "waiting", "pending", "concluded"]
            assert await vm.qmp("query-jobs") == []

    asyncio.run(scenario())
