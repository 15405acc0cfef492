"""harness.features: what a scenario needs of a QEMU build (derived from the scenario itself) and which need a
binary lacks. Pure logic: the offered sets are written here, the real probe is tests/qemu/test_features.py."""

from __future__ import annotations

from pathlib import Path

from contract.scenario import DeviceSpec, Scenario, Step, VmSpec
from contract.versions import Version
from harness.features import Need, Offered, lacking, scenario_needs
from harness.features.needs import split_options
from harness.features.offered import parse_format_help, parse_multifd_compression, parse_netdev_help
from harness.loader import load_scenario

V72 = Version(7, 2, 22)
V102 = Version(10, 2, 2)


def _names(scenario: Scenario) -> set[tuple[str, str]]:
    return {(need.kind, need.name) for need in scenario_needs(scenario)}


def _qmp(command: str, **arguments: object) -> Step:
    return Step("qmp", command=command, arguments=arguments)


def test_args_give_devices_objects_chardevs_netdevs_block_drivers_and_accelerators() -> None:
    args = (
        "-chardev", "qemu-vdagent,id=vd0,name=vdagent", "-chardev", "tty,id=t0,path=/dev/null",
        "-object", "memory-backend-ram,id=hb0,size=1M,share=on", "-device", "ivshmem-plain,memdev=hb0",
        "-device", "driver=nvme,serial=n0", "-netdev", "user,id=n0", "-nic", "none",
        "-blockdev", "driver=qcow2,node-name=d0,file.driver=file,file.filename=/x",
        "-drive", "file=fat:rw:/media,if=none", "-accel", "kvm", "-machine", "q35,accel=tcg",
        "-name", "-device",  # a value, not an option
    )  # fmt: skip
    scenario = Scenario("s", source=VmSpec(args=args))
    assert _names(scenario) == {
        ("chardev", "qemu-vdagent"), ("chardev", "serial"), ("object", "memory-backend-ram"),
        ("device", "ivshmem-plain"), ("device", "nvme"), ("netdev", "user"), ("block-driver", "qcow2"),
        ("block-driver", "file"), ("block-driver", "vvfat"), ("accel", "kvm"), ("accel", "tcg"),
        ("transport", "socket"),
    }  # fmt: skip


def test_json_blockdev_and_structured_devices_and_explicit_accel() -> None:
    destination = VmSpec(
        accel="kvm",
        args=("-blockdev", '{"driver": "raw", "file": {"driver": "null-co"}}'),
        devices=(DeviceSpec("usb-redir", id="r0"),),
    )
    needs = scenario_needs(Scenario("s", destination=destination))
    assert ("accel", "kvm", "[destination] accel") in {(n.kind, n.name, n.where) for n in needs}
    assert {("device", "usb-redir"), ("block-driver", "raw"), ("block-driver", "null-co")} <= _names(
        Scenario("s", destination=destination)
    )


def test_qmp_steps_and_migrate_transports() -> None:
    steps = (
        _qmp("chardev-add", id="c0", backend={"type": "spicevmc", "data": {"type": "vdagent"}}),
        _qmp("device_add", driver="virtio-rng-pci", id="rng0"),
        _qmp("object-add", **{"qom-type": "cryptodev-backend-builtin", "id": "cr0"}),
        _qmp("netdev_add", type="user", id="n0"),
        _qmp("blockdev-add", driver="vvfat", **{"node-name": "vv0", "dir": "/media"}),
        _qmp("migrate", uri="rdma:127.0.0.1:4444"),
        _qmp("migrate-incoming", channels=[{"channel-type": "main", "addr": {"transport": "file"}}]),
        Step("migrate", transport="exec"),
    )
    needs = scenario_needs(Scenario("s", steps=steps))
    assert {(n.kind, n.name) for n in needs} == {
        ("chardev", "spicevmc"), ("device", "virtio-rng-pci"), ("object", "cryptodev-backend-builtin"),
        ("netdev", "user"), ("block-driver", "vvfat"), ("transport", "rdma"), ("transport", "file"),
        ("transport", "exec"),
    }  # fmt: skip
    assert needs[0].where == "step[0] chardev-add"


def test_each_need_once_first_place_first() -> None:
    spec = VmSpec(args=("-device", "nvme,serial=a", "-device", "nvme,serial=b"))
    needs = [n for n in scenario_needs(Scenario("s", source=spec, destination=spec)) if n.kind == "device"]
    assert needs == [Need("device", "nvme", "[source] args -device")]


def test_option_values_keep_escaped_commas() -> None:
    assert split_options("file,path=/a,,b,append") == ("file", {"path": "/a,b", "append": "on"})
    assert split_options("driver=nvme,serial=x") == ("", {"driver": "nvme", "serial": "x"})


def test_the_bundled_vdagent_scenario_needs_the_chardev_from_its_step() -> None:
    path = Path(__file__).resolve().parents[2] / "harness" / "suite" / "blocker-chardev-add-idle.toml"
    needs = scenario_needs(load_scenario(path))
    assert Need("chardev", "qemu-vdagent", "step[0] chardev-add") in needs


