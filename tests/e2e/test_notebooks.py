"""Every numbered notebook executes end to end (papermill), with small parameters to fit the CI budget.

``make demo`` runs the same notebooks with their default parameters.
"""
import json
import math
import os
import re

import pytest

from thinkdiff import notebooks

# Every notebook runs the committed smoke run (configs/smoke.toml: organism-m with tiny training and evaluation
# settings, every verdict "not tested"), plus small values for the settings each notebook owns.
SMOKE = {"RUN": "smoke"}
FAST = {
    "00_evaluate": SMOKE,
    "01_harvest": SMOKE,
    "02_train": SMOKE,
    "03_label": SMOKE,
    "03b_ablation": {**SMOKE, "N_BOOT": 200},
    "03c_browser": {**SMOKE, "N_CARDS": 4},
    "03d_adl": SMOKE,
    "04_steer": {**SMOKE, "BENCH_TOKENS": 8, "N_BOOT": 300},
    "05_geometry": {**SMOKE, "N_BOOT": 200, "N_PERM": 50},
}


# Headline numbers each stage must record, finite (regular expressions over the record's keys).
HEADLINES = {
    "00_evaluate": [r"accuracy gain \(distilled - base\)$", r"^n_eval$"],
    "01_harvest": [r"^tokens$", r"^held-out tokens$"],
    "02_train": [r"FVU base$", r"L0$"],
    "03_label": [r"^live latents$", r"^mean relative norm L2 \(live\)$"],
    "03b_ablation": [r"^ablation k=.* targeted_minus_random$"],
    "03c_browser": [r"^cards$"],
    "03d_adl": [r"^ADL norm$", r"^texts used$"],
    "04_steer": [r"^unsteered tokens$", r"^hook overhead$"],
    "05_geometry": [r"accuracy gain \[mean, lo, hi\]$"],
}


def _finite(v) -> bool:
    if isinstance(v, dict):
        return all(_finite(x) for x in v.values())
    if isinstance(v, list):
        return all(_finite(x) for x in v)
    if isinstance(v, str):
        return v.lower() not in ("nan", "inf", "-inf")
    return v is None or isinstance(v, bool) or math.isfinite(v)


def check_record(runs_dir, run_name: str, stage: str) -> dict:
    """The stage wrote its report record: headline numbers present and finite, every claim with its evidence
    and rule, and (smoke runs) no claim judged."""
    rec = json.loads((runs_dir / "report" / run_name / f"{stage}.json").read_text())
    for pattern in HEADLINES[stage]:
        hits = {k: v for k, v in rec["numbers"].items() if re.search(pattern, k)}
        assert hits, f"{stage}: no number matches {pattern!r}"
        assert _finite(list(hits.values())), f"{stage}: {hits}"
    for k, c in rec["claims"].items():
        assert c["evidence"] and c["rule"], (stage, k)
        assert c["verdict"] == "not tested", f"{stage}: a smoke run judged claim {k}: {c['verdict']}"
    return rec


@pytest.mark.slow
@pytest.mark.parametrize("name", notebooks.NOTEBOOKS)
def test_notebook_executes(name, test_runs):
    if name not in notebooks.available():
        pytest.fail(f"notebook {name} is missing from notebooks/")
    out = notebooks.run(name, test_runs / "executed", parameters=FAST.get(name, {}))
    assert out.exists()
    check_record(test_runs / "runs", "smoke", name)


@pytest.mark.slow
def test_the_saved_browser_notebook_carries_a_static_card(test_runs):
    """The executed notebook (papermill, no widget state) shows a card to a reader without a kernel."""
    executed = test_runs / "executed" / "03c_browser.ipynb"
    if not executed.exists():
        notebooks.run("03c_browser", test_runs / "executed", parameters=FAST["03c_browser"])
    nb = json.loads(executed.read_text())
    widgets = [o["data"] for c in nb["cells"] for o in c.get("outputs", [])
               if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]     # progress bars are widgets too
    browsers = [d for d in widgets if "feature browser" in "".join(d["text/plain"])]
    assert len(browsers) == 1, [d["text/plain"] for d in widgets]
    data = browsers[0]
    assert 'class="thinkdiff-card" id="latent-' in "".join(data["text/html"])
    assert "HBox(" not in "".join(data["text/plain"])


