"""Scale out with torch.distributed: ranks from torchrun, a rank-sliced harvest merged into one store, DDP training.

Launch any script that calls these with ``torchrun`` (one process per GPU; gloo on CPUs)::

    world = distributed.init()                                   # reads torchrun's env; nccl on GPUs, gloo on CPU
    dev_base, dev_distilled = distributed.rank_devices(world)    # this rank's GPU(s)
    store = distributed.harvest_pair(base, distilled, tok, tok, docs, HarvestConfig(...), out_dir=SHARED / "store",
                                     world=world)               # every rank returns the merged store
    result = distributed.train(store, TrainConfig(...), ckpt_dir=SHARED / "ckpt", world=world)
    distributed.shutdown(world)

Without torchrun, ``init()`` returns a 1-rank ``World`` and everything runs in this process.

Harvest. The fixed batch plan of ``harvest.py`` (train documents, then held-out ones) is cut into
``world_size`` contiguous, balanced slices (``store.part_bounds``); rank r harvests slice r into its own
resumable part store ``<out>.ranks/w<W>-r<r>/`` (a finished store with its own checksums, verified by
the rank that wrote it), and rank 0 then hard-links every part's shards, in rank order, into
``<out>.partial/`` and finalizes it as one store. So the merged store holds the 1-rank store's rows in
the same order, with the same key, statistics and checksummed files; only the shard boundaries (and the
manifest's ``distributed`` / ``run`` records) differ. Interrupted parts resume; an interrupted merge
resumes; a finished store with the same key is reused on any world size. The outlier calibration is
measured once by rank 0 and broadcast.

Training. ``cfg.batch_size`` is the global batch; rank r trains on its part of every global batch, and
``train.Trainer`` makes the step equal to the 1-rank step (see ``thinkdiff.train``). Checkpoints hold
no rank state, so a run resumes on any world size.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch

from . import harvest as H, train as T
from .hf import resolve_checkpoint
from .store import ActivationStore, MANIFEST, StoreWriter, canonical_key, key_differences, part_bounds

PLACEMENTS = ("same", "split")
_OPS = {"sum": "SUM", "max": "MAX", "min": "MIN"}


@dataclass(frozen=True)
class World:
    """This process's place in the job: global ``rank`` of ``world_size``, ``local_rank`` of
    ``local_world_size`` on this node, the process-group ``backend`` (None: no process group) and the
    model ``placement`` ("same": both models on one GPU per rank; "split": base and distilled on two)."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    backend: str | None = None
    placement: str = "same"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        """The device this rank trains on and communicates from (its base model's device)."""
        return rank_devices(self)[0]

    def barrier(self) -> None:
        if self.backend is not None:
            torch.distributed.barrier()

    def _comm(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.device) if self.backend == "nccl" and t.device.type != "cuda" else t

    def all_reduce_(self, t: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """Reduce ``t`` over all ranks in place (``op``: sum, max, min) and return it."""
        if op not in _OPS:
            raise ValueError(f"op must be one of {list(_OPS)}, got {op!r}")
        if self.backend is not None and self.world_size > 1:
            c = self._comm(t)
            torch.distributed.all_reduce(c, op=getattr(torch.distributed.ReduceOp, _OPS[op]))
            if c is not t:
                t.copy_(c)
        return t

    def all_gather(self, t: torch.Tensor) -> torch.Tensor:
        """``[world_size, *t.shape]``: every rank's ``t`` (same shape on every rank), in rank order."""
        if self.backend is None or self.world_size == 1:
            return t[None].clone()
        c = self._comm(t.contiguous())
        out = [torch.empty_like(c) for _ in range(self.world_size)]
        torch.distributed.all_gather(out, c)
        return torch.stack(out).to(t.device)

    def broadcast_object(self, obj, src: int = 0):
        """``obj`` of rank ``src`` (any picklable object) on every rank."""
        if self.backend is None or self.world_size == 1:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=src, device=self.device if self.backend == "nccl" else None)
        return box[0]


