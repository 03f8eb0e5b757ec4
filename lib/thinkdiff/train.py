"""Train a crosscoder on an activation store: Adam, schedules, checkpoints, exact resume.

Call ``get_crosscoder(store, cfg)`` from a notebook: it trains (or loads the cached result for the same
store hash + config) and returns a *folded* ``CrossCoder`` that takes raw activations.

The store protocol (``thinkdiff.store.ActivationStore`` implements it; ``TensorStore`` below is the
in-memory reference used by tests and the benchmark)::

    store.n_models, store.d_model, store.layer, store.n_tokens, store.config_hash, store.manifest
    store.mean_norm   -> np.ndarray [n_models]   mean L2 norm of raw activations per model
    store.norm_scale  -> np.ndarray [n_models]   sqrt(d_model) / mean_norm
    store.loader(batch_size, buffer_tokens, seed, epoch=0, split="train", start_batch=0)
        -> iterator of float32 [batch, n_models, d_model] raw activations; ceil(n_split / batch) per epoch;
           start_batch skips cheaply (exact resume).

Loss (per step, activations normalised to mean norm sqrt(d_model) per model, ``x_m * s_m``)::

    recon = mean_over_batch( sum_m ||x_m - xhat_m||^2 )                     (summed squared error, Anthropic)
    relu:       loss = recon + lambda_t * mean_over_batch( sum_i f_i * sum_m ||W_dec[i, m]||_2 )
    batchtopk:  loss = recon + auxk_alpha * aux,  aux = ||e - ehat||^2 / ||e - mean(e)||^2   (batch sums)
                where e = x - xhat (detached) and ehat decodes the top ``k_aux`` pre-activations per token
                among *dead* latents (no firing for ``dead_tokens`` training tokens), so they come back.

Schedules: lr linear warm-up over ``lr_warmup_frac`` of steps, constant, linear decay to 0 over the last
``lr_decay_frac`` (paper: 0 / 0.2); L1 coefficient linear from 0 over the first ``l1_warmup_frac`` (0.05).
Gradient clipping at global norm ``grad_clip``. Everything is seeded; the data order is the loader's.

Data parallel (``world`` from ``thinkdiff.distributed.init`` under torchrun): ``cfg.batch_size`` stays the
*global* batch; each rank loads its part of every global batch (``store.loader(..., rank, world_size)``),
computes its share of the global loss (sums over its rows divided by the global batch size; BatchTopK
selects the global top ``k * batch`` across ranks; the aux loss uses the global batch statistics), and
``DistributedDataParallel`` all-reduces the gradients. So a step on W ranks is the 1-rank step on the
same batch up to float rounding, logged metrics are global, rank 0 alone writes checkpoints and logs,
and a checkpoint resumes on any world size.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import paths, precision, schemes
from .crosscoder import CorruptArtifactError, CrossCoder, CrossCoderConfig, WEIGHTS_NAME
from .metrics import evaluate
from .store import part_bounds

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_SUM_NAME = "checkpoint.json"   # the checkpoint's sha256, written after it
# Divergence: a crosscoder that outputs zeros has FVU 1; staying 10x above that for 20 steps is not learning.
DIVERGED_FVU, DIVERGED_STEPS = 10.0, 20   # FVU above this for this many steps in a row: diverged
DIVERGED_FVU_AT_ONCE = 1000.0              # one step this far off (or a non-finite loss) is divergence at once
LOG_NAME = "train_log.jsonl"
SUMMARY_NAME = "train_summary.json"


@dataclass
class TrainConfig:
    """Crosscoder training settings. Defaults: the organism (d_model 64-192).

    Measured on planted sparse activations (2 x 64 dims, 512 features, ~4 active per token, 60k tokens,
    1000 steps of 1024, loaded 2-core machine): ReLU F=1024 l1=3 -> held-out FVU 0.18, L0 18, 19 s;
    l1=1 (F=2048) -> FVU 0.09 but L0 63; BatchTopK F=1024 k=16 -> FVU 0.115, L0 15.8 at the inference
    threshold, 32 s. Re-check on the organism's real activations in 02_train.
    """

    activation: str = "relu"          # "relu" (L1 x decoder-norm sum) or "batchtopk"
    n_latents: int = 1024             # dictionary size F
    k: int = 16                       # BatchTopK: mean active latents per token
    l1_coeff: float = 2.0             # ReLU: sparsity coefficient lambda (after warm-up; paper 2)
    lr: float = 1e-3
    batch_size: int = 1024            # tokens per step
    n_steps: int = 1000
    lr_warmup_frac: float = 0.02      # linear lr warm-up over this fraction of steps
    lr_decay_frac: float = 0.2        # linear decay to 0 over the last fraction (paper 0.2)
    l1_warmup_frac: float = 0.05      # lambda linear from 0 over the first fraction (paper 0.05)
    grad_clip: float = 1.0            # max global gradient L2 norm
    betas: tuple[float, float] = (0.9, 0.999)
    dec_init_norm: float = 0.08       # decoder row norm at init (paper)
    auxk_alpha: float = 1 / 32        # BatchTopK: weight of the dead-latent auxiliary loss
    k_aux: int | None = None          # BatchTopK: latents per token in the aux loss (None: d_model // 2)
    dead_tokens: int = 200_000        # a latent is dead after this many training tokens without firing
    threshold_beta: float = 0.99      # BatchTopK: EMA decay of the inference threshold
    buffer_tokens: int = 262_144      # loader shuffle buffer
    seed: int = 49
    checkpoint_every: int = 250       # steps between checkpoints (0: none)
    compute_dtype: str = "float32"    # "bfloat16": the dense encoder matmul (the dense reference: every op) under
    #                                   bf16 autocast; weights, optimiser state and the sparse kernels stay fp32;
    #                                   "auto": bf16 where it pays on the device (``precision.resolve``: a GPU with
    #                                   bf16, a CPU whose probe finds bf16 matmuls faster), else float32

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def validate(self) -> "TrainConfig":
        def pos_int(name):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"TrainConfig.{name} must be a positive integer, got {v!r}")

        for name in ("n_latents", "batch_size", "n_steps", "buffer_tokens", "dead_tokens"):
            pos_int(name)
        if self.activation not in schemes.SCHEMES:
            raise ValueError(f"TrainConfig.activation must be one of {sorted(schemes.SCHEMES)}, got {self.activation!r}")
        scheme = schemes.get(self.activation)
        scheme.check_config(self.k, self.n_latents, "TrainConfig")
        if scheme.USES_K and self.k_aux is not None:
            pos_int("k_aux")
        for name in ("lr", "grad_clip", "dec_init_norm"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and v > 0 and math.isfinite(v)):
                raise ValueError(f"TrainConfig.{name} must be positive and finite, got {v!r}")
        for name in ("l1_coeff", "auxk_alpha"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and v >= 0 and math.isfinite(v)):
                raise ValueError(f"TrainConfig.{name} must be >= 0 and finite, got {v!r}")
        for name in ("lr_warmup_frac", "lr_decay_frac", "l1_warmup_frac"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"TrainConfig.{name} must lie in [0, 1], got {getattr(self, name)!r}")
        if self.lr_warmup_frac + self.lr_decay_frac > 1:
            raise ValueError("TrainConfig.lr_warmup_frac + lr_decay_frac must not exceed 1")
        if not 0 <= self.threshold_beta < 1:
            raise ValueError(f"TrainConfig.threshold_beta must lie in [0, 1), got {self.threshold_beta!r}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"TrainConfig.betas must be two numbers in [0, 1), got {self.betas!r}")
        if self.compute_dtype not in ("float32", "bfloat16", "auto"):
            raise ValueError(f"TrainConfig.compute_dtype must be 'float32', 'bfloat16' or 'auto', got {self.compute_dtype!r}")
        if not isinstance(self.checkpoint_every, int) or self.checkpoint_every < 0:
            raise ValueError(f"TrainConfig.checkpoint_every must be an integer >= 0, got {self.checkpoint_every!r}")
        return self


# The paper's final runs (docs/paper-notes.md §4): ReLU + L1, 32,768 latents, 390,625 steps x 1024 = 400M tokens.
PAPER = TrainConfig(activation="relu", n_latents=32_768, l1_coeff=2.0, lr=5e-5, batch_size=1024,
                    n_steps=390_625, lr_warmup_frac=0.0, lr_decay_frac=0.2, l1_warmup_frac=0.05,
                    grad_clip=1.0, dec_init_norm=0.08, seed=49, checkpoint_every=30_000,
                    dead_tokens=10_000_000, compute_dtype="auto")   # bf16 on the paper's GPUs
# Organism defaults of every sparsity scheme (TrainConfig field defaults; runconfig starts organism runs from these).
ORGANISM = {name: TrainConfig(activation=name) for name in schemes.SCHEMES}   # every scheme at the defaults, except:
# BatchTopK's dead-latent revival, stronger (auxk_alpha 1) and earlier (after 20,000 silent tokens): with the long-run
# defaults a 1,000-step organism run left 52 % of its latents dead, with these 7.6 % (docs/dead-latent-sweep.md)
ORGANISM["batchtopk"] = TrainConfig(activation="batchtopk", auxk_alpha=1.0, dead_tokens=20_000)


def store_hash(store) -> str:
    """The store's identity for caches: ``store.config_hash``, else the manifest's ``key_hash``."""
    h = getattr(store, "config_hash", None) or (getattr(store, "manifest", None) or {}).get("key_hash")
    if not h:
        raise ValueError(f"{type(store).__name__} has no config_hash (nor manifest['key_hash']) to key caches on")
    return str(h)


def validate_store(store) -> np.ndarray:
    """Check that ``store`` offers the protocol with sane statistics; return norm_scale [n_models]."""
    for name in ("n_models", "d_model", "n_tokens", "norm_scale", "loader"):
        if not hasattr(store, name):
            raise TypeError(f"{type(store).__name__} is not an activation store: it has no {name!r}")
    scale = np.asarray(store.norm_scale, dtype=np.float64).reshape(-1)
    if scale.shape != (store.n_models,):
        raise ValueError(f"store.norm_scale has {scale.size} entries but the store has {store.n_models} models")
    if not np.all(np.isfinite(scale) & (scale > 0)):
        raise ValueError(f"store.norm_scale must be positive and finite, got {scale.tolist()} "
                         "(all-zero or broken activations?)")
    if store.n_tokens <= 0:
        raise ValueError("the activation store holds no tokens")
    store_hash(store)
    return scale


class _Objective(torch.nn.Module):
    """The trainer's loss as a module over the crosscoder, so ``DistributedDataParallel`` can wrap it
    (the loss uses fused autograd functions on the weights, not ``CrossCoder.forward``)."""

    def __init__(self, trainer: "Trainer"):
        super().__init__()
        self.crosscoder = trainer.model
        self._trainer = [trainer]      # a list: not registered as a submodule

    def forward(self, x: torch.Tensor, step: int):
        return self._trainer[0].loss(x, step)


class Trainer:
    """One crosscoder, its optimiser and schedules, and the stream position: everything a checkpoint holds.

    ``world``: a ``thinkdiff.distributed.World`` with ``world_size > 1`` for data-parallel training (see
    the module doc); None or a 1-rank world trains in this process alone. ``dense_reference=True`` takes
    every step with the scheme's plain-autograd ``dense_loss`` instead of its fast kernels: the same
    training, slower; the benchmarks time the fast step against it and the tests compare the two."""

    def __init__(self, store, cfg: TrainConfig, device="cpu", world=None, dense_reference: bool = False):
        self.cfg = cfg.validate()
        self.dense_reference = bool(dense_reference)
        if self.dense_reference and world is not None and world.world_size > 1:
            raise ValueError("Trainer: the dense reference step runs in one process (world_size 1)")
        self.scale_np = validate_store(store)
        self.store_hash = store_hash(store)
        self.device = torch.device(device)
        self.compute = precision.resolve(cfg.compute_dtype, self.device, "TrainConfig.compute_dtype")
        cc_cfg = CrossCoderConfig(d_model=int(store.d_model), n_latents=cfg.n_latents, n_models=int(store.n_models),
                                  activation=cfg.activation, k=cfg.k if schemes.get(cfg.activation).USES_K else None,
                                  layer=getattr(store, "layer", None), dec_init_norm=cfg.dec_init_norm,
                                  store_hash=self.store_hash, train_config=cfg.to_dict())
        self.model = CrossCoder(cc_cfg, seed=cfg.seed).to(self.device).train()
        self.scale = torch.tensor(self.scale_np, dtype=torch.float32, device=self.device)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, betas=tuple(cfg.betas))
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, self.lr_factor)
        self.k_aux = cfg.k_aux or max(1, int(store.d_model) // 2)
        self.step_idx = 0          # optimiser steps done
        self.epoch = 0             # loader position: epoch and batches consumed in it
        self.batch_in_epoch = 0
        self.tokens_seen = 0
        # training tokens since each latent last fired (dead-latent detection for the aux loss and the log)
        self.since_fired = torch.zeros(cfg.n_latents, dtype=torch.int64, device=self.device)
        self.world = world if world is not None and world.world_size > 1 else None
        self.n_batch = 0           # tokens in the current global batch (all ranks)
        self._objective = self.loss
        if self.world is not None:
            from torch.nn.parallel import DistributedDataParallel
            ids = [self.device] if self.device.type == "cuda" else None
            # buffers (the BatchTopK threshold) are updated identically on every rank: no broadcast needed
            self._objective = DistributedDataParallel(_Objective(self), device_ids=ids, broadcast_buffers=False)

    # -- cross-rank reductions (identity in one process) ----------------------------------------
    def _sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.world is not None:
            self.world.all_reduce_(t, "sum")
        return t

    def _global_topk(self, score: torch.Tensor, idx: torch.Tensor, n_keep: int) -> torch.Tensor:
        """Of this rank's local top-``n_keep`` positive entries ``idx`` (flat, sorted), keep those among the
        ``n_keep`` largest of the whole global batch: every rank's candidate values (at most ``n_keep``
        floats) are gathered and cut at their ``n_keep``-th largest. The global winners on a rank are
        among its local top ``n_keep``, so this is the 1-rank selection."""
        v = score.reshape(-1)[idx]
        cand = torch.full((n_keep,), float("-inf"), dtype=score.dtype, device=score.device)
        top = v.topk(min(n_keep, v.numel())).values if v.numel() else v
        cand[:top.numel()] = top
        allv = self.world.all_gather(cand).reshape(-1)
        cut = allv.topk(n_keep).values.min()
        return idx[v >= cut] if torch.isfinite(cut) else idx

    # -- schedules ------------------------------------------------------------------------------
    def lr_factor(self, step: int) -> float:
        n, c = self.cfg.n_steps, self.cfg
        warm = max(1, round(c.lr_warmup_frac * n)) if c.lr_warmup_frac > 0 else 0
        f = min(1.0, (step + 1) / warm) if warm else 1.0
        decay_start = n - round(c.lr_decay_frac * n)
        if c.lr_decay_frac > 0 and step >= decay_start:
            f *= (n - step) / max(1, n - decay_start)
        return f

    def l1_coeff_at(self, step: int) -> float:
        warm = self.cfg.l1_warmup_frac * self.cfg.n_steps
        return self.cfg.l1_coeff * (min(1.0, step / warm) if warm > 0 else 1.0)

    # -- the loss -------------------------------------------------------------------------------
    def autocast(self):
        """The compute-dtype context of the loss's matmuls (bf16 autocast when ``cfg.compute_dtype`` resolves to it)."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.compute["dtype"] == "bfloat16")

    def loss(self, x: torch.Tensor, step: int):
        """Loss and stats for a batch ``x`` [B, n_models, d] already in training units."""
        if self.world is None:
            self.n_batch = x.shape[0]     # (data parallel: step() sets the global batch size)
        scheme = schemes.get(self.cfg.activation)
        return (scheme.dense_loss if self.dense_reference else scheme.loss)(self, x, step)

    def _recon(self, x, xhat):
        err = (xhat - x).pow(2).sum(-1)                  # [B, m]
        return err.sum(0) / self.n_batch                 # per-model mean squared error [m] (this rank's share)

    # -- one optimiser step ---------------------------------------------------------------------
    def step(self, x_raw: torch.Tensor) -> dict:
        """One Adam step on a raw batch [B, n_models, d]; returns the logged stats."""
        x = x_raw.to(self.device, torch.float32) * self.scale[None, :, None]
        B = x.shape[0]
        self.n_batch = B if self.world is None else int(self._sum(torch.tensor([B], device=self.device)).item())
        if self.n_batch == 0:
            raise ValueError("Trainer.step got an empty batch")
        loss, xhat, stats, per_model, fired = self._objective(x, self.step_idx)
        # global loss and per-model reconstruction error (each rank holds its share)
        tot = self._sum(torch.cat([loss.detach().reshape(1), per_model.detach()]))
        loss_v = tot[0].item()
        if not math.isfinite(loss_v):
            raise FloatingPointError(f"crosscoder loss became {loss_v} at step {self.step_idx}")
        self.opt.zero_grad(set_to_none=True)
        # DDP averages gradients over ranks; the sum of the ranks' shares is the global loss
        (loss * self.world.world_size if self.world is not None else loss).backward()
        gnorm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        lr = self.opt.param_groups[0]["lr"]
        self.opt.step()
        self.sched.step()
        B = self.n_batch
        with torch.no_grad():
            self.since_fired += B
            self.since_fired[fired] = 0
            if self.world is None:
                var = (x - x.mean(0)).pow(2).sum(-1).mean(0)         # [m]
            else:
                mean = self._sum(x.sum(0)) / B
                var = self._sum((x - mean).pow(2).sum((0, 2))) / B
            # a batch of one token (the last of an epoch can be that small) or of identical tokens has no
            # variance: its FVU is undefined (NaN), not a huge number that reads as divergence
            floor = 1e-6 * x.shape[-1]
            fvu = [t / v if v > floor else float("nan") for t, v in zip(tot[1:].tolist(), var.tolist())]
        self.step_idx += 1
        self.tokens_seen += B
        out = {"step": self.step_idx, "loss": loss_v, "recon": tot[1:].sum().item(), "lr": lr,
               "grad_norm": float(gnorm), "fvu": fvu, "tokens": self.tokens_seen,
               "dead_frac": (self.since_fired >= self.cfg.dead_tokens).float().mean().item()}
        out.update(stats)
        return out

    # -- checkpoints ----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"config": self.cfg.to_dict(), "store_hash": self.store_hash, "compute": self.compute,
                "model": self.model.state_dict(),
                "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                "step": self.step_idx, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                "tokens_seen": self.tokens_seen, "since_fired": self.since_fired.cpu(),
                "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}}

    def check_checkpoint(self, state: dict, where) -> None:
        """Refuse a checkpoint written by another config or another store (nothing is overwritten)."""
        mine = self.cfg.to_dict()
        theirs = state.get("config", {})
        diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        if diff:
            detail = ", ".join(f"{k}: {theirs.get(k)!r} (checkpoint) vs {mine.get(k)!r} (now)" for k in diff)
            raise ValueError(f"the checkpoint in {where} was written by another training config ({detail}); "
                             "it was left untouched. Use another checkpoint folder or delete it.")
        theirs_dtype = (state.get("compute") or {}).get("dtype", theirs.get("compute_dtype"))
        if theirs_dtype != self.compute["dtype"]:
            raise ValueError(f"the checkpoint in {where} was trained computing in {theirs_dtype}, and "
                             f"compute_dtype={self.cfg.compute_dtype!r} resolves to {self.compute['dtype']} here "
                             f"({self.compute['why']}); it was left untouched. Resume it where it was trained, set "
                             f"compute_dtype to {theirs_dtype!r}, or use another checkpoint folder.")
        if state.get("store_hash") != self.store_hash:
            raise ValueError(f"the checkpoint in {where} was trained on store {state.get('store_hash')!r}, not "
                             f"{self.store_hash!r}; it was left untouched. Use another checkpoint folder.")

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.step_idx, self.epoch = state["step"], state["epoch"]
        self.batch_in_epoch, self.tokens_seen = state["batch_in_epoch"], state["tokens_seen"]
        self.since_fired.copy_(state["since_fired"])
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(state["rng"]["numpy"])
        random.setstate(state["rng"]["python"])

    def save_checkpoint(self, folder: Path) -> Path:
        """Write ``checkpoint.pt`` atomically (temp file, then rename over the old one), then its sha256 into
        ``checkpoint.json``, which a resume checks (a flipped checkpoint must not resume into other weights)."""
        out = Path(folder) / CHECKPOINT_NAME
        tmp = out.with_name(f".{CHECKPOINT_NAME}.{uuid.uuid4().hex[:8]}.tmp")
        with paths.disk_full_is_plain(out, tmp):   # a failed write (disk full, kill) leaves no temp file behind
            torch.save(self.state_dict(), tmp)
            digest = paths.sha256_file(tmp)
            os.replace(tmp, out)
        side = Path(folder) / CHECKPOINT_SUM_NAME
        tmp = side.with_name(f".{CHECKPOINT_SUM_NAME}.{uuid.uuid4().hex[:8]}.tmp")
        with paths.disk_full_is_plain(side, tmp):
            tmp.write_text(json.dumps({"sha256": digest, "step": self.step_idx}))
            os.replace(tmp, side)
        return out


