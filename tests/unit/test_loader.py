"""The scenario loader: what it accepts, and that every rejection names the file, the key and the choices."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from contract.host import HostFacts
from contract.scenario import ACTIONS, PERSONALITIES, SIDES, DeviceSpec
from harness.host_commands import host_commands
from harness.loader import load_scenario, load_scenarios
from harness.scenario_error import ScenarioError
from harness.suite import SUITE_DIR
from harness.toml_reader import known_capabilities
from reference_impl import predict

SUITE = SUITE_DIR


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


# ---- what a scenario without steps means -----------------------------------------------------------------


def test_neither_migration_nor_steps_runs_the_default_migration(tmp_path: Path) -> None:
    """A scenario that says nothing migrates (precopy over tcp, then wait): it cannot agree having tested nothing."""
    s = load_scenario(write(tmp_path, "bare.toml", "[vm]\nargs = ['-device', 'nvme,serial=n0']\n"))
    assert s.migration is None and s.steps is None
    assert [(st.action, st.side, st.transport) for st in s.expanded_steps] == [
        ("migrate", "source", "tcp"),
        ("wait", "source", None),
    ]
    # The model (same expansion) now sees the unmigratable device instead of "completed".
    outcome = predict(s, "10.0", HostFacts())
    assert (outcome.verdict, outcome.stage) == ("refused", "migrate")
    assert outcome.error == "State blocked by non-migratable device '0000:00:01.0/nvme'"


@pytest.mark.parametrize("migration", ["", "[migration]\ntransport = 'unix'\n"])
def test_an_explicit_empty_step_array_runs_no_step(tmp_path: Path, migration: str) -> None:
    s = load_scenario(write(tmp_path, "startup.toml", f"step = []\n{migration}"))
    assert s.steps == () and s.expanded_steps == ()
    assert predict(s, "10.0", HostFacts()).verdict == "completed"


# ---- hostile input ---------------------------------------------------------------------------------------


def test_random_bytes_invalid_utf8_and_huge_files_are_scenario_errors(tmp_path: Path) -> None:
    noise = random.Random(1234).randbytes(4096)
    for name, data, needle in (
        ("noise.toml", noise, "not UTF-8"),
        ("latin.toml", b'id = "caf\xe9"\n', "not UTF-8 text (invalid byte at offset 9)"),
        ("big.toml", b"# " + b"x" * (1024 * 1024) + b"\n", "larger than 1024 KiB"),
        ("nul.toml", b"id = 'a'\x00\n", "not valid TOML"),
    ):
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(ScenarioError) as info:
            load_scenario(path)
        assert str(path) in str(info.value) and needle in str(info.value)


@pytest.mark.parametrize("depth", [40, 100_000])
def test_deep_nesting_is_a_scenario_error(tmp_path: Path, depth: int) -> None:
    text = "[[step]]\naction = 'qmp'\ncommand = 'x'\narguments = { a = " + "[" * depth + "]" * depth + " }\n"
    err = error_of(tmp_path, text)
    assert "nested more than 32 arrays or tables deep" in str(err)


@pytest.mark.parametrize(
    ("text", "key", "needle"),
    [
        ("[migration]\nparameters = { max-bandwidth = nan }\n", "migration.parameters.max-bandwidth", "nan"),
        ("[[step]]\naction = 'qmp'\ncommand = 'x'\narguments = { a = [1, -inf] }\n", "step[0].arguments.a[1]",
         "JSON has no NaN or Infinity"),
        ("[[vm.device]]\ndriver = 'e1000'\nproperties = { x = inf }\n", "vm.device[0].properties.x", "Infinity"),
        ("[[step]]\naction = 'qmp'\ncommand = 'x'\narguments = { n = { m = 18446744073709551616 } }\n",
         "step[0].arguments.n.m", "allowed -9223372036854775808 .. 18446744073709551615"),
        ("[[step]]\naction = 'qmp'\ncommand = 'x'\narguments = { n = -9223372036854775809 }\n", "step[0].arguments.n",
         "a QMP integer (int64 or uint64)"),
        ("[migration]\nparameters = { max-bandwidth = 18446744073709551616 }\n", "migration.parameters.max-bandwidth",
         "QAPI type size: allowed -9223372036854775808 .. 18446744073709551615"),
        ("[migration]\nparameters = { multifd-channels = -1 }\n", "migration.parameters.multifd-channels",
         "QAPI type uint8: allowed 0 .. 255"),
        ("[[step]]\naction = 'set-parameters'\nparameters = { multifd-channels = 256 }\n",
         "step[0].parameters.multifd-channels", "QAPI type uint8: allowed 0 .. 255"),
        ("[migration]\nparameters = { x-checkpoint-delay = 4294967296 }\n", "migration.parameters.x-checkpoint-delay",
         "uint32"),
        ("[migration]\nparameters = { unknown-one = 18446744073709551616 }\n", "migration.parameters.unknown-one",
         "int64 or uint64"),
        ("[guest]\ndirty-rate = 9223372036854775808\n", "guest.dirty-rate", "an integer 0 .. 9223372036854775807"),
    ],
)  # fmt: skip
def test_numbers_qmp_cannot_carry_are_refused(tmp_path: Path, text: str, key: str, needle: str) -> None:
    err = error_of(tmp_path, text)
    assert err.key == key
    assert needle in str(err)


def test_numbers_at_the_edges_of_their_qapi_type_load(tmp_path: Path) -> None:
    text = """[migration.parameters]
