"""Known QEMU bugs: matched by their signature, reported, not failing the run, never hiding another divergence,
and reported when they no longer reproduce."""

from __future__ import annotations

from typing import Any

from contract.scenario import MigrationSpec, Scenario, Step, VmSpec
from contract.versions import Version
from harness.compare import Comparison
from harness.known_bugs import KNOWN_DIVERGENCES, KnownDivergence, classify, known_divergence
from harness.report import console, html, junit
from harness.results import Results

ENTRY = next(k for k in KNOWN_DIVERGENCES if k.name == "qemu-7.2-tcg-precopy-loses-dirty-pages")
SCENARIO = "guest-precopy-tcp"
V72 = Version(7, 2, 22)

GUEST_OK = {"alive": True, "pages_checked": 4096, "bad_pages": 0}


def _comparison(differences: dict[str, list[Any]], scenario: str = SCENARIO) -> Comparison:
    return Comparison(scenario, "7.2.22", agree=not differences, differences=differences)


def _classified(differences: dict[str, list[Any]], accel: str | None = "tcg") -> Comparison:
    comparison = _comparison(differences)
    classify(comparison, SCENARIO, V72, accel)
    return comparison


def test_entry_applies_to_its_versions_and_accelerator_only() -> None:
    assert known_divergence(SCENARIO, Version(7, 2, 22), "tcg") is ENTRY
    assert known_divergence(SCENARIO, Version(7, 2, 0), "tcg") is ENTRY
    assert known_divergence(SCENARIO, Version(10, 0, 2), "tcg") is None
    assert known_divergence(SCENARIO, Version(7, 1, 0), "tcg") is None
    # seen under TCG only: a KVM run that diverges is a plain divergence
    assert known_divergence(SCENARIO, V72, "kvm") is None
    assert known_divergence("no-such-scenario", V72, "tcg") is None


def test_version_ranges_are_inclusive() -> None:
    entry = KnownDivergence("x", frozenset({"s"}), (("7.2", "8.1"),), frozenset({"tcg"}), "r", ENTRY.shapes)
    assert entry.applies("s", Version(8, 0, 4), "tcg") and entry.applies("s", Version(8, 1, 5), "tcg")
    assert not entry.applies("s", Version(8, 2, 0), "tcg") and not entry.applies("s", Version(7, 1, 0), "tcg")


def test_stale_pages_on_a_live_guest_are_the_bug() -> None:
    bad = {"alive": True, "pages_checked": 4096, "bad_pages": 17, "first_bad": 12}
    comparison = _classified({"guest": [GUEST_OK, bad]})
    assert comparison.known_bug == ENTRY.reason and not comparison.diverges


def test_a_guest_that_panicked_and_ended_its_qemu_is_the_bug() -> None:
    comparison = _classified(
        {
            "guest": [GUEST_OK, {"alive": False, "pages_checked": 0, "bad_pages": 0}],
            "verdict": ["completed", "failed"],
            "stage": [None, "migration"],
            "error": [None, "destination QEMU exited with status 0: "],
            "destination.status": ["completed", None],
            "destination.runstate": ["running", None],
        }
    )
    assert comparison.known_bug == ENTRY.reason


def test_a_destination_that_cannot_load_the_stream_is_not_the_dirty_page_bug() -> None:
    # Same fields as a guest death, other values: exit status 1 with QEMU's load failure is not lost pages.
    comparison = _classified(
        {
            "guest": [GUEST_OK, {"alive": False, "pages_checked": 0, "bad_pages": 0}],
            "verdict": ["completed", "failed"],
            "stage": [None, "migration"],
            "error": [None, "destination QEMU exited with status 1: load of migration failed: Invalid argument"],
            "destination.status": ["completed", None],
            "destination.runstate": ["running", None],
        }
    )
    assert comparison.known_bug is None and comparison.diverges
    problems = ENTRY.problems(comparison)
    assert any("error" in p and "status 1" in p for p in problems)


def test_a_destination_that_failed_the_migration_is_not_the_bug() -> None:
    comparison = _classified(
        {
            "guest": [GUEST_OK, {"alive": False, "pages_checked": 0, "bad_pages": 0}],
            "destination.status": ["completed", "failed"],
        }
    )
    assert comparison.diverges


def test_a_clean_guest_that_differs_elsewhere_is_not_the_bug() -> None:
    # "guest" differs only in an informative key would not even be a difference; here the guest is fine and
    # alive: not the signature.
    comparison = _classified({"guest": [{"alive": False, "bad_pages": 0}, GUEST_OK]})
    assert comparison.diverges


