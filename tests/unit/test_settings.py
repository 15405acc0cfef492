"""harness/settings.py is the only reader of migconform's environment variables, and docs/settings.md lists
every one of them.

Why scan the source: a variable read in a second place (a copy of the cache folder's rule, say) is how the
cache once split into four rules. The scan resolves the variable's name through string constants, so
``ENV = "MIGCONFORM_X"; os.environ.get(ENV)`` is caught too; its own tests below show it can fail.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from harness import settings

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = ROOT / "harness" / "settings.py"
DOC = ROOT / "docs" / "settings.md"
SCANNED = ("contract", "harness", "reference_impl", "tests", "scripts")
ENV_METHODS = {"get", "pop", "setdefault", "__getitem__", "__contains__"}


def _is_settings_name(name: str) -> bool:
    return name.startswith("MIGCONFORM_") or name == "QEMU_BINARY"


def _is_environ(node: ast.expr) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "environ") or (
        isinstance(node, ast.Name) and node.id == "environ"
    )


def _is_getenv(node: ast.expr) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "getenv") or (
        isinstance(node, ast.Name) and node.id == "getenv"
    )


def _constants(tree: ast.Module) -> dict[str, str]:
    """Names bound to a string anywhere in the module (``ENV = "MIGCONFORM_X"``), and the settings module's
    own name constants, reachable as ``settings.CACHE``."""
    out = {name: value for name, value in vars(settings).items() if name.isupper() and isinstance(value, str)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign | ast.AnnAssign) and isinstance(node.value, ast.Constant):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name) and isinstance(node.value.value, str):
                    out[target.id] = node.value.value
    return out


def _name_of(node: ast.expr | None, constants: dict[str, str]) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name):
        return constants.get(node.id)
    if isinstance(node, ast.Attribute):
        return constants.get(node.attr)
    return None


def settings_reads(source: str) -> list[tuple[int, str]]:
    """(line, variable) for every read of a migconform variable from the environment in ``source``: a
    ``get``/``pop``/``setdefault`` on ``os.environ``, a subscript that loads, ``NAME in os.environ``, and
    ``os.getenv``. Setting a variable (a store, ``monkeypatch.setenv``) is not a read."""
    tree = ast.parse(source)
    constants = _constants(tree)
    found: list[tuple[int, str]] = []

    def note(node: ast.AST, key: ast.expr | None) -> None:
        name = _name_of(key, constants)
        if name is not None and _is_settings_name(name):
            found.append((getattr(node, "lineno", 0), name))

    def environ_method(func: ast.expr) -> bool:
        return isinstance(func, ast.Attribute) and func.attr in ENV_METHODS and _is_environ(func.value)

    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args and (environ_method(node.func) or _is_getenv(node.func)):
            note(node, node.args[0])
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) and _is_environ(node.value):
            note(node, node.slice)
        elif isinstance(node, ast.Compare) and any(_is_environ(c) for c in node.comparators):
            note(node, node.left)
    return found


def _python_files() -> list[Path]:
    return sorted(p for folder in SCANNED for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts)


# ---- the scanner can fail --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "source",
    [
        'import os\nos.environ.get("MIGCONFORM_CACHE")',
        'import os\nx = os.environ["MIGCONFORM_LAB_PYOPTS"]',
        'import os\nos.getenv("QEMU_BINARY", "")',
        'from os import environ\nenviron.get("MIGCONFORM_SUITE")',
        'import os\nENV = "MIGCONFORM_MUTANTS"\nif os.environ.get(ENV) == "1": pass',
        "import os\nfrom harness import settings\nos.environ.get(settings.CACHE)",
        'import os\nif "MIGCONFORM_VFIO_DEVICES" in os.environ: pass',
        'import os\nos.environ.pop("MIGCONFORM_NEW_ONE", None)',
    ],
)
def test_the_scan_finds_a_read(source: str) -> None:
    assert settings_reads(source), source


@pytest.mark.parametrize(
    "source",
    [
        'import os\nos.environ["MIGCONFORM_CACHE"] = "/c"',
        'def t(monkeypatch):\n    monkeypatch.setenv("MIGCONFORM_SUITE", "/s")',
        'import os\nenv = dict(os.environ, CCACHE_DIR="/x")',
        'import os\nos.environ.get("PYTEST_XDIST_WORKER", "main")',
    ],
)
def test_the_scan_ignores_writes_and_other_variables(source: str) -> None:
    assert settings_reads(source) == []


# ---- the source -----------------------------------------------------------------------------------------


def test_only_the_settings_module_reads_migconform_variables() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{line}: {name}"
        for path in _python_files()
        if path != SETTINGS
        for line, name in settings_reads(path.read_text())
    ]
    assert offenders == [], "read these through harness/settings.py:\n" + "\n".join(offenders)


def test_the_model_reads_no_environment() -> None:
    """The model's answer depends on the scenario and the QEMU version alone (contract/, which it reads, too)."""
    offenders = [
        str(path.relative_to(ROOT))
        for package in ("contract", "reference_impl")
        for path in sorted((ROOT / package).rglob("*.py"))
        if re.search(r"\benviron\b|\bgetenv\b", path.read_text())
    ]
    assert offenders == []