max-bandwidth = -1
xbzrle-cache-size = 18446744073709551615
downtime-limit = -1
multifd-channels = 255
cpu-throttle-initial = 0
[[step]]
action = "qmp"
command = "x"
arguments = { a = -9223372036854775808, b = 1.5 }
"""
    s = load_scenario(write(tmp_path, "edges.toml", text))
    # uint64 and size take negatives (qobject_input_type_uint64): QEMU accepts max-bandwidth = -1
    assert s.migration is not None and s.migration.parameters["max-bandwidth"] == -1
    assert s.steps is not None and s.steps[0].arguments == {"a": -(2**63), "b": 1.5}


@pytest.mark.parametrize("memory", ["lots", "", "64MiB", "1.5B", "256M,maxmem=1G", "-1G", "0x100M", " 64M"])
def test_memory_must_be_a_size_qemu_reads(tmp_path: Path, memory: str) -> None:
    err = error_of(tmp_path, f"[source]\nmemory = {memory!r}\n")
    assert err.key == "source.memory"
    assert 'a number with an optional B, K, M, G, T, P or E suffix, e.g. "256M"' in str(err)


@pytest.mark.parametrize("memory", ["64M", "65536K", "1G", "1.5G", "512", "2g", "1073741824B", "1t"])
def test_memory_sizes_qemu_reads_load(tmp_path: Path, memory: str) -> None:
    assert load_scenario(write(tmp_path, "m.toml", f"[vm]\nmemory = {memory!r}\n")).source.memory == memory


@pytest.mark.parametrize(
    ("action", "side", "allowed"),
    [
        ("migrate", "both", "allowed: source, destination)"),
        ("start-postcopy", "both", "allowed: source)"),
        ("cancel", "destination", "allowed: source)"),
        ("wait", "both", "allowed: source)"),
        ("migrate-continue", "destination", "allowed: source)"),
    ],
)
def test_sides_an_action_cannot_act_on_are_refused(tmp_path: Path, action: str, side: str, allowed: str) -> None:
    err = error_of(tmp_path, f"[[step]]\naction = {action!r}\nside = {side!r}\n")
    assert err.key == "step[0].side" and f"action {action!r} does not act on side {side!r}" in str(err)
    assert allowed in str(err)


def test_sides_that_mean_something_load(tmp_path: Path) -> None:
    text = """
[[step]]
action = "migrate"
side = "destination"
[[step]]
action = "set-capabilities"
side = "both"
[[step]]
action = "qmp"
side = "both"
command = "query-status"
[[step]]
action = "cont"
side = "destination"
"""
    s = load_scenario(write(tmp_path, "sides.toml", text))
    assert s.steps is not None and [st.side for st in s.steps] == ["destination", "both", "both", "destination"]


@pytest.mark.parametrize("name", ["a,b", "x=y", ""])
def test_property_names_qemu_cannot_parse_are_refused(tmp_path: Path, name: str) -> None:
    err = error_of(tmp_path, f"[[vm.device]]\ndriver = 'e1000'\nproperties = {{ {name!r} = 'v' }}\n")
    assert err.key == f"vm.device[0].properties.{name}" and "cannot contain ',' or '='" in str(err)


# ---- injection -------------------------------------------------------------------------------------------


def test_device_values_cannot_add_options() -> None:
    """QEMU's option parser reads ',,' as one comma inside a value (get_opt_value)."""
    device = DeviceSpec("virtio-net-pci", id="n0,bus=evil", properties={"mac": "52:54:00:12:34:56,id=evil"})
    assert device.device_arg() == "virtio-net-pci,id=n0,,bus=evil,mac=52:54:00:12:34:56,,id=evil"
    assert DeviceSpec("fsl,imx6").device_arg({"sysfsdev": "/a,b"}) == "fsl,,imx6,sysfsdev=/a,,b"
    # A driver holding '=' would be read as KEY=VALUE in the implied first position: it is named instead.
    assert DeviceSpec("id=evil").device_arg() == "driver=id=evil"
    with pytest.raises(ValueError, match="neither ',' nor '='"):
        DeviceSpec("e1000", properties={"a,b": "c"}).device_arg()