def test_another_difference_is_not_hidden() -> None:
    bad = {"alive": True, "pages_checked": 4096, "bad_pages": 3}
    comparison = _classified({"guest": [GUEST_OK, bad], "source.status": ["completed", "failed"]})
    assert comparison.diverges
    assert any("source.status" in p for p in ENTRY.problems(comparison))


def test_the_bug_under_another_accelerator_is_a_plain_divergence() -> None:
    bad = {"alive": True, "pages_checked": 4096, "bad_pages": 3}
    assert _classified({"guest": [GUEST_OK, bad]}, accel="kvm").diverges


def test_agreement_is_reported_as_the_bug_no_longer_reproducing() -> None:
    comparison = _classified({})
    assert comparison.agree and comparison.known_bug is None
    assert comparison.known_bug_gone is not None
    assert comparison.known_bug_gone.startswith(f"known bug no longer reproduces: {ENTRY.name}")
    assert any("no longer reproduces" in p for p in ENTRY.problems(comparison))
    # an agreeing case without an entry says nothing
    other = Comparison("other", "7.2.22", agree=True)
    classify(other, "other", V72, "tcg")
    assert other.known_bug_gone is None


def test_a_bug_gone_is_reported_everywhere_but_does_not_fail_the_run() -> None:
    comparison = _classified({})
    results = Results(comparisons=[comparison])
    assert results.passed
    text = console.render(results)
    assert f"KNOWN BUG GONE {SCENARIO} [7.2.22]: known bug no longer reproduces: {ENTRY.name}" in text
    assert "1 known QEMU bugs no longer reproduce" in text
    xml = junit.render(results)
    assert 'name="known-bug-gone"' in xml and 'failures="0"' in xml
    page = html.render(results)
    assert "known bug no longer reproduces" in page
    restored = Comparison.from_json(comparison.to_json())
    assert restored.known_bug_gone == comparison.known_bug_gone
    assert "known_bug_gone" in comparison.to_json()


def test_a_known_bug_is_reported_but_does_not_fail_the_run() -> None:
    comparison = _classified({"guest": [GUEST_OK, {"alive": False, "bad_pages": 0}]})
    assert comparison.known_bug == ENTRY.reason
    results = Results(comparisons=[comparison])
    assert results.passed and results.counts()["known_bug"] == 1 and not results.diverged
    assert f"KNOWN QEMU BUG {SCENARIO}" in console.render(results)
    xml = junit.render(results)
    assert 'type="known-qemu-bug"' in xml and 'failures="0"' in xml
    assert Comparison.from_json(comparison.to_json()).known_bug == ENTRY.reason


def test_an_unexplained_divergence_still_fails() -> None:
    results = Results(comparisons=[_comparison({"guest": [GUEST_OK, {"alive": False}]})])
    assert not results.passed and len(results.diverged) == 1


# ---- 7.2 postcopy + multifd: the destination aborts in yank cleanup (docs/qemu-bugs.md "5.") ----------------

YANK = next(k for k in KNOWN_DIVERGENCES if k.name == "qemu-7.2-postcopy-multifd-yank-abort")
PREEMPT = next(k for k in KNOWN_DIVERGENCES if k.name == "qemu-7.2-multifd-preempt-channel-misrouted")
SEGV = next(k for k in KNOWN_DIVERGENCES if k.name == "qemu-7.2-multifd-on-live-destination-segfault")
YANK_LINE = (
    "destination QEMU exited with status -6: ../../util/yank.c:107: yank_unregister_instance: "
    "Assertion `QLIST_EMPTY(&entry->yankfns)' failed."
)


def _postcopy(caps: dict[str, bool], transport: str = "tcp", scenario_id: str = "sweep.x") -> Scenario:
    return Scenario(scenario_id, migration=MigrationSpec(capabilities=caps, transport=transport, mode="postcopy"))


def test_the_yank_abort_applies_by_configuration() -> None:
    both = _postcopy({"multifd": True, "postcopy-ram": True})
    assert known_divergence(both, V72, "tcg") is YANK
    assert known_divergence(_postcopy({"multifd": True, "postcopy-ram": True, "xbzrle": True}), V72, "kvm") is YANK
    # 8.1+ refuses the pair; without multifd, without the switch or over a file there is no such bug
    assert known_divergence(both, Version(10, 0, 2), "tcg") is None
    assert known_divergence(_postcopy({"postcopy-ram": True}), V72, "tcg") is None
    precopy = Scenario("p", migration=MigrationSpec(capabilities={"multifd": True, "postcopy-ram": True}))
    assert known_divergence(precopy, V72, "tcg") is None
    # only the scenario's id: no configuration to match
    assert known_divergence("sweep.x", V72, "tcg") is None


