"""The runner's bookkeeping and the command line, with fake backends (real QEMU: tests/conformance)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from contract.host import HostFacts
from contract.outcome import Outcome, VmState
from contract.scenario import MigrationSpec, Scenario
from contract.versions import Version
from harness import cli, runner
from harness.binaries import QemuBinary
from harness.commands import run as run_command
from harness.results import item_log_name, save
from harness.runner import RunOptions, run_sync
from harness.scenario_error import ScenarioError
from harness.shards import parse_shard, select_shard, shard_of
from harness.targets import target_for_profile, targets_for_binaries

BIN10 = QemuBinary(path="/fake/qemu-10", version=Version(10, 0, 2), version_text="QEMU emulator version 10.0.2")
BIN7 = QemuBinary(path="/fake/qemu-7", version=Version(7, 2, 22), version_text="QEMU emulator version 7.2.22")


def scenario(sid: str) -> Scenario:
    return Scenario(id=sid, migration=MigrationSpec())


def completed(s: Scenario, backend: str, version: str) -> Outcome:
    return Outcome(s.id, backend, version, "completed", source=VmState("completed", "postmigrate"),
                   destination=VmState("completed", "running"))  # fmt: skip


class Fakes:
    """Real side: 'diverges' is refused, 'skipme' skipped, 'crash' raises; the model completes everything."""

    def __init__(self) -> None:
        self.facts_calls: list[tuple[str, str]] = []
        self.snapshots: list[dict[str, Any]] = []
        self.json_path: Path | None = None

    async def execute(self, s: Scenario, binary: QemuBinary, *, workdir: Path, allocator: object = None,
                      timeout: float = 60.0) -> Outcome:  # fmt: skip
        assert workdir.is_dir() and allocator is None
        if self.json_path is not None and self.json_path.exists():
            self.snapshots.append(json.loads(self.json_path.read_text()))
        version = str(binary.version)
        if s.id == "crash":
            raise RuntimeError("executor crashed")
        if s.id == "skipme":
            return Outcome(s.id, "qemu", version, "skipped", skip_reason="requires guest: no guest image")
        out = completed(s, "qemu", version)
        out.accel = "tcg"
        if s.id == "diverges":
            out.verdict, out.stage, out.error = "refused", "migrate", "nope"
        return out

    def predict(self, s: Scenario, version: Version, host: HostFacts) -> Outcome:
        assert host.kvm is False
        return completed(s, "reference", f"{version.major}.{version.minor}")

    def host_facts(self, binary: QemuBinary, accel: str) -> HostFacts:
        self.facts_calls.append((binary.path, accel))
        return HostFacts()

    def options(self, **kw: Any) -> RunOptions:
        return RunOptions(execute=self.execute, predict=self.predict, host_facts=self.host_facts, **kw)


def test_every_scenario_on_every_binary_with_comparisons(tmp_path: Path) -> None:
    fakes = Fakes()
    fakes.json_path = tmp_path / "r.json"
    stream = io.StringIO()
    scenarios = [scenario(x) for x in ("ok", "diverges", "skipme", "crash")]
    res = run_sync(scenarios, targets_for_binaries([BIN7, BIN10]),
                   fakes.options(jobs=1, json_path=fakes.json_path, progress=stream))  # fmt: skip
    assert res.counts() == {
        "agree": 2, "diverge": 2, "known_bug": 0, "skip": 2, "error": 2, "environment": 0, "not_run": 0,
    }  # fmt: skip
    assert not res.passed
    # the model ran at the binary's version; its own profile stays visible
    ref = next(o for o in res.outcomes if o.backend == "reference" and o.scenario == "ok" and o.binary is None)
    assert ref.qemu_version in ("7.2.22", "10.0.2") and ref.extra["profile"] in ("7.2", "10.0")
    # host facts probed once per binary and accelerator
    assert sorted(set(fakes.facts_calls)) == sorted(fakes.facts_calls)
    # the file is rewritten as items complete, and lists what has not run yet
    assert fakes.snapshots[0]["not_run"] and len(fakes.snapshots[-1]["not_run"]) < len(fakes.snapshots[0]["not_run"])
    final = json.loads(fakes.json_path.read_text())
    assert final["not_run"] == [] and final["meta"]["end"] and final["meta"]["interrupted"] is False
    lines = stream.getvalue().splitlines()
    assert len(lines) == 8 and lines[-1].startswith("[8/8")
    assert any("skip (qemu: requires guest" in line for line in lines)


def test_backend_reference_with_profile_needs_no_binary() -> None:
    fakes = Fakes()
    res = run_sync([scenario("ok")], [target_for_profile("8.2")], fakes.options(backend="reference"))
    assert [(o.backend, o.qemu_version) for o in res.outcomes] == [("reference", "8.2.0")]
    assert res.comparisons == [] and res.passed and fakes.facts_calls == []


def test_backend_qemu_runs_no_model() -> None:
    fakes = Fakes()
    res = run_sync([scenario("diverges")], targets_for_binaries([BIN10]), fakes.options(backend="qemu"))
    assert [o.backend for o in res.outcomes] == ["qemu"] and res.comparisons == [] and res.passed


def test_duplicate_versions_get_distinct_columns() -> None:
    twin = QemuBinary(path="/fake/mutant", version=Version(10, 0, 2), version_text="")
    columns = [t.column for t in targets_for_binaries([BIN10, twin, BIN7])]
    assert columns == ["10.0.2 (/fake/qemu-10)", "10.0.2 (/fake/mutant)", "7.2.22"]


def test_shards_partition_the_scenarios_stably() -> None:
    scenarios = [scenario(f"s{i}") for i in range(40)]
    parts = [select_shard(scenarios, k, 3) for k in (1, 2, 3)]
    assert sorted(s.id for p in parts for s in p) == sorted(s.id for s in scenarios)
    assert all(parts)
    assert shard_of("s1", 3) == shard_of("s1", 3)
    with pytest.raises(ValueError, match="K/N"):
        parse_shard("two")
    with pytest.raises(ValueError, match="between 1 and N"):
        parse_shard("4/3")


# ---- command line ----------------------------------------------------------------------------------------


@pytest.fixture
def fake_backends(monkeypatch: pytest.MonkeyPatch) -> Fakes:
    fakes = Fakes()
    monkeypatch.setattr(runner, "default_execute", lambda: fakes.execute)
    monkeypatch.setattr(runner, "default_predict", lambda: fakes.predict)
    monkeypatch.setattr(runner, "default_host_facts", lambda: fakes.host_facts)
    monkeypatch.setattr(run_command, "qemu_binaries", lambda paths: [BIN10])
    return fakes


def write_scenario(tmp_path: Path, sid: str) -> Path:
    path = tmp_path / f"{sid}.toml"
    path.write_text("[migration]\ntransport = 'tcp'\n")
    return path


def test_run_exit_status_and_outputs(tmp_path: Path, fake_backends: Fakes, capsys: pytest.CaptureFixture[str]) -> None:
    ok = write_scenario(tmp_path, "ok")
    out = tmp_path / "out"
    args = ["run", str(ok), "--json", str(out / "r.json"), "--junit", str(out / "r.xml"), "--html", str(out / "r.html")]
    assert cli.main(args) == 0
    assert {p.name for p in out.iterdir()} == {"r.json", "r.xml", "r.html"}
    assert "1 agree, 0 diverge, 0 skipped" in capsys.readouterr().out
    assert cli.main(["run", str(ok), str(write_scenario(tmp_path, "diverges")), "--quiet"]) == 1
    assert cli.main(["run", str(write_scenario(tmp_path, "skipme")), "--quiet"]) == 0


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--backend", "qemu", "--profile", "10.0"], "--profile applies to --backend reference only"),
        (["--backend", "reference", "--profile", "6.2"], "older than the oldest profile"),
        (["--shard", "0/2"], "between 1 and N"),
    ],
)
def test_bad_usage_exits_2(
    tmp_path: Path, fake_backends: Fakes, capsys: pytest.CaptureFixture[str], extra: list[str], needle: str
) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["run", str(write_scenario(tmp_path, "ok")), *extra])
    assert info.value.code == 2
    assert needle in capsys.readouterr().err


def test_unloadable_scenario_exits_2_with_the_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[[step]]\naction = 'teleport'\n")
    with pytest.raises(SystemExit) as info:
        cli.main(["run", str(bad)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "step[0].action" in err and "allowed: set-capabilities" in err


def test_merge_and_report(tmp_path: Path, fake_backends: Fakes) -> None:
    a, b = write_scenario(tmp_path, "ok"), write_scenario(tmp_path, "diverges")
    assert cli.main(["run", str(a), "--json", str(tmp_path / "a.json"), "--quiet"]) == 0
    assert cli.main(["run", str(b), "--json", str(tmp_path / "b.json"), "--quiet"]) == 1
    merged = tmp_path / "m.json"
    assert cli.main(["merge", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "-o", str(merged)]) == 0
    data = json.loads(merged.read_text())
    assert sorted(c["scenario"] for c in data["comparisons"]) == ["diverges", "ok"]
    page = tmp_path / "m.html"
    assert cli.main(["report", str(merged), "--html", str(page), "--junit", str(tmp_path / "m.xml")]) == 0
    assert "diverges" in page.read_text() and (tmp_path / "m.xml").exists()
    with pytest.raises(SystemExit) as info:
        cli.main(["report", str(tmp_path / "absent.json"), "--html", str(page)])
    assert info.value.code == 2


def test_conformance_finds_the_bundled_suite(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert (run_command.suite_path() / "example-precopy-tcp.toml").exists()
    monkeypatch.setenv("MIGCONFORM_SUITE", str(tmp_path))
    assert run_command.suite_path() == tmp_path


def test_interrupted_run_keeps_finished_items_and_lists_the_rest(tmp_path: Path) -> None:
    import asyncio

    fakes = Fakes()

    async def hangs_on_slow(s: Scenario, binary: QemuBinary, **kw: Any) -> Outcome:
        if s.id == "slow":
            await asyncio.sleep(3600)
        return await fakes.execute(s, binary, **kw)

    path = tmp_path / "r.json"
    options = fakes.options(jobs=2, json_path=path)
    options.execute = hangs_on_slow

    async def interrupted() -> None:
        work = runner.run([scenario("ok"), scenario("slow")], targets_for_binaries([BIN10]), options)
        await asyncio.wait_for(work, 0.5)

    with pytest.raises(TimeoutError):
        asyncio.run(interrupted())
    data = json.loads(path.read_text())
    assert [c["scenario"] for c in data["comparisons"]] == ["ok"]
    assert data["not_run"] == [{"scenario": "slow", "column": "10.0.2"}]
    assert data["meta"]["interrupted"] is True


class FakeProvider:
    """A VFIO provider that 'runs' every scenario it is given and reports a lab kernel."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    async def run_batch(self, scenarios: Any, binaries: Any) -> list[Outcome]:
        self.batches.append([s.id for s in scenarios])
        out = []
        for b in binaries:
            for s in scenarios:
                o = completed(s, "qemu", str(b.version))
                o.binary = b.path
                o.extra["vfio_names"] = {"vfio0": "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001"}
                out.append(o)
        return out

    def host_facts(self) -> HostFacts:
        return HostFacts(kernel="6.12-lab")


