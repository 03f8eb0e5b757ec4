"""Run-config sections are typed and documented: a dataclass per section, a docstring per field, the checks
across fields raised as RunConfigError naming the file and the key."""
from __future__ import annotations

import ast
import dataclasses
import inspect

import pytest

from thinkdiff import runconfig, settings


def test_every_field_has_a_docstring():
    for name, cls in settings.SECTIONS.items():
        body = ast.parse(inspect.getsource(cls)).body[0].body
        documented = {stmt.target.id for stmt, nxt in zip(body, body[1:])
                      if isinstance(stmt, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)}
        fields = {f.name for f in dataclasses.fields(cls)}
        assert fields == documented, f"[{name}] fields without a docstring: {sorted(fields - documented)}"


def test_the_run_config_defaults_are_the_dataclasses():
    assert runconfig.ANALYSIS_DEFAULTS == {n: dataclasses.asdict(c()) for n, c in settings.SECTIONS.items()}
    for cls in settings.SECTIONS.values():
        cls().check("defaults")            # the defaults pass their own checks


@pytest.mark.parametrize("section, change, message", [
    ("label", {"k_verdict": 0.3}, r"k_verdict = 0.3 must be one of ablation_ks"),
    ("steer", {"claim_alpha": 3}, r"claim_alpha = 3 must be in both alphas"),
    ("steer", {"alphas": [0, 1]}, r"alphas = \[0, 1\] holds 0"),
    ("geometry", {"claim_dim": 3}, r"claim_dim = 3 must be one of dims"),
    ("evaluate", {"n_eval": 0}, r"n_eval = 0 must be an integer >= 1"),
    ("label", {"gate_layer": 0}, r"gate_layer = 0 must be a layer number >= 1 or omitted"),
    ("adl", {"first_tokens": 0}, r"first_tokens = 0 must be an integer >= 1"),
    ("adl", {"n_random": 10}, r"n_random = 10 must be >= 19"),
])
def test_checks_across_fields(section, change, message):
    with pytest.raises(settings.RunConfigError, match=r"my\.toml: \[" + section + r"\] " + message):
        settings.SECTIONS[section](**change).check("run config my.toml")
