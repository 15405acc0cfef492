"""The project's own code holds to its standards: ruff and mypy --strict pass on contract/, harness/ and
reference_impl/, the packages import each other only in the allowed directions, no import goes round in a
circle, the packages never reach into tests/ (an installed migconform has no tests/ folder), and nothing cites
a document that is not in the repository.

Run as tests so that CI (which runs only the README's test command) enforces them.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from harness.settings import DEFAULT_CACHE_DIRNAME
from harness.suite import SUITE_DIR

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ["contract", "harness", "reference_impl"]


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, check=False)


def test_ruff_clean() -> None:
    result = _run(["ruff", "check", *PACKAGES, "tests", "benchmarks"])
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_clean() -> None:
    result = _run(["mypy", "--strict", *PACKAGES])
    assert result.returncode == 0, result.stdout + result.stderr


# The harness modules that import the model: those that run it or consult its tables. Any other harness module
# gets the shared types from contract/, so a new edge from the harness into the model fails this test.
HARNESS_MODULES_USING_THE_MODEL = {
    "harness/toml_reader.py": {"reference_impl.capabilities"},  # every modelled capability name is accepted
    "harness/runner.py": {"reference_impl", "reference_impl.predict"},  # runs the model
    "harness/vfio/features.py": {"reference_impl.vfio.uapi"},  # the kernel's VFIO flags, as the model names them
    # a device the model knows a version lacks; the multifd compression methods it expects of a build
    "harness/features/offered.py": {"reference_impl.catalog", "reference_impl.parameters"},
}


def _imported_modules(path: Path) -> set[str]:
    """Every absolute import of ``path``: import statements anywhere (TYPE_CHECKING and function bodies too) and
    ``importlib.import_module("...")`` with a literal name."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
            if name == "import_module" and isinstance(node.args[0].value, str):
                found.add(node.args[0].value)
    return found


def _imports_of(package: str, target: str) -> dict[str, set[str]]:
    """File of ``package`` -> the modules of ``target`` it imports (files importing none left out)."""
    edges: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        hits = {name for name in _imported_modules(path) if name.split(".")[0] == target}
        if hits:
            edges[str(path.relative_to(ROOT))] = hits
    return edges


def test_contract_imports_neither_backend() -> None:
    assert _imports_of("contract", "harness") == {}
    assert _imports_of("contract", "reference_impl") == {}


def test_model_never_imports_the_harness() -> None:
    assert _imports_of("reference_impl", "harness") == {}


def test_harness_imports_the_model_only_where_pinned() -> None:
    assert _imports_of("harness", "reference_impl") == HARNESS_MODULES_USING_THE_MODEL


# Citations of documents that live outside this repository. A reader of the code, of a scenario, or of an
# HTML report built from one has only this repository, so every citation must name one of its own docs
# (docs/*.md) or the QEMU / Linux function a fact comes from.
EXTERNAL_CITATIONS = (
    "../shared",
    "shared/spec",
    "shared/reference",
    "fact sheet",
    "lab sheet",
    "scenario-contract.md",
    "qemu-migration-facts.md",
    "vfio-mtty-lab.md",
    "qemu-mutant-build.md",
    "lab §",
)
# This file names the patterns it looks for.
CITATION_CHECK_EXCLUDED = {"tests/test_static.py"}
# A "§" in a scenario description must name the repository document whose section it is.
_NAMED_SECTION = re.compile(r"(docs/[\w.-]+\.md)`?,? §")


def _project_files() -> list[str]:
    """The files the project ships (tracked or new), so that a generated or ignored file does not count."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        # Not a git checkout (an unpacked source tree): every file outside the usual generated folders.
        skip = {".git", ".venv", DEFAULT_CACHE_DIRNAME, "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache"}
        return [
            str(p.relative_to(ROOT))
            for p in ROOT.rglob("*")
            if p.is_file() and not skip.intersection(p.relative_to(ROOT).parts)
        ]
    return [name for name in listed.split("\0") if name]


def test_no_citation_of_documents_outside_the_repository() -> None:
    offenders: list[str] = []
    for name in _project_files():
        if name in CITATION_CHECK_EXCLUDED:
            continue
        path = ROOT / name
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue  # binary files and files deleted in the work tree hold no citations
        for number, line in enumerate(text.splitlines(), 1):
            lowered = line.lower()
            offenders += [f"{name}:{number}: {pattern!r}" for pattern in EXTERNAL_CITATIONS if pattern in lowered]
    assert not offenders, "citations of documents outside the repository:\n" + "\n".join(offenders)


def test_scenario_descriptions_cite_no_bare_section_numbers() -> None:
    """Descriptions are shown in every report; a bare "§1.7" there points at nothing the user has."""
    offenders: list[str] = []
    files = sorted(
        [*SUITE_DIR.glob("*.toml"), *SUITE_DIR.glob("cross/*.toml"), *(ROOT / "tests").glob("**/scenarios/*.toml")]
    )
    assert files, "no scenario files found"
    for path in files:
        description = str(tomllib.loads(path.read_text(encoding="utf-8")).get("description", ""))
        bare = description.count("§") - len(_NAMED_SECTION.findall(description))
        missing = [doc for doc in _NAMED_SECTION.findall(description) if not (ROOT / doc).is_file()]
        if bare or missing:
            offenders.append(f"{path.relative_to(ROOT)}: {description}")
    assert not offenders, "scenario descriptions with a bare or dangling §:\n" + "\n".join(offenders)


# --- imports and paths -----------------------------------------------------------------------------------


def _modules() -> dict[str, Path]:
    """Every module of the packages by dotted name (a package by its own name)."""
    modules: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _imported(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules ``name`` imports anywhere: at module level, under ``if TYPE_CHECKING:`` and inside
    functions alike. A function-local import only hides a cycle until someone moves it to the top."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                # ``from harness import certify`` imports the module harness.certify, not the package.
                target = f"{base}.{alias.name}"
                if target in modules:
                    found.add(target)
                elif base in modules:
                    found.add(base)
    found.discard(name)
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected component of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    cycles = []
    for component in components:
        start = min(component)
        path, seen = [start], {start}
        while True:  # walk inside the component until a module repeats: that closes a cycle
            step = min(n for n in graph[path[-1]] if n in component)
            if step in seen:
                cycles.append([*path[path.index(step) :], step])
                break
            path.append(step)
            seen.add(step)
    return cycles


def test_no_import_cycles() -> None:
    modules = _modules()
    graph = {name: _imported(name, path, modules) for name, path in modules.items()}
    assert "harness.certify" in graph["harness.vfio_lab.certify_inside"], "the import graph misses imports"
    cycles = _cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in cycles)


# A path into tests/: a string "tests" (joined as a path component) or one holding "tests/".
_TESTS_PATH = re.compile(r"\btests[/\\]|^tests$")


def _docstrings(tree: ast.AST) -> set[int]:
    """The docstring constants of a module, class or function: prose about tests/ is fine, a path is not."""
    found: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def test_packages_do_not_reach_into_tests() -> None:
    """What the packages need at run time (the bundled suite, the lab's scenarios) ships as package data."""
    offenders: list[str] = []
    for path in _modules().values():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = _docstrings(tree)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and id(node) not in docstrings
                and _TESTS_PATH.search(node.value)
            ):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value[:60]!r}")
    assert not offenders, "modules that refer to tests/:\n" + "\n".join(offenders)
