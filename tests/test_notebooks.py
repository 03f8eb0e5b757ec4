"""Every numbered notebook executes end to end (papermill), with small parameters to fit the CI budget.

``make demo`` runs the same notebooks with their default parameters.
"""
import os

import pytest

from thinkdiff import notebooks

# Small, fast parameters per notebook; anything not listed runs with the notebook's defaults.
FAST = {
    "00_organism": {"SIZES": ["S", "M", "L"], "N_EVAL": 24},
    "01_harvest": {},
    "02_train": {"STEPS": 150},
    "03_label": {"STEPS": 150, "N_OCCURRENCES": 10, "KS": [0.05, 0.2], "N_BOOT": 200, "N_SCALING": 30, "N_CARDS": 4},
    "04_steer": {"STEPS": 150, "N_PROMPTS": 8, "MAX_NEW_TOKENS": 48, "ALPHAS": [-1, 1], "CONTROL_ALPHAS": [1], "BENCH_TOKENS": 8,
                 "N_BOOT": 300},
    "05_geometry": {"STEPS": 150, "N_BOOT": 200, "N_PERM": 50, "N_EVAL": 16, "MAX_NEW_TOKENS": 64, "N_CE": 16, "DIMS": [2, 5]},
}


@pytest.fixture(scope="module")
def test_runs(tmp_path_factory):
    """One runs/ and figures/ folder for the whole module, so notebooks reuse each other's artifacts
    (as in ``make demo``) without touching the demo's own caches, figures or report."""
    root = tmp_path_factory.mktemp("nb-runs")
    old = {k: os.environ.get(k) for k in ("THINKDIFF_RUNS", "THINKDIFF_FIGURES")}
    os.environ["THINKDIFF_RUNS"] = str(root / "runs")
    os.environ["THINKDIFF_FIGURES"] = str(root / "figures")
    yield root
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.mark.slow
@pytest.mark.parametrize("name", notebooks.NOTEBOOKS)
def test_notebook_executes(name, test_runs):
    if name not in notebooks.available():
        pytest.fail(f"notebook {name} is missing from notebooks/")
    out = notebooks.run(name, test_runs / "executed", parameters=FAST.get(name, {}))
    assert out.exists()
