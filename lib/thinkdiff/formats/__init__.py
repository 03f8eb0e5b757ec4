"""Crosscoders trained elsewhere, one file per layout, converted into thinkdiff's ``CrossCoder``:

    crosscoder_learning.py   science-of-finetuning's CrossCoder / BatchTopKCrossCoder (diffing-toolkit); export too
    kissane.py               Kissane's replication of Anthropic's model-diffing crosscoder

A layout module defines ``NAME``, ``NEEDS_SCALE`` (True when the checkpoint lacks its activation scale, so the
store's is folded in), ``EXPECTS`` (its files, for errors), ``resolve(path) -> {"weights", "config"} | None``
(from file names only: cheap) and ``load(files, norm_scale, sha256) -> CrossCoder`` (the external normalisation
folded into the weights, ``config.origin`` naming the checkpoint); ``save(cc, folder)`` where thinkdiff exports to
it. Adding a layout is one file and one line in ``FORMATS``.

``import_crosscoder(path, store, scheme)`` is what a run config's ``[train.<scheme>] from = "<path>"`` does: it
checks the checkpoint against the store (models, width, layer, scheme) before any analysis, records the store's
provenance and caches the converted crosscoder under a key of the store and the checkpoint's *content* hash.
"""
from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from .. import paths
from ..crosscoder import CrossCoder
from ..train import store_hash
from . import crosscoder_learning, kissane
from .common import CheckpointError

FORMATS = {kissane.NAME: kissane, crosscoder_learning.NAME: crosscoder_learning}


def detect(path) -> tuple:
    """(layout module, its files) of the checkpoint at ``path`` (a folder or a file); a clear error when no layout
    or more than one claims it."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"no crosscoder checkpoint at {path}")
    found = [(m, f) for m in FORMATS.values() if (f := m.resolve(path)) is not None]
    if not found:
        raise CheckpointError(f"{path} is in no crosscoder layout thinkdiff imports; "
                              + "; ".join(f"{m.NAME}: {m.EXPECTS}" for m in FORMATS.values())
                              + " (a folder thinkdiff saved is loaded with CrossCoder.from_pretrained, not imported)")
    if len(found) > 1:
        raise CheckpointError(f"{path} matches several layouts ({', '.join(m.NAME for m, _ in found)}); name the "
                              "weights file itself")
    return found[0]


@functools.lru_cache(maxsize=64)
def _digest(files: tuple, stamp: tuple) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update((paths.sha256_file(Path(f)) if f else "-").encode())
    return h.hexdigest()


def digest(files: dict) -> str:
    """sha256 over the checkpoint's files' contents (weights, then config): its identity, whatever its path.
    Computed once per process per file version (path, size, modification time)."""
    order = tuple(str(files[k]) if files.get(k) else "" for k in ("weights", "config"))
    stamp = tuple((Path(f).stat().st_size, Path(f).stat().st_mtime_ns) if f else None for f in order)
    return _digest(order, stamp)


def load(path, norm_scale=None) -> CrossCoder:
    """The checkpoint at ``path`` as thinkdiff's ``CrossCoder`` (eval mode, raw activations in and out);
    ``norm_scale`` [n_models]: the activation scale to fold in, for layouts that do not store theirs."""
    fmt, files = detect(path)
    return fmt.load(files, norm_scale, digest(files))


def export(cc: CrossCoder, folder, layout: str = crosscoder_learning.NAME) -> Path:
    """Write ``cc`` into the new folder ``folder`` in ``layout`` (atomically), for that layout's own tools."""
    fmt = FORMATS.get(layout)
    if fmt is None or not hasattr(fmt, "save"):
        raise ValueError(f"thinkdiff exports to {[n for n, m in FORMATS.items() if hasattr(m, 'save')]}, not {layout!r}")
    return fmt.save(cc, folder)


def import_key(path, store, scheme: str) -> str:
    """The cache key of the checkpoint at ``path`` imported as ``scheme`` for ``store``: the store's hash and the
    checkpoint's layout and content hash (moving the file changes nothing; editing it makes a new import)."""
    fmt, files = detect(path)
    return paths.config_hash({"store": store_hash(store), "import": {"format": fmt.NAME, "sha256": digest(files),
                                                                     "scheme": scheme}})


def _check_fits(cc: CrossCoder, store, scheme: str, where) -> None:
    """Refuse a checkpoint that cannot read ``store`` or is not the ``scheme`` it is imported as, naming it."""
    problems = []
    if (cc.n_models, cc.d_model) != (store.n_models, store.d_model):
        problems.append(f"it reads {cc.n_models} models of width {cc.d_model}, the store holds {store.n_models} of "
                        f"width {store.d_model} (a crosscoder of another model pair)")
    layer = getattr(store, "layer", None)
    if cc.config.layer is not None and layer is not None and cc.config.layer != layer:
        problems.append(f"it was trained at layer {cc.config.layer}, the store is hooked at layer {layer}")
    if cc.config.activation != scheme:
        problems.append(f"it is a {cc.config.activation} crosscoder ({cc.config.origin.get('class', 'its class')}), "
                        f"imported as [train.{scheme}]")
    if problems:
        raise CheckpointError(f"{where} does not fit the run's activation store "
                              f"{getattr(store, 'path', type(store).__name__)}: " + "; ".join(problems))


def import_crosscoder(path, store, scheme: str, out_root=None, device="cpu") -> CrossCoder:
    """The checkpoint at ``path`` converted for ``store`` as the run's ``scheme`` crosscoder, cached.

    Checked before anything is written: the layout's keys, shapes and values, then the store's models, width
    and layer (where the checkpoint records it) and the scheme. The result carries the store's hash and layer,
    so thinkdiff's provenance check refuses it on any other store; it is cached as a thinkdiff crosscoder under
    ``<out_root or RUNS_DIR/crosscoder>/<import_key>/``."""
    fmt, files = detect(path)
    root = Path(out_root) if out_root is not None else Path(paths.RUNS_DIR) / "crosscoder"
    final = root / import_key(path, store, scheme)
    with paths.writer_lock(final):
        if not final.exists():
            cc = fmt.load(files, store.norm_scale if fmt.NEEDS_SCALE else None, digest(files))
            _check_fits(cc, store, scheme, files["weights"])
            cc.config.layer = getattr(store, "layer", None) if cc.config.layer is None else cc.config.layer
            cc.config.store_hash = store_hash(store)
            cc.check_compatible(store)
            with paths.atomic_dir(final) as tmp:
                cc.save_pretrained(tmp)
    cc = CrossCoder.from_pretrained(final, device=device)
    cc.check_compatible(store)
    return cc