def test_there_is_one_cache_rule() -> None:
    """A second function that turns $MIGCONFORM_CACHE into a folder, or a path built from ``<repo>/.cache``
    that ignores it, is the split this module ended."""
    offenders = []
    for path in _python_files():
        if path in (SETTINGS, Path(__file__).resolve()):
            continue  # this file spells the rule out to test it
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name in ("cache_root", "cache_dir"):
                offenders.append(f"{path.relative_to(ROOT)}: def {node.name}")
            elif isinstance(node, ast.Constant) and str(node.value).split("/")[0] == ".cache":
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    assert offenders == [], "use harness.settings.cache_root():\n" + "\n".join(offenders)


# ---- the table ------------------------------------------------------------------------------------------


def _documented() -> set[str]:
    return set(re.findall(r"^\| `([A-Z0-9_]+)` \|", DOC.read_text(), flags=re.MULTILINE))


def test_every_variable_of_the_module_is_in_the_table() -> None:
    declared = {
        value
        for name, value in vars(settings).items()
        if name.isupper() and isinstance(value, str) and _is_settings_name(value)
    }
    assert set(settings.VARIABLES) == declared, "every name constant belongs in VARIABLES"
    assert sorted(declared - _documented()) == []


def test_every_variable_named_anywhere_is_in_the_table() -> None:
    """Also the shell scripts' own (MIGCONFORM_TEST_WORKERS) and those only the docs mention."""
    named: set[str] = set()
    for folder in ("harness", "tests", "scripts", "benchmarks", "docs"):
        for path in (ROOT / folder).rglob("*"):
            if path == Path(__file__).resolve() or "__pycache__" in path.parts:
                continue  # this file names made-up variables to test the scan
            if path.is_file() and path.suffix in ("", ".py", ".sh", ".md"):
                named.update(re.findall(r"\bMIGCONFORM_[A-Z0-9_]*[A-Z0-9]\b", path.read_text(errors="replace")))
    assert sorted(named - _documented()) == []


def test_the_table_lists_nothing_that_is_not_read() -> None:
    scripts = " ".join(p.read_text() for p in (ROOT / "scripts").iterdir() if p.is_file())
    stale = [name for name in _documented() if name not in settings.VARIABLES and name not in scripts]
    assert stale == []


# ---- the accessors read at call time --------------------------------------------------------------------


def test_cache_root_follows_the_set_up_script(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(settings.CACHE, raising=False)
    assert settings.cache_root() == ROOT / ".cache"
    monkeypatch.setenv(settings.CACHE, "")  # ${MIGCONFORM_CACHE:-$here/.cache}
    assert settings.cache_root() == ROOT / ".cache"
    monkeypatch.setenv(settings.CACHE, str(tmp_path))
    assert settings.cache_root() == tmp_path


def test_every_cache_user_follows_cache_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from harness import linux_boot
    from harness.mutants.build import mutants_cache
    from harness.vfio_lab.build import lab_cache

    monkeypatch.setenv(settings.CACHE, str(tmp_path))
    assert lab_cache() == tmp_path / "lab"
    assert mutants_cache() == tmp_path / "mutants"
    assert linux_boot.linux_boot_record().parent.parent == tmp_path


def test_list_valued_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(settings.QEMU_BINARY, " /a/qemu ::/b/qemu ")
    assert settings.qemu_binaries() == ["/a/qemu", "/b/qemu"]
    monkeypatch.setenv(settings.VFIO_DEVICES, "0000:3b:00.1, 0000:3b:00.2  uuid")
    assert settings.vfio_devices() == ["0000:3b:00.1", "0000:3b:00.2", "uuid"]
    monkeypatch.setenv(settings.VFIO_OPTIONS, "variant=iovabm,junk,a=b=c")
    assert settings.vfio_options() == {"variant": "iovabm", "a": "b=c"}
    monkeypatch.delenv(settings.QEMU_BINARY)
    assert settings.qemu_binaries() == []


@pytest.mark.parametrize(("value", "expected"), [("kvm", "kvm"), ("tcg", "tcg"), ("KVM", None), ("", None)])
def test_lab_accel_takes_only_kvm_or_tcg(monkeypatch: pytest.MonkeyPatch, value: str, expected: str | None) -> None:
    monkeypatch.setenv(settings.LAB_ACCEL, value)
    assert settings.lab_accel() == expected


def test_flags_keep_their_old_meanings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(settings.REQUIRE_RESOURCES, "0")
    assert settings.require_resources() is False
    monkeypatch.setenv(settings.REQUIRE_RESOURCES, "yes")
    assert settings.require_resources() is True
    monkeypatch.setenv(settings.LAB_VERBOSE, "0")  # any non-empty value, as before
    assert settings.lab_verbose() is True
    monkeypatch.setenv(settings.MUTANTS, "true")
    assert settings.mutants_build() is False
    monkeypatch.setenv(settings.VFIO_DIRTY_REPORT, "")
    assert settings.vfio_dirty_report() is False
    monkeypatch.delenv(settings.VFIO_DIRTY_REPORT)
    assert settings.vfio_dirty_report() is None
    monkeypatch.setenv(settings.MIN_COMPARED, "two hundred")
    with pytest.raises(ValueError):
        settings.min_compared()
