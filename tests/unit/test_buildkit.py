"""The build kit's pure logic: cache keys, the store's lock and atomic publication, remembered answers, the
command runner's errors, apt's answers parsed, and the vmlinux taken out of a kernel image.

Why these matter: a key that changes without its inputs rebuilds the guest image or the lab for nothing (and
one that does not change with them reuses a wrong build); a store that lets two builders in, or shows a half
built entry, hands QEMU a broken kernel. Real commands (sh, gzip) run where a command is the subject.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import json
from pathlib import Path

import pytest

from harness import errors
from harness.buildkit import Apt, BuildError, InputDigest, Runner, Store, extract_vmlinux, remembered, sha256_file
from harness.buildkit.apt import deb_glob
from harness.errors import MigconformError
from harness.guest.image import GuestImageError
from harness.vfio_lab.build import LabBuildError


def test_input_digest_hashes_named_lines_in_order(tmp_path: Path) -> None:
    """The key is the SHA-256 of ``name=value`` lines: the guest image's key before the kit, so its builds stay
    valid."""
    (tmp_path / "a.deb").write_bytes(b"package")
    expected = hashlib.sha256(f"deb={hashlib.sha256(b'package').hexdigest()}\ncc=gcc 12\n".encode()).hexdigest()
    key = InputDigest().file("deb", tmp_path / "a.deb").text("cc", "gcc 12").key()
    assert key == expected[:16]
    assert InputDigest().text("cc", "gcc 12").file("deb", tmp_path / "a.deb").key() != key
    assert InputDigest().text("c", "cgcc 12").key() != InputDigest().text("cc", "gcc 12").key()
    assert len(InputDigest().key(64)) == 64


def test_input_digest_of_a_folder_follows_names_and_contents(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "Kbuild").write_text("obj-m := mtty.o\n")
    (tmp_path / "init").write_text("#!/bin/sh\n")
    first = InputDigest().folder("image", tmp_path).key()
    assert InputDigest().folder("image", tmp_path).key() == first
    (tmp_path / "init").write_text("#!/bin/sh\necho\n")
    changed = InputDigest().folder("image", tmp_path).key()
    assert changed != first
    (tmp_path / "init").rename(tmp_path / "init2")
    assert InputDigest().folder("image", tmp_path).key() != changed
    assert sha256_file(tmp_path / "init2") == hashlib.sha256(b"#!/bin/sh\necho\n").hexdigest()


def test_store_lock_keeps_a_second_holder_out(tmp_path: Path) -> None:
    store = Store(tmp_path / "guest")
    with store.locked(), store.lock_file.open("w") as other, pytest.raises(BlockingIOError):
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with store.lock_file.open("w") as other:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released when the block ended


def test_store_publishes_a_whole_entry_or_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path)
    assert store.find("k1") is None
    with store.publishing("k1") as staging:
        (staging / "vmlinuz").write_bytes(b"kernel")
        assert store.find("k1") is None  # not visible while it is being built
        (staging / "manifest.json").write_text("{}")
    assert store.find("k1") == tmp_path / "k1"
    assert (tmp_path / "k1" / "vmlinuz").read_bytes() == b"kernel"
    with pytest.raises(RuntimeError, match="gcc failed"), store.publishing("k2") as staging:
        (staging / "half").write_text("")
        raise RuntimeError("gcc failed")
    assert not (tmp_path / "k2").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k1"]  # no staging folder left behind


def test_store_replaces_an_unfinished_entry(tmp_path: Path) -> None:
    store = Store(tmp_path)
    (tmp_path / "k" / "leftover").mkdir(parents=True)  # killed before its marker was written
    assert store.find("k") is None
    with store.publishing("k") as staging:
        (staging / ".complete").write_text("6.12\n")
    assert store.find("k", ".complete") is not None
    assert not (tmp_path / "k" / "leftover").exists()


def test_remembered_reuses_an_answer_until_its_key_changes(tmp_path: Path) -> None:
    memo = tmp_path / "resolved.json"
    calls: list[int] = []

    def compute() -> dict[str, object]:
        calls.append(1)
        return {"kernel": ["linux-image", str(len(calls))]}

    assert remembered(memo, "lists@1", compute) == {"kernel": ["linux-image", "1"]}
    assert remembered(memo, "lists@1", compute) == {"kernel": ["linux-image", "1"]}
    assert json.loads(memo.read_text()) == {"key": "lists@1", "kernel": ["linux-image", "1"]}
    assert remembered(memo, "lists@2", compute) == {"kernel": ["linux-image", "2"]}
    memo.write_text("{not json")
    assert remembered(memo, "lists@2", compute) == {"kernel": ["linux-image", "3"]}


def test_build_errors_are_under_the_one_build_error() -> None:
    """migconform certify reports a failed lab build by catching harness.errors.BuildError; none is a RuntimeError
    (one hierarchy under MigconformError, harness/errors.py)."""
    for error in (BuildError, GuestImageError, LabBuildError):
        assert issubclass(error, errors.BuildError) and issubclass(error, MigconformError)
        assert not issubclass(error, RuntimeError)


def test_runner_raises_the_recipes_error_with_argv_status_and_the_logs_tail(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "build.log"
    runner = Runner(LabBuildError, log=log, tail_lines=2)
    runner.run(["sh", "-c", "echo first step"], what="step one")
    with pytest.raises(LabBuildError) as caught:
        runner.run(["sh", "-c", "echo a; echo b; echo c >&2; exit 3"], what="compiling mtty")
    error = caught.value
    assert error.argv == ("sh", "-c", "echo a; echo b; echo c >&2; exit 3")
    assert error.exit_status == 3 and error.log_path == log
    assert error.log_tail == "b\nc"  # this command's output only, its last lines
    assert str(error).startswith("compiling mtty: `sh -c echo a; echo b; echo c >&2; exit 3` failed with exit status 3")
    text = log.read_text()
    assert text.startswith("$ sh -c echo first step\nfirst step\n") and "$ sh -c echo a;" in text


def test_runner_query_returns_stdout_and_names_a_missing_tool() -> None:
    runner = Runner(GuestImageError, hint="run scripts/setup-guest.sh as root")
    assert runner.query(["sh", "-c", "echo out; echo err >&2"], what="asking") == "out\n"
    with pytest.raises(GuestImageError, match=r"listing: no-such-tool-x not found \(run scripts/setup-guest.sh"):
        runner.query(["no-such-tool-x"], what="listing")
    with pytest.raises(GuestImageError) as caught:
        runner.query(["sh", "-c", "echo nope >&2; exit 1"], what="asking")
    assert caught.value.exit_status == 1 and caught.value.log_tail == "nope"


class _CannedRunner(Runner):
    """apt-cache's output, fixed: the parsing is what is tested."""

    def __init__(self, output: str) -> None:
        super().__init__()
        self.output = output
        self.argv: list[str] = []

    def query(self, argv: object, **_: object) -> str:
        assert isinstance(argv, list)
        self.argv = argv
        return self.output