def _env_int(name: str, default: int | None = None) -> int:
    v = os.environ.get(name)
    if v is None:
        if default is None:
            raise RuntimeError(f"torchrun environment variable {name} is missing")
        return default
    try:
        return int(v)
    except ValueError:
        raise RuntimeError(f"environment variable {name}={v!r} is not an integer") from None


def init(backend: str | None = None, placement: str = "same", timeout_s: float = 3 * 3600) -> World:
    """Join the process group torchrun set up (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` ...).

    backend: None picks ``nccl`` when CUDA is available, else ``gloo``. placement: "same" (rank r uses
    GPU ``local_rank``) or "split" (GPUs ``2 local_rank`` and ``2 local_rank + 1``: base and distilled
    apart; run ``local_world_size = n_gpus / 2`` ranks per node). timeout_s: how long a collective may
    wait (a rank that finishes its harvest slice early waits in a barrier for the slowest one).
    Without torchrun's variables, returns a 1-rank ``World`` and starts nothing.
    """
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return World(placement=placement)
    rank, world_size = _env_int("RANK"), _env_int("WORLD_SIZE")
    local_rank, local_ws = _env_int("LOCAL_RANK", 0), _env_int("LOCAL_WORLD_SIZE", 1)
    if not 0 <= rank < world_size:
        raise RuntimeError(f"RANK={rank} is not in [0, WORLD_SIZE={world_size})")
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend not in ("nccl", "gloo"):
        raise ValueError(f"backend must be 'nccl' (GPUs) or 'gloo' (CPU), got {backend!r}")
    world = World(rank, world_size, local_rank, local_ws, backend, placement)
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise RuntimeError("backend 'nccl' needs CUDA GPUs and none is visible; use backend='gloo'")
        rank_devices(world)  # fails fast when this node has too few GPUs for the placement
        torch.cuda.set_device(world.device)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    return world


def shutdown(world: World) -> None:
    """Leave the process group (call once at the end of a torchrun script)."""
    if world.backend is not None and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def rank_devices(world: World) -> tuple[torch.device, torch.device]:
    """(base device, distilled device) of this rank: CPU under gloo; ``cuda:local_rank`` twice for the
    "same" placement; ``cuda:2 local_rank`` and ``cuda:2 local_rank + 1`` for "split"."""
    if world.backend != "nccl":
        return torch.device("cpu"), torch.device("cpu")
    per_rank = 2 if world.placement == "split" else 1
    need = per_rank * world.local_world_size
    have = torch.cuda.device_count()
    if have < need:
        raise RuntimeError(f"placement {world.placement!r} with {world.local_world_size} ranks on this node needs "
                           f"{need} GPUs, {have} visible; lower --nproc_per_node or use placement='same'")
    first = per_rank * world.local_rank
    return torch.device("cuda", first), torch.device("cuda", first + per_rank - 1)


