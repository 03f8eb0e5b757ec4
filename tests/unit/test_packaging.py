"""Packaging and pairs: the two dependency lists agree, torch is pinned, the test-only packages are an extra
that no shipped code imports, bad names fail clearly."""
import ast
import tomllib

import pytest

from thinkdiff import pairs, paths

# Installed by `pip install -e ".[test]"` (pyproject's [test] extra) only, under their import names.
TEST_ONLY = {"pytest": "pytest", "pytest-xdist": "xdist", "execnet": "execnet", "nbval": "nbval", "selenium": "selenium"}


def _pip_section(text: str) -> list[str]:
    out, inside = [], False
    for line in text.splitlines():
        if line.strip() == "- pip:":
            inside = True
        elif inside and line.startswith("      - "):
            out.append(line.strip()[2:])
        elif inside and line.strip():
            inside = False
    return out


def test_environment_yml_matches_pyproject():
    deps = tomllib.loads((paths.REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    env = _pip_section((paths.REPO_ROOT / "environment.yml").read_text())
    assert sorted(env) == sorted(deps)
    assert "torch==2.13.0" in deps, "torch must be pinned next to transformers and nnsight (CPU build)"
    assert any(d.startswith("transformers") for d in deps) and any(d.startswith("nnsight") for d in deps)


def test_test_only_packages_are_a_pinned_extra():
    project = tomllib.loads((paths.REPO_ROOT / "pyproject.toml").read_text())["project"]
    runtime = {d.split("==")[0] for d in project["dependencies"]}
    assert not runtime & set(TEST_ONLY), "test-only packages belong in the [test] extra"
    test = project["optional-dependencies"]["test"]
    assert {d.split("==")[0] for d in test} == set(TEST_ONLY) and all("==" in d for d in test)


def _imported_modules(path) -> set[str]:
    """Top-level names of every module a Python file imports, at any depth (a function's import fails too)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


def test_no_shipped_code_imports_a_test_only_package():
    """The library, notebooks, tools and benchmarks run on `pip install -e .` alone."""
    files = [f for d in ("lib", "notebooks/src", "tools", "benchmarks") for f in (paths.REPO_ROOT / d).rglob("*.py")]
    assert any(f.name == "crosscoder.py" for f in files)
    bad = {str(f.relative_to(paths.REPO_ROOT)): sorted(_imported_modules(f) & set(TEST_ONLY.values())) for f in files}
    assert not {f: m for f, m in bad.items() if m}


def test_unknown_preset_and_bad_layer_are_clear_errors():
    with pytest.raises(ValueError, match="unknown pair 'nope'.*organism-m"):
        pairs.get("nope")
    with pytest.raises(ValueError, match="out of range"):
        pairs.resolve_layer(9, 4, "organism-s")
    assert pairs.resolve_layer(None, 28) == 14
    with pytest.raises(ValueError, match="kind"):
        pairs.register(pairs.PairSpec(name="x", kind="gguf", base="a", distilled="b"))
    with pytest.raises(ValueError, match="task"):
        pairs.register(pairs.PairSpec(name="x", kind="hf", base="a", distilled="b", task="chess"))


def test_qwen_presets_registered_with_paper_layers():
    for name, layer in {"qwen-1.5b": 14, "qwen-7b": 14, "qwen-14b": 24, "qwen-32b": 32}.items():
        p = pairs.get(name)
        assert p.kind == "hf" and p.layer == layer and p.train_config == "paper"
