"""Streaming harvest-and-train: activations pass through a bounded on-disk ring of shards, never a whole store.

    result = train_stream(base, distilled, tok_base, tok_distilled, documents, HarvestConfig(...),
                          TrainConfig(...), work_dir, StreamConfig(ring_shards=8, window_shards=2))

For runs whose store does not fit the disk (a 100M-token qwen-1.5b store is 614 GB in bf16). One process
alternates: the harvest writes shards of the train split into ``<work>/ring/`` (``harvest._harvest_batch``: the
same forward, first-position drop and outlier mask as the store path), training consumes them window by window,
and a shard's files are deleted once a checkpoint covers all its rows.

Order and the exactly-once guarantee. The stream is the train split's plan batches, epoch after epoch (each epoch
runs the models over the same documents again instead of keeping their activations). A shard closes at the first
plan batch at or after ``shard_tokens`` rows and at each epoch's end; ``window_shards`` consecutive shards of one
epoch form a window, whose rows are served in a permutation drawn from (seed, window). **Shuffle scope: one window**
(about ``window_shards x shard_tokens`` rows). Batches are consecutive slices of the served rows and never cross
an epoch's end (its last batch may be smaller), so every harvested train token is served exactly once per epoch.
The stream position is ``Trainer.tokens_seen`` (rows served), which every checkpoint holds.

Bounded disk. At most ``ring_shards`` shards are on disk (>= 2 windows: the one being served and the next). A
shard is freed only once a checkpoint covers its whole window; when the ring is full the trainer checkpoints and
frees what that covers. So a killed run resumes from its checkpoint with every later row still on disk, and the
harvest resumes after its last recorded shard. The held-out split is not harvested (evaluate on a store of it).

Normalisation: the crosscoder's input scale ``sqrt(d) / mean norm`` is measured on the first window (the store
path measures it over the whole store) and kept in the ring's progress file, so a resume uses the same one.
"""
from __future__ import annotations

import json
import math
import os
import resource
import shutil
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import paths
from .crosscoder import WEIGHTS_NAME, CrossCoder
from .harvest import (LayerReader, _batch_arrays, _calibrate, _empty_held, _harvest_batch, choose_compute,
                      prepare_harvest)
from .store import META_DTYPE, STORAGE, _save_npy, _write_json, canonical_key, from_storage, key_differences, \
    to_storage
from .train import CHECKPOINT_NAME, LOG_NAME, Trainer, TrainConfig, TrainResult, _usable_checkpoint

MODES = ("store", "stream")
PROGRESS = "progress.json"
LOG_KEEP = 1000        # steps of the log kept in memory (and returned); train_log.jsonl holds every step
LOG_ROW_BYTES = 512     # at most, per step, in train_log.jsonl (measured rows: about 330 bytes): the one linear part


@dataclass
class StreamConfig:
    """``[harvest.stream]`` of a run with ``[harvest] mode = "stream"``: the ring's bounds and the plan's warm-up."""

    ring_shards: int = 8
    """Most shards on disk at once; at least 2 x ``window_shards`` (the window being served and the next)."""
    window_shards: int = 2
    """Shards per shuffle window: rows are shuffled within a window, not across windows."""
    warmup_batches: int = 2
    """Harvest batches (and as many crosscoder steps) timed before the run for the plan's time estimate."""
    max_disk_gb: float = 0.0
    """Refuse a plan whose peak disk exceeds this many GB (1e9 bytes); 0: only the free disk bounds it."""

    def validate(self) -> "StreamConfig":
        for name in ("ring_shards", "window_shards", "warmup_batches"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"StreamConfig.{name} must be a positive integer, got {v!r}")
        if self.ring_shards < 2 * self.window_shards:
            raise ValueError(f"StreamConfig.ring_shards = {self.ring_shards} must be at least 2 x window_shards = "
                             f"{2 * self.window_shards}: the window being served and the next are on disk together")
        if not self.max_disk_gb >= 0:
            raise ValueError(f"StreamConfig.max_disk_gb must be >= 0 (0: no cap), got {self.max_disk_gb!r}")
        return self