def load_hf_pair(base_id_or_path, distilled_id_or_path, world: World, dtype: str = "bfloat16"):
    """Load a real (base, distilled) pair straight onto this rank's devices (see ``rank_devices``).

    ``pairs.load`` puts models on cuda:0/cuda:1 of the process, which under torchrun would stack
    every rank on the first GPUs; this loads each model with ``device_map={"": device}``. Returns
    ``(base, distilled, base_tokenizer, distilled_tokenizer)``, models in eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in ("bfloat16", "float16", "float32"):
        raise ValueError(f"dtype must be bfloat16, float16 or float32, got {dtype!r}")
    out = []
    for src, dev in zip((base_id_or_path, distilled_id_or_path), rank_devices(world)):
        src = resolve_checkpoint(src)
        kw = {"device_map": {"": str(dev)}} if dev.type == "cuda" else {}
        out.append(AutoModelForCausalLM.from_pretrained(src, dtype=getattr(torch, dtype), **kw).eval())
    toks = [AutoTokenizer.from_pretrained(resolve_checkpoint(s)) for s in (base_id_or_path, distilled_id_or_path)]
    return out[0], out[1], toks[0], toks[1]


# ----------------------------------------------------------------------------- harvest

def ranks_dir(out: Path) -> Path:
    """Where the per-rank part stores of ``out`` live while a distributed harvest runs."""
    return out.parent / f"{out.name}.ranks"


def part_dir(out: Path, rank: int, world_size: int) -> Path:
    return ranks_dir(out) / f"w{world_size:03d}-r{rank:03d}"


def _part_key(job: H.HarvestJob, rank: int, world_size: int) -> dict:
    lo, hi = part_bounds(len(job.plan), rank, world_size)
    return {**job.key, "part": {"rank": rank, "world_size": world_size, "batches": [lo, hi]}}


def _rank0_calibration(job, base, distilled, tok_b, tok_d, world_size: int):
    """(outlier median or None, compute dtype choice): recorded by an earlier (interrupted) run, else measured."""
    median = compute = None
    part = part_dir(job.out, 0, world_size)
    for f in (part / MANIFEST, part.with_name(part.name + ".partial") / "progress.json"):
        if not f.exists():
            continue
        rec = json.loads(f.read_text())
        state = rec.get("state", {})
        median = median if median is not None else rec.get("median_norm", state.get("median_norm"))
        compute = compute or rec.get("compute", state.get("compute"))
    need_median = job.cfg.outlier_norm_multiple is not None and median is None
    if compute is not None and not need_median:
        return median, compute
    was = (base.training, distilled.training)
    base.eval(), distilled.eval()
    try:
        readers = [H.LayerReader(base, tok_b, job.layer), H.LayerReader(distilled, tok_d, job.layer)]
        compute = compute or H.choose_compute(readers, job.docs, job.plan, job.cfg, job.pad_id)
        for r in readers:
            r.bf16_autocast = compute["dtype"] == "bfloat16"
        if need_median:
            median = H._calibrate(readers, job.docs, job.plan, job.cfg, job.pad_id)
        return median, compute
    finally:
        base.train(was[0]), distilled.train(was[1])


def harvest_pair(base, distilled, tokenizer_base, tokenizer_distilled, documents, cfg: H.HarvestConfig | None = None,
                 out_dir=None, world: World | None = None, verify: bool = True,
                 progress: bool = True) -> ActivationStore:
    """``harvest.harvest_pair`` over all ranks of ``world``: call it on every rank with the same arguments.

    ``out_dir`` must be on storage every rank sees (the default ``RUNS_DIR/harvest/<key hash>`` is, if
    ``THINKDIFF_RUNS`` points to shared storage). Rank r harvests its contiguous slice of the batch plan
    into ``<out>.ranks/w<W>-r<r>/`` (``verify``: then re-reads and checks its sha256s, all ranks in
    parallel), rank 0 merges the parts into ``out``, and every rank returns the finished store. The
    result equals the 1-rank store row for row (same key and order; shard boundaries differ).
    """
    world = world or World()
    job = H.prepare_harvest(base, distilled, tokenizer_base, tokenizer_distilled, documents, cfg, out_dir)
    done = H.finished_store(job, verify=False)  # every rank: a different key raises everywhere alike
    if done is None:
        W = world.world_size
        calibration = None
        if world.is_main:
            calibration = _rank0_calibration(job, base, distilled, tokenizer_base, tokenizer_distilled, W)
        # (a rank simulated without a process group receives None and calibrates for itself)
        median, compute = world.broadcast_object(calibration) or (None, None)
        lo, hi = part_bounds(len(job.plan), world.rank, W)
        part, key = part_dir(job.out, world.rank, W), _part_key(job, world.rank, W)
        if lo < hi:   # (more ranks than batches: the last ranks have nothing to do)
            if (part / MANIFEST).exists():
                have = ActivationStore(part, verify=False).key
                if have != canonical_key(key):
                    raise ValueError(f"the rank part {part} was written for another configuration "
                                     f"({'; '.join(key_differences(have, canonical_key(key)))}); delete {ranks_dir(job.out)}")
            else:
                writer = StoreWriter(part, key)
                H.harvest_range(job, writer, base, distilled, tokenizer_base, tokenizer_distilled, lo, hi, median,
                                progress=progress and world.is_main, compute=compute)
                writer.finalize({"part": key["part"], "median_norm": median, "compute": compute,
                                 "run": writer.state.get("run")})
            if verify:
                ActivationStore(part, verify=True)
        world.barrier()
        if world.is_main:
            merge_parts(job, W, median, tokenizer_base, compute)
        world.barrier()
    elif world.is_main and ranks_dir(job.out).exists():
        shutil.rmtree(ranks_dir(job.out), ignore_errors=True)   # leftover of a merge interrupted after finalize
    store = ActivationStore(job.out, verify=False)
    if done is not None and verify and world.is_main:
        store.verify()
    world.barrier()
    return store


def merge_parts(job: H.HarvestJob, world_size: int, median, tokenizer_base, compute=None) -> Path:
    """Rank 0: link the finished rank parts' shards, in plan order, into one store at ``job.out``.

    Resumable: the merge records, like a harvest, the next plan batch after its last shard, so an
    interrupted merge (or an interrupted 1-rank harvest whose last shard ends where a part shard ends)
    continues; a partial store that ends elsewhere is refused. Removes ``<out>.ranks`` when done."""
    entries, runs, parts = [], [], []
    for r in range(world_size):
        lo, hi = part_bounds(len(job.plan), r, world_size)
        if lo == hi:
            continue
        d = part_dir(job.out, r, world_size)
        if not (d / MANIFEST).exists():
            raise FileNotFoundError(f"rank {r}'s part {d} is missing or unfinished; rerun the distributed harvest")
        man = json.loads((d / MANIFEST).read_text())
        if man["key"] != canonical_key(_part_key(job, r, world_size)):
            raise ValueError(f"rank part {d} belongs to another harvest; delete {ranks_dir(job.out)}")
        entries += [(d, e) for e in man["shards"]]
        runs.append(man.get("run") or {})
        parts.append({"rank": r, "batches": [lo, hi], "n_shards": len(man["shards"]), "n_tokens": man["n_tokens"]})
    writer = StoreWriter(job.out, job.key)
    nb = writer.state.get("next_batch", 0)
    if nb and not any(e["batches"][1] == nb for _, e in entries):
        raise ValueError(f"the partial store {writer.partial} ends at plan batch {nb}, which is no shard boundary of "
                         f"the {world_size}-rank parts; delete it (the parts in {ranks_dir(job.out)} are kept)")
    if median is not None and writer.state.get("median_norm") != median:
        writer.set_state(median_norm=median)
    for d, e in entries:
        if e["batches"][0] >= nb:
            writer.adopt_shard(d, e, state={"next_batch": e["batches"][1]})
    secs = [r["seconds"] for r in runs if r.get("seconds") is not None]
    rates = [r["tokens_per_s"] for r in runs if r.get("tokens_per_s") is not None]
    run = {"world_size": world_size, "seconds": max(secs) if secs else None,
           "tokens_per_s": round(sum(rates), 1) if rates else None}
    manifest = H.harvest_manifest(job, writer.shards, median, tokenizer_base, run, compute)
    manifest["distributed"] = {"world_size": world_size, "parts": parts}
    path = writer.finalize(manifest)
    shutil.rmtree(ranks_dir(job.out), ignore_errors=True)
    return path


# ----------------------------------------------------------------------------- training

def train(store, cfg: T.TrainConfig, ckpt_dir=None, world: World | None = None, **kw) -> T.TrainResult:
    """``train.train`` data-parallel over ``world`` on ``world.device``; call on every rank alike.

    ``ckpt_dir`` must be shared storage (rank 0 writes ``checkpoint.pt`` and the log there; every rank
    reads the checkpoint to resume, whatever world size wrote it). Other keywords go to ``train.train``."""
    world = world or World()
    kw.setdefault("device", world.device)
    return T.train(store, cfg, ckpt_dir, world=world, **kw)