def test_the_yank_abort_signature() -> None:
    scenario = _postcopy({"multifd": True, "postcopy-ram": True})
    abort = _comparison(
        {
            "verdict": ["completed", "failed"],
            "stage": [None, "migration"],
            "error": [None, YANK_LINE],
            "destination.status": ["completed", None],
            "destination.runstate": ["running", None],
        },
        scenario="sweep.x",
    )
    classify(abort, scenario, V72, "tcg")
    assert abort.known_bug == YANK.reason
    # the same fields with a load failure are not this bug
    load = _comparison(
        {
            "verdict": ["completed", "failed"],
            "stage": [None, "migration"],
            "error": [None, "destination QEMU exited with status 1: load of migration failed: Invalid argument"],
            "destination.status": ["completed", None],
            "destination.runstate": ["running", None],
        },
        scenario="sweep.x",
    )
    classify(load, scenario, V72, "tcg")
    assert load.known_bug is None and load.diverges


def test_multifd_with_preempt_is_the_misrouted_channel_not_the_yank_abort() -> None:
    # real 7.2.22 (/tmp reproducer, docs/qemu-bugs.md "7."): the destination died before the switch, the source
    # stayed active / finish-migrate; in the sweep of 2026-11-25 it had reached postcopy-active.
    scenario = _postcopy({"multifd": True, "postcopy-ram": True, "postcopy-preempt": True})
    assert known_divergence(scenario, V72, "tcg") is PREEMPT
    for status in ("active", "postcopy-active"):
        stuck = _comparison(
            {
                "verdict": ["completed", "failed"],
                "stage": [None, "migration"],
                "error": [None, f"timed out after 60 s waiting for the source migration to end (last seen: {status})"],
                "source.status": ["completed", status],
                "source.runstate": ["postmigrate", "finish-migrate"],
                "destination.status": ["completed", None],
                "destination.runstate": ["running", None],
            },
            scenario="sweep.x",
        )
        classify(stuck, scenario, V72, "tcg")
        assert stuck.known_bug == PREEMPT.reason, PREEMPT.problems(stuck)
    # a source stuck elsewhere is something else
    stuck.differences["source.status"] = ["completed", "device"]
    stuck.known_bug = None
    classify(stuck, scenario, V72, "tcg")
    assert stuck.diverges


def test_a_fixed_qemu_shows_the_fix() -> None:
    # The model predicts the intended completion, so a 7.2 build without the bug agrees, and the run says so.
    comparison = _comparison({}, scenario="sweep.x")
    classify(comparison, _postcopy({"multifd": True, "postcopy-ram": True}), V72, "tcg")
    assert comparison.agree and comparison.known_bug_gone is not None and YANK.name in comparison.known_bug_gone


# ---- 7.2 multifd turned on at a destination whose stream flows: SIGSEGV (docs/qemu-bugs.md "8.") -------------


def _live_multifd(*, wait: bool = True, side: str = "destination") -> Scenario:
    items = [
        Step("set-parameters", parameters={"max-bandwidth": 1000}),
        Step("migrate"),
        Step("set-capabilities", side=side, capabilities={"multifd": True}),
    ]
    if wait:
        items.append(Step("wait"))
    return Scenario("live-multifd", steps=tuple(items))


def test_the_segfault_applies_by_configuration() -> None:
    assert known_divergence(_live_multifd(), V72, "tcg") is SEGV
    assert known_divergence(_live_multifd(), Version(10, 0, 2), "tcg") is None
    assert known_divergence(_live_multifd(wait=False), V72, "tcg") is None
    assert known_divergence(_live_multifd(side="source"), V72, "tcg") is None


def test_the_segfault_signature() -> None:
    for error, source in (
        ("Unable to write to socket: Connection reset by peer", ["completed", "failed"]),
        ("destination QEMU exited with status -11: ", None),
    ):
        differences: dict[str, list[Any]] = {
            "verdict": ["completed", "failed"],
            "stage": [None, "migration"],
            "error": [None, error],
            "destination.status": ["completed", None],
            "destination.runstate": ["running", None],
        }
        if source is not None:
            differences["source.status"] = source
            differences["source.runstate"] = ["postmigrate", "running"]
        comparison = _comparison(differences, scenario="live-multifd")
        classify(comparison, _live_multifd(), V72, "tcg")
        assert comparison.known_bug == SEGV.reason, SEGV.problems(comparison)
    # a destination that exits 1 with a load failure is not the segfault
    other = _comparison(
        {
            "verdict": ["completed", "failed"],
            "error": [None, "destination QEMU exited with status 1: load of migration failed: Invalid argument"],
            "destination.status": ["completed", None],
        },
        scenario="live-multifd",
    )
    classify(other, _live_multifd(), V72, "tcg")
    assert other.diverges