OFFERED = Offered(
    types=frozenset({"nvme", "chardev-null", "kvm-accel", "tcg-accel", "virtio-net-pci", "memory-backend-ram"}),
    netdevs=frozenset({"socket", "tap"}),
    block_drivers=None,
)


def test_lacking_names_the_first_missing_feature_with_the_reason() -> None:
    args = ("-chardev", "null,id=c0", "-chardev", "spicevmc,id=s0,name=vdagent", "-netdev", "user,id=n0")
    missing = lacking(scenario_needs(Scenario("s", source=VmSpec(args=args))), OFFERED, V102)
    assert missing is not None
    assert missing.missing_text() == "this QEMU has no spicevmc chardev (needed by [source] args -chardev)"


def test_present_aliases_and_unknown_listings_are_not_lacking() -> None:
    args = ("-device", "virtio-net,netdev=n0", "-netdev", "tap,id=n0", "-blockdev", "driver=vvfat,node-name=v")
    assert lacking(scenario_needs(Scenario("s", source=VmSpec(args=args))), OFFERED, V102) is None


def test_rdma_is_offered_only_with_its_channel_type() -> None:
    needs = scenario_needs(Scenario("s", steps=(_qmp("migrate", uri="rdma:127.0.0.1:1"),)))
    assert lacking(needs, OFFERED, V102) == Need("transport", "rdma", "step[0] migrate")
    with_rdma = Offered(types=OFFERED.types | {"qio-channel-rdma"})
    assert lacking(needs, with_rdma, V102) is None


def test_a_device_the_model_knows_the_version_lacks_is_compared_not_skipped() -> None:
    # reference_impl.catalog: ufs since 8.1; the model predicts 7.2's refusal itself.
    needs = scenario_needs(Scenario("s", source=VmSpec(args=("-device", "ufs"))))
    assert lacking(needs, OFFERED, V72) is None
    assert lacking(needs, OFFERED, V102) == Need("device", "ufs", "[source] args -device")


def test_help_listings_parse() -> None:
    netdevs = "Available netdev backend types:\nsocket\nstream\npasst\n"
    assert parse_netdev_help(netdevs) == frozenset({"socket", "stream", "passt"})
    formats = "Supported formats: file qcow2 vvfat\nSupported formats (read-only): file qcow2 vvfat\n"
    assert parse_format_help(formats) == frozenset({"file", "qcow2", "vvfat"})
    assert parse_netdev_help("qemu: crashed") is None and parse_format_help("") is None


def test_a_name_no_qemu_could_register_is_compared_not_skipped() -> None:
    # tests/qemu/test_scenario_semantics.py: a comma in a driver reaches QEMU as one name, which QEMU refuses.
    evil = Scenario("s", source=VmSpec(devices=(DeviceSpec("virtio-net-pci,id=evil"),)))
    assert lacking(scenario_needs(evil), OFFERED, V102) is None
    missing = Scenario("s", source=VmSpec(devices=(DeviceSpec("no-such-device"),)))
    assert lacking(scenario_needs(missing), OFFERED, V102) == Need("device", "no-such-device", "[source] device[0]")


def test_multifd_compression_methods_need_their_library() -> None:
    # The 10.2.2 build (--without-default-features) has no zstd: "Parameter 'multifd-compression' does not
    # accept value 'zstd'" is the build's gap, not a divergence (docs/real-qemu-facts.md, qmp-corners).
    stepped = Scenario("s", steps=(Step("set-parameters", parameters={"multifd-compression": "zstd"}),))
    raw = Scenario("r", steps=(_qmp("migrate-set-parameters", **{"multifd-compression": "zstd"}),))
    plain = Scenario("p", steps=(Step("set-parameters", parameters={"multifd-compression": "zlib"}),))
    assert _names(stepped) == _names(raw) == {("multifd-compression", "zstd")}
    assert _names(plain) == set()
    without = Offered(types=frozenset(), multifd_compression=frozenset({"none", "zlib"}))
    missing = lacking(scenario_needs(stepped), without, V102)
    assert missing is not None
    assert (
        missing.missing_text() == "this QEMU has no zstd multifd compression method (needed by step[0] set-parameters)"
    )
    # qpl is a refusal the model predicts for Debian's builds: compared, not skipped; an unread schema judges nothing.
    qpl = Scenario("q", steps=(Step("set-parameters", parameters={"multifd-compression": "qpl"}),))
    assert lacking(scenario_needs(qpl), without, V102) is None
    assert lacking(scenario_needs(stepped), Offered(types=frozenset()), V102) is None


def test_multifd_compression_values_from_the_qmp_schema() -> None:
    schema = [
        {"name": "migrate-set-parameters", "meta-type": "command", "arg-type": "17"},
        {"name": "17", "meta-type": "object", "members": [{"name": "multifd-compression", "type": "42"}]},
        {"name": "42", "meta-type": "enum", "values": ["none", "zlib", "zstd"]},
    ]
    assert parse_multifd_compression(schema) == frozenset({"none", "zlib", "zstd"})
    assert parse_multifd_compression(schema[:2]) is None
    assert parse_multifd_compression({"not": "a list"}) is None
