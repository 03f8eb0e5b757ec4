"""Paired activation harvesting: run base and distilled on the same token ids, store resid_pre of block L.

    store = get_store(pair, documents, HarvestConfig(layer=4))        # cached by config, resumable
    store = harvest_pair(base, distilled, tok_base, tok_distilled, documents, cfg, out_dir=...)

Both models see identical token ids (checked: the two tokenizers must encode every document the same
way). Each model runs once per batch, under ``torch.no_grad()``, through nnsight, and the trace stops
right after decoder layer ``L - 1`` (resid_pre of block L = ``hidden_states[L]``), so no compute is spent
above the hook. Batches are right-padded with an attention mask; only real positions are stored.

Documents are processed in a fixed order (train documents, then held-out ones) in fixed batches, and
a shard always closes at a batch boundary, so an interrupted harvest resumes at the batch after its
last complete shard and ends byte-identical to an uninterrupted one.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import paths, precision
from .hooks import decoder_layers_path
from .store import (ActivationStore, MANIFEST, META_DTYPE, StoreWriter, canonical_key, check_dtype, key_differences,
                    to_storage)

STAGE = "harvest"


COMPUTE_DTYPES = ("float32", "bfloat16", "auto")
# compute_dtype="auto" picks bf16 autocast when a batch's forward under it takes at most BF16_MAX_TIME_RATIO of the
# float32 time and its activations differ from float32's by at most BF16_TOLERANCE (relative L2 error, worst model).
# Measured: SmolLM2-135M on one core 0.37x the time at 0.4 % error; the organism's tiny models gain little.
BF16_TOLERANCE = 0.01
BF16_MAX_TIME_RATIO = 0.8


@dataclass
class HarvestConfig:
    """What to harvest and how. Token counts are in tokens (positions), lengths in tokens.

    layer: hook at resid_pre of block ``layer`` (1..n_layers); None = the pair's layer, else n_layers // 2.
    batch_size: documents per forward pass. max_seq_len: documents are truncated to this many tokens.
    max_tokens: token budget; documents are taken in order until their (truncated) lengths reach it.
    drop_first_position: exclude position 0 of every document (an attention sink in real models).
    outlier_norm_multiple: exclude positions whose L2 norm exceeds this multiple of the median norm in
        either model (None = keep all); the median is measured once, on the first
        ``outlier_calibration_tokens`` positions in harvest order, and recorded.
    shard_tokens: a shard closes at the first batch boundary at or after this many tokens.
    dtype: storage dtype, 'float32' | 'float16' | 'bfloat16'.
    compute_dtype: the models' forward: 'float32' (default; the organism's tiny models gain nothing from bf16),
        'bfloat16' (autocast; weights stay as loaded) or 'auto' (bf16 autocast where it pays on this machine:
        see ``choose_compute``). The choice, its timing and its error against float32 go in the manifest. A run
        config sets it per pair from ``benchmarks/bench_harvest.py`` (``auto`` decides by a timing, which on a
        busy machine can go either way for a model where bf16 barely pays).
    heldout_fraction: fraction of documents (chosen by a hash of their ``group``, else of their token ids, and
        heldout_seed, so a document keeps its split when the corpus grows) stored as the held-out split.
    """
    layer: int | None = None
    batch_size: int = 32
    max_seq_len: int = 256
    max_tokens: int | None = None
    drop_first_position: bool = True
    outlier_norm_multiple: float | None = None
    outlier_calibration_tokens: int = 16384
    shard_tokens: int = 65536
    dtype: str = "float32"
    compute_dtype: str = "float32"
    heldout_fraction: float = 0.1
    heldout_seed: int = 0

    def validate(self) -> "HarvestConfig":
        def pos_int(name):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"HarvestConfig.{name} must be a positive integer, got {v!r}")
        for name in ("batch_size", "max_seq_len", "shard_tokens", "outlier_calibration_tokens"):
            pos_int(name)
        if self.layer is not None and (isinstance(self.layer, bool) or not isinstance(self.layer, int)):
            raise ValueError(f"HarvestConfig.layer must be an integer or None, got {self.layer!r}")  # range: needs the model
        if self.max_tokens is not None:
            pos_int("max_tokens")
        if self.outlier_norm_multiple is not None and not (self.outlier_norm_multiple > 1):
            raise ValueError(f"HarvestConfig.outlier_norm_multiple must be > 1 (a multiple of the median norm) or None, "
                             f"got {self.outlier_norm_multiple!r}")
        if not 0 <= self.heldout_fraction < 1:
            raise ValueError(f"HarvestConfig.heldout_fraction must be in [0, 1), got {self.heldout_fraction!r}")
        check_dtype(self.dtype)
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(f"HarvestConfig.compute_dtype must be one of {COMPUTE_DTYPES}, got {self.compute_dtype!r}")
        return self


# ----------------------------------------------------------------------------- documents

@dataclass
class _Doc:
    ids: np.ndarray      # [T] int64 token ids (truncated)
    labels: np.ndarray   # [T] int8 category ids, -1 = unlabelled
    marker: np.ndarray   # [T] bool
    text: str
    kind: str
    n_truncated: int
    group: str = ""      # documents of one group share a split (e.g. traces of one problem); "" = by its tokens


def _field(doc, name, default=None):
    if isinstance(doc, dict):
        return doc.get(name, default)
    return getattr(doc, name, default)


def prepare_documents(documents, tokenizer, cfg: HarvestConfig) -> list[_Doc]:
    """Normalise documents (``str``, dicts or objects with ``text`` and optional ``input_ids``, ``labels``,
    ``marker``, ``kind``), tokenize those without ids with ``tokenizer``, truncate, apply the budget."""
    if isinstance(documents, (str, bytes)):
        raise TypeError("documents is one string; pass a list of documents (e.g. [text]), not a bare string, "
                        "which would be read character by character")
    if documents is None or not hasattr(documents, "__len__"):
        raise TypeError(f"documents must be a list (or other sized sequence) of documents, got "
                        f"{type(documents).__name__}; wrap a generator in list(...)")
    if len(documents) == 0:
        raise ValueError("empty corpus: harvest_pair needs at least one document")
    out, total = [], 0
    for i, doc in enumerate(documents):
        if isinstance(doc, str):
            doc = {"text": doc}
        text = _field(doc, "text")
        ids = _field(doc, "input_ids")
        if ids is None:
            if text is None:
                raise ValueError(f"document {i} has neither text nor input_ids")
            ids = tokenizer(text)["input_ids"]
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        n = len(ids)
        labels = _field(doc, "labels")
        marker = _field(doc, "marker")
        labels = np.full(n, -1, np.int8) if labels is None else np.asarray(labels, dtype=np.int8).reshape(-1)
        marker = np.zeros(n, bool) if marker is None else np.asarray(marker, dtype=bool).reshape(-1)
        if len(labels) != n or len(marker) != n:
            raise ValueError(f"document {i}: {n} input_ids but {len(labels)} labels and {len(marker)} marker flags")
        cut = max(n - cfg.max_seq_len, 0)
        T = n - cut
        out.append(_Doc(ids[:T], labels[:T], marker[:T], text or "", str(_field(doc, "kind", "") or ""), cut,
                        str(_field(doc, "group", "") or "")))
        total += T
        if cfg.max_tokens is not None and total >= cfg.max_tokens:
            break
    if total == 0:
        raise ValueError("empty corpus: every document has zero tokens")
    return out


def _is_heldout(doc: _Doc, cfg: HarvestConfig) -> bool:
    if cfg.heldout_fraction == 0:
        return False
    # a group (e.g. one problem's computation, drawn again and again) decides for all its documents, so the
    # same computation never sits on both sides; an ungrouped document is split by its own tokens
    key = f"group:{doc.group}".encode() if doc.group else doc.ids.astype("<i4").tobytes()
    h = hashlib.sha256(f"{cfg.heldout_seed}:".encode() + key).digest()
    return int.from_bytes(h[:8], "little") / 2 ** 64 < cfg.heldout_fraction


def corpus_hash(docs: list[_Doc]) -> str:
    """sha256 over every document's ids, labels, marker flags and text (what the store is built from)."""
    h = hashlib.sha256()
    for d in docs:
        h.update(len(d.ids).to_bytes(8, "little"))
        h.update(d.ids.astype("<i4").tobytes())
        h.update(d.labels.tobytes())
        h.update(d.marker.tobytes())
        h.update(hashlib.sha256(d.text.encode()).digest())
        if d.group:   # the split follows groups: a regrouped corpus is another store
            h.update(b"group:" + hashlib.sha256(d.group.encode()).digest())
    return h.hexdigest()