class PlanError(ValueError):
    """A streaming plan that cannot run here (refused before any work)."""


def plan(job, n_train_batches: int, tcfg: TrainConfig, scfg: StreamConfig, n_models: int, d_model: int,
         work: Path) -> dict:
    """Tokens, peak disk and RAM of a streaming run (bytes), from the settings alone; raises ``PlanError`` when the
    peak disk exceeds the free disk at ``work`` or ``max_disk_gb``. No forward pass."""
    cfg = job.cfg
    train_docs = [job.docs[i] for _, idx in job.plan[:n_train_batches] for i in idx]
    epoch_tokens = sum(len(d.ids) - bool(cfg.drop_first_position) for d in train_docs)  # before the outlier mask
    tokens = tcfg.n_steps * tcfg.batch_size
    shard_rows = min(cfg.shard_tokens + cfg.batch_size * cfg.max_seq_len, epoch_tokens)  # a shard's most rows
    row = n_models * d_model * np.dtype(STORAGE[cfg.dtype]).itemsize + META_DTYPE.itemsize
    n_params = 2 * n_models * d_model * tcfg.n_latents + tcfg.n_latents + n_models * d_model
    ckpt = 3 * 4 * n_params                                    # fp32 weights and two Adam moments
    # the old checkpoint stays until the new one is renamed; 64 KiB: npy headers, progress.json, checkpoint.json
    disk = scfg.ring_shards * shard_rows * row + 2 * ckpt + (64 << 10)
    log = LOG_ROW_BYTES * tcfg.n_steps
    ram = (2 * scfg.window_shards * shard_rows * row                       # two windows held for serving
           + 2 * shard_rows * n_models * d_model * 4                       # a shard's float32 rows before writing
           + cfg.batch_size * cfg.max_seq_len * n_models * d_model * 4     # one forward's activations
           + 4 * 4 * n_params + 8 * tcfg.batch_size * tcfg.n_latents)      # trainer state and a step's codes
    Path(work).mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(work).free
    out = {"epoch_tokens": int(epoch_tokens), "train_tokens": int(tokens), "epochs": math.ceil(tokens / epoch_tokens),
           "peak_disk_bytes": int(disk), "log_bytes": log, "ram_bytes": int(ram), "free_disk_bytes": int(free),
           "checkpoint_bytes": int(ckpt), "shard_rows_max": int(shard_rows)}
    cap = scfg.max_disk_gb * 1e9 if scfg.max_disk_gb else None
    if disk + log > free or (cap is not None and disk + log > cap):
        limit = f"{free / 1e9:.2f} GB free at {work}" if disk + log > free else f"max_disk_gb = {scfg.max_disk_gb}"
        raise PlanError(f"the streaming plan needs {(disk + log) / 1e9:.2f} GB of disk at its peak ({scfg.ring_shards} "
                        f"shards of up to {shard_rows} tokens, two checkpoints of {ckpt / 1e9:.2f} GB, a training log "
                        f"of {log / 1e9:.2f} GB), over the "
                        f"{limit}; lower [harvest.stream] ring_shards or [harvest] shard_tokens, or free disk. "
                        "Nothing was run.")
    return out


def describe(p: dict) -> str:
    """The plan as one line for users (with the time once the warm-up has measured it)."""
    eta = (f"; time about {p['estimated_s'] / 60:.1f} min (warm-up: {p['harvest_tok_s']:,.0f} harvest tok/s, "
           f"{p['step_s'] * 1e3:.0f} ms per step)") if "estimated_s" in p else ""
    return (f"stream plan: {p['train_tokens']:,} training tokens = {p['epochs']} epoch(s) of up to "
            f"{p['epoch_tokens']:,}; peak disk {p['peak_disk_bytes'] / 1e9:.3f} GB (ring and checkpoints) + "
            f"{p['log_bytes'] / 1e9:.3f} GB (log) of {p['free_disk_bytes'] / 1e9:.1f} GB free; RAM "
            f"{p['ram_bytes'] / 1e9:.3f} GB for the windows, a shard and the trainer (models and libraries besides)"
            + eta)