def test_apt_versions_keep_madisons_order_once_each() -> None:
    madison = (
        "busybox-static | 1:1.36.1-1~bpo12+1 | http://mirror/debian bookworm-backports/main amd64 Packages\n"
        "busybox-static | 1:1.35.0-4+deb12u1+b1 | http://mirror/debian bookworm/main amd64 Packages\n"
        "busybox-static | 1:1.35.0-4+deb12u1+b1 | http://mirror/debian bookworm-updates/main amd64 Packages\n"
    )
    runner = _CannedRunner(madison)
    found = Apt(runner).versions(["busybox-static", "linux-source-6.12"])
    assert found == {"busybox-static": ["1:1.36.1-1~bpo12+1", "1:1.35.0-4+deb12u1+b1"], "linux-source-6.12": []}
    assert runner.argv == ["apt-cache", "madison", "busybox-static", "linux-source-6.12"]
    assert deb_glob("busybox-static", "1:1.35.0") == "busybox-static_1%3a1.35.0_*.deb"


def test_extract_vmlinux_finds_the_elf_after_false_starts(tmp_path: Path) -> None:
    elf = b"\x7fELF" + bytes(range(256)) * 8
    payload = gzip.compress(elf, mtime=0)
    assert payload[:4] == b"\x1f\x8b\x08\x00"
    bzimage = tmp_path / "vmlinuz"
    # A setup header, a stray copy of the gzip magic that decompresses to nothing, then the real payload.
    bzimage.write_bytes(b"MZ" + bytes(500) + b"\x1f\x8b\x08\x00junk" + bytes(64) + payload + bytes(32))
    out = tmp_path / "vmlinux"
    assert extract_vmlinux(bzimage, out)
    assert out.read_bytes() == elf
    (tmp_path / "plain").write_bytes(b"MZ" + bytes(4096))
    assert not extract_vmlinux(tmp_path / "plain", tmp_path / "none")
    assert not (tmp_path / "none").exists()