def test_vfio_scenarios_go_to_the_provider_in_one_batch() -> None:
    from contract.scenario import DeviceSpec, VmSpec

    fakes = Fakes()
    vm = VmSpec(devices=(DeviceSpec("vfio-pci", id="vfio0"),))
    vfio = [Scenario(id=f"v{i}", source=vm, destination=vm, migration=MigrationSpec()) for i in range(3)]
    provider = FakeProvider()
    options = fakes.options(jobs=2, provider=provider)
    res = run_sync([*vfio, scenario("plain")], targets_for_binaries([BIN7, BIN10]), options)
    assert provider.batches == [["v0", "v1", "v2"]]
    assert res.counts()["agree"] == 8 and res.passed
    assert {(o.scenario, o.qemu_version) for o in res.outcomes if o.backend == "qemu"} >= {("v0", "7.2.22")}


def test_sweep_builds_every_set_once_per_mode_and_transport() -> None:
    from harness.scenario_tables import ID_PATTERN
    from harness.sweep import sweep_scenarios

    caps = ["events", "multifd", "postcopy-ram", "return-path"]
    generated = sweep_scenarios(caps, size=2)
    ids = [s.id for s in generated]
    assert len(ids) == len(set(ids)) and all(ID_PATTERN.fullmatch(i) for i in ids)
    # 6 pairs x precopy on tcp and file = 12; postcopy adds postcopy-ram: 3 pairs collapse onto the 3 pairs that
    # already hold it, so 6 distinct sets on tcp; background-snapshot: 6 distinct sets on file
    assert len(generated) == 12 + 6 + 6
    modes = {s.migration.mode for s in generated if s.migration is not None}
    assert modes == {"precopy", "postcopy", "background-snapshot"}
    for s in generated:
        assert s.migration is not None
        if s.migration.mode == "postcopy":
            assert s.migration.capabilities.get("postcopy-ram") and s.migration.transport == "tcp"
        if s.migration.mode == "background-snapshot":
            assert s.migration.capabilities.get("background-snapshot") and s.migration.transport == "file"
    only_tcp = sweep_scenarios(caps, size=1, transports=["tcp"], modes=["precopy"])
    assert [s.id for s in only_tcp] == [f"sweep.{c}.precopy.tcp" for c in caps]


