"""Glue between stages: every notebook gets its upstream artifacts from here, built and cached by config.

So any notebook can be opened first: ``get_store`` harvests if the store is missing,
``get_crosscoder`` trains if the checkpoint is missing, each keyed by the config that made it.
Defaults below are the embedded default's (the organism) and are what ``make demo`` runs.
"""
from __future__ import annotations

import dataclasses

from . import presets as _presets
from .harvest import HarvestConfig
from .train import ORGANISM_BATCHTOPK, ORGANISM_RELU, PAPER, TrainConfig

# Harvest corpus of the organism: documents, share that are teacher traces, seed (not the training seed).
ORGANISM_CORPUS = {"n_docs": 3000, "teacher_fraction": 0.5, "seed": 1}
SCHEMES = {"relu": ORGANISM_RELU, "batchtopk": ORGANISM_BATCHTOPK}

_PAIRS: dict = {}


def load_pair(preset: str = _presets.DEFAULT_PRESET):
    """The model pair of ``preset``, loaded once per process."""
    p = _presets.get_preset(preset)
    if p.name not in _PAIRS:
        _PAIRS[p.name] = _presets.load_pair(p)
    return _PAIRS[p.name]


def documents(pair, n_docs: int | None = None, teacher_fraction: float | None = None, seed: int | None = None,
              **corpus):
    """The harvest corpus of ``pair``: the organism's labelled documents, or streamed real data (hf presets).

    ``corpus`` (hf presets only) goes to ``realdata.harvest_corpus``: ``max_tokens``, ``min_tokens``, ``corpus``,
    ``shuffle_buffer``, and ``openthoughts_files`` / ``general_files`` (local json/jsonl/parquet files with the
    datasets' columns, which work offline)."""
    n_docs = ORGANISM_CORPUS["n_docs"] if n_docs is None else n_docs
    teacher_fraction = ORGANISM_CORPUS["teacher_fraction"] if teacher_fraction is None else teacher_fraction
    seed = ORGANISM_CORPUS["seed"] if seed is None else seed
    if pair.preset.kind == "organism":
        if corpus:
            raise ValueError(f"corpus options {sorted(corpus)} apply to real-data (hf) presets, not to the organism")
        from . import organism

        return organism.harvest_documents(pair.tokenizer, n_docs, teacher_fraction, seed)
    from . import realdata

    return realdata.harvest_corpus(pair.tokenizer, n_docs, teacher_fraction=teacher_fraction, seed=seed, **corpus)


def get_store(preset: str = _presets.DEFAULT_PRESET, n_docs: int | None = None, teacher_fraction: float | None = None,
              seed: int | None = None, progress: bool = True, corpus: dict | None = None, **harvest_overrides):
    """(pair, store): the paired activation store of ``preset``, harvested if not cached.

    ``corpus``: options of the real-data corpus (see ``documents``); ``harvest_overrides``: HarvestConfig fields."""
    pair = load_pair(preset)
    cfg = dataclasses.replace(HarvestConfig(layer=pair.layer), **harvest_overrides)
    docs = documents(pair, n_docs, teacher_fraction, seed, **(corpus or {}))
    from .harvest import get_store as _get_store

    return pair, _get_store(pair, docs, cfg, progress=progress)


def train_config(preset: str = _presets.DEFAULT_PRESET, scheme: str = "relu", **overrides) -> TrainConfig:
    """The named training config of ``preset`` and ``scheme`` with ``overrides`` applied (validated)."""
    p = _presets.get_preset(preset)
    if scheme not in SCHEMES:
        raise ValueError(f"unknown sparsity scheme {scheme!r}; choose one of {sorted(SCHEMES)}")
    base = SCHEMES[scheme] if p.train_config == "organism" else PAPER.replace(activation=scheme)
    return base.replace(**overrides).validate()


def get_crosscoder(preset: str = _presets.DEFAULT_PRESET, scheme: str = "relu", store=None, progress: bool = True,
                   **overrides):
    """The crosscoder of ``preset`` trained with ``scheme`` (cached by store + config)."""
    from .train import get_crosscoder as _get_crosscoder

    if store is None:
        _, store = get_store(preset, progress=progress)
    return _get_crosscoder(store, train_config(preset, scheme, **overrides), progress=progress)
