"""The mutation check: mutants of QEMU 10.x built from Debian's source must be told apart from QEMU.

Three layers:
- the verdict logic of harness.mutants.run on hand-made results (pure logic, no QEMU);
- the patches themselves, on real QEMU: each core mutant accepts the capability set that the unmodified
  build refuses with QEMU's exact message (this proves the mutant is a real behaviour change, independent
  of the model);
- end to end, ``run_mutants`` on the core mutants with mutants/scenarios: the unmodified build agrees
  with the model everywhere and every core mutant is killed.
The QEMU tests need the builds in .cache/mutants (``migconform mutants --build-only``, about 10 minutes
cold); they are skipped when those are missing or stale, unless MIGCONFORM_MUTANTS=1, which builds them.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from contract.outcome import Outcome, VmState
from harness import settings
from harness.compare import Comparison
from harness.mutants.build import (
    MUTANTS_DIR,
    UNMODIFIED,
    BuildRecord,
    BuiltBinary,
    MutantBuilder,
    available_patches,
    binary_path,
    patch_files,
)
from harness.mutants.report import render_console
from harness.mutants.run import MutantsOptions, run_mutants
from harness.mutants.verdicts import column_for, evaluate, mutant_kind, patch_description
from harness.results import ErrorRecord, Results, Skip

CORE_MUTANTS = sorted(n for n in available_patches() if mutant_kind(n) == "core")
ENABLE_ENV = settings.MUTANTS

# What the unmodified build answers to the capability set each core mutant lets through (QEMU 10.0).
CORE_REFUSALS: dict[str, tuple[dict[str, bool], str]] = {
    "core-bgsnap-conflict-list": (
        {"background-snapshot": True, "return-path": True},
        "Background-snapshot is not compatible with return-path",
    ),
    "core-switchover-ack-return-path": (
        {"switchover-ack": True},
        "Capability 'switchover-ack' requires capability 'return-path'",
    ),
    "core-postcopy-ignore-shared": (
        {"postcopy-ram": True, "x-ignore-shared": True},
        "Postcopy is not compatible with ignore-shared",
    ),
}


# --- pure logic ---------------------------------------------------------------------------------------


def _built(name: str) -> BuiltBinary:
    rec = BuildRecord(
        name=name,
        key="k",
        source="qemu_10.0.2+ds.orig.tar.xz",
        source_sha256="s",
        patch=None if name == UNMODIFIED else f"{name}.patch",
        patch_sha256=None,
        qemu_version="10.0.2",
        build_seconds=1.0,
        built_at="now",
    )
    return BuiltBinary(name, Path(f"/b/{name}"), rec, rebuilt=False)


def _outcome(scenario: str, column: str, verdict: str, error: str | None = None) -> Outcome:
    return Outcome(
        scenario=scenario,
        backend="qemu",
        qemu_version="10.0.2",
        verdict=verdict,
        stage="set-capabilities" if verdict == "refused" else None,
        error=error,
        source=VmState("none", "running"),
        destination=VmState("none", "inmigrate"),
        extra={"column": column},
    )


def test_evaluate_kills_counts_masks_and_unexercised() -> None:
    v = "10.0.2"
    unmod, a, b, c = (column_for(v, n) for n in (UNMODIFIED, "core-a", "core-b", "vfio-c"))
    res = Results()
    res.comparisons = [
        Comparison("s1", v, True, {}, unmod),
        Comparison("s2", v, False, {"verdict": ["refused", "completed"]}, unmod),
        Comparison("s1", v, False, {"verdict": ["refused", "completed"]}, a),
        Comparison("s2", v, False, {"verdict": ["refused", "completed"]}, a),
        Comparison("s1", v, True, {}, b),
        Comparison("s2", v, False, {"verdict": ["refused", "completed"]}, b),
    ]
    res.skips = [Skip("s3", c, "qemu: no VFIO provider")]
    res.outcomes = [_outcome("s1", unmod, "refused", "nope"), _outcome("s1", a, "completed")]
    builds = {n: _built(n) for n in (UNMODIFIED, "core-a", "core-b", "vfio-c")}
    report = evaluate(res, {n: v for n in builds}, builds, mutants_dir=Path("/nonexistent"))
    by_name = {m.name: m for m in report.mutants}
    assert [k.scenario for k in by_name["core-a"].killed_by] == ["s1"]
    assert by_name["core-a"].status == "killed"
    assert by_name["core-a"].masked == ["s2"]
    assert [c.scenario for c in by_name["core-a"].changed_vs_unmodified] == ["s1"]
    assert by_name["core-b"].status == "survived"
    assert by_name["vfio-c"].status == "unexercised"
    assert by_name["vfio-c"].skipped == 1
    assert report.killed == 1 and len(report.mutants) == 3
    assert not report.valid  # s2 diverges on the unmodified build: a false alarm
    assert [f.scenario for f in report.false_alarms] == ["s2"]
    text = render_console(report)
    assert "FALSE ALARM" in text and "killed 1/3" in text
    assert report.to_json()["mutants"][0]["killed_by"][0]["scenario"] == "s1"


def test_evaluate_harness_error_on_unmodified_invalidates() -> None:
    v = "10.0.2"
    unmod = column_for(v, UNMODIFIED)
    res = Results()
    res.comparisons = [Comparison("s1", v, True, {}, unmod)]
    res.errors = [ErrorRecord("s2", unmod, "qemu", "Traceback\nRuntimeError: boom")]
    builds = {UNMODIFIED: _built(UNMODIFIED)}
    report = evaluate(res, {UNMODIFIED: v}, builds)
    assert not report.valid
    assert report.unmodified_errors == [{"scenario": "s2", "backend": "qemu", "error": "RuntimeError: boom"}]


def test_every_patch_is_described_small_and_named_by_kind() -> None:
    patches = available_patches()
    assert {
        "vfio-save-prepare-noop",
        "vfio-bgsnap-allowed",
        "vfio-multi-dev-on-fix-reverted",
        "core-bgsnap-conflict-list",
        "core-switchover-ack-return-path",
    } <= set(patches)
    for name, patch in patches.items():
        assert patch_description(patch), f"{patch}: no description before the diff"
        files = patch_files(patch)
        assert len(files) == 1, f"{patch}: a mutant changes one file, not {files}"
        changed = [
            line for line in patch.read_text().splitlines() if line[:1] in "+-" and not line.startswith(("+++", "---"))
        ]
        assert 0 < len(changed) <= 12, f"{patch}: {len(changed)} changed lines; a mutant is one small change"
        assert mutant_kind(name) == ("vfio" if files[0].startswith("hw/vfio/") else "core")


def test_work_tree_switches_patches_and_repairs_an_interrupted_build(tmp_path: Path) -> None:
    builder = MutantBuilder(cache=tmp_path, log=lambda _msg: None)
    (builder.pristine / "src").mkdir(parents=True)
    (builder.pristine / "configure").write_text("#!/bin/sh\n")
    original = "int check(void)\n{\n    return -1;\n}\n"
    (builder.pristine / "src" / "gate.c").write_text(original)
    patch = tmp_path / "core-x.patch"
    patch.write_text(
        "drop the check\n\n--- a/src/gate.c\n+++ b/src/gate.c\n@@ -1,4 +1,4 @@\n int check(void)\n"
        " {\n-    return -1;\n+    return 0;\n }\n"
    )
    gate = builder.work / "src" / "gate.c"
    builder.prepare_work(patch)
    assert "return 0;" in gate.read_text()
    builder.prepare_work(None)
    assert gate.read_text() == original
    # A build interrupted after patching: the state file still names the file, so the next switch repairs it.
    builder.prepare_work(patch)
    builder.prepare_work(patch)  # applying again over a patched tree must not fail or double-apply
    assert gate.read_text().count("return 0;") == 1
    builder.prepare_work(None)
    assert gate.read_text() == original


def test_stale_without_any_source_lists_everything(tmp_path: Path) -> None:
    assert MutantBuilder(cache=tmp_path).stale([UNMODIFIED, "core-x"]) == [UNMODIFIED, "core-x"]


def test_patches_apply_to_the_unpacked_source() -> None:
    pristine = MutantBuilder().pristine
    if not (pristine / "configure").is_file():
        pytest.skip(f"no unpacked QEMU source at {pristine}: run `python -m harness.mutants.run --build-only` first")
    for patch in available_patches().values():
        res = subprocess.run(
            ["patch", "-p1", "--dry-run", "--batch", "-d", str(pristine), "-i", str(patch)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert res.returncode == 0, f"{patch.name} does not apply: {res.stdout}{res.stderr}"
        assert "offset" not in res.stdout and "fuzz" not in res.stdout, f"{patch.name}: {res.stdout}"


# --- real QEMU ----------------------------------------------------------------------------------------


def _require_builds(names: list[str]) -> None:
    """Skip (saying how to enable) when the builds are missing or stale, unless MIGCONFORM_MUTANTS=1."""
    stale = MutantBuilder().stale(names)
    if not stale:
        return
    if settings.mutants_build():
        MutantBuilder().build(names)
        return
    pytest.skip(
        f"mutant builds missing or stale ({', '.join(stale)}); build them with "
        f"`python -m harness.mutants.run --build-only` (about 10 min cold) or set {ENABLE_ENV}=1"
    )


async def _set_capabilities(binary_file: Path, caps: dict[str, bool]) -> str | None:
    """Start the binary paused and set ``caps`` on it; QEMU's error message, or None when accepted."""
    from harness.binaries import load_binary
    from harness.errors import QmpCommandError
    from harness.machine import QemuMachine

    binary = load_binary(binary_file)
    async with QemuMachine(binary, ["-machine", "q35", "-accel", "tcg", "-m", "128M", "-S"], name="src") as vm:
        try:
            await vm.qmp(
                "migrate-set-capabilities", capabilities=[{"capability": k, "state": v} for k, v in caps.items()]
            )
        except QmpCommandError as exc:
            return exc.desc
        got = await vm.qmp("query-migrate-capabilities")
        on = {c["capability"] for c in got if c["state"]}
        assert set(caps) <= on, f"accepted but not set: {caps} vs {sorted(on)}"
        return None


