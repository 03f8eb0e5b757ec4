"""The notebooks without executing them: each is what tools/mknb.py builds from its source, and their parameters
cells take a run and only the notebook's own settings (their executions are in tests/e2e/test_notebooks.py)."""
import os
from pathlib import Path

import pytest

from thinkdiff import notebooks


def test_notebooks_match_their_sources():
    """Each committed notebook is exactly what tools/mknb.py builds from notebooks/src (reviewable diffs)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("mknb", notebooks.paths.REPO_ROOT / "tools" / "mknb.py")
    mknb = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mknb)
    assert mknb.stale() == []


def test_parameters_cells_take_a_run_and_only_owned_settings():
    """No notebook parameters cell may set an upstream setting (those live in configs/<RUN>.toml)."""
    import json

    owned = {"RUN", "N_SPLICE_DOCS", "N_BOOT", "N_CARDS", "THREADS", "BATCH_SIZE", "BENCH_TOKENS", "N_PERM",
             "QWEN_RELATIONS"}
    for name in notebooks.available():
        nb = json.loads(notebooks.notebook_path(name).read_text())
        params = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(params) == 1, name
        names = {line.split("=")[0].strip() for line in "".join(params[0]["source"]).splitlines()
                 if "=" in line and not line.lstrip().startswith("#")}
        assert "RUN" in names and names <= owned, f"{name}: parameters {sorted(names - owned)} are not the notebook's own"


def test_a_parameter_the_notebook_does_not_declare_is_refused():
    """Before the kernel starts (notebooks.run), and inside the notebook under plain papermill (its first cell
    reads papermill's injected "# Parameters" cell against the declared one)."""
    from thinkdiff.notebooks import declared_parameters
    from thinkdiff.session import refuse_unknown_parameters

    assert "RUN" in declared_parameters("01_harvest")
    with pytest.raises(ValueError, match=r"01_harvest: unknown parameter\(s\) \['N_DOCS'\]"):
        notebooks.run("01_harvest", Path("/nonexistent"), parameters={"N_DOCS": 5})
    declared = 'RUN = "organism-m"   # the run\nTHREADS = None\n'
    refuse_unknown_parameters({"In": ["", declared, '# Parameters\nRUN = "smoke"\n', "import os"]})
    with pytest.raises(ValueError, match=r"\['N_DOCS'\] are not this notebook's; it takes \['RUN', 'THREADS'\]"):
        refuse_unknown_parameters({"In": ["", declared, '# Parameters\nRUN = "smoke"\nN_DOCS = 5\n', "import os"]})
    refuse_unknown_parameters({})                       # outside a kernel: nothing to check



def test_session_start_sets_the_hub_offline_before_anything_reads_it(monkeypatch):
    """Importing ``thinkdiff.session`` loads neither transformers nor huggingface_hub (they read the offline
    setting once, at import), and ``start`` sets it offline only where the environment has not chosen."""
    import subprocess
    import sys

    probe = "import sys, thinkdiff.session; print(sorted(m for m in ('transformers', 'huggingface_hub') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip() == "[]"
    from thinkdiff import session

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    session.start({})
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "0"
