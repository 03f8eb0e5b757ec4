"""Kissane's crosscoder layout (the open replication of Anthropic's model-diffing crosscoder), as defined in
ckkissane/crosscoder-model-diff-replication, ``crosscoder.py`` (``CrossCoder``, ``load_from_hf``, ``save``) and
``buffer.py`` at commit e221e8d2856be6a2005716d8410bf4ef9a4b8277 (October 2024).

Files: ``cfg.json`` (``d_in``, ``dict_size``, ``hook_point``, ``enc_dtype``, ...) + ``cc_weights.pt`` (their Hub
layout, ``<hook point>/cfg.json`` and ``<hook point>/cc_weights.pt``), or a local save ``<version>.pt`` beside
``<version>_cfg.json``. The ``.pt`` is ``torch.save(state_dict)``: ``W_enc [2, d, F]``, ``b_enc [F]``,
``W_dec [F, 2, d]``, ``b_dec [2, d]``.

Their forward pass on *normalised* activations ``x'_m = x_m * s_m``::

    f       = relu(sum_m x'_m @ W_enc[m] + b_enc)
    xhat'_m = f @ W_dec[:, m] + b_dec[m]

where ``s_m = sqrt(d_model) / mean ||x_m||`` is estimated by their activation buffer and not saved with the
weights (their README: fold it in for analysis). It is the estimator thinkdiff's stores use, so a run imports the
checkpoint with its store's ``norm_scale``; folded: ``W_enc[m] * s_m``, ``W_dec[:, m] / s_m``, ``b_dec[m] / s_m``
(thinkdiff's own ``fold``), taking and returning raw activations.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from ..crosscoder import CrossCoder
from .common import CheckpointError, build, check_finite, check_keys, read_json, read_tensors

NAME = "kissane"
NEEDS_SCALE = True      # the activation scale is not in the checkpoint: the store's is folded in
EXPECTS = "a folder with cfg.json + cc_weights.pt, or <version>.pt beside <version>_cfg.json"
CONFIG, WEIGHTS = "cfg.json", "cc_weights.pt"
KEYS = {"W_enc": ("L", "d", "F"), "b_enc": ("F",), "W_dec": ("F", "L", "d"), "b_dec": ("L", "d")}
HOOK = re.compile(r"blocks\.(\d+)\.hook_resid_(pre|post)")   # TransformerLens names; resid_post L = resid_pre L+1


def resolve(path: Path) -> dict | None:
    """The checkpoint's files ``{"weights", "config"}`` if ``path`` is in this layout, else None."""
    if path.is_dir():
        return {"weights": path / WEIGHTS, "config": path / CONFIG} if (path / WEIGHTS).is_file() and (path / CONFIG).is_file() else None
    if path.suffix == ".pt":
        cfg = path.with_name(CONFIG if path.name == WEIGHTS else f"{path.stem}_cfg.json")
        return {"weights": path, "config": cfg} if cfg.is_file() else None
    return None


def _layer(cfg: dict, cfg_path: Path) -> int | None:
    """The block whose resid_pre the crosscoder read (``hook_point``), None when the config does not say."""
    hook = cfg.get("hook_point")
    if hook is None:
        return None
    m = HOOK.fullmatch(str(hook))
    if not m:
        raise CheckpointError(f"{cfg_path}: hook_point {hook!r} is not the residual stream (blocks.<L>.hook_resid_pre "
                              "or _post); thinkdiff's stores hold resid_pre activations")
    return int(m.group(1)) + (m.group(2) == "post")


def load(files: dict, norm_scale, sha256: str) -> CrossCoder:
    """thinkdiff's ``CrossCoder`` equal to the checkpoint's forward pass with ``norm_scale`` [2] folded in."""
    path, cfg_path = files["weights"], files["config"]
    cfg = read_json(cfg_path)
    t = read_tensors(path)
    dims = check_keys(t, KEYS, path, "Kissane crosscoder")
    if dims["L"] != 2:
        raise CheckpointError(f"{path}: key 'W_enc' reads {dims['L']} models; their CrossCoder is hard-coded to 2")
    for key, letter in (("d_in", "d"), ("dict_size", "F")):
        if key not in cfg:
            raise CheckpointError(f"{cfg_path} has no key {key!r} (their CrossCoder is built from it)")
        if cfg[key] != dims[letter]:
            raise CheckpointError(f"{cfg_path}: {key} = {cfg[key]!r} but the weights have {letter} = {dims[letter]}")
    check_finite(t, KEYS, path)
    if norm_scale is None:
        raise CheckpointError(f"{path}: Kissane's checkpoints do not store the activation scale they were trained "
                              "with (sqrt(d_model) / mean norm per model); pass norm_scale, e.g. the store's "
                              "store.norm_scale, as a run config's `from` does")
    s = torch.as_tensor(norm_scale, dtype=torch.float64).reshape(-1)
    if s.numel() != 2 or not (torch.isfinite(s) & (s > 0)).all():
        raise ValueError(f"norm_scale must be 2 positive finite numbers, got {s.tolist()}")
    W_enc, W_dec = t["W_enc"].double() * s[:, None, None], t["W_dec"].double() / s[None, :, None]
    origin = {"format": NAME, "file": str(path), "sha256": sha256, "scale": "store", "class": "CrossCoder"}
    return build(W_enc, t["b_enc"].double(), W_dec, t["b_dec"].double() / s[:, None], norm_scale=s,
                 layer=_layer(cfg, cfg_path), origin=origin)