@pytest.mark.qemu
@pytest.mark.parametrize("name", sorted(CORE_REFUSALS))
def test_core_mutant_accepts_what_qemu_refuses(name: str) -> None:
    if name not in available_patches():
        pytest.skip(f"mutants/{name}.patch is not in this tree")
    _require_builds([UNMODIFIED, name])
    caps, message = CORE_REFUSALS[name]
    assert asyncio.run(_set_capabilities(binary_path(UNMODIFIED), caps)) == message
    assert asyncio.run(_set_capabilities(binary_path(name), caps)) is None


def _model_and_executor_missing() -> str | None:
    import importlib

    for module in ("harness.executor", "harness.probe"):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            return f"{module} is not importable ({exc}): the runner's QEMU backend is missing"
    try:
        from harness.runner import default_predict

        default_predict()
    except (ImportError, AttributeError) as exc:
        return f"the reference model's predict() is not importable ({exc})"
    return None


@pytest.mark.qemu
@pytest.mark.slow
def test_core_mutants_killed_and_unmodified_agrees(tmp_path: Path) -> None:
    missing = _model_and_executor_missing()
    if missing:
        pytest.skip(missing)
    _require_builds([UNMODIFIED, *CORE_MUTANTS])
    out = tmp_path / "mutants.json"
    report, _ = run_mutants(
        MutantsOptions(
            names=CORE_MUTANTS, scenario_paths=[MUTANTS_DIR / "scenarios"], jobs=2, json_path=out, progress=False
        )
    )
    text = render_console(report)
    assert report.valid, text
    assert report.killed == len(CORE_MUTANTS), text
    for m in report.mutants:
        assert m.killed_by, text
        assert not m.errors, text
    assert out.is_file() and '"mutants"' in out.read_text()
