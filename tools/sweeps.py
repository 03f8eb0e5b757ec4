"""What the sweep scripts in tools/ share: their command line and the pipe table they write."""
import argparse

import pandas as pd
import torch


def markdown(df: pd.DataFrame) -> str:
    """A pipe table (pandas' to_markdown needs an extra package)."""
    cols = list(df.columns)
    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in df.itertuples(index=False)]
    return "\n".join(lines)


def arguments(doc: str, out: str, run_help: str = "a run config (configs/<run>.toml)", **extra) -> argparse.Namespace:
    """``--run`` (default organism-m), ``--out`` (default ``out``), ``--threads`` (also set for torch) and
    ``extra`` options given as ``name=default``."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--run", default="organism-m", help=run_help)
    ap.add_argument("--out", default=out)
    ap.add_argument("--threads", type=int, default=2)
    for name, default in extra.items():
        ap.add_argument(f"--{name}", default=default)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    return args