@pytest.fixture(scope="module")
def tiny_qwen_run(test_runs):
    """A pair of your own, added with no Python: one TOML file for a new Hugging Face pair (the tiny random Qwen2
    models, saved to local folders, under another name) in the pairs/ folder beside a run config that names it.
    The run takes the committed tiny-qwen run's settings with local stand-in corpora and math set (offline)."""
    import standins

    folder = test_runs / "tiny-qwen-data"
    (folder / "pairs").mkdir(parents=True, exist_ok=True)
    files = standins.write_corpus(folder)
    tiny = standins.tiny_qwen_pair(hidden=64, layers=4)
    (folder / "pairs" / "my-tiny-pair.toml").write_text(f'''# two local checkpoints written by save_pretrained
kind = "hf"
base = "{tiny.base_path}"
distilled = "{tiny.distilled_path}"
layer = 2
task = "math"
corpus = "openthoughts"
train_config = "paper"
''')
    cfg = folder / "tiny-qwen-offline.toml"
    cfg.write_text(f'''extends = "tiny-qwen"
preset = "my-tiny-pair"
[geometry]
runs = []
[harvest.corpus]
openthoughts_files = "{files['openthoughts_files']}"
general_files = "{files['general_files']}"
[evaluate]
math_files = "{files['math_files']}"
''')
    return str(cfg)


@pytest.mark.slow
@pytest.mark.parametrize("name", notebooks.NOTEBOOKS)
def test_notebook_executes_on_a_real_pair_stand_in(name, test_runs, tiny_qwen_run):
    """Every notebook also runs on a pair defined by one TOML file in a folder of the user's own (tiny random
    Qwen2 models, real tokenizers): the real-pair code path, with no Python change."""
    # Owned settings sized to the stand-in: its 151,936-token vocabulary makes every logit pass costly.
    own = {"02_train": {"N_SPLICE_DOCS": 4}, "03b_ablation": {"N_BOOT": 50}, "03c_browser": {"N_CARDS": 2},
           "04_steer": {"N_BOOT": 50, "BENCH_TOKENS": 4}, "05_geometry": {"N_BOOT": 50, "N_PERM": 20}}
    out = notebooks.run(name, test_runs / "executed-tiny-qwen", parameters={"RUN": tiny_qwen_run, **own.get(name, {})})
    assert out.exists()
    record = check_record(test_runs / "runs", "tiny-qwen-offline", name)
    assert record["provenance"]["preset"] == "my-tiny-pair", record["provenance"]


@pytest.mark.slow
def test_deterministic_cells_reproduce_under_nbval(test_runs):
    """Re-executing an executed notebook reproduces the outputs of its cells marked NBVAL_CHECK_OUTPUT (nbval,
    --nbval-lax): 01_harvest's label table and exactly-once count come out identical on a second run."""
    import subprocess
    import sys

    executed = test_runs / "executed" / "01_harvest.ipynb"
    if not executed.exists():
        notebooks.run("01_harvest", test_runs / "executed", parameters=FAST["01_harvest"])
    nb = json.loads(executed.read_text())
    marked = [c for c in nb["cells"] if "NBVAL_CHECK_OUTPUT" in "".join(c["source"])]
    assert len(marked) == 2 and all(c.get("outputs") for c in marked)
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "--nbval-lax", "-p", "no:cacheprovider",
                          "--nbval-current-env", str(executed)], cwd=notebooks.NOTEBOOK_DIR, capture_output=True,
                         text=True, env=os.environ.copy())
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
