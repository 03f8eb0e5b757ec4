"""Packaging and presets: the two dependency lists agree, torch is pinned, bad names fail clearly."""
import tomllib

import pytest

from thinkdiff import paths, presets


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


def test_unknown_preset_and_bad_layer_are_clear_errors():
    with pytest.raises(ValueError, match="unknown preset 'nope'.*organism-m"):
        presets.get_preset("nope")
    with pytest.raises(ValueError, match="out of range"):
        presets.resolve_layer(9, 4, "organism-s")
    assert presets.resolve_layer(None, 28) == 14
    with pytest.raises(ValueError, match="kind"):
        presets.register(presets.Preset(name="x", kind="gguf", base="a", distilled="b"))


def test_qwen_presets_registered_with_paper_layers():
    for name, layer in {"qwen-1.5b": 14, "qwen-7b": 14, "qwen-14b": 24, "qwen-32b": 32}.items():
        p = presets.get_preset(name)
        assert p.kind == "hf" and p.layer == layer and p.train_config == "paper"
