"""The README's quickstart runs as written: its python block, with the run name changed from the default run to
the smoke run (the one substitution), executed in a fresh interpreter with matplotlib's Agg backend, on the
session's runs folder (``test_runs``, shared with the notebook tests, so the smoke run's crosscoder is built once).
It must draw a histogram of that run's relative norms with both axes labelled and a title."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEFAULT_RUN, TEST_RUN = "organism-m", "smoke"

# Runs the quickstart unchanged, then reports what it drew and the run's own relative norms to compare with.
DRIVER = r'''
import json, sys
import matplotlib
assert matplotlib.get_backend().lower() == "agg", matplotlib.get_backend()
code, run_name, out = open(sys.argv[1]).read(), sys.argv[2], sys.argv[3]
exec(compile(code, "README.md (Quickstart)", "exec"), {"__name__": "__main__"})

import matplotlib.pyplot as plt
import numpy as np
from thinkdiff.pipeline import load_run

nrn = np.asarray(load_run(run_name, progress=False).relative_norms())
axes = [{"xlabel": ax.get_xlabel(), "ylabel": ax.get_ylabel(), "title": ax.get_title(),
         "counted": float(sum(p.get_height() for p in ax.patches)), "bars": len(ax.patches)}
        for n in plt.get_fignums() for ax in plt.figure(n).axes]
json.dump({"axes": axes, "n_latents": int(np.isfinite(nrn).sum())}, open(out, "w"))
'''


def quickstart_code(readme: str) -> str:
    """The first python block of the README's "## Quickstart" section."""
    m = re.search(r"^## Quickstart\s*$(.*?)(?=^## |\Z)", readme, re.S | re.M)
    assert m, "README.md has no '## Quickstart' section"
    block = re.search(r"^```python\n(.*?)^```", m.group(1), re.S | re.M)
    assert block, "README.md's Quickstart section has no ```python block"
    return block.group(1)


@pytest.mark.slow
def test_readme_quickstart_runs_on_the_smoke_run(test_runs, tmp_path):
    code = quickstart_code((REPO / "README.md").read_text())
    assert code.count(f'"{DEFAULT_RUN}"') == 1, f"the quickstart should name run {DEFAULT_RUN!r} exactly once:\n{code}"
    script = tmp_path / "quickstart.py"
    script.write_text(code.replace(f'"{DEFAULT_RUN}"', f'"{TEST_RUN}"'))
    driver, out = tmp_path / "driver.py", tmp_path / "drawn.json"
    driver.write_text(DRIVER)
    env = {**os.environ, "MPLBACKEND": "Agg"}     # THINKDIFF_RUNS / THINKDIFF_FIGURES: the session's (test_runs)
    proc = subprocess.run([sys.executable, str(driver), str(script), TEST_RUN, str(out)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, f"the README quickstart failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    drawn = json.loads(out.read_text())
    assert len(drawn["axes"]) == 1, drawn
    ax = drawn["axes"][0]
    assert ax["xlabel"].strip() and ax["ylabel"].strip() and ax["title"].strip(), f"unlabelled figure: {ax}"
    assert TEST_RUN in ax["title"], ax
    assert ax["bars"] > 1 and ax["counted"] == drawn["n_latents"] > 0, (
        f"the histogram counts {ax['counted']} latents in {ax['bars']} bars; the run has {drawn['n_latents']}")
