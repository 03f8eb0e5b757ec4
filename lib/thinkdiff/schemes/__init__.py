"""Sparsity schemes, one file each: its encode rule, its training loss (fast path), its dense reference loss
and the validation of its settings.

    relu_l1.py     the paper's ReLU + L1 (x decoder-norm sum)
    batchtopk.py   BatchTopK with a dead-latent auxiliary loss

A scheme module defines ``NAME``, ``USES_K``, ``check_config(k, n_latents, where)``, ``encode(crosscoder, pre,
batch_size)``, ``loss(trainer, x, step)`` and ``reference_loss(crosscoder, x, ...)``. Adding a scheme is one new
file and one line in ``SCHEMES``; the crosscoder, the trainer, the run configs and the notebooks read it from here.
"""
from __future__ import annotations

from . import batchtopk, relu_l1

SCHEMES = {relu_l1.NAME: relu_l1, batchtopk.NAME: batchtopk}


def get(name: str):
    """The scheme module called ``name``; a clear error for an unknown one."""
    if name not in SCHEMES:
        raise ValueError(f"unknown sparsity scheme {name!r}; choose one of {sorted(SCHEMES)}")
    return SCHEMES[name]
