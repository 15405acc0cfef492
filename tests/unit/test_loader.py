"""The scenario loader: what it accepts, and that every rejection names the file, the key and the choices."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.loader import ScenarioError, known_capabilities, load_scenario, load_scenarios
from reference_impl.scenario import ACTIONS, PERSONALITIES, SIDES

SUITE = Path(__file__).resolve().parents[1] / "conformance" / "scenarios"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(tmp_path: Path, text: str, name: str = "s.toml") -> ScenarioError:
    path = write(tmp_path, name, text)
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert str(path) in str(info.value)
    return info.value


def test_id_defaults_to_file_name_and_defaults_apply(tmp_path: Path) -> None:
    s = load_scenario(write(tmp_path, "plain-one.toml", "[migration]\n"))
    assert s.id == "plain-one"
    assert s.source.machine == "q35" and s.source.memory == "256M" and s.source.accel == "auto"
    assert s.migration is not None and s.migration.transport == "tcp" and s.migration.mode == "precopy"
    assert [step.action for step in s.expanded_steps] == ["migrate", "wait"]


def test_side_tables_override_vm_key_by_key_and_replace_devices(tmp_path: Path) -> None:
    text = """
[vm]
memory = "512M"
accel = "tcg"
args = ["-device", "nvme,serial=n0"]
[[vm.device]]
driver = "virtio-net-pci"
id = "net0"
[source]
memory = "1G"
[[destination.device]]
driver = "vfio-pci"
id = "vfio0"
personality = "no-p2p"
properties = { enable-migration = true, x-device-dirty-page-tracking = "off" }
"""
    s = load_scenario(write(tmp_path, "over.toml", text))
    assert s.source.memory == "1G" and s.destination.memory == "512M"
    assert s.source.accel == s.destination.accel == "tcg"
    assert s.source.args == s.destination.args == ("-device", "nvme,serial=n0")
    assert [d.id for d in s.source.devices] == ["net0"]
    assert [d.id for d in s.destination.devices] == ["vfio0"]
    vfio = s.destination.devices[0]
    assert vfio.personality == "no-p2p"
    assert dict(vfio.properties) == {"enable-migration": "on", "x-device-dirty-page-tracking": "off"}
    assert vfio.device_arg() == "vfio-pci,id=vfio0,enable-migration=on,x-device-dirty-page-tracking=off"


def test_explicit_steps_replace_the_migration_expansion(tmp_path: Path) -> None:
    text = """