# ----------------------------------------------------------------------------- models and tokenizers

def n_layers_of(model) -> int:
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return int(cfg.num_hidden_layers)


def d_model_of(model) -> int:
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return int(cfg.hidden_size)


def weight_hash(model, max_elems: int = 1 << 16) -> str:
    """sha256 over every state-dict entry's name, shape and dtype plus a strided sample of at most
    ``max_elems`` of its values (the whole tensor when smaller). Cheap even for 32B models, and any
    fine-tune or different checkpoint changes it."""
    h = hashlib.sha256()
    with torch.no_grad():
        for name, t in model.state_dict().items():
            h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
            flat = t.detach().reshape(-1)
            step = max(1, flat.numel() // max_elems)
            h.update(flat[::step][:max_elems].float().cpu().numpy().tobytes())
    return h.hexdigest()


def model_identity(model) -> dict:
    """What a cache key records of a model. The weight hash is its identity; a local folder is named by its last
    component only, so the same weights in another checkout or folder find the same store instead of rebuilding."""
    name = str(getattr(model, "name_or_path", "") or getattr(model.config, "_name_or_path", ""))
    if name and Path(name).exists():
        name = Path(name).name
    return {"name_or_path": name,
            "class": type(model).__name__, "n_layers": n_layers_of(model), "d_model": d_model_of(model),
            "weight_hash": weight_hash(model)}


def _sha(s) -> str | None:
    return None if s is None else hashlib.sha256(str(s).encode()).hexdigest()[:16]


def check_pairing(tok_base, tok_distilled, docs: list[_Doc], batch: int = 1024) -> dict:
    """Check that both tokenizers encode every document's text identically; raise on the first difference.

    Returns what the manifest records: whether the same object was used, and what differs between
    the tokenizers even where ids agree (chat template, special tokens, vocabulary)."""
    same = tok_base is tok_distilled
    info = {"same_tokenizer_object": same, "n_documents_checked": 0, "ids_identical": True}
    if not same:
        texts = [d.text for d in docs]
        for a in range(0, len(texts), batch):
            eb = tok_base(texts[a:a + batch])["input_ids"]
            ed = tok_distilled(texts[a:a + batch])["input_ids"]
            for j, (x, y) in enumerate(zip(eb, ed)):
                if list(x) != list(y):
                    k = next((p for p, (u, v) in enumerate(zip(x, y)) if u != v), min(len(x), len(y)))
                    raise ValueError(
                        f"token pairing failed: the base and distilled tokenizers encode document {a + j} differently "
                        f"(first difference at token {k}). Text: {texts[a + j][:160]!r}. Base ids {list(x[:k + 8])} vs "
                        f"distilled ids {list(y[:k + 8])} (lengths {len(x)} and {len(y)}). Both models must see "
                        "identical ids: pass one tokenizer for both (the paper used the base tokenizer).")
        info["n_documents_checked"] = len(texts)
    ct_b, ct_d = getattr(tok_base, "chat_template", None), getattr(tok_distilled, "chat_template", None)
    info["chat_template"] = {"base_sha": _sha(ct_b), "distilled_sha": _sha(ct_d), "differs": ct_b != ct_d}
    specials = {}
    for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
        vb, vd = getattr(tok_base, name, None), getattr(tok_distilled, name, None)
        if vb != vd:
            specials[name] = [str(vb), str(vd)]
    sb = set(getattr(tok_base, "all_special_tokens", []))
    sd = set(getattr(tok_distilled, "all_special_tokens", []))
    info["special_tokens_differ"] = specials
    info["special_tokens_only_in"] = {"base": sorted(sb - sd)[:50], "distilled": sorted(sd - sb)[:50]}
    info["vocab_size"] = [len(tok_base), len(tok_distilled)]
    if not same:
        vb, vd = tok_base.get_vocab(), tok_distilled.get_vocab()
        info["vocab_entries_differ"] = int(sum(1 for t, i in vb.items() if vd.get(t) != i) + len(set(vd) - set(vb)))
    return info


# ----------------------------------------------------------------------------- the forward pass

class LayerReader:
    """Reads resid_pre of block ``layer`` (output of decoder layer ``layer - 1``) through nnsight.

    The tokenizer is deep-copied because nnsight switches the one it is given to left padding in
    place; we feed right-padded id tensors with an attention mask, so only its pad token is used.
    """

    def __init__(self, model, tokenizer, layer: int):
        from nnsight import TransformersModel
        self.model, self.layer = model, layer
        self.lm = TransformersModel(model, tokenizer=copy.deepcopy(tokenizer))
        self.layers_path = decoder_layers_path(model)
        self.device = next(model.parameters()).device
        self.bf16_autocast = False     # set from the harvest's compute dtype (choose_compute)

    def __call__(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ids, mask [B, T] (right-padded) -> float32 CPU activations [B, T, d]."""
        envoy = self.lm
        for attr in self.layers_path.split("."):
            envoy = getattr(envoy, attr)
        with torch.no_grad(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16_autocast):
            with self.lm.trace(ids.to(self.device), attention_mask=mask.to(self.device)) as tracer:
                h = envoy[self.layer - 1].output.save()  # transformers 5: a plain tensor [B, T, d]
                tracer.stop()                            # skip every layer above the hook
        return h.float().cpu()


def _batch_arrays(docs: list[_Doc], pad_id: int) -> dict:
    """Right-padded [B, T] arrays of a batch: ids (torch long), mask (torch long), labels, marker (numpy)."""
    B, T = len(docs), max(len(d.ids) for d in docs)
    ids = np.full((B, T), pad_id, dtype=np.int64)
    labels, marker, mask = np.full((B, T), -1, np.int8), np.zeros((B, T), bool), np.zeros((B, T), np.int64)
    for r, d in enumerate(docs):
        n = len(d.ids)
        ids[r, :n], labels[r, :n], marker[r, :n], mask[r, :n] = d.ids, d.labels, d.marker, 1
    return {"ids": torch.from_numpy(ids), "mask": torch.from_numpy(mask), "labels": labels, "marker": marker}


def _forward_pair(readers, batch: dict) -> list[torch.Tensor]:
    """Run both models on one batch -> one float32 [B, T, d] per model (padding positions are junk).

    A model paired with itself (claim 1's null store) runs once: the second reading would be the same numbers."""
    first = readers[0](batch["ids"], batch["mask"])
    out = [first]
    for r in readers[1:]:
        same = r.model is readers[0].model and r.layer == readers[0].layer and r.bf16_autocast == readers[0].bf16_autocast
        out.append(first if same else r(batch["ids"], batch["mask"]))
    return out


# ----------------------------------------------------------------------------- harvest

def _plan(docs: list[_Doc], cfg: HarvestConfig) -> list[tuple[str, list[int]]]:
    """Fixed batches: (split, document indices), train documents first, then held-out ones."""
    held = [i for i, d in enumerate(docs) if _is_heldout(d, cfg)]
    held_set = set(held)
    train = [i for i in range(len(docs)) if i not in held_set]
    plan = []
    for split, ids in (("train", train), ("heldout", held)):
        plan += [(split, ids[a:a + cfg.batch_size]) for a in range(0, len(ids), cfg.batch_size)]
    return plan


def bf16_pays(float32_s: float, bfloat16_s: float, relative_error: float) -> bool:
    """The ``compute_dtype="auto"`` rule: bf16 when at most ``BF16_MAX_TIME_RATIO`` of the float32 time and at
    most ``BF16_TOLERANCE`` relative error."""
    return relative_error <= BF16_TOLERANCE and bfloat16_s <= BF16_MAX_TIME_RATIO * float32_s


def choose_compute(readers, docs, plan, cfg, pad_id) -> dict:
    """The forward's compute dtype, and why: ``{"dtype", "chosen_by", "weights", ...}`` (recorded in the manifest).

    ``weights``: the dtype the models' weights hold (what their matmuls run in outside autocast) and, on a CPU,
    ``precision.cpu_bf16_probe``'s answer and timings (what chose it when a pair was loaded with "auto").
    "float32": no autocast. "auto" on a CPU whose bf16 matmuls the probe finds no faster than fp32: float32,
    without trying bf16 (there it can be 50x slower). Otherwise time the first batch's first 4 documents through
    both models in float32 and under bf16 autocast (after a warm-up, alternating, best of two) and compare the
    activations. "auto" chooses bf16 when it takes at most ``BF16_MAX_TIME_RATIO`` of the float32 time with
    relative error at most ``BF16_TOLERANCE``; "bfloat16" keeps bf16 and warns above the tolerance. Sets the
    readers' autocast flag to the choice."""
    device = readers[0].device.type
    weights = {"dtype": sorted({str(next(r.model.parameters()).dtype).removeprefix("torch.") for r in readers})}
    probe = precision.cpu_bf16_probe() if device == "cpu" else None
    if probe is not None:
        weights["cpu_probe"] = probe
    if cfg.compute_dtype == "float32":
        choice = {"dtype": "float32", "chosen_by": "config"}
    elif cfg.compute_dtype == "auto" and probe is not None and not probe["bf16"]:
        choice = {"dtype": "float32", "chosen_by": "auto", "why": f"CPU: {probe['why']}"}
    else:
        batch = _batch_arrays([docs[i] for i in plan[0][1][:4]], pad_id)
        mask = batch["mask"].bool()

        def run(bf16):
            for r in readers:
                r.bf16_autocast = bf16
            t = time.perf_counter()
            return _forward_pair(readers, batch), time.perf_counter() - t

        run(False)
        times, acts = {False: [], True: []}, {}
        for _ in range(2):
            for bf16 in (False, True):
                acts[bf16], t = run(bf16)
                times[bf16].append(t)
        err = max(((b - a)[mask].norm() / a[mask].norm().clamp_min(1e-30)).item()
                  for a, b in zip(acts[False], acts[True]))
        t32, t16 = min(times[False]), min(times[True])
        auto = cfg.compute_dtype == "auto"
        choice = {"dtype": "bfloat16" if not auto or bf16_pays(t32, t16, err) else "float32",
                  "chosen_by": "auto" if auto else "config", "float32_s": round(t32, 4),
                  "bfloat16_s": round(t16, 4), "time_ratio": round(t16 / t32, 3), "relative_error": err,
                  "tolerance": BF16_TOLERANCE, "max_time_ratio": BF16_MAX_TIME_RATIO,
                  "measured_on": f"{int(mask.sum())} tokens"}
        if not auto and err > BF16_TOLERANCE:
            warnings.warn(f"bf16 autocast activations differ from float32 by {err:.2%} (relative L2) on the first "
                          f"batch, above the {BF16_TOLERANCE:.0%} tolerance; consider compute_dtype='float32'")
    choice["weights"] = weights
    for r in readers:
        r.bf16_autocast = choice["dtype"] == "bfloat16"
    return choice


def _calibrate(readers, docs, plan, cfg, pad_id) -> list[float]:
    """Median L2 norm per model over the first ``outlier_calibration_tokens`` candidate positions."""
    norms, n = [], 0
    for _, idx in plan:
        batch = _batch_arrays([docs[i] for i in idx], pad_id)
        acts, mask = _forward_pair(readers, batch), batch["mask"].bool()
        if cfg.drop_first_position:
            mask[:, 0] = False
        norms.append(torch.stack([h[mask].norm(dim=-1) for h in acts], 1))  # [n, n_models]
        n += len(norms[-1])
        if n >= cfg.outlier_calibration_tokens:
            break
    allnorms = torch.cat(norms)[:cfg.outlier_calibration_tokens]
    if len(allnorms) == 0:
        raise ValueError("no positions left to calibrate the outlier threshold (documents too short?)")
    return allnorms.double().median(dim=0).values.tolist()


@dataclass
class HarvestJob:
    """A validated harvest: documents, hook layer, store key, output folder, pairing report, batch plan."""
    docs: list
    layer: int
    key: dict
    out: Path
    pairing: dict
    plan: list
    pad_id: int
    cfg: HarvestConfig
    layers_path: str = "model.layers"


def prepare_harvest(base, distilled, tokenizer_base, tokenizer_distilled, documents, cfg: HarvestConfig | None,
                    out_dir=None) -> HarvestJob:
    """Validate everything (shapes, layer, vocabulary, token pairing) and build the store key; no forward pass."""
    cfg = (cfg or HarvestConfig()).validate()
    docs = prepare_documents(documents, tokenizer_base, cfg)
    n_layers = n_layers_of(base)
    if n_layers_of(distilled) != n_layers or d_model_of(base) != d_model_of(distilled):
        raise ValueError(f"base and distilled differ in shape: {n_layers} vs {n_layers_of(distilled)} layers, "
                         f"d_model {d_model_of(base)} vs {d_model_of(distilled)}; a paired store needs the same")
    layer = cfg.layer if cfg.layer is not None else n_layers // 2
    if not 1 <= layer <= n_layers:
        raise ValueError(f"layer {layer} is out of range: resid_pre of block L needs 1 <= L <= n_layers = {n_layers}")
    for m, name in ((base, "base"), (distilled, "distilled")):
        decoder_layers_path(m)
        vocab = m.get_input_embeddings().num_embeddings
        bad = next((i for i, d in enumerate(docs) if len(d.ids) and (d.ids.max() >= vocab or d.ids.min() < 0)), None)
        if bad is not None:
            raise ValueError(f"document {bad} holds token ids outside the {name} model's vocabulary (size {vocab})")
    pairing = check_pairing(tokenizer_base, tokenizer_distilled, docs)

    key = {"models": [model_identity(base), model_identity(distilled)], "layer": layer, "dtype": cfg.dtype,
           "corpus_sha256": corpus_hash(docs), "n_documents": len(docs),
           **{k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("layer", "dtype")}}
    out = Path(out_dir) if out_dir is not None else paths.artifact_dir(STAGE, key)
    pad_id = tokenizer_base.pad_token_id if tokenizer_base.pad_token_id is not None else 0
    return HarvestJob(docs, layer, key, out, pairing, _plan(docs, cfg), pad_id, cfg, decoder_layers_path(base))


class StoreDamaged(ValueError):
    """A finished store folder of this job's key that cannot be used (missing manifest, damaged files)."""


def finished_store(job: HarvestJob, verify: bool) -> ActivationStore | None:
    """The finished store at ``job.out`` if there is one with the same key (else None); refuses another key.
    Raises ``StoreDamaged`` for a folder there that is not a usable store (``harvest_pair`` sets it aside)."""
    if not job.out.exists():
        return None
    if not (job.out / MANIFEST).exists():
        # a folder of shard files (or one in the harvest cache) is a damaged store; anything else is not ours
        if any(job.out.glob("acts_*.npy")) or job.out.parent == Path(paths.RUNS_DIR) / STAGE:
            raise StoreDamaged(f"{job.out} has no {MANIFEST}: the store is incomplete or its manifest was deleted")
        raise FileExistsError(f"{job.out} exists but is not an activation store; refusing to write into it")
    try:
        store = ActivationStore(job.out, verify=False)
    except (ValueError, OSError) as err:
        raise StoreDamaged(f"the store at {job.out} cannot be opened: {err}") from None
    if store.key != canonical_key(job.key):
        raise ValueError(f"the store at {job.out} was written for a different configuration; refusing to mix. "
                         f"Differences: {'; '.join(key_differences(store.key, canonical_key(job.key)))}")
    if verify:
        try:
            store.verify()
        except ValueError as err:
            raise StoreDamaged(str(err)) from None
    return store


def harvest_pair(base, distilled, tokenizer_base, tokenizer_distilled, documents, cfg: HarvestConfig | None = None,
                 out_dir=None, verify: bool = True, progress: bool = True) -> ActivationStore:
    """Harvest paired activations into a store, or reuse the finished store with the same key.

    base, distilled: transformers causal LMs (model index 0 and 1). tokenizer_*: their tokenizers (may be
    one object). documents: see ``prepare_documents``. out_dir: the store folder; default
    ``RUNS_DIR/harvest/<key hash>``. A finished store there with the same key is reused; an interrupted
    harvest there (``<out_dir>.partial``) with the same key is resumed from its last complete shard; either
    one with another key is refused with an error listing the differences. ``verify`` checks the sha256
    of every shard when reusing a finished store. (Several processes: ``thinkdiff.distributed.harvest_pair``.)
    """
    job = prepare_harvest(base, distilled, tokenizer_base, tokenizer_distilled, documents, cfg, out_dir)
    try:
        store = finished_store(job, verify)
    except StoreDamaged:
        store = None                     # repaired below, under the lock
    if store is not None:
        return store
    with paths.writer_lock(job.out):     # one harvester per store; a second waits and reuses its result
        try:
            store = finished_store(job, verify)
        except StoreDamaged as err:      # never re-read a broken store forever: set it aside, harvest again
            aside = paths.move_aside(job.out)
            print(f"{err}\nmoved the damaged store to {aside}; harvesting it again", flush=True)
            store = None
        if store is not None:
            return store
        writer = StoreWriter(job.out, job.key)
        try:
            median = harvest_range(job, writer, base, distilled, tokenizer_base, tokenizer_distilled, 0,
                                   len(job.plan), median=writer.state.get("median_norm"), progress=progress)
            return ActivationStore(writer.finalize(harvest_manifest(job, writer.shards, median, tokenizer_base,
                                                                    writer.state.get("run"),
                                                                    writer.state.get("compute"))), verify=False)
        except Exception:
            if not writer.shards:   # nothing worth resuming (e.g. every position excluded): leave no folder
                shutil.rmtree(writer.partial, ignore_errors=True)
            raise


def harvest_range(job: HarvestJob, writer: StoreWriter, base, distilled, tokenizer_base, tokenizer_distilled,
                  lo: int, hi: int, median=None, progress: bool = True, compute: dict | None = None):
    """Harvest plan batches ``lo:hi`` into ``writer`` (resuming after its last complete shard).

    ``median`` [n_models]: the outlier calibration to use; None calibrates here (when outliers are
    excluded at all) on the first calibration tokens of the whole plan. ``compute``: the compute dtype
    choice to use (``choose_compute``); None takes the writer's recorded one or chooses here. Returns the
    median used."""
    cfg = job.cfg
    was_training = (base.training, distilled.training)
    base.eval(), distilled.eval()
    try:
        readers = [LayerReader(base, tokenizer_base, job.layer), LayerReader(distilled, tokenizer_distilled, job.layer)]
        compute = compute or writer.state.get("compute") or choose_compute(readers, job.docs, job.plan, cfg, job.pad_id)
        for r in readers:
            r.bf16_autocast = compute["dtype"] == "bfloat16"
        if writer.state.get("compute") != compute:
            writer.set_state(compute=compute)
        if cfg.outlier_norm_multiple is not None and median is None:
            median = _calibrate(readers, job.docs, job.plan, cfg, job.pad_id)
        if median is not None and writer.state.get("median_norm") != median:
            writer.set_state(median_norm=median)
        thresh = None if median is None else torch.tensor(median) * cfg.outlier_norm_multiple
        _run(writer, readers, job.docs, job.plan, cfg, job.pad_id, thresh, progress, lo, hi)
    finally:
        base.train(was_training[0]), distilled.train(was_training[1])
    return median


def harvest_manifest(job: HarvestJob, shards: list[dict], median, tokenizer_base, run, compute=None) -> dict:
    """The harvest part of a store manifest (exclusions, documents, pairing, config), from the shard records."""
    cfg, docs, layer = job.cfg, job.docs, job.layer
    thresh = None if median is None else (torch.tensor(median) * cfg.outlier_norm_multiple).tolist()
    exclusions = {"drop_first_position": cfg.drop_first_position, "outlier_norm_multiple": cfg.outlier_norm_multiple,
                  "median_norm": median, "outlier_threshold": thresh,
                  "n_positions_seen": sum(e["n_positions"] for e in shards),
                  "n_dropped_first": sum(e["n_dropped_first"] for e in shards),
                  "n_dropped_outlier": sum(e["n_dropped_outlier"] for e in shards),
                  "outliers": [dict(o) for e in shards for o in e["outliers"]][:200],
                  "n_truncated_documents": sum(d.n_truncated > 0 for d in docs),
                  "n_truncated_tokens": int(sum(d.n_truncated for d in docs))}
    for o in exclusions["outliers"]:
        o["token"] = tokenizer_base.decode([o["token_id"]])
    n_held = sum(_is_heldout(d, cfg) for d in docs)
    return {"hook": f"resid_pre of block {layer} = output of {job.layers_path}[{layer - 1}]",
            "layer": layer, "models": job.key["models"], "pairing": job.pairing, "exclusions": exclusions,
            "documents": {"n": len(docs), "train": len(docs) - n_held, "heldout": n_held,
                          "kinds": {k: sum(d.kind == k for d in docs) for k in sorted({d.kind for d in docs})}},
            "config": dataclasses.asdict(cfg), "compute": compute,
            "run": run}  # timing of the last (possibly resumed) session; not part of the key


def _empty_held() -> dict:
    return {"rows": [], "meta": [], "n_positions": 0, "n_dropped_first": 0, "n_dropped_outlier": 0, "outliers": []}


def _harvest_batch(readers, batch: dict, split: str, idx: list[int], cfg: HarvestConfig, thresh, held: dict) -> None:
    """Forward one batch through both models, apply the exclusions and append the kept rows to ``held``."""
    acts, real = _forward_pair(readers, batch), batch["mask"].bool()   # n_models x [B, T, d], [B, T]
    for m, h in enumerate(acts):
        # One reduction pass; a NaN/inf anywhere in a row makes its sum non-finite (confirmed before raising).
        bad = real & ~torch.isfinite(h.sum(dim=-1))
        if bad.any():
            bad &= ~torch.isfinite(h).all(dim=-1)
        if bad.any():
            r, p = map(int, bad.nonzero()[0])
            raise ValueError(f"non-finite (NaN/inf) activations in the {('base', 'distilled')[m]} model at document "
                             f"{idx[r]}, position {p} (layer {readers[m].layer}); nothing was written for this batch")
    keep = real.clone()
    if cfg.drop_first_position:
        keep[:, 0] = False
    held["n_positions"] += int(real.sum())
    held["n_dropped_first"] += int(real[:, 0].sum()) if cfg.drop_first_position else 0
    if thresh is not None:
        norms = torch.stack([h.norm(dim=-1) for h in acts], -1)        # [B, T, n_models]
        out_mask = keep & (norms > thresh).any(dim=-1)
        held["n_dropped_outlier"] += int(out_mask.sum())
        for r, p in out_mask.nonzero().tolist()[:max(0, 50 - len(held["outliers"]))]:
            held["outliers"].append({"doc_id": idx[r], "pos": p, "token_id": int(batch["ids"][r, p]),
                                     "norm": [round(float(x), 3) for x in norms[r, p]]})
        keep &= ~out_mask
    rows = torch.stack([h[keep] for h in acts], 1)                     # [n, n_models, d], row-major (doc, pos)
    k = keep.numpy()
    r_idx, p_idx = np.nonzero(k)
    meta = np.zeros(len(rows), META_DTYPE)
    meta["doc_id"], meta["pos"], meta["split"] = np.asarray(idx)[r_idx], p_idx, (0 if split == "train" else 1)
    meta["token_id"], meta["label"], meta["marker"] = batch["ids"].numpy()[k], batch["labels"][k], batch["marker"][k]
    held["rows"].append(rows.numpy())
    held["meta"].append(meta)


def _flush(writer: StoreWriter, held: dict, dtype: str, split: str, next_batch: int) -> dict:
    info = {k: held[k] for k in ("n_positions", "n_dropped_first", "n_dropped_outlier", "outliers")}
    info["batches"] = [held["first_batch"], next_batch]
    return writer.write_shard(to_storage(np.concatenate(held["rows"]), dtype), np.concatenate(held["meta"]),
                              split, state={"next_batch": next_batch}, info=info)


def _run(writer, readers, docs, plan, cfg, pad_id, thresh, progress, lo: int = 0, hi: int | None = None):
    """The harvest loop over the planned batches ``lo:hi``, from the first one not yet in a complete shard.

    A shard closes at a batch boundary once it holds ``shard_tokens`` rows, and at the end of each split
    (shards never mix splits). Shards are written by one background thread (statistics, sha256 and disk
    writes release the GIL), so writing shard k overlaps the forward passes of shard k+1, which matters
    when the forward runs on a GPU; at most one write is in flight (RAM: two shards), writes happen in
    order, and a failed write is re-raised here. (If every position of a split's final batches is
    excluded there is nothing to write; those batches' exclusion counts are dropped with them.)
    """
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm
    hi = len(plan) if hi is None else hi
    start = writer.state.get("next_batch", lo)
    if not lo <= start <= hi:
        raise ValueError(f"the partial store in {writer.partial} stopped at batch {start}, outside this run's "
                         f"batches {lo}:{hi}; delete it or use another out_dir")
    total = sum(len(docs[i].ids) for _, idx in plan[lo:hi] for i in idx)
    done = sum(len(docs[i].ids) for _, idx in plan[lo:start] for i in idx)
    bar = tqdm(total=total, initial=done, unit="tok", unit_scale=True, desc="harvest", disable=not progress)
    held, pending = _empty_held(), None
    t0 = time.perf_counter()
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="thinkdiff-store-writer")
    try:
        for b in range(start, hi):
            split, idx = plan[b]
            batch = _batch_arrays([docs[i] for i in idx], pad_id)
            held.setdefault("first_batch", b)
            _harvest_batch(readers, batch, split, idx, cfg, thresh, held)
            bar.update(int(batch["mask"].sum()))
            n_held = sum(len(m) for m in held["meta"])
            last_of_split = b + 1 == hi or plan[b + 1][0] != split  # (or of this rank's slice)
            if n_held and (n_held >= cfg.shard_tokens or last_of_split):
                if pending is not None:
                    pending.result()
                pending = pool.submit(_flush, writer, held, cfg.dtype, split, b + 1)
                held = _empty_held()
            elif last_of_split:
                held = _empty_held()
        if pending is not None:
            pending.result()
    finally:
        pool.shutdown(wait=True)  # an in-flight shard is completed and recorded even when we are interrupted
        bar.close()
    dt = time.perf_counter() - t0
    writer.set_state(run={"seconds": round(dt, 3), "tokens_per_s": round((total - done) / dt, 1) if dt > 0 else None})


def get_store(pair, documents, cfg: HarvestConfig | None = None, out_dir=None, verify: bool = True,
              progress: bool = True) -> ActivationStore:
    """Notebook entry point: the store for ``pair`` (an object with ``base``, ``distilled``, ``tokenizer``
    and optionally ``tokenizer_distilled`` and ``layer``) and ``documents``; reused when cached."""
    cfg = cfg or HarvestConfig()
    if cfg.layer is None and getattr(pair, "layer", None) is not None:
        cfg = dataclasses.replace(cfg, layer=pair.layer)
    tok_d = getattr(pair, "tokenizer_distilled", None) or pair.tokenizer
    return harvest_pair(pair.base, pair.distilled, pair.tokenizer, tok_d, documents, cfg, out_dir, verify, progress)
