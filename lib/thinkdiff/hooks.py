"""The one residual-stream hook of thinkdiff: resid_pre of block L.

"resid_pre of block L" is the residual stream entering decoder block L: the output of decoder layer L - 1
(``hidden_states[L]`` of a transformers causal LM), and for L = 0 the token embedding. Harvest, metrics,
ablation, geometry and steering all read or change it through ``resid_hook``, so they agree on what "layer L"
means. (The harvest's nnsight trace reads the same module by its path, ``decoder_layers_path``.)
"""
from __future__ import annotations

import contextlib
from typing import Callable

import torch

LAYER_PATHS = ("model.layers", "model.decoder.layers", "transformer.h", "gpt_neox.layers")


def find_module(model, paths: tuple, kind: type = torch.nn.Module, what: str = "module") -> tuple[str, torch.nn.Module]:
    """(path, module): the first of the dotted attribute ``paths`` of ``model`` holding a ``kind``; an error naming
    ``what`` and the paths tried when none does."""
    for path in paths:
        obj = model
        for attr in path.split("."):
            obj = getattr(obj, attr, None)
        if isinstance(obj, kind):
            return path, obj
    raise ValueError(f"cannot find the {what} of {type(model).__name__} (tried {', '.join(paths)})")


def decoder_layers_path(model) -> str:
    """The attribute path of the decoder-layer list (``"model.layers"`` for Qwen2 / Llama)."""
    return find_module(model, LAYER_PATHS, torch.nn.ModuleList, "decoder layers")[0]


def decoder_layers(model) -> torch.nn.ModuleList:
    obj = model
    for attr in decoder_layers_path(model).split("."):
        obj = getattr(obj, attr)
    return obj


def resid_module(model, layer: int) -> torch.nn.Module:
    """The module whose output is resid_pre of block ``layer`` (0 <= layer <= n_layers; 0 = the embedding)."""
    layers = decoder_layers(model)
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer <= len(layers):
        raise ValueError(f"hook layer L={layer!r} is out of range 0..{len(layers)} (resid_pre of block L; the model "
                         f"has {len(layers)} blocks)")
    return model.get_input_embeddings() if layer == 0 else layers[layer - 1]


@contextlib.contextmanager
def resid_hook(model, layer: int, fn: Callable[[torch.Tensor], torch.Tensor | None]):
    """While active, every forward pass calls ``fn(h)`` on resid_pre of block ``layer``, ``h`` [batch, T, d];
    a returned tensor replaces it (splicing, steering), ``None`` leaves it as is (reading)."""
    def hook(_module, _inp, out):
        h = out[0] if isinstance(out, tuple) else out
        new = fn(h)
        if new is None:
            return None
        return (new,) + tuple(out[1:]) if isinstance(out, tuple) else new

    handle = resid_module(model, layer).register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


class _PassThrough(torch.nn.Module):
    """Stands in for a decoder block whose output nobody reads: returns its input hidden states unchanged."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


@contextlib.contextmanager
def _skip_below(model, layer: int):
    """While active, decoder blocks ``0 .. layer - 2`` pass their input through instead of computing (block
    ``layer - 1`` still runs: the hook lives on it). The blocks are put back on exit, also after an error."""
    layers = decoder_layers(model)
    kept = [layers[i] for i in range(max(0, layer - 1))]
    try:
        for i in range(len(kept)):
            layers[i] = _PassThrough()
        yield
    finally:
        for i, m in enumerate(kept):
            layers[i] = m


@contextlib.contextmanager
def resid_replaced(model, layer: int, value: torch.Tensor):
    """While active, resid_pre of block ``layer`` is ``value`` [batch, T, d] at every position of every forward.

    What the blocks below would compute is overwritten, so they are skipped (passed through): the forward costs
    only the blocks from ``layer`` up and gives the output of a full forward with the same replacement."""
    resid_module(model, layer)       # validates the layer
    with _skip_below(model, layer), resid_hook(model, layer, lambda h: value.to(h.dtype)):
        yield
