"""Execute the numbered notebooks with papermill (what ``make demo`` and the notebook tests call).

Clean sources live in ``notebooks/``; executed copies go to ``notebooks/executed/`` (git-ignored),
so the committed notebooks stay output-free and reviewable as diffs.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from . import paths, runconfig
from .session import parameter_names

NOTEBOOK_DIR = paths.REPO_ROOT / "notebooks"
NOTEBOOKS = ("00_evaluate", "01_harvest", "02_train", "03_label", "03b_ablation", "03c_browser", "03d_adl",
             "04_steer", "05_geometry")


def notebook_path(name: str) -> Path:
    path = NOTEBOOK_DIR / f"{name}.ipynb"
    if not path.exists():
        raise FileNotFoundError(f"notebook {name!r} not found at {path}; known: {', '.join(available())}")
    return path


def available() -> list[str]:
    return [n for n in NOTEBOOKS if (NOTEBOOK_DIR / f"{n}.ipynb").exists()]


def declared_parameters(name: str) -> set[str]:
    """The parameters notebook ``name`` takes: the names its ``parameters``-tagged cell assigns."""
    import nbformat

    nb = nbformat.read(notebook_path(name), as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise ValueError(f"notebook {name!r} must have exactly one cell tagged 'parameters', found {len(cells)}")
    return parameter_names(cells[0].source)


def run(name: str, out_dir: Path, parameters: dict | None = None, timeout: int | None = 1800) -> Path:
    """Execute one notebook with papermill; returns the executed copy's path. A parameter the notebook does not
    declare is refused before its kernel starts. ``timeout``: seconds one cell may run (None: no limit)."""
    import papermill as pm

    src = notebook_path(name)
    unknown = sorted(set(parameters or {}) - declared_parameters(name))
    if unknown:
        raise ValueError(f"notebook {name}: unknown parameter(s) {unknown}; it takes {sorted(declared_parameters(name))}")
    out_dir = paths.ensure_writable(Path(out_dir))
    out = out_dir / src.name
    pm.execute_notebook(str(src), str(out), parameters=parameters or {}, kernel_name="python3",
                        cwd=str(NOTEBOOK_DIR), progress_bar=False, execution_timeout=timeout)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Execute thinkdiff notebooks with papermill.")
    ap.add_argument("names", nargs="*", help="notebooks to run (default with --all: every one, in order)")
    ap.add_argument("--all", action="store_true")
    ap.add_argument("--run", default=None, help="the run every notebook executes (its RUN parameter): a name in "
                    "configs/ or a .toml path; default: each notebook's own (the embedded organism)")
    ap.add_argument("--out", default=str(NOTEBOOK_DIR / "executed"))
    ap.add_argument("--cell-timeout", type=float, default=None, help="seconds one cell may run before the notebook "
                    "fails (default: no limit; a real pair's evaluation can take hours on a CPU)")
    args = ap.parse_args(argv)
    names = list(NOTEBOOKS if args.all else args.names)
    if args.all:
        missing = [n for n in names if n not in available()]
        if missing:
            raise SystemExit(f"missing notebooks: {missing}")
    params = {}
    if args.run is not None:
        runconfig.load(args.run)          # a bad run name or file fails here, before any notebook starts
        params["RUN"] = args.run
    for name in names:
        t0 = time.time()
        print(f"[thinkdiff] executing {name} ...", flush=True)
        out = run(name, Path(args.out), params, timeout=args.cell_timeout)
        print(f"[thinkdiff] {name} done in {time.time() - t0:.0f} s -> {out}", flush=True)


if __name__ == "__main__":
    main()
