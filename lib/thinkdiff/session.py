"""The first call of every notebook: ``session.start(globals(), threads=THREADS)`` right after its parameters.

Kept free of heavy imports (no transformers, no huggingface_hub) so that importing it does not fix the hub's
offline setting before ``start`` chooses it.
"""
from __future__ import annotations

import ast
import os


def parameter_names(source: str) -> set[str]:
    """The names a parameters cell assigns at top level (``RUN = ...``)."""
    names = set()
    for node in ast.parse(source).body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


def refuse_unknown_parameters(namespace: dict) -> None:
    """Under papermill, a parameter the notebook does not declare (``-p N_DOCS 5``) is an error naming it, not a
    warning followed by a whole run that ignored it. Reads the kernel's input history (``In``): papermill's
    injected cell ("# Parameters") follows the declared one. Outside a kernel there is nothing to check."""
    history = list(namespace.get("In") or [])
    for i, src in enumerate(history):
        if i > 0 and src.lstrip().startswith("# Parameters"):
            unknown = parameter_names(src) - parameter_names(history[i - 1])
            if unknown:
                raise ValueError(f"parameter(s) {sorted(unknown)} are not this notebook's; it takes "
                                 f"{sorted(parameter_names(history[i - 1]))} (settings that decide results live "
                                 "in the run config: configs/<RUN>.toml)")


def start(namespace: dict, threads: int | None = None) -> None:
    """Prepare a notebook's kernel: the Hugging Face hub offline unless the environment says otherwise (every
    model and tokenizer comes from local files; a hub id fails fast instead of hanging), papermill parameters
    checked, and ``threads`` torch CPU threads when given (None: torch's default, one per core)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    refuse_unknown_parameters(namespace)
    if threads:
        import torch   # after the environment is set: torch itself reads none of it, but keep the order obvious

        torch.set_num_threads(int(threads))