class Ring:
    """The shard files of ``folder`` and its ``progress.json``: the key, the records of the shards on disk (and of
    the last one written, ``freed`` or not) and the state (next plan batch, shards written, exclusion totals,
    calibration, compute dtype, input norm), so the file stays as small as the ring."""

    def __init__(self, folder: Path, key: dict):
        self.dir, self.key = Path(folder), canonical_key(key)
        prog = self.dir / PROGRESS
        if not prog.exists():
            paths.ensure_writable(self.dir)
            self.progress = {"key": self.key, "shards": [], "state": {"next_batch": 0, "n_written": 0, "totals": {}}}
            return self.save()
        self.progress = json.loads(prog.read_text())
        if self.progress["key"] != self.key:
            raise ValueError(f"the stream in {self.dir} was started with another configuration "
                             f"({'; '.join(key_differences(self.progress['key'], self.key))}); use another folder")
        live = {e[p]["file"]: e[p] for e in self.shards if not e["freed"] for p in ("acts", "meta")}
        for f in self.dir.glob("*.npy"):    # freed shards, and a write killed before its record
            if f.name not in live:
                f.unlink()
        for name, rec in live.items():
            f = self.dir / name
            if not f.exists() or f.stat().st_size != rec["bytes"] or paths.sha256_file(f) != rec["sha256"]:
                raise ValueError(f"{f} is missing or damaged (size or sha256 differ from {self.dir / PROGRESS}); "
                                 f"its rows cannot be served again: delete {self.dir.parent} and start the run anew")

    shards = property(lambda self: self.progress["shards"])
    state = property(lambda self: self.progress["state"])
    live = property(lambda self: [e for e in self.shards if not e["freed"]])

    def save(self) -> None:
        _write_json(self.dir / PROGRESS, self.progress)

    def write(self, acts: np.ndarray, meta: np.ndarray, record: dict) -> None:
        """Write a shard's files (each via a temp file), then its record and the new state in one progress write."""
        i = self.state["n_written"]
        self.state["n_written"] += 1
        for k in ("n_positions", "n_dropped_first", "n_dropped_outlier"):
            self.state["totals"][k] = self.state["totals"].get(k, 0) + record[k]
        record.update(index=i, freed=False, acts=_save_npy(self.dir / f"acts_{i:06d}.npy", acts),
                      meta=_save_npy(self.dir / f"meta_{i:06d}.npy", meta))
        self.shards.append(record)
        self.save()

    def free(self, shards: list[dict]) -> None:
        """Drop ``shards``' records (the last one written stays, marked freed), then delete their files."""
        for e in shards:
            e["freed"] = True
        self.progress["shards"] = [e for e in self.shards if not e["freed"] or e is self.shards[-1]]
        self.save()
        for e in shards:
            for p in ("acts", "meta"):
                (self.dir / e[p]["file"]).unlink(missing_ok=True)

    def disk_bytes(self) -> int:
        """Bytes of the run's folder (ring and checkpoints), less the training log (linear in steps, reported apart)."""
        return sum(f.stat().st_size for f in self.dir.parent.rglob("*") if f.is_file() and f.name != LOG_NAME)


