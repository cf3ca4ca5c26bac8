"""BUILD stays true to the tree: every module, entrypoint and test has a target, and
every target names files and targets that exist.

BUILD is Starlark, which Python's `ast` parses; Bazel itself cannot fetch its rule sets
offline here, so this test is what keeps the file honest.
"""

import ast
from pathlib import Path

import pytest

from tools import build_file

REPO = Path(__file__).resolve().parent.parent
RULES = {"py_library", "py_binary", "py_test"}


def _literal(node):
    if isinstance(node, ast.Call):  # requirement("x")
        return f"requirement:{node.args[0].value}"
    return ast.literal_eval(node)


def parse_build(text: str) -> list[dict]:
    """The rule calls of a BUILD file as dicts of their keyword arguments."""
    targets = []
    for stmt in ast.parse(text).body:
        assert isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call), (
            f"BUILD line {stmt.lineno}: only rule calls are allowed"
        )
        call = stmt.value
        rule = call.func.id
        if rule in ("load", "package"):
            continue
        assert rule in RULES, f"BUILD line {stmt.lineno}: unknown rule {rule}"
        kwargs = {kw.arg: kw.value for kw in call.keywords}
        target = {"rule": rule, "line": stmt.lineno}
        for key in ("name", "main", "size"):
            if key in kwargs:
                target[key] = _literal(kwargs[key])
        target["srcs"] = [_literal(n) for n in kwargs["srcs"].elts]
        target["deps"] = [_literal(n) for n in kwargs["deps"].elts] if "deps" in kwargs else []
        target["data"] = (
            [ast.literal_eval(n) for n in kwargs["data"].args[0].elts] if "data" in kwargs else []
        )
        targets.append(target)
    return targets


@pytest.fixture(scope="module")
def targets():
    return parse_build((REPO / "BUILD").read_text())


def _py_files(root: Path):
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def test_names_are_unique(targets):
    names = [t["name"] for t in targets]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)


def test_every_named_file_exists(targets):
    missing = [
        (t["name"], f) for t in targets for f in t["srcs"] + [t.get("main")]
        if f is not None and not (REPO / f).is_file()
    ]
    assert not missing, f"BUILD names files that do not exist: {missing}"


def test_every_data_glob_matches_files(targets):
    empty = sorted({g for t in targets for g in t["data"] if not list(REPO.glob(g))})
    assert not empty, f"BUILD data globs that match nothing: {empty}"


def test_every_local_dep_is_a_target(targets):
    names = {t["name"] for t in targets}
    dangling = [
        (t["name"], d) for t in targets for d in t["deps"]
        if d.startswith(":") and d[1:] not in names
    ]
    assert not dangling, f"BUILD deps name no target: {dangling}"


def test_every_package_module_is_in_a_target(targets):
    listed = {f for t in targets for f in t["srcs"]}
    modules = [str(p.relative_to(REPO)) for p in _py_files(REPO / "tokenkit")]
    missing = [m for m in modules if m not in listed]
    assert not missing, f"modules missing from BUILD: {missing}"


def test_every_entrypoint_has_a_binary(targets):
    mains = {t.get("main") for t in targets if t["rule"] == "py_binary"}
    entrypoints = [
        str(p.relative_to(REPO))
        for root in (REPO / "tokenkit", REPO / "tools")
        for p in _py_files(root)
        if p.name == "__main__.py" or build_file.is_entrypoint(p)
    ]
    assert entrypoints, "no entrypoints found at all"
    missing = [e for e in entrypoints if e not in mains]
    assert not missing, f"entrypoints without a py_binary: {missing}"


def test_every_test_file_has_a_test(targets):
    tests = {f for t in targets if t["rule"] == "py_test" for f in t["srcs"]}
    files = [str(p.relative_to(REPO)) for p in _py_files(REPO / "tests")
             if p.name.startswith("test_")]
    missing = [f for f in files if f not in tests]
    assert not missing, f"test files without a py_test: {missing}"


def test_build_matches_generator():
    expected = build_file.render(build_file.collect())
    assert (REPO / "BUILD").read_text() == expected, (
        "BUILD is out of date (deps or targets changed): run `python tools/build_file.py`"
    )


def test_parser_rejects_a_stale_build(tmp_path):
    # The checks above must be able to fail: a BUILD listing a ghost file is caught.
    text = (REPO / "BUILD").read_text().replace(
        '"tokenkit/entry.py"', '"tokenkit/entry.py",\n        "tokenkit/ghost.py"', 1
    )
    ghost = [f for t in parse_build(text) for f in t["srcs"] if not (REPO / f).is_file()]
    assert ghost == ["tokenkit/ghost.py"]