def test_loaded_device_properties_are_escaped(tmp_path: Path) -> None:
    text = "[[vm.device]]\ndriver = 'virtio-net-pci'\nid = 'net0'\nproperties = { mac = '52:54:00:12:34:56,id=evil' }\n"
    s = load_scenario(write(tmp_path, "mac.toml", text))
    assert s.source.devices[0].device_arg() == "virtio-net-pci,id=net0,mac=52:54:00:12:34:56,,id=evil"


# ---- --no-exec -------------------------------------------------------------------------------------------

HOST_COMMANDS = [
    ("[migration]\ntransport = 'exec'\n", "migration.transport", "transport exec"),
    ("[migration]\nmode = 'background-snapshot'\ntransport = 'exec'\n", "migration.transport", "transport exec"),
    ("[[step]]\naction = 'migrate'\ntransport = 'exec'\n", "step[0].transport", "transport exec"),
    ("[[step]]\naction = 'qmp'\ncommand = 'migrate'\narguments = { uri = 'exec:touch /tmp/x' }\n",
     "step[0].arguments.uri", "exec: URI"),
    ("[[step]]\naction = 'qmp'\ncommand = 'migrate-incoming'\nside = 'destination'\n"
     "arguments = { channels = [{ channel-type = 'main', addr = { transport = 'exec', args = ['sh'] } }] }\n",
     "step[0].arguments.channels[0].addr.transport", "transport exec"),
    ("[[step]]\naction = 'qmp'\ncommand = 'human-monitor-command'\narguments = { command-line = 'info status' }\n",
     "step[0].command", "HMP"),
    ("[[step]]\naction = 'qmp'\ncommand = 'netdev_add'\narguments = { type = 'tap', id = 'n' }\n",
     "step[0].arguments.type", "tap or bridge"),
    ("[[step]]\naction = 'set-parameters'\nparameters = { cpr-exec-command = 'x' }\n",
     "step[0].parameters.cpr-exec-command", "cpr-exec-command"),
    ("[vm]\nargs = ['-incoming', 'exec:cat /tmp/f']\n", "source.args[1]", "exec: URI"),
    ("[destination]\nargs = ['-netdev', 'tap,id=n0']\n", "destination.args[1]", "runs a host program"),
    ("[vm]\nargs = ['-netdev', 'user,id=n0,guestfwd=tcp:10.0.2.1:1-cmd:sh']\n", "source.args[1]", "host program"),
    ("[vm]\nargs = ['--nic', 'type=bridge']\n", "source.args[1]", "host program"),
    ("[vm]\nargs = ['-netdev', '{\"type\": \"tap\", \"id\": \"n0\"}']\n", "source.args[1]", "host program"),
    ("[vm]\nargs = ['-plugin', 'libfoo.so']\n", "source.args[0]", "shared library"),
    ("[vm]\nargs = ['-readconfig', 'q.cfg']\n", "source.args[0]", "readconfig"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "key", "needle"), HOST_COMMANDS)
def test_no_exec_refuses_scenarios_that_run_host_commands(tmp_path: Path, text: str, key: str, needle: str) -> None:
    path = write(tmp_path, "cmd.toml", text)
    load_scenario(path)  # without --no-exec a scenario file is trusted code
    with pytest.raises(ScenarioError) as info:
        load_scenario(path, no_exec=True)
    err = info.value
    assert err.path == str(path) and err.key == key
    assert needle in str(err) and "refused by --no-exec" in str(err)


def test_no_exec_accepts_scenarios_without_host_commands(tmp_path: Path) -> None:
    text = """
[vm]
args = ["-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0"]
[migration]
transport = "file"
[[step]]
action = "qmp"
command = "migrate"
arguments = { uri = "tcp:127.0.0.1:1" }
"""
    assert load_scenario(write(tmp_path, "clean.toml", text), no_exec=True).id == "clean"
    clean = [s for s in load_scenarios([SUITE]) if not host_commands(s)]
    assert len(clean) > 150  # the bundled suite is mostly host-command free