class Stream:
    """The producer (harvest into the ring) and the consumer (rows by stream offset) of one streaming run."""

    def __init__(self, ring: Ring, job, batches: list, readers, thresh, scfg: StreamConfig, seed: int):
        self.ring, self.job, self.batches, self.readers, self.thresh = ring, job, batches, readers, thresh
        self.window_shards, self.ring_shards, self.seed = scfg.window_shards, scfg.ring_shards, seed
        self._cache: dict = {}          # window -> (acts in storage dtype, meta), served order
        self.room = None                # called when the ring is full (checkpoint, then free what it covers)

    def harvest_shard(self) -> None:
        """Harvest plan batches until a shard closes (``shard_tokens`` rows or its epoch's end) and write it."""
        cfg, n = self.job.cfg, len(self.batches)
        g = first = self.ring.state["next_batch"]
        held = _empty_held()
        while True:
            idx = self.batches[g % n]
            batch = _batch_arrays([self.job.docs[i] for i in idx], self.job.pad_id)
            _harvest_batch(self.readers, batch, "train", idx, cfg, self.thresh, held)
            g += 1
            rows = sum(len(m) for m in held["meta"])
            if rows >= cfg.shard_tokens or (rows and g % n == 0):
                break
            if g % n == 0:
                raise ValueError("the last plan batches of the epoch kept no position (all excluded); lower "
                                 "batch_size or relax the exclusions")
        acts = np.concatenate(held["rows"])
        prev = self.ring.shards[-1] if self.ring.shards else None
        same = prev is not None and not prev["last"] and prev["pos"] + 1 < self.window_shards
        norms = np.linalg.norm(acts, axis=-1)                                # [rows, n_models]
        record = {"epoch": first // n, "window": prev["window"] + (not same) if prev else 0, "last": g % n == 0,
                  "pos": prev["pos"] + 1 if same else 0,
                  "start": prev["start"] + prev["n_tokens"] if prev else 0, "n_tokens": int(len(acts)),
                  "batches": [first, g], "sum_norm": norms.sum(0).tolist(),
                  **{k: held[k] for k in ("n_positions", "n_dropped_first", "n_dropped_outlier")}}
        if self.room is not None and len(self.ring.live) >= self.ring_shards:
            self.room()
            if len(self.ring.live) >= self.ring_shards:
                raise RuntimeError(f"the ring in {self.ring.dir} is full ({self.ring_shards} shards) and no checkpoint "
                                   "can free any; raise ring_shards")
        self.ring.state["next_batch"] = g
        self.ring.write(to_storage(acts, cfg.dtype), np.concatenate(held["meta"]), record)

    def windows(self) -> dict:
        """window -> {start, n, complete, epoch_end (its epoch's end offset, None while unknown), shards}."""
        out = {}
        for e in self.ring.shards:
            w = out.setdefault(e["window"], {"start": e["start"], "n": 0, "shards": [], "epoch": e["epoch"]})
            w["n"] += e["n_tokens"]
            w["shards"].append(e)
            w["complete"] = e["last"] or e["pos"] == self.window_shards - 1
        ends = {e["epoch"]: e["start"] + e["n_tokens"] for e in self.ring.shards if e["last"]}
        for w in out.values():
            w["epoch_end"] = ends.get(w["epoch"])
        return out

    def batch(self, a: int, size: int) -> tuple[np.ndarray, np.ndarray, int]:
        """Rows ``a:b`` of the stream (``b``: ``a + size`` or its epoch's end), harvesting what they need:
        (float32 acts [b - a, n_models, d], meta [b - a], epoch)."""
        while True:
            wins = self.windows()
            cur = next((w for w in wins.values() if w["start"] <= a < w["start"] + w["n"]), None)
            if cur is not None:
                b = a + size if cur["epoch_end"] is None else min(a + size, cur["epoch_end"])
                need = [(k, w) for k, w in sorted(wins.items()) if w["start"] < b and w["start"] + w["n"] > a]
                if all(w["complete"] for _, w in need) and need[-1][1]["start"] + need[-1][1]["n"] >= b:
                    break
            self.harvest_shard()
        parts = [self._rows(k, w, max(a, w["start"]), min(b, w["start"] + w["n"])) for k, w in need]
        acts = np.concatenate([p[0] for p in parts])
        return from_storage(acts, self.job.cfg.dtype), np.concatenate([p[1] for p in parts]), cur["epoch"]

    def _rows(self, k: int, w: dict, a: int, b: int):
        if k not in self._cache:
            if any(e["freed"] for e in w["shards"]):
                raise ValueError(f"window {k} of the stream in {self.ring.dir} was freed, but rows {a}:{b} of it are "
                                 "needed (its checkpoint was lost?); delete the folder and start the run anew")
            acts = np.concatenate([np.load(self.ring.dir / e["acts"]["file"]) for e in w["shards"]])
            meta = np.concatenate([np.load(self.ring.dir / e["meta"]["file"]) for e in w["shards"]])
            perm = np.random.default_rng([self.seed, k]).permutation(len(acts))
            self._cache = {j: v for j, v in self._cache.items() if j > k - 2}      # at most two windows held
            self._cache[k] = (acts[perm], meta[perm])
        acts, meta = self._cache[k]
        return acts[a - w["start"]:b - w["start"]], meta[a - w["start"]:b - w["start"]]

    def free_before(self, offset: int) -> None:
        """Free the shards of every window that ends at or before stream offset ``offset``."""
        done = [e for w in self.windows().values() if w["complete"] and w["start"] + w["n"] <= offset
                for e in w["shards"] if not e["freed"]]
        if done:
            self.ring.free(done)


