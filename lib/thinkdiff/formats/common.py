"""What every layout's converter shares: reading a checkpoint's files, checking its keys, shapes and values with
errors that name the file and the key, and building thinkdiff's ``CrossCoder`` from encoder and decoder tensors.

Shapes are written with letters bound by the first tensor that uses them: ``L`` models (layers), ``d`` model
width, ``F`` latents. A checkpoint missing a key, holding a key the layout does not define, a tensor of the wrong
shape or a non-finite value is refused: the external loaders use ``strict=False`` in places, where a missing key
silently keeps its random initialisation.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..crosscoder import CrossCoder, CrossCoderConfig

COMPILED_PREFIX = "_orig_mod."   # keys of a model saved while torch.compile'd


class CheckpointError(ValueError):
    """An external checkpoint that cannot be imported; the message names the file and the key."""


def read_json(path: Path) -> dict:
    """A JSON object from ``path``; a clear error for an unreadable file or one that holds no object."""
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} cannot be read as JSON ({type(err).__name__}: {err})") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path} holds a JSON {type(raw).__name__}, not an object of settings")
    return raw


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file or a ``torch.save``'d state dict (loaded with ``weights_only``, so a
    pickle cannot run code), on the CPU, with a torch.compile ``_orig_mod.`` prefix removed from its keys."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            raw = load_file(str(path))
        else:
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:   # truncated, not a checkpoint, a pickle of other objects: name the file
        raise CheckpointError(f"{path} cannot be read as a checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise CheckpointError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    out = {}
    for key, value in raw.items():
        name = key.split(COMPILED_PREFIX, 1)[1] if COMPILED_PREFIX in key else key
        if name in out:
            raise CheckpointError(f"{path} holds key {name!r} twice (with and without {COMPILED_PREFIX!r})")
        out[name] = value
    return out


def check_keys(tensors: dict, spec: dict[str, tuple], path: Path, layout: str) -> dict[str, int]:
    """Check that ``tensors`` has exactly the keys of ``spec`` (key -> shape in letters) with those shapes;
    return the letters' sizes (``{"L": 2, "d": 64, "F": 1024}``)."""
    missing = [k for k in spec if k not in tensors]
    if missing:
        raise CheckpointError(f"{path} has no key {missing[0]!r}" + (f" (nor {missing[1:]})" if missing[1:] else "")
                              + f": a {layout} checkpoint holds {sorted(spec)}; it is incomplete or of another "
                              "layout, and loading it would leave that tensor at its initial value")
    extra = sorted(set(tensors) - set(spec))
    if extra:
        raise CheckpointError(f"{path} holds key(s) {extra} that a {layout} checkpoint does not define "
                              f"(expected {sorted(spec)}); it is of another layout or class")
    dims: dict[str, int] = {}
    for key, letters in spec.items():
        shape = tuple(tensors[key].shape)
        ok = len(shape) == len(letters) and all(dims.setdefault(a, n) == n for a, n in zip(letters, shape))
        if not ok:
            want = "[" + ", ".join(f"{a}={dims[a]}" if a in dims else a for a in letters) + "]"
            raise CheckpointError(f"{path}: key {key!r} has shape {list(shape)}, expected {want}")
    return dims


def check_finite(tensors: dict, keys, path: Path) -> None:
    """Every value of ``keys`` is finite (NaN or inf weights would poison every code they touch)."""
    for key in keys:
        if not torch.isfinite(tensors[key].double()).all():
            raise CheckpointError(f"{path}: key {key!r} holds non-finite values (NaN or inf)")


def build(W_enc, b_enc, W_dec, b_dec, *, activation: str = "relu", k: int | None = None, threshold=None,
          norm_scale=None, layer: int | None = None, origin: dict) -> CrossCoder:
    """thinkdiff's ``CrossCoder`` (float32, eval mode) from folded weights ``W_enc [L, d, F]``, ``b_enc [F]``,
    ``W_dec [F, L, d]``, ``b_dec [L, d]``: raw activations in and out, ``norm_scale`` [L] (raw -> the units its
    decoder norms and ``threshold`` are taken in) recorded, ``origin`` naming the checkpoint."""
    L, d, F = W_enc.shape
    cfg = CrossCoderConfig(d_model=int(d), n_latents=int(F), n_models=int(L), activation=activation, k=k,
                           layer=layer, norm_scale=None if norm_scale is None else [float(s) for s in norm_scale],
                           origin=origin)
    cc = CrossCoder(cfg, seed=None)
    with torch.no_grad():
        for name, value in (("W_enc", W_enc), ("b_enc", b_enc), ("W_dec", W_dec), ("b_dec", b_dec)):
            getattr(cc, name).copy_(torch.as_tensor(value).float())
        if threshold is not None:
            cc.threshold.fill_(float(threshold))
    return cc.eval()