# ---- kept logs, environment errors, output paths ---------------------------------------------------------


class LoggingFakes(Fakes):
    """Like Fakes, but the real side writes a log into its workdir like QEMU would, and 'hostfail' is the host
    failing (HostEnvironmentError), 'hostfail-crash' fails the host on the real side and the model raises."""

    def __init__(self) -> None:
        super().__init__()
        self.workdirs: dict[str, Path] = {}

    async def execute(self, s: Scenario, binary: QemuBinary, *, workdir: Path, allocator: object = None,
                      timeout: float = 60.0) -> Outcome:  # fmt: skip
        from harness.errors import HostEnvironmentError

        self.workdirs[f"{s.id}[{binary.version}]"] = workdir
        (workdir / "source.log").write_text(f"qemu-system-x86_64: log of {s.id}\n")
        if s.id in ("hostfail", "hostfail-crash"):
            raise HostEnvironmentError("guest memory", "Cannot allocate memory")
        return await super().execute(s, binary, workdir=workdir, allocator=allocator, timeout=timeout)

    def predict(self, s: Scenario, version: Version, host: HostFacts) -> Outcome:
        if s.id == "hostfail-crash":
            raise RuntimeError("model crashed")
        return super().predict(s, version, host)


@pytest.fixture
def logging_backends(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> LoggingFakes:
    fakes = LoggingFakes()
    monkeypatch.setattr(runner, "default_execute", lambda: fakes.execute)
    monkeypatch.setattr(runner, "default_predict", lambda: fakes.predict)
    monkeypatch.setattr(runner, "default_host_facts", lambda: fakes.host_facts)
    monkeypatch.setattr(run_command, "qemu_binaries", lambda paths: [BIN10])
    monkeypatch.chdir(tmp_path)  # the default logs root is results/logs of the current folder
    return fakes


def test_logs_of_failed_items_are_kept_beside_the_json_and_linked(
    tmp_path: Path, logging_backends: LoggingFakes, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = [write_scenario(tmp_path, sid) for sid in ("ok", "diverges", "crash", "hostfail")]
    out = tmp_path / "out"
    argv = ["run", *map(str, paths), "--json", str(out / "r.json"), "--junit", str(out / "r.xml")]
    assert cli.main([*argv, "--html", str(out / "r.html")]) == 1
    root = out / "logs"
    kept = {p.name for p in root.iterdir()}
    assert kept == {"diverges__10.0.2", "crash__10.0.2", "hostfail__10.0.2"}  # the agreeing item's is gone
    assert not logging_backends.workdirs["ok[10.0.2]"].exists()
    assert (root / "diverges__10.0.2" / "source.log").read_text() == "qemu-system-x86_64: log of diverges\n"
    data = json.loads((out / "r.json").read_text())
    logs = {o["scenario"]: o.get("logs") for o in data["outcomes"] if o["backend"] == "qemu"}
    assert logs == {"ok": None, "diverges": str((root / "diverges__10.0.2").resolve())}
    assert {e["scenario"]: e["logs"] for e in data["errors"]} == {
        "crash": str((root / "crash__10.0.2").resolve()),
        "hostfail": str((root / "hostfail__10.0.2").resolve()),
    }
    assert data["meta"]["logs_dir"] == str(root.resolve())
    assert f'<property name="logs" value="{(root / "crash__10.0.2").resolve()}" />' in (out / "r.xml").read_text()
    assert '<a href="logs/diverges__10.0.2/"' in (out / "r.html").read_text()
    console_out = capsys.readouterr().out
    assert f"  logs: {(root / 'diverges__10.0.2').resolve()}" in console_out
    assert f"QEMU logs kept for 3 items under {root.resolve()}" in console_out


@pytest.mark.parametrize(("keep", "expected"), [("all", {"ok__10.0.2", "diverges__10.0.2"}), ("none", None)])
def test_keep_logs_all_and_none(
    tmp_path: Path, logging_backends: LoggingFakes, keep: str, expected: set[str] | None
) -> None:
    paths = [str(write_scenario(tmp_path, sid)) for sid in ("ok", "diverges")]
    logs = tmp_path / "elsewhere"
    assert cli.main(["run", *paths, "--quiet", "--logs-dir", str(logs), "--keep-logs", keep]) == 1
    if expected is None:
        assert not logs.exists()
        assert not any(w.exists() for w in logging_backends.workdirs.values())
    else:
        assert {p.name for p in logs.iterdir()} == expected
    assert not (tmp_path / "results").exists()  # --logs-dir replaces the default root


def test_default_logs_root_without_json_and_nothing_left_when_all_agree(
    tmp_path: Path, logging_backends: LoggingFakes
) -> None:
    assert cli.main(["run", str(write_scenario(tmp_path, "ok")), "--quiet"]) == 0
    assert not (tmp_path / "results").exists()  # created for the item, removed with it: nothing kept
    assert cli.main(["run", str(write_scenario(tmp_path, "diverges")), "--quiet"]) == 1
    assert (tmp_path / "results" / "logs" / "diverges__10.0.2" / "source.log").exists()


def test_item_log_names_are_safe_and_distinct() -> None:
    assert item_log_name("postcopy-vfio", "10.0.2") == "postcopy-vfio__10.0.2"
    a = item_log_name("s", "10.0.2 (/usr/bin/qemu-system-x86_64)")
    b = item_log_name("s", "10.0.2 (/opt/qemu/bin/qemu-system-x86_64)")
    assert a != b and "/" not in a + b and " " not in a + b and a.startswith("s__10.0.2_")


def test_environment_errors_exit_3_only_when_nothing_diverged(
    tmp_path: Path, logging_backends: LoggingFakes, capsys: pytest.CaptureFixture[str]
) -> None:
    hostfail, ok = str(write_scenario(tmp_path, "hostfail")), str(write_scenario(tmp_path, "ok"))
    out = tmp_path / "out"
    argv = ["run", hostfail, ok, "--json", str(out / "r.json"), "--junit", str(out / "r.xml")]
    assert cli.main([*argv, "--html", str(out / "r.html")]) == 3
    data = json.loads((out / "r.json").read_text())
    assert [e["kind"] for e in data["errors"]] == ["environment"]
    assert data["counts"]["environment"] == 1 and data["counts"]["error"] == 0
    assert '<error message="qemu: harness.errors.HostEnvironmentError: guest memory: Cannot allocate memory" ' \
        'type="environment">' in (out / "r.xml").read_text()  # fmt: skip
    assert '<td class="environment"><span class="tag">environment error</span>' in (out / "r.html").read_text()
    console_out = capsys.readouterr().out
    assert "ENVIRONMENT ERROR hostfail [10.0.2]" in console_out and "1 environment errors" in console_out
    # A divergence or a harness error is never hidden behind a host failure: 1.
    assert cli.main(["run", hostfail, str(write_scenario(tmp_path, "diverges")), "--quiet"]) == 1
    assert cli.main(["run", hostfail, str(write_scenario(tmp_path, "crash")), "--quiet"]) == 1


def test_a_harness_error_outranks_a_host_error_in_one_item(logging_backends: LoggingFakes) -> None:
    from harness.report import build_matrix

    res = run_sync([scenario("hostfail-crash")], targets_for_binaries([BIN10]), logging_backends.options())
    assert [(e.backend, e.kind) for e in res.errors] == [("qemu", "environment"), ("reference", "harness")]
    assert res.exit_status == 1
    assert build_matrix(res).cells[("hostfail-crash", "10.0.2")].kind == "error"


@pytest.mark.parametrize("flag", ["--json", "--junit", "--html"])
def test_unwritable_output_paths_exit_2_before_anything_runs(
    tmp_path: Path, logging_backends: LoggingFakes, capsys: pytest.CaptureFixture[str], flag: str
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n")
    ok = str(write_scenario(tmp_path, "ok"))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", ok, flag, str(blocker / "out.x")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"migconform: error: {flag} {blocker / 'out.x'}: cannot write there: " in err
    assert "Traceback" not in err and logging_backends.workdirs == {}  # nothing ran
    folder = tmp_path / "a-folder"
    folder.mkdir()
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", ok, flag, str(folder)])
    assert exit_info.value.code == 2
    assert f"{flag} {folder}: is a folder, not a file" in capsys.readouterr().err


def test_unwritable_logs_dir_exits_2(
    tmp_path: Path, logging_backends: LoggingFakes, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x\n")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", str(write_scenario(tmp_path, "ok")), "--logs-dir", str(blocker / "logs")])
    assert exit_info.value.code == 2 and logging_backends.workdirs == {}
    assert f"migconform: error: --logs-dir {blocker / 'logs'}: cannot write there: " in capsys.readouterr().err


def test_results_file_that_cannot_be_written_mid_run_exits_3_without_traceback(
    tmp_path: Path, logging_backends: LoggingFakes, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    original = logging_backends.execute

    async def break_the_disk(s: Scenario, binary: QemuBinary, **kw: Any) -> Outcome:
        # What a full disk does to write_atomic, without needing one: every write into out/ fails.
        def no_space(*args: Any, **kwargs: Any) -> Any:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(save.__globals__["tempfile"], "mkstemp", no_space)
        return await original(s, binary, **kw)

    logging_backends.execute = break_the_disk  # type: ignore[method-assign]
    status = cli.main(["run", str(write_scenario(tmp_path, "ok")), "--json", str(out / "r.json")])
    assert status == 3
    err = capsys.readouterr().err
    assert f"migconform: environment error: cannot write {out / 'r.json'}: No space left on device" in err
    assert "Traceback" not in err


class LabProvider(FakeProvider):
    """Like the mtty lab: 'v-div' diverges; each item's logs are in the run folder (extra.lab_run/lab_logs),
    except for 'v-nologs', whose provider returned none."""

    def __init__(self, run: Path) -> None:
        super().__init__()
        self.run = run

    async def run_batch(self, scenarios: Any, binaries: Any) -> list[Outcome]:
        out = await super().run_batch(scenarios, binaries)
        for o in out:
            if o.scenario != "ok-vfio":
                o.verdict, o.stage, o.error = "refused", "migrate", "nope"
            o.vfio_provider = "mtty"
            o.extra["lab_run"] = str(self.run)
            if o.scenario != "v-nologs":
                logs = self.run / "logs" / f"{o.scenario}__{o.qemu_version}-x1"
                logs.mkdir(parents=True)
                (logs / "source.log").write_text(f"lab log of {o.scenario}\n")
                o.extra["lab_logs"] = str(logs.relative_to(self.run))
        return out


def test_vfio_items_logs_come_back_from_the_lab_or_the_outcome_says_why(tmp_path: Path) -> None:
    from contract.scenario import DeviceSpec, VmSpec

    vm = VmSpec(devices=(DeviceSpec("vfio-pci", id="vfio0"),))
    ids = ("ok-vfio", "v-div", "v-nologs")
    vfio = [Scenario(id=i, source=vm, destination=vm, migration=MigrationSpec()) for i in ids]
    logs = tmp_path / "logs"
    options = Fakes().options(jobs=1, provider=LabProvider(tmp_path / "run"), logs_dir=logs)
    res = run_sync(vfio, targets_for_binaries([BIN10]), options)
    by_id = {o.scenario: o for o in res.outcomes if o.backend == "qemu"}
    assert by_id["v-div"].logs == str((logs / "v-div__10.0.2").resolve())
    assert (logs / "v-div__10.0.2" / "source.log").read_text() == "lab log of v-div\n"
    assert by_id["ok-vfio"].logs is None and not (logs / "ok-vfio__10.0.2").exists()  # agreed: not copied
    assert by_id["v-nologs"].logs is None
    assert by_id["v-nologs"].extra["logs_not_kept"] == (
        "the VFIO provider 'mtty' ran this item's QEMUs itself and returned no logs"
    )
    assert all("lab_logs" not in o.extra for o in by_id.values())


# ---- nothing to run, and --no-exec -----------------------------------------------------------------------


@pytest.mark.parametrize("content", [None, "notes.txt"])
def test_no_scenario_found_is_a_usage_error(
    tmp_path: Path, fake_backends: Fakes, capsys: pytest.CaptureFixture[str], content: str | None
) -> None:
    """An empty folder would otherwise "agree" (exit 0) having run nothing."""
    if content is not None:
        (tmp_path / content).write_text("not a scenario")
    with pytest.raises(SystemExit) as info:
        cli.main(["run", str(tmp_path), "--quiet"])
    assert info.value.code == 2
    assert f"no scenario found in {tmp_path}" in capsys.readouterr().err


def test_conformance_on_an_empty_suite_is_a_usage_error(
    tmp_path: Path, fake_backends: Fakes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MIGCONFORM_SUITE", str(tmp_path))
    with pytest.raises(SystemExit) as info:
        cli.main(["conformance", "--results-dir", str(tmp_path / "out"), "--quiet"])
    assert info.value.code == 2


@pytest.mark.parametrize("command", ["run", "conformance"])
def test_no_exec_refuses_before_any_qemu_starts(
    tmp_path: Path,
    fake_backends: Fakes,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    command: str,
) -> None:
    started: list[str] = []

    async def execute(s: Scenario, binary: QemuBinary, **kw: Any) -> Outcome:
        started.append(s.id)
        return await fake_backends.execute(s, binary, **kw)

    monkeypatch.setattr(runner, "default_execute", lambda: execute)
    suite = tmp_path / "suite"
    suite.mkdir()
    ok = write_scenario(suite, "ok")
    evil = suite / "evil.toml"
    evil.write_text("[[step]]\naction = 'qmp'\ncommand = 'migrate'\narguments = { uri = 'exec:touch /tmp/pwned' }\n")
    monkeypatch.setenv("MIGCONFORM_SUITE", str(suite))
    paths = [str(suite)] if command == "run" else ["--results-dir", str(tmp_path / "out")]
    cli.main([command, *paths, "--quiet"])  # without --no-exec a scenario file is trusted code: it runs
    assert sorted(started) == ["evil", "ok"]
    started.clear()
    with pytest.raises(SystemExit) as info:
        cli.main([command, *paths, "--quiet", "--no-exec"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"{evil}: step[0].arguments.uri:" in err and "exec: URI" in err and "refused by --no-exec" in err
    assert started == []
    assert cli.main(["run", str(ok), "--quiet", "--no-exec"]) == 0 and started == ["ok"]


def test_run_options_no_exec_refuses_scenarios_not_loaded_by_the_cli() -> None:
    fakes = Fakes()
    ran: list[str] = []

    async def execute(s: Scenario, binary: QemuBinary, **kw: Any) -> Outcome:
        ran.append(s.id)
        return await fakes.execute(s, binary, **kw)

    exec_scenario = Scenario(id="ok", migration=MigrationSpec(transport="exec"))
    options = RunOptions(execute=execute, predict=fakes.predict, host_facts=fakes.host_facts, no_exec=True)
    with pytest.raises(ScenarioError, match=r"migration.transport: transport exec"):
        run_sync([scenario("ok"), exec_scenario], targets_for_binaries([BIN10]), options)
    assert ran == []