class _Source:
    """What ``train.Trainer`` reads of a store: shapes, the input scale (first window), an identity."""

    def __init__(self, ring: Ring, key: dict, n_models: int, d_model: int, layer: int):
        first = [e for e in ring.shards if e["window"] == 0]
        if "mean_norm" not in ring.state:      # kept: a resumed run has freed the first window
            ring.state.update(mean_norm=(np.sum([e["sum_norm"] for e in first], 0) /
                                         sum(e["n_tokens"] for e in first)).tolist(),
                              first_window_tokens=sum(e["n_tokens"] for e in first))
            ring.save()
        self.mean_norm = np.asarray(ring.state["mean_norm"])
        self.norm_scale = math.sqrt(d_model) / self.mean_norm
        self.n_models, self.d_model, self.layer = n_models, d_model, layer
        self.n_tokens = ring.state["first_window_tokens"]
        self.config_hash, self.manifest = paths.config_hash(key), {"stream": key}

    def loader(self, *args, **kw):
        raise TypeError("a streaming run has no store loader; its rows come from the ring (thinkdiff.stream)")


@dataclass
class StreamResult:
    train: TrainResult
    report: dict = field(default_factory=dict)   # plan, peaks, exclusions, rates


def _warmup(readers, job, batches, tcfg: TrainConfig, scfg: StreamConfig, n_models: int, d_model: int,
            device) -> dict:
    """Harvest tokens/s and seconds per crosscoder step, timed on the first plan batches (kept nowhere) and on
    steps of a throwaway trainer over random rows."""
    t0, n = time.perf_counter(), 0
    for idx in batches[:scfg.warmup_batches]:
        batch = _batch_arrays([job.docs[i] for i in idx], job.pad_id)
        _harvest_batch(readers, batch, "train", idx, job.cfg, None, _empty_held())
        n += int(batch["mask"].sum())
    harvest_s = time.perf_counter() - t0
    src = type("Warmup", (), dict(n_models=n_models, d_model=d_model, layer=None, n_tokens=1, loader=None,
                                  norm_scale=np.ones(n_models), config_hash="warmup"))()
    trainer = Trainer(src, tcfg.replace(n_steps=max(tcfg.n_steps, 2)), device=device)
    x = torch.randn(tcfg.batch_size, n_models, d_model)
    trainer.step(x)                                           # first step: allocation, kernel choice
    t0 = time.perf_counter()
    for _ in range(scfg.warmup_batches):
        trainer.step(x)
    return {"harvest_tok_s": n / harvest_s, "step_s": (time.perf_counter() - t0) / scfg.warmup_batches}


