"""Every notebook on the smollm2-135m smoke run (configs/smollm2-smoke.toml), the path of
`make demo RUN=smollm2-135m` with tiny parameters, on the pair rebuilt by tests/conftest.py's fixtures."""
from __future__ import annotations

import json

import pytest

from thinkdiff import paths, world


@pytest.mark.slow
def test_notebook_00_accepts_nothing_on_the_smoke_run(smollm2_smoke_run, tmp_path, monkeypatch):
    """00 on the real pair end to end (kernel, cached pair and evaluation): its acceptance table, the share of true
    checks, and a record whose verdicts are all "not tested"."""
    from thinkdiff import notebooks

    runs = paths.RUNS_DIR
    monkeypatch.setenv("THINKDIFF_RUNS", str(runs))
    monkeypatch.setenv("THINKDIFF_FIGURES", str(tmp_path / "figures"))
    notebooks.run("00_evaluate", tmp_path / "executed", parameters={"RUN": "smollm2-smoke"})
    rec = json.loads((runs / "report" / "smollm2-smoke" / "00_evaluate.json").read_text())
    n = rec["numbers"]
    assert n["smollm2-135m pair acceptance"] == "not tested" and n["n_eval"] == 4
    assert "smollm2-135m share of true checks" in n and set(n["smollm2-135m distilled marker rate / teacher"]) == set(
        world.CATEGORIES)
    assert all(c["verdict"] == "not tested" for c in rec["claims"].values())


@pytest.mark.slow
@pytest.mark.parametrize("name", ["03_label", "03d_adl"])
def test_every_later_notebook_runs_on_the_smoke_run(name, smollm2_smoke_run, tmp_path, monkeypatch):
    """The notebooks whose work depends most on this pair (the path of `make demo RUN=smollm2-135m`, tiny
    parameters): 03_label, ground truth on a labelled real pair and claim 1 against its control fine-tune, and
    03d_adl, the second lens on the same store, scored against the English teacher's planted words; 00 is the test
    above. It executes and records only "not tested" verdicts. The other notebooks run the same code
    whatever the pair, through its kind and task (04_steer's prompts and scoring: ``Task.problems`` /
    ``prompt`` / ``score``, tested in tests/unit/test_tasks.py), and execute on the organism's smoke run and on a
    pair given as one TOML file (tests/e2e/test_notebooks.py); this run's store and crosscoders are built once on
    this worker, by this notebook or tests/integration/test_smollm2.py."""
    from thinkdiff import notebooks

    runs = paths.RUNS_DIR
    monkeypatch.setenv("THINKDIFF_RUNS", str(runs))
    monkeypatch.setenv("THINKDIFF_FIGURES", str(tmp_path / "figures"))
    own = {"02_train": {"N_SPLICE_DOCS": 4}, "03b_ablation": {"N_BOOT": 50}, "03c_browser": {"N_CARDS": 2},
           "04_steer": {"N_BOOT": 50, "BENCH_TOKENS": 4}, "05_geometry": {"N_BOOT": 50, "N_PERM": 20}}
    notebooks.run(name, tmp_path / "executed", parameters={"RUN": "smollm2-smoke", **own.get(name, {})})
    rec = json.loads((runs / "report" / "smollm2-smoke" / f"{name}.json").read_text())
    assert rec["numbers"] and all(c["verdict"] == "not tested" for c in rec.get("claims", {}).values())