# ---- 10.0 mapped-ram + x-ignore-shared: the file cannot be loaded (docs/qemu-bugs.md "9.") --------------------

MAPPED = next(k for k in KNOWN_DIVERGENCES if k.name == "qemu-10.0-mapped-ram-ignore-shared-load-fails")
LOAD_EINVAL = "destination QEMU exited with status 1: load of migration failed: Invalid argument"


def _mapped_ram(caps: dict[str, bool], mode: str = "precopy", transport: str = "file") -> Scenario:
    return Scenario("sweep.m", migration=MigrationSpec(capabilities=caps, transport=transport, mode=mode))


def test_the_mapped_ram_load_failure_applies_by_configuration() -> None:
    both = {"mapped-ram": True, "x-ignore-shared": True}
    v10 = Version(10, 0, 2)
    assert known_divergence(_mapped_ram(both), v10, "tcg") is MAPPED
    assert known_divergence(_mapped_ram(both, mode="background-snapshot"), v10, "kvm") is MAPPED
    assert known_divergence(_mapped_ram({"mapped-ram": True}), v10, "tcg") is None
    assert known_divergence(_mapped_ram(both, transport="tcp"), v10, "tcg") is None
    assert known_divergence(_mapped_ram(both), V72, "tcg") is None


def test_the_mapped_ram_load_failure_signature() -> None:
    scenario = _mapped_ram({"mapped-ram": True, "x-ignore-shared": True})
    differences: dict[str, list[Any]] = {
        "verdict": ["completed", "failed"],
        "stage": [None, "migration"],
        "error": [None, LOAD_EINVAL],
        "destination.status": ["completed", None],
        "destination.runstate": ["running", None],
    }
    comparison = Comparison("sweep.m", "10.0.2", agree=False, differences=dict(differences))
    classify(comparison, scenario, Version(10, 0, 2), "tcg")
    assert comparison.known_bug == MAPPED.reason
    # EPERM (the background-snapshot race of docs/qemu-bugs.md "6.") is not this bug
    differences["error"] = [None, LOAD_EINVAL.replace("Invalid argument", "Operation not permitted")]
    other = Comparison("sweep.m", "10.0.2", agree=False, differences=differences)
    classify(other, scenario, Version(10, 0, 2), "tcg")
    assert other.diverges


VDAGENT_BUG = next(k for k in KNOWN_DIVERGENCES if k.name == "qemu-10.2-removed-vdagent-aborts-save")
VDAGENT_ADD = Step("qmp", command="chardev-add", arguments={"id": "vd0", "backend": {"type": "qemu-vdagent"}})
VDAGENT_REMOVE = Step("qmp", command="chardev-remove", arguments={"id": "vd0"})
V102 = Version(10, 2, 2)
VDAGENT_ABORT = (
    "source QEMU exited with status -6: ../src/qemu-10.2.2/migration/vmstate.c:473: vmstate_save_state_v: "
    "Assertion `first_elem || !n_elems || !size' failed."
)


def _vdagent(*steps: Step) -> Scenario:
    return Scenario("sweep.v", steps=steps)


def test_the_removed_vdagent_abort_applies_by_configuration() -> None:
    migrate = (Step("migrate"), Step("wait"))
    assert known_divergence(_vdagent(VDAGENT_ADD, VDAGENT_REMOVE, *migrate), V102, "tcg") is VDAGENT_BUG
    assert known_divergence("blocker-chardev-remove-unblocks", V102, "kvm") is VDAGENT_BUG
    assert known_divergence(_vdagent(VDAGENT_ADD, *migrate), V102, "tcg") is None  # still there: no bug
    assert known_divergence(_vdagent(VDAGENT_ADD, *migrate, VDAGENT_REMOVE), V102, "tcg") is None
    assert known_divergence(_vdagent(VDAGENT_ADD, VDAGENT_REMOVE, *migrate), Version(10, 0, 2), "tcg") is None