def train_stream(base, distilled, tokenizer_base, tokenizer_distilled, documents, hcfg, tcfg: TrainConfig, work,
                 scfg: StreamConfig | None = None, *, device="cpu", stop_after: int | None = None,
                 progress: bool = True, on_step=None) -> StreamResult:
    """Harvest and train at once through the ring in ``work`` (created; resumed when it holds a run of the same
    configuration). Prints the plan first and refuses one that does not fit the disk (``PlanError``).

    ``stop_after``: stop after this many steps (an interruption, for tests). The result's log holds the last
    ``LOG_KEEP`` steps (``train_log.jsonl`` in ``work`` every one). ``on_step(step, meta, epoch)`` sees
    each step's rows (``store.META_DTYPE``: doc_id, pos, token_id, ...). Returns the folded crosscoder with its log
    and a report: the plan, peak disk (ring and checkpoints, measured after every write, plus the old checkpoint
    while a new one is written), the log's bytes, peak RSS, the outlier mask's counts and calibration."""
    scfg = (scfg or StreamConfig()).validate()
    tcfg = tcfg.validate()
    work = Path(work)
    job = prepare_harvest(base, distilled, tokenizer_base, tokenizer_distilled, documents, hcfg, out_dir=work)
    batches = [idx for split, idx in job.plan if split == "train"]
    if not batches:
        raise ValueError("the streaming run has no train documents (heldout_fraction leaves none)")
    n_models, d_model = 2, int(job.key["models"][0]["d_model"])
    report = {"plan": plan(job, len(batches), tcfg, scfg, n_models, d_model, work)}   # refuses before any work
    p = report["plan"]
    print(describe(p), flush=True)
    key = {"stream": 1, "harvest": job.key, "window_shards": scfg.window_shards}
    ring = Ring(work / "ring", key)
    was = (base.training, distilled.training)
    base.eval(), distilled.eval()
    try:
        readers = [LayerReader(m, t, job.layer) for m, t in ((base, tokenizer_base), (distilled, tokenizer_distilled))]
        st = ring.state
        st.setdefault("compute", choose_compute(readers, job.docs, job.plan, job.cfg, job.pad_id))
        for r in readers:
            r.bf16_autocast = st["compute"]["dtype"] == "bfloat16"
        p.update(_warmup(readers, job, batches, tcfg, scfg, n_models, d_model, device))
        # each served token is harvested once and trained once
        p["estimated_s"] = p["train_tokens"] / p["harvest_tok_s"] + tcfg.n_steps * p["step_s"]
        print(describe(p), flush=True)
        if job.cfg.outlier_norm_multiple is not None and "median_norm" not in st:
            st["median_norm"] = _calibrate(readers, job.docs, job.plan, job.cfg, job.pad_id)
        ring.save()
        median = st.get("median_norm")
        thresh = None if median is None else torch.tensor(median) * job.cfg.outlier_norm_multiple
        stream = Stream(ring, job, batches, readers, thresh, scfg, tcfg.seed)
        result = _train(stream, key, tcfg, work, d_model, device, stop_after, progress, on_step, report)
    finally:
        base.train(was[0]), distilled.train(was[1])
    return result


def _train(stream: Stream, key: dict, tcfg: TrainConfig, work: Path, d_model: int, device, stop_after, progress,
           on_step, report: dict) -> StreamResult:
    """The training loop over the stream: resume from ``work``'s checkpoint, step, checkpoint, free, report."""
    from tqdm.auto import tqdm

    ring = stream.ring
    while not any(w["complete"] for w in stream.windows().values()):   # the input scale needs the first window
        stream.harvest_shard()
    source = _Source(ring, key, 2, d_model, stream.job.layer)
    trainer = Trainer(source, tcfg, device=device)
    ckpt = work / CHECKPOINT_NAME
    if ckpt.exists():
        problem = _usable_checkpoint(ckpt)
        if problem is not None:
            raise ValueError(f"{problem}: the stream's checkpoint is damaged and the rows before it are freed; "
                             f"delete {work} and start the run anew")
        state = torch.load(ckpt, map_location=trainer.device, weights_only=False)
        trainer.check_checkpoint(state, work)
        trainer.load_state_dict(state)
    stream.free_before(trainer.tokens_seen)     # what the checkpoint covers (a kill may have come before the free)
    log = _truncate_log(work / LOG_NAME, trainer.step_idx)
    log_file = open(work / LOG_NAME, "a")
    peak = {"disk": ring.disk_bytes()}

    def checkpoint():
        log_file.flush()                        # the log on disk reaches the checkpoint's step
        old = ckpt.stat().st_size if ckpt.exists() else 0
        trainer.save_checkpoint(work)
        peak["disk"] = max(peak["disk"], ring.disk_bytes() + old)
        stream.free_before(trainer.tokens_seen)

    stream.room = checkpoint
    n_steps = tcfg.n_steps if stop_after is None else min(tcfg.n_steps, stop_after)
    t0, tokens0 = time.perf_counter(), trainer.tokens_seen
    bar = tqdm(total=tcfg.n_steps, initial=trainer.step_idx, desc="stream", disable=not progress)
    try:
        while trainer.step_idx < n_steps:
            written = ring.state["n_written"]
            x, meta, trainer.epoch = stream.batch(trainer.tokens_seen, tcfg.batch_size)
            if ring.state["n_written"] != written:       # the disk grows only when a shard is written
                peak["disk"] = max(peak["disk"], ring.disk_bytes())
            row = trainer.step(torch.from_numpy(x))
            row["epoch"] = trainer.epoch
            log.append(row)
            log_file.write(json.dumps(row) + "\n")
            if on_step is not None:
                on_step(trainer.step_idx, meta, trainer.epoch)
            bar.update(1)
            every = tcfg.checkpoint_every
            if trainer.step_idx == tcfg.n_steps or (every and trainer.step_idx % every == 0):
                checkpoint()
    finally:
        bar.close()
        log_file.close()
    dt = time.perf_counter() - t0
    report.update(peak_disk_bytes=peak["disk"], log_bytes=(work / LOG_NAME).stat().st_size,
                  peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, seconds=dt,
                  tokens_per_s=(trainer.tokens_seen - tokens0) / dt if dt > 0 else None,
                  shards_written=ring.state["n_written"], shards_on_disk=len(ring.live),
                  compute=ring.state["compute"]["dtype"], mean_norm=source.mean_norm.tolist(),
                  exclusions={"outlier_norm_multiple": stream.job.cfg.outlier_norm_multiple,
                              "median_norm": ring.state.get("median_norm"), **ring.state["totals"]})
    folded = trainer.model.fold(trainer.scale_np.tolist()).eval()
    return StreamResult(TrainResult(folded, list(log), dt, trainer.compute), report)