@dataclass
class TrainResult:
    crosscoder: CrossCoder          # folded: takes and returns raw activations
    log: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    compute: dict = field(default_factory=dict)   # the compute dtype used and why (``precision.resolve``)


def _read_log(path: Path, upto_step: int) -> list[dict]:
    """The log rows up to ``upto_step``; a torn or damaged line (a kill mid-append) ends the readable log, with a
    message naming the file, instead of failing every resume."""
    if not path.exists():
        return []
    rows = []
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            step = int(row["step"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            print(f"{path}: line {n} is damaged; the training log is kept up to the line before it", flush=True)
            break
        if step <= upto_step:
            rows.append(row)
    return rows


def _usable_checkpoint(ckpt: Path) -> str | None:
    """None if ``ckpt`` matches the sha256 its ``checkpoint.json`` recorded, else what is wrong with it."""
    side = ckpt.with_name(CHECKPOINT_SUM_NAME)
    try:
        want = json.loads(side.read_text())["sha256"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        return f"{side} is missing or unreadable ({type(err).__name__})"
    got = paths.sha256_file(ckpt)
    return None if got == want else f"{ckpt} has sha256 {got[:16]}..., {side} recorded {want[:16]}..."


def train(store, cfg: TrainConfig, ckpt_dir=None, *, resume: bool = True, stop_after: int | None = None,
          device="cpu", progress: bool = True, world=None, dense_reference: bool = False) -> TrainResult:
    """Train a crosscoder on ``store`` with ``cfg``; return it folded (raw units) with the per-step log.

    ``ckpt_dir``: folder for ``checkpoint.pt`` (every ``cfg.checkpoint_every`` steps and at the end) and
    ``train_log.jsonl``; an existing checkpoint there is resumed (``resume=True``) after checking that it
    was written by the same config and store. ``stop_after``: stop after this many total steps (an
    interruption, for tests), returning the model as it is.
    ``world``: data-parallel training over its ranks (call on every rank with the same arguments; the
    checkpoint folder must be shared storage; rank 0 writes it and the log; every rank returns the model).
    ``dense_reference``: train with the plain-autograd reference step instead of the fast kernels (see
    ``Trainer``; for comparisons).
    """
    from tqdm.auto import tqdm

    trainer = Trainer(store, cfg, device=device, world=world, dense_reference=dense_reference)
    dist_kw = {} if trainer.world is None else {"rank": world.rank, "world_size": world.world_size}
    main = trainer.world is None or world.rank == 0
    progress = progress and main
    log: list[dict] = []
    log_file = None
    if ckpt_dir is not None:
        ckpt_dir = paths.ensure_writable(Path(ckpt_dir)) if main else Path(ckpt_dir)
        if main:   # temp files of a writer that was killed mid-write: never read, removed now, not at the end
            for stale in [*ckpt_dir.glob(f".{CHECKPOINT_NAME}.*.tmp"), *ckpt_dir.glob(f".{CHECKPOINT_SUM_NAME}.*.tmp")]:
                stale.unlink(missing_ok=True)
        ckpt = ckpt_dir / CHECKPOINT_NAME
        if ckpt.exists():
            if not resume:
                raise FileExistsError(f"{ckpt} exists; pass resume=True to continue it or use another folder")
            problem = _usable_checkpoint(ckpt)
            if problem is None:
                try:
                    state = torch.load(ckpt, map_location=trainer.device, weights_only=False)
                except Exception as err:   # unpicklable despite its checksum: treat as damaged
                    problem = f"{ckpt} cannot be loaded ({type(err).__name__}: {err})"
            if problem is not None and main:
                # a damaged checkpoint must not resume into other weights: set it aside, start again
                aside = paths.move_aside(ckpt)
                (ckpt_dir / CHECKPOINT_SUM_NAME).unlink(missing_ok=True)
                print(f"{problem}: the checkpoint is damaged; moved it to {aside} and training from the start",
                      flush=True)
            elif problem is not None:
                raise ValueError(f"{problem}: the shared checkpoint is damaged; restart the run")
            else:
                trainer.check_checkpoint(state, ckpt_dir)
                trainer.load_state_dict(state)
        log = _read_log(ckpt_dir / LOG_NAME, trainer.step_idx)
        if main:
            tmp = ckpt_dir / f".{LOG_NAME}.tmp"
            tmp.write_text("".join(json.dumps(r) + "\n" for r in log))
            os.replace(tmp, ckpt_dir / LOG_NAME)
            log_file = open(ckpt_dir / LOG_NAME, "a")

    n_steps = cfg.n_steps if stop_after is None else min(cfg.n_steps, stop_after)
    ckpt_fvu = max(log[-1]["fvu"]) if log else 0.0    # the FVU at which the checkpoint on disk was written
    t0 = time.perf_counter()
    bar = tqdm(total=cfg.n_steps, initial=trainer.step_idx, desc=f"crosscoder {cfg.activation}",
               disable=not progress, dynamic_ncols=True)
    try:
        while trainer.step_idx < n_steps:
            got = False
            for x in store.loader(cfg.batch_size, cfg.buffer_tokens, cfg.seed, epoch=trainer.epoch,
                                  split="train", start_batch=trainer.batch_in_epoch, **dist_kw):
                got = True
                try:
                    row = trainer.step(x)
                    log.append(row)
                    # steps whose batch FVU is undefined (NaN, see Trainer.step) count as neither
                    recent = [max(r["fvu"]) for r in log[-DIVERGED_STEPS:] if all(map(math.isfinite, r["fvu"]))]
                    now = max(row["fvu"]) if all(map(math.isfinite, row["fvu"])) else 0.0
                    if not (math.isfinite(row["loss"]) and now < DIVERGED_FVU_AT_ONCE):
                        raise FloatingPointError(
                            f"training diverged at step {trainer.step_idx}: loss {row['loss']:.3g}, FVU "
                            f"{now:.3g} (predicting zero gives 1.0), lr {cfg.lr} is likely too high")
                    if len(recent) == DIVERGED_STEPS and min(recent) > DIVERGED_FVU:
                        raise FloatingPointError(
                            f"training diverged at step {trainer.step_idx}: FVU above {DIVERGED_FVU} for "
                            f"{DIVERGED_STEPS} steps (now {recent[-1]:.3g}; predicting zero gives 1.0), "
                            f"lr {cfg.lr} is likely too high")
                except FloatingPointError as err:
                    last = ckpt_dir / CHECKPOINT_NAME if ckpt_dir is not None else None
                    if last is not None and last.exists() and ckpt_fvu > DIVERGED_FVU:
                        # written while it was already diverging: not a checkpoint anyone should resume
                        last.unlink()
                        kept = f"the checkpoint written at FVU {ckpt_fvu:.3g} was removed"
                    elif last is not None and last.exists():
                        kept = f"the last checkpoint {last}, written at FVU {ckpt_fvu:.3g}, is kept"
                    else:
                        kept = "no checkpoint was written"
                    raise FloatingPointError(f"{err}; training stopped ({kept}). Lower lr or check the "
                                             "activations for outliers.") from None
                trainer.batch_in_epoch += 1
                row["epoch"] = trainer.epoch
                row["time"] = time.perf_counter() - t0
                if log_file is not None:
                    log_file.write(json.dumps(row) + "\n")
                bar.update(1)
                bar.set_postfix(loss=f"{row['loss']:.4g}", fvu=",".join(f"{v:.3f}" for v in row["fvu"]),
                                l0=f"{row['l0']:.1f}", refresh=False)
                every = cfg.checkpoint_every
                if main and ckpt_dir is not None and (trainer.step_idx == cfg.n_steps or (every and trainer.step_idx % every == 0)):
                    log_file.flush()
                    trainer.save_checkpoint(ckpt_dir)
                    if all(map(math.isfinite, row["fvu"])):
                        ckpt_fvu = max(row["fvu"])
                if trainer.step_idx >= n_steps:
                    break
            else:
                if not got and trainer.batch_in_epoch == 0:
                    raise ValueError("the store's loader yielded no training batches (empty train split?)")
                trainer.epoch += 1
                trainer.batch_in_epoch = 0
    finally:
        bar.close()
        if log_file is not None:
            log_file.close()
    folded = trainer.model.fold(trainer.scale_np.tolist()).eval()
    return TrainResult(crosscoder=folded, log=log, seconds=time.perf_counter() - t0, compute=trainer.compute)


MAX_HELDOUT_FVU = 1.0   # a crosscoder that reconstructs held-out tokens no better than their mean did not learn


class DidNotLearnError(RuntimeError):
    """Training finished but the crosscoder reconstructs held-out activations no better than their mean."""


def check_learned(crosscoder, store, work: Path, cfg: TrainConfig) -> dict:
    """Held-out FVU of a freshly trained crosscoder (training split if the store has no held-out tokens);
    raise ``DidNotLearnError`` (and drop the partial folder, whose checkpoint holds the same model) when any
    model's FVU reaches ``MAX_HELDOUT_FVU``: such a crosscoder must not be cached as a result."""
    meta = getattr(store, "meta", None)
    held = int((np.asarray(meta["split"]) == 1).sum()) if meta is not None and "split" in meta else 0
    split = "heldout" if held else "train"
    ev = evaluate(crosscoder, store, split=split, max_tokens=20_000, progress=False)
    if not ev.get("n_tokens"):
        return ev
    worst = float(max(ev["fvu"]))
    if not math.isfinite(worst) or worst >= MAX_HELDOUT_FVU:
        shutil.rmtree(work, ignore_errors=True)
        raise DidNotLearnError(
            f"the {cfg.activation} crosscoder (lr {cfg.lr}, {cfg.n_steps} steps) reconstructs {split} activations "
            f"with FVU {[round(float(v), 4) for v in ev['fvu']]} (>= {MAX_HELDOUT_FVU}: no better than predicting "
            "their mean); it was not cached. Lower lr, train longer, or check the store.")
    return ev


def cache_key(store, cfg: TrainConfig, device="cpu") -> str:
    """The crosscoder cache folder's name: the store, the config and, for ``compute_dtype="auto"``, the dtype it
    resolves to on ``device`` (a crosscoder trained in bf16 is not the one trained in float32)."""
    key = {"store": store_hash(store), "train": cfg.to_dict()}
    if cfg.compute_dtype == "auto":
        key["compute"] = precision.resolve("auto", device)["dtype"]
    return paths.config_hash(key)


def get_crosscoder(store, cfg: TrainConfig, out_root=None, *, device="cpu", progress: bool = True) -> CrossCoder:
    """The crosscoder for ``store`` + ``cfg``: loaded from the cache, or trained (resuming) and cached.

    Layout: ``<out_root or RUNS_DIR/crosscoder>/<hash>/`` holds ``config.json``, ``model.safetensors``
    (folded), ``train_log.jsonl`` and ``train_summary.json``; it appears only when complete. Training
    checkpoints live in ``<hash>.partial/`` until then, so an interrupted run resumes where it stopped.
    """
    cfg.validate()
    validate_store(store)
    root = Path(out_root) if out_root is not None else Path(paths.RUNS_DIR) / "crosscoder"
    key = cache_key(store, cfg, device)
    final = root / key
    with paths.writer_lock(final):     # one trainer per crosscoder; a second waits and loads its result
        if final.exists():
            try:
                cc = CrossCoder.from_pretrained(final, device=device)
                cc.check_compatible(store)     # a cache folder of this key must fit this store, field by field
            except (CorruptArtifactError, FileNotFoundError, ValueError) as err:
                # never re-read a broken cache forever: set it aside, retrain
                aside = paths.move_aside(final)
                print(f"{err}\nmoved the damaged crosscoder to {aside}; training it again", flush=True)
            else:
                return cc
        work = paths.ensure_writable(root / f"{key}.partial")
        result = train(store, cfg, ckpt_dir=work, device=device, progress=progress)
        check_learned(result.crosscoder, store, work, cfg)
        last = result.log[-1] if result.log else {}
        summary = {"store_hash": store_hash(store), "train_config": cfg.to_dict(), "compute": result.compute,
                   "steps": cfg.n_steps,
                   "tokens": last.get("tokens"), "seconds_this_session": result.seconds,
                   "final_batch": {k: last.get(k) for k in ("loss", "recon", "fvu", "l0", "dead_frac")}}
        with paths.atomic_dir(final) as tmp, paths.disk_full_is_plain(final / WEIGHTS_NAME):
            result.crosscoder.save_pretrained(tmp)
            shutil.copy(work / LOG_NAME, tmp / LOG_NAME)
            (tmp / SUMMARY_NAME).write_text(json.dumps(summary, indent=1))
        shutil.rmtree(work, ignore_errors=True)
    return CrossCoder.from_pretrained(final, device=device)


def load_log(crosscoder_or_dir):
    """The per-step training log of a cached crosscoder (or a folder) as a pandas DataFrame."""
    import pandas as pd

    folder = Path(getattr(crosscoder_or_dir, "source", None) or crosscoder_or_dir)
    path = folder / LOG_NAME
    if not path.exists():
        raise FileNotFoundError(f"no {LOG_NAME} in {folder}")
    df = pd.DataFrame([json.loads(line) for line in path.read_text().splitlines() if line.strip()])
    fvu = np.array(df.pop("fvu").tolist())
    for m in range(fvu.shape[1]):
        df[f"fvu_{m}"] = fvu[:, m]
    return df


class TensorStore:
    """An in-memory activation store over a tensor [n_tokens, n_models, d_model] (reference protocol).

    For tests, the benchmark and small experiments; the real store is ``thinkdiff.store``. The last
    ``heldout_frac`` of tokens is the held-out split. Each epoch is a fresh seeded permutation of the
    split (the whole split fits in RAM, so ``buffer_tokens`` is not needed for shuffling).
    """

    def __init__(self, acts: torch.Tensor, layer: int | None = None, heldout_frac: float = 0.1, name: str = "tensor"):
        if acts.ndim != 3:
            raise ValueError(f"acts must be [n_tokens, n_models, d_model], got {tuple(acts.shape)}")
        self.acts = acts.float().contiguous()
        self.n_tokens, self.n_models, self.d_model = self.acts.shape
        self.layer = layer
        self.n_heldout = int(round(heldout_frac * self.n_tokens))
        self.mean_norm = self.acts.norm(dim=-1).mean(0).double().numpy()
        self.norm_scale = math.sqrt(self.d_model) / self.mean_norm
        digest = paths.config_hash({"name": name, "shape": list(self.acts.shape), "layer": layer,
                                    "sum": float(self.acts.double().sum()), "sq": float(self.acts.double().pow(2).sum()),
                                    "heldout": self.n_heldout})
        self.config_hash = digest
        self.manifest = {"name": name, "n_tokens": self.n_tokens, "layer": layer, "n_heldout": self.n_heldout}

    def _split(self, split: str) -> torch.Tensor:
        n_train = self.n_tokens - self.n_heldout
        if split == "train":
            return self.acts[:n_train]
        if split == "heldout":
            return self.acts[n_train:]
        if split == "all":
            return self.acts
        raise ValueError(f"split must be 'train', 'heldout' or 'all', got {split!r}")

    def loader(self, batch_size: int, buffer_tokens: int = 0, seed: int = 0, epoch: int = 0, split: str = "train",
               start_batch: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1):
        """Batches [batch, n_models, d]; with ``world_size > 1`` only rank ``rank``'s part of each batch."""
        part_bounds(0, rank, world_size)
        data = self._split(split)
        n = data.shape[0]
        order = (torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
                 if shuffle else torch.arange(n))
        for b in range(start_batch, math.ceil(n / batch_size)):
            rows = order[b * batch_size:(b + 1) * batch_size]
            lo, hi = part_bounds(len(rows), rank, world_size)
            yield data[rows[lo:hi]]