def test_the_removed_vdagent_abort_signature() -> None:
    scenario = _vdagent(VDAGENT_ADD, VDAGENT_REMOVE, Step("migrate"), Step("wait"))
    differences: dict[str, list[Any]] = {  # real 10.2.2, blocker-chardev-remove-unblocks
        "verdict": ["completed", "failed"],
        "stage": [None, "migration"],
        "error": [None, VDAGENT_ABORT],
        "source.status": ["completed", None],
        "source.runstate": ["postmigrate", None],
        "destination.status": ["completed", None],
        "destination.runstate": ["running", None],
    }
    comparison = Comparison("sweep.v", "10.2.2", agree=False, differences=dict(differences))
    classify(comparison, scenario, V102, "tcg")
    assert comparison.known_bug == VDAGENT_BUG.reason
    differences["error"] = [None, VDAGENT_ABORT.replace("status -6", "status -11")]  # another crash
    other = Comparison("sweep.v", "10.2.2", agree=False, differences=differences)
    classify(other, scenario, V102, "tcg")
    assert other.diverges


PRELAUNCH = next(k for k in KNOWN_DIVERGENCES if k.name == "qemu-bgsnap-from-prelaunch-aborts")
PRELAUNCH_FILE = next(k for k in KNOWN_DIVERGENCES if k.name == "qemu-bgsnap-from-prelaunch-aborts-file")
PRELAUNCH_ABORT = "source QEMU exited with status -6: invalid runstate transition: 'prelaunch' -> 'paused'"


def _bgsnap(transport: str, args: tuple[str, ...] = ("-S",), *steps: Step) -> Scenario:
    migration = MigrationSpec(mode="background-snapshot", transport=transport)
    return Scenario("sweep.b", source=VmSpec(args=args), migration=migration, steps=steps or None)


def test_the_prelaunch_snapshot_abort_applies_by_configuration() -> None:
    v10 = Version(10, 0, 2)
    assert known_divergence(_bgsnap("exec"), V72, "tcg") is PRELAUNCH
    assert known_divergence(_bgsnap("exec"), v10, "kvm") is PRELAUNCH
    assert known_divergence(_bgsnap("file"), v10, "tcg") is PRELAUNCH_FILE
    # 7.2 has no file: transport, so its refusal agrees: no entry there (else "no longer reproduces")
    assert known_divergence(_bgsnap("file"), V72, "tcg") is None
    assert known_divergence(_bgsnap("exec", ()), v10, "tcg") is None  # a running source
    assert known_divergence("core-bgsnap-prelaunch-file", V72, "tcg") is None


def test_the_prelaunch_snapshot_abort_signature() -> None:
    differences: dict[str, list[Any]] = {
        "verdict": ["completed", "failed"],
        "stage": [None, "migration"],
        "error": [None, PRELAUNCH_ABORT],
        "source.status": ["completed", None],
        "source.runstate": ["prelaunch", None],
        "destination.status": ["completed", "none"],
        "destination.runstate": ["prelaunch", "inmigrate"],
    }
    comparison = Comparison("sweep.b", "10.0.2", agree=False, differences=dict(differences))
    classify(comparison, _bgsnap("exec"), Version(10, 0, 2), "tcg")
    assert comparison.known_bug == PRELAUNCH.reason
    # another abort of the source is not this bug
    differences["error"] = [None, "source QEMU exited with status -6: something else"]
    other = Comparison("sweep.b", "10.0.2", agree=False, differences=differences)
    classify(other, _bgsnap("exec"), Version(10, 0, 2), "tcg")
    assert other.diverges


RETRY = next(k for k in KNOWN_DIVERGENCES if k.name == "qemu-7.2-tcg-precopy-loses-dirty-pages-after-cancel")


def test_an_intermittent_bug_that_did_not_show_is_a_plain_agreement() -> None:
    assert RETRY.intermittent and not ENTRY.intermittent
    agreeing = Comparison("guest-cancel-then-retry", "7.2.22", agree=True, differences={})
    classify(agreeing, "guest-cancel-then-retry", V72, "tcg")
    assert agreeing.known_bug_gone is None and agreeing.known_bug is None
    assert RETRY.problems(agreeing) == []


def test_an_intermittent_bug_that_showed_must_match_its_signature() -> None:
    dead = {"guest": [GUEST_OK, {"alive": False, "pages_checked": 0, "bad_pages": 0}]}
    shown = Comparison("guest-cancel-then-retry", "7.2.22", agree=False, differences=dict(dead))
    classify(shown, "guest-cancel-then-retry", V72, "tcg")
    assert shown.known_bug == RETRY.reason
    other = Comparison(
        "guest-cancel-then-retry", "7.2.22", agree=False, differences={"verdict": ["completed", "failed"]}
    )
    classify(other, "guest-cancel-then-retry", V72, "tcg")
    assert other.diverges and other.known_bug is None