def _truncate_log(path: Path, upto: int) -> deque:
    """Cut ``train_log.jsonl`` after step ``upto`` (or at a torn line), reading it line by line; return its last
    ``LOG_KEEP`` rows (memory stays bounded however long the run)."""
    keep, tmp = deque(maxlen=LOG_KEEP), path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as out, open(path if path.exists() else os.devnull) as src:
        for line in src:
            try:
                row = json.loads(line)
                if int(row["step"]) > upto:
                    break
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                break
            out.write(line)
            keep.append(row)
    os.replace(tmp, path)
    return keep


def get_crosscoder(pair, documents, hcfg, tcfg: TrainConfig, scfg: StreamConfig | None = None, out_root=None, *,
                   device="cpu", progress: bool = True) -> CrossCoder:
    """The streamed crosscoder of ``pair`` (``base``, ``distilled``, ``tokenizer``, optional ``tokenizer_distilled``)
    on ``documents``: loaded from ``<out_root or RUNS_DIR/crosscoder>/<hash>/`` (the harvest key, the window and the
    training config), or trained through a ring in ``<hash>.partial/`` (resumed after a kill) and cached there with
    the run's report in ``stream_report.json``."""
    scfg = (scfg or StreamConfig()).validate()
    tok_d = getattr(pair, "tokenizer_distilled", None) or pair.tokenizer
    job = prepare_harvest(pair.base, pair.distilled, pair.tokenizer, tok_d, documents, hcfg)
    root = Path(out_root) if out_root is not None else Path(paths.RUNS_DIR) / "crosscoder"
    final = root / paths.config_hash({"stream": job.key, "window_shards": scfg.window_shards, "train": tcfg.to_dict()})
    with paths.writer_lock(final):
        if not final.exists():
            work = paths.ensure_writable(final.with_name(f"{final.name}.partial"))
            res = train_stream(pair.base, pair.distilled, pair.tokenizer, tok_d, documents, hcfg, tcfg, work, scfg,
                               device=device, progress=progress)
            with paths.atomic_dir(final) as tmp, paths.disk_full_is_plain(final / WEIGHTS_NAME):
                res.train.crosscoder.save_pretrained(tmp)
                shutil.copy(work / LOG_NAME, tmp / LOG_NAME)
                (tmp / "stream_report.json").write_text(json.dumps(res.report, indent=1, default=float))
            shutil.rmtree(work, ignore_errors=True)
    return CrossCoder.from_pretrained(final, device=device)
