"""Glue between stages: every notebook gets its upstream artifacts from here, built and cached by config.

``load_run(name)`` reads the run config (``configs/<name>.toml``, see ``runconfig``) and returns a
``Run``: the pair, its activation store, one crosscoder per sparsity scheme, their encoded codes, relative norms
and (where the store has planted labels) ground truth, each built on first use or loaded from the cache. So any
notebook can be opened first, and every notebook of a run sees the same artifacts.

Cache keys chain: the store's key holds the models, layer and corpus; a crosscoder's holds the store's hash and
its training config; ``Run.key(stage)`` (what analysis caches and report records are keyed on) holds the
crosscoders' keys and the stage's settings. A changed setting rebuilds what depends on it and nothing else.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from . import adl, formats, label, lexicon, pairs, paths, runconfig, stream
from .codes import encode_store
from .harvest import HarvestConfig, get_store, model_identity
from .norms import relative_norm
from .train import TrainConfig, cache_key, get_crosscoder, store_hash

_PAIRS: dict = {}


def load_pair(name: str, layer: int | None = None, model_dtype: str = "auto"):
    """The model pair ``name`` (hooked at ``layer``, None: the pair's; weights computing in ``model_dtype``, see
    ``pairs.load``), loaded once per process."""
    spec = pairs.get(name)
    if (spec.name, layer, model_dtype) not in _PAIRS:
        _PAIRS[(spec.name, layer, model_dtype)] = pairs.load(spec, layer, model_dtype)
    return _PAIRS[(spec.name, layer, model_dtype)]


def documents(pair, n_docs: int, teacher_fraction: float, seed: int, **corpus):
    """The harvest corpus of ``pair`` (its kind's ``documents``): ``n_docs`` documents, ``teacher_fraction`` of
    them reasoning traces, drawn with ``seed``; ``corpus`` holds the kind's own options (``[harvest.corpus]``)."""
    return pair.spec.kind_plugin.documents(pair, n_docs, teacher_fraction, seed, **corpus)


EVALUATE_KEYS = ("n_eval", "max_new_tokens", "seed", "math_set", "math_files")


def pair_evaluation(name: str, settings: dict, progress: bool = True) -> dict:
    """Both models of the pair ``name`` on the held-out problems of an ``[evaluate]`` table (its task's
    ``evaluate_pair``), computed once and cached.

    One accuracy number per model and size: ``00`` and ``05`` read the same evaluation. The cache key holds the
    models' identities (weight hashes) and the settings that decide the result (``EVALUATE_KEYS``), under
    ``runs/evaluate/<hash>/evaluation.json``. Returns ``{"base": result, "distilled": result}``."""
    pair = load_pair(name)
    kept = {k: settings[k] for k in EVALUATE_KEYS if k in settings}
    key = {"preset": pair.spec.name, "models": [model_identity(m) for m in pair.models],
           "settings": kept, "version": 4}   # 2: smollm2 generations drop finished rows; 3: accuracy_well_formed;
    # 4: every task generates with one loop (per-prompt sampling seeds)
    folder = paths.artifact_dir("evaluate", key)
    with paths.writer_lock(folder):   # one process evaluates; a second waits and reads its result
        if (folder / "evaluation.json").exists():
            return json.loads((folder / "evaluation.json").read_text())
        out = pair.task.evaluate_pair(pair, {**settings, **kept}, progress)
        with paths.atomic_dir(folder) as tmp:
            (tmp / "evaluation.json").write_text(json.dumps({**out, "key": key}, default=float))
    return out


STAGES = ("evaluate", "harvest", "train", "label", "steer", "geometry", "adl")


class Run:
    """Everything one run config decides, built or loaded lazily (index 0 = base, 1 = distilled everywhere).

    ``config``: the ``RunConfig``; ``pair``, ``store``, ``crosscoders`` (scheme -> CrossCoder, the first scheme
    is the main one), ``codes(scheme)`` (``codes.SparseActs`` over the whole store), ``relative_norms(scheme)``
    ([n_latents], 1 = distilled-only), ``has_labels`` and ``ground_truth(scheme)`` (organism runs only),
    ``adl_difference`` (the Activation Difference Lens's mean difference, from the store).
    """

    def __init__(self, config, progress: bool = True):
        self.config = config
        self.progress = progress
        self._codes: dict = {}
        self._crosscoders: dict = {}

    def __repr__(self) -> str:
        return f"Run({self.name!r}, preset={self.config.preset!r}, schemes={self.config.schemes}, smoke={self.config.smoke})"

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def pair_spec(self):
        """The pair as data (``pairs.PairSpec``): no model is loaded."""
        return pairs.get(self.config.preset)

    @property
    def task(self):
        """What the pair is evaluated on (``tasks.Task``)."""
        return self.pair_spec.task_plugin

    @property
    def tested(self) -> bool:
        """False for smoke runs: claims and targets are then reported as "not tested"."""
        return self.config.tested

    @property
    def pair(self):
        return load_pair(self.config.preset, self.config.harvest["layer"], self.config.model_dtype)

    def harvest_config(self) -> HarvestConfig:
        fields = runconfig.harvest_fields(self.config.harvest)
        fields["layer"] = self.pair.layer
        return HarvestConfig(**fields).validate()

    def documents(self, n_docs: int | None = None, seed: int | None = None):
        """The run's harvest corpus (``n_docs``/``seed`` given: another draw of the same kind, e.g. held-out)."""
        h = self.config.harvest
        return documents(self.pair, h["n_docs"] if n_docs is None else n_docs, h["teacher_fraction"],
                         h["seed"] if seed is None else seed, **h["corpus"])

    def heldout_documents(self, n_docs: int | None = None) -> list:
        """The first ``n_docs`` (default all) documents of the store's held-out split, in corpus order: text the
        crosscoders never trained on."""
        meta = self.store.meta
        held = np.unique(meta["doc_id"][meta["split"] == 1])
        docs = self.documents()
        return [docs[int(i)] for i in held[:n_docs]]

    @property
    def streams(self) -> bool:
        """True for ``[harvest] mode = "stream"``: activations pass through a bounded ring (``thinkdiff.stream``)."""
        return self.config.harvest["mode"] == "stream"

    @functools.cached_property
    def store(self):
        if self.streams:
            raise ValueError(f"run {self.name!r} streams its activations ([harvest] mode = \"stream\"), so it keeps no "
                             "store: run.crosscoder() trains through the ring; stages that read a store (codes, "
                             "labels, steering) need mode = \"store\"")
        return get_store(self.pair, self.documents(), self.harvest_config(), progress=self.progress)

    @property
    def has_null(self) -> bool:
        """True when the pair has a control model (the base fine-tuned without distillation) for claim 1's null and
        every crosscoder was trained here: an imported one has no recipe to train the null's crosscoders with."""
        return not self.config.imports and self.pair.control is not None

    @functools.cached_property
    def null_store(self):
        """The control store of claim 1: the base paired with its *control* fine-tune (the same recipe and budget
        on base-corpus text, no traces) on the run's corpus. Unlike the base paired with itself, whose halves are
        identical so that no latent can leave relative norm 0.5, this null can produce exclusive latents: any
        fine-tuning moves some directions, and claim 1 asks for more than that."""
        p = self.pair
        if p.control is None:
            raise ValueError(f"run {self.name!r} ({self.config.preset}): the pair has no control model (the base "
                             "fine-tuned with the same recipe, no distillation), so claim 1 has no null to beat")
        null_pair = SimpleNamespace(base=p.base, distilled=p.control, tokenizer=p.tokenizer,
                                    tokenizer_distilled=p.tokenizer, layer=p.layer)
        return get_store(null_pair, self.documents(), self.harvest_config(), progress=self.progress)

    def null_crosscoders(self, scheme: str | None = None, seeds=(1, 2)) -> list:
        """Crosscoders trained exactly like ``scheme``'s but on ``null_store`` with other seeds: what a pair with no
        distillation gives (relative norms, exclusive latents) and how much that varies from seed to seed."""
        cfg = self.train_config(scheme)
        return [get_crosscoder(self.null_store, cfg.replace(seed=cfg.seed + s), progress=self.progress) for s in seeds]

    def sibling(self, name: str) -> "Run":
        """The run ``name`` as this run's config resolves names (its own folder first, then ``configs/``)."""
        if name == self.name:
            return self
        folder = Path(self.config.source).parent if self.config.source.endswith(".toml") else None
        return load_run(runconfig.config_path(name, folder), progress=self.progress)

    def train_config(self, scheme: str | None = None) -> TrainConfig:
        scheme = scheme or self.config.schemes[0]
        if scheme not in self.config.train:
            raise ValueError(f"run {self.name!r} trains {self.config.schemes}, not {scheme!r}")
        if scheme in self.config.imports:
            raise ValueError(f"run {self.name!r} imports its {scheme} crosscoder from {self.config.imports[scheme]} "
                             f"([train.{scheme}] from): it was trained elsewhere, so the run has no training settings "
                             "for it")
        d = dict(self.config.train[scheme])
        d["betas"] = tuple(d["betas"])
        return TrainConfig(**d).validate()

    def crosscoder(self, scheme: str | None = None):
        """The crosscoder of ``scheme`` (default: the main one), trained on first use and cached by key; imported
        from its checkpoint instead where the run config says ``[train.<scheme>] from``."""
        scheme = scheme or self.config.schemes[0]
        if scheme not in self._crosscoders:
            if scheme in self.config.imports:
                cc = formats.import_crosscoder(self.config.imports[scheme], self.store, scheme)
            elif self.streams:
                cc = stream.get_crosscoder(self.pair, self.documents(), self.harvest_config(), self.train_config(scheme),
                                           stream.StreamConfig(**self.config.harvest["stream"]), progress=self.progress)
            else:
                cc = get_crosscoder(self.store, self.train_config(scheme), progress=self.progress)
            self._crosscoders[scheme] = cc
        return self._crosscoders[scheme]

    @property
    def crosscoders(self) -> dict:
        return {s: self.crosscoder(s) for s in self.config.schemes}

    def crosscoder_key(self, scheme: str | None = None) -> str:
        """The cache key of ``scheme``'s crosscoder (store hash + training config, or an imported checkpoint's
        content hash); needs no training."""
        scheme = scheme or self.config.schemes[0]
        if scheme in self.config.imports:
            return formats.import_key(self.config.imports[scheme], self.store, scheme)
        return cache_key(self.store, self.train_config(scheme))

    def codes(self, scheme: str | None = None):
        """The crosscoder's activations over every store token, kept sparse (``codes.SparseActs``)."""
        scheme = scheme or self.config.schemes[0]
        if scheme not in self._codes:
            self._codes[scheme] = encode_store(self.crosscoder(scheme), self.store)
        return self._codes[scheme]

    def relative_norms(self, scheme: str | None = None, p: float = 2):
        """[n_latents] ``||d_distilled|| / (||d_base|| + ||d_distilled||)`` of ``scheme``'s decoder."""
        return relative_norm(self.crosscoder(scheme), p=p)

    @functools.cached_property
    def adl_difference(self) -> dict:
        """The Activation Difference Lens's mean difference (``adl``), read from the store (no forward pass): over
        the first ``[adl] first_tokens`` stored positions of the first ``[adl] n_texts`` documents. Returns
        ``delta`` [d] (distilled - base, raw units), ``per_position`` [first_tokens, d], ``counts`` (tokens per
        position), ``n_texts`` (documents used: fewer than asked where the store holds fewer), ``n_tokens`` and
        ``mean_norm`` [2] (the mean ||h|| of base and distilled on the same tokens)."""
        A = self.config.adl
        meta = self.store.meta
        rows, offset = adl.first_token_rows(meta["doc_id"], meta["pos"], A["first_tokens"], A["n_texts"])
        acts = self.store.acts(rows)
        delta, per, counts = adl.mean_difference(acts, offset, A["first_tokens"])
        return {"delta": delta, "per_position": per, "counts": counts, "rows": rows, "n_tokens": len(rows),
                "n_texts": len(np.unique(meta["doc_id"][rows])),
                "mean_norm": np.linalg.norm(np.asarray(acts, np.float64), axis=-1).mean(0)}

    @property
    def has_labels(self) -> bool:
        """True when the store carries planted token labels (the organism's teacher moves)."""
        lab = self.store.meta.get("label") if hasattr(self.store.meta, "get") else None
        return lab is not None and bool((lab >= 0).any() and (lab > 0).any())

    @property
    def has_planted_gate(self) -> bool:
        """True when the store carries planted labels and the run's task plants the gated connective, the
        distilled-only concept ``planted`` checks (the organism's teacher; other teachers pick connectives freely)."""
        return self.has_labels and self.task.plants_gate

    def ground_truth(self, scheme: str | None = None):
        """``label.GroundTruth`` of ``scheme`` against the planted labels; a clear error where there are none."""
        if not self.has_labels:
            raise ValueError(f"run {self.name!r} ({self.config.preset}) has no planted labels: ground truth exists "
                             "only for the organism")
        return label.ground_truth_auroc(self.codes(scheme), self.store.meta["label"], self.relative_norms(scheme))

    def category_scores(self, scheme: str | None = None):
        """(scores [n_latents x 4 categories], what they are): each latent's held-out-free score per reasoning
        category. Planted labels give the ground-truth AUROC; without them, the ReasonScore over the lexicon
        with the run's ``[label]`` settings (the paper's kind of evidence)."""
        if self.has_labels:
            return self.ground_truth(scheme).auroc, "ground-truth AUROC"
        L = self.config.label
        tok = self.pair.tokenizer
        rs = label.reason_scores(self.codes(scheme), lexicon.Lexicon(tok), self.store.meta, alpha=L["reasonscore_alpha"],
                                 before=L["window"][0], after=L["window"][1], special_ids=tok.all_special_ids)
        return rs.score, "ReasonScore"

    def key(self, stage: str) -> dict:
        """What a stage's results depend on: its own settings and every upstream artifact's key.

        ``evaluate`` (00) depends on the pair alone; ``harvest`` on the store; ``train``, ``label``, ``steer``,
        ``geometry`` and ``adl`` on the store and every crosscoder (``steer`` on the ``[adl]`` settings too). Hash it
        (``key_hash``) for a cache folder or a report record."""
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; stages: {STAGES}")
        out = {"stage": stage, "preset": self.config.preset, "layer": self.config.harvest["layer"],
               "settings": getattr(self.config, stage, None),
               "model_dtype": pairs.weights_precision(self.config.preset, self.config.model_dtype)["dtype"]}
        if stage != "evaluate":
            out["store"] = store_hash(self.store)
        if stage == "steer":   # 04 steers with the ADL direction too
            out["adl"] = self.config.adl
        if stage not in ("evaluate", "harvest"):
            out["crosscoders"] = {s: self.crosscoder_key(s) for s in self.config.schemes}
            # the order matters (the first scheme is the main one) and a dict's keys are hashed sorted
            out["schemes"] = list(self.config.schemes)
        return out

    def key_hash(self, stage: str) -> str:
        return paths.config_hash(self.key(stage))


def load_run(run=runconfig.DEFAULT_RUN, overrides: dict | None = None, progress: bool = True) -> Run:
    """The run named ``run`` (``configs/<run>.toml``, a ``.toml`` path, or a ``RunConfig``), validated up front.

    Nothing is built until asked for: ``run.store`` harvests, ``run.crosscoder()`` trains, each only if not
    cached. ``overrides`` (``{"train.relu.n_steps": 500}``) make a visibly different run (see ``runconfig.load``)."""
    return Run(runconfig.load(run, overrides), progress=progress)