[migration]
capabilities = { postcopy-ram = true }
[[step]]
action = "set-capabilities"
side = "both"
capabilities = { events = true }
[[step]]
action = "qmp"
command = "query-status"
arguments = { a = [1, 2] }
[[step]]
action = "snapshot-save"
tag = "t1"
"""
    s = load_scenario(write(tmp_path, "steps.toml", text))
    assert [(st.action, st.side) for st in s.expanded_steps] == [
        ("set-capabilities", "both"),
        ("qmp", "source"),
        ("snapshot-save", "source"),
    ]
    assert s.steps[1].command == "query-status" and dict(s.steps[1].arguments) == {"a": [1, 2]}
    assert s.steps[2].tag == "t1"


@pytest.mark.parametrize(
    ("text", "key", "needle"),
    [
        ("idd = 'x'\n", "idd", "allowed: id, description"),
        ("[vm]\nmemroy = '1G'\n", "vm.memroy", "allowed: machine, memory"),
        ("[vm]\nmemory = 256\n", "vm.memory", "expected a string, got an integer"),
        ("[vm]\nonly-migratable = 'yes'\n", "vm.only-migratable", "expected true or false"),
        ("[vm]\naccel = 'hvf'\n", "vm.accel", "allowed: auto, kvm, tcg"),
        ("[vm]\nargs = '-S'\n", "vm.args", "expected an array of strings"),
        ("[vm]\nargs = ['-S', 3]\n", "vm.args[1]", "expected a string"),
        ("[migration]\ntransport = 'rdma'\n", "migration.transport", "allowed: tcp, unix, file, exec"),
        ("[migration]\nmode = 'colo'\n", "migration.mode", "allowed: precopy, postcopy, background-snapshot"),
        ("[migration]\ncapabilities = { x_ram = true }\n", "migration.capabilities.x_ram", "postcopy-ram"),
        ("[migration]\ncapabilities = { multifd = 'on' }\n", "migration.capabilities.multifd", "true or false"),
        ("requires = ['gpu']\n", "requires[0]", "allowed: kvm, uffd, uffd-wp, vfio, guest"),
        ("id = 'Bad Id'\n", "id", "[a-z0-9._-]+"),
        ("[[vm.device]]\nid = 'x'\n", "vm.device[0].driver", "missing required key"),
        ("[[vm.device]]\ndriver = 'e1000'\npersonality = 'no-p2p'\n", "vm.device[0].personality", "only vfio-pci"),
        ("[[vm.device]]\ndriver = 'vfio-pci'\npersonality = 'fast'\n", "vm.device[0].personality", "no-migration"),
        ("[[vm.device]]\ndriver = 'a'\nid = 'd'\n[[vm.device]]\ndriver = 'b'\nid = 'd'\n", "vm.device", "duplicate"),
        ("[[step]]\nside = 'source'\n", "step[0].action", "missing required key"),
        ("[[step]]\naction = 'wait'\n[[step]]\naction = 'wait'\n[[step]]\naction = 'go'\n", "step[2].action", "cancel"),
        ("[[step]]\naction = 'stop'\nside = 'left'\n", "step[0].side", "allowed: source, destination, both"),
        ("[[step]]\naction = 'migrate'\ncapabilities = {}\n", "step[0].capabilities", "not a key of action 'migrate'"),
        ("[[step]]\naction = 'qmp'\n", "step[0].command", "missing required key"),
        ("[[step]]\naction = 'migrate'\ntransport = 'fd'\n", "step[0].transport", "allowed: tcp, unix"),
        ("step = 'migrate'\n", "step", "expected an array of tables"),
        ("[source]\ndevice = { driver = 'x' }\n", "source.device", "expected an array of tables"),
    ],
)
def test_rejections_name_the_key_and_the_allowed_values(tmp_path: Path, text: str, key: str, needle: str) -> None:
    err = error_of(tmp_path, text)
    assert err.key == key
    assert needle in str(err)


def test_unknown_action_lists_every_action(tmp_path: Path) -> None:
    err = error_of(tmp_path, "[[step]]\naction = 'pause'\n")
    assert err.allowed == ACTIONS
    assert SIDES == ("source", "destination", "both")
    err = error_of(tmp_path, "[[vm.device]]\ndriver = 'vfio-pci'\npersonality = 'x'\n")
    assert err.allowed == PERSONALITIES


def test_unknown_capability_lists_the_known_ones(tmp_path: Path) -> None:
    err = error_of(tmp_path, "[[step]]\naction = 'set-capabilities'\ncapabilities = { postcopy = true }\n")
    assert err.key == "step[0].capabilities.postcopy"
    assert err.allowed is not None and "postcopy-ram" in err.allowed and "mapped-ram" in err.allowed
    assert {"background-snapshot", "switchover-ack", "compress", "block"} <= set(known_capabilities())


def test_bad_file_name_as_default_id(tmp_path: Path) -> None:
    err = error_of(tmp_path, "", name="Has Space.toml")
    assert err.key is not None and err.key.startswith("id")


def test_invalid_toml_and_missing_files(tmp_path: Path) -> None:
    err = error_of(tmp_path, "[vm\n")
    assert "not valid TOML" in str(err)
    with pytest.raises(ScenarioError, match="no such file or folder"):
        load_scenarios([tmp_path / "absent"])


def test_folder_loads_sorted_and_duplicate_ids_are_errors(tmp_path: Path) -> None:
    write(tmp_path, "b.toml", "[migration]\n")
    write(tmp_path, "a.toml", "[migration]\n")
    write(tmp_path, "notes.txt", "not a scenario")
    assert [s.id for s in load_scenarios([tmp_path])] == ["a", "b"]
    assert [s.id for s in load_scenarios([tmp_path, tmp_path / "a.toml"])] == ["a", "b"]
    write(tmp_path, "c.toml", "id = 'a'\n")
    with pytest.raises(ScenarioError) as info:
        load_scenarios([tmp_path])
    assert "duplicate scenario id 'a'" in str(info.value) and "a.toml" in str(info.value)
    assert str(tmp_path / "c.toml") in str(info.value)


def test_bundled_examples_load() -> None:
    ids = {s.id for s in load_scenarios([SUITE])}
    assert {"example-precopy-tcp", "example-postcopy-multifd", "example-steps-bg-snapshot"} <= ids
