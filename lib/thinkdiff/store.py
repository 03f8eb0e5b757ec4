"""The on-disk activation store: sharded paired activations, a manifest, and a training loader.

Layout of a finished store (a folder)::

    manifest.json            identities, layer, dtype, shard list with sizes + sha256, exclusions, stats
    acts_00000.npy           [n_i, n_models, d_model] activations (float32 / float16; bfloat16 as uint16 bits)
    meta_00000.npy           [n_i] structured: token_id, doc_id, pos, label, marker, split
    stats_00000.npy          [n_models, 5 + 2 d] float64 per-shard statistics (see ``RunningStats``)
    dim_mean.npy, dim_var.npy  [n_models, d_model] float64 per-dimension mean / variance over the store

Each shard holds tokens of one split only (train or held-out), so a split is a set of shards.
A store is written by ``StoreWriter`` into ``<final>.partial/`` and renamed to ``<final>`` only when
complete; an interrupted write leaves the partial folder, which a later ``StoreWriter`` resumes from
its last complete shard. Nothing ever opens a partial folder as a store.

``ActivationStore.loader`` yields shuffled RAW activations (the crosscoder folds the normalisation
``norm_scale = sqrt(d_model) / mean_norm`` itself) with RAM bounded by ``buffer_tokens``.
"""
from __future__ import annotations

import json
import math
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import paths
from .paths import sha256_file

FORMAT = "thinkdiff-activation-store"
VERSION = 1
MANIFEST = "manifest.json"
PROGRESS = "progress.json"
SPLITS = {"train": 0, "heldout": 1}
META_DTYPE = np.dtype([("token_id", "<i4"), ("doc_id", "<i4"), ("pos", "<i4"),
                       ("label", "i1"), ("marker", "?"), ("split", "i1")])
# bfloat16 has no numpy dtype: it is stored as its raw 16 bits in uint16 and converted with torch.
STORAGE = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}
REQUIRED_KEYS = ("key", "key_hash", "dtype", "n_models", "d_model", "n_tokens", "shards", "norm")


# ----------------------------------------------------------------------------- dtype + hashing helpers

def check_dtype(dtype: str) -> str:
    if dtype not in STORAGE:
        raise ValueError(f"unsupported store dtype {dtype!r}; choose one of {sorted(STORAGE)}")
    return dtype


def to_storage(x: np.ndarray, dtype: str) -> np.ndarray:
    """float32 array -> the array written to disk for ``dtype`` (same shape)."""
    if dtype == "bfloat16":
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(torch.bfloat16).view(torch.uint16).numpy()
    with np.errstate(over="ignore"):
        out = np.asarray(x, dtype=STORAGE[dtype])
    if dtype == "float16" and not np.isfinite(out).all():
        raise ValueError("activations overflow float16 (|x| > 65504); harvest with dtype='bfloat16' or 'float32'")
    return out


def from_storage(x: np.ndarray, dtype: str) -> np.ndarray:
    """Stored array -> float32 numpy array."""
    if dtype == "bfloat16":
        return torch.from_numpy(np.array(x)).view(torch.bfloat16).float().numpy()  # copy: memmaps are read-only
    return np.asarray(x, dtype=np.float32)


def _save_npy(path: Path, arr: np.ndarray) -> dict:
    """Write ``arr`` to ``path`` via a temp file + rename (never a half-written file); return its record."""
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with paths.disk_full_is_plain(path, tmp):
        with open(tmp, "wb") as f:
            np.save(f, arr, allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    return {"file": path.name, "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with paths.disk_full_is_plain(path, tmp):
        tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
        os.replace(tmp, path)


def part_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rank ``rank``'s contiguous part ``[lo, hi)`` of ``n`` items split over ``world_size`` ranks.

    Parts differ in size by at most one, cover ``0..n`` in rank order, and may be empty when
    ``n < world_size``. Used for a rank's slice of a harvest plan and of every global training batch."""
    if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
        raise ValueError(f"need 0 <= rank < world_size (integers), got rank={rank!r}, world_size={world_size!r}")
    return n * rank // world_size, n * (rank + 1) // world_size


def canonical_key(key: dict) -> dict:
    """The key as stored in JSON (tuples become lists, keys sorted), so keys compare equal after a round trip."""
    return json.loads(json.dumps(key, sort_keys=True))


def key_differences(a: dict, b: dict) -> list[str]:
    """Human-readable list of the fields in which two store keys differ."""
    out = []
    for k in sorted(set(a) | set(b)):
        if a.get(k) != b.get(k):
            out.append(f"{k}: {str(a.get(k))[:120]} != {str(b.get(k))[:120]}")
    return out


# ----------------------------------------------------------------------------- streaming statistics

class RunningStats:
    """Per-model streaming statistics of activation rows, mergeable (Chan et al.) and exact in float64.

    Holds, for each of ``n_models``: ``count``, ``sum_norm`` / ``sum_sq_norm`` / ``max_norm`` of the
    L2 norm of each row, ``min_norm`` likewise, and the per-dimension ``mean`` [n_models, d] and ``m2``
    (sum of squared deviations) [n_models, d]. Packed on disk as float64 [n_models, 5 + 2 d]:
    columns count, sum_norm, sum_sq_norm, max_norm, min_norm, mean[0:d], m2[0:d].
    """

    def __init__(self, n_models: int, d_model: int):
        self.count = 0
        self.sum_norm = np.zeros(n_models)
        self.sum_sq_norm = np.zeros(n_models)
        self.max_norm = np.zeros(n_models)
        self.min_norm = np.full(n_models, np.inf)
        self.mean = np.zeros((n_models, d_model))
        self.m2 = np.zeros((n_models, d_model))

    @classmethod
    def of(cls, x: np.ndarray) -> "RunningStats":
        """Statistics of one block of rows ``x`` [n, n_models, d].

        Sums are accumulated in float64 over float32 values shifted by the first row (so a large mean
        does not cancel the variance away); a few memory passes, cheap next to the forward pass."""
        x = np.asarray(x, dtype=np.float32)
        s = cls(x.shape[1], x.shape[2])
        if len(x):
            n, c = len(x), x - x[0]
            s1 = c.sum(0, dtype=np.float64)                                  # [n_models, d]
            norms = np.sqrt(np.einsum("nmd,nmd->nm", x, x, dtype=np.float64))  # [n, n_models]
            s.count = n
            s.sum_norm, s.sum_sq_norm, s.max_norm = norms.sum(0), (norms ** 2).sum(0), norms.max(0)
            s.min_norm = norms.min(0)
            s.mean = x[0] + s1 / n
            s.m2 = np.einsum("nmd,nmd->md", c, c, dtype=np.float64) - s1 * s1 / n
        return s

    def merge(self, other: "RunningStats") -> "RunningStats":
        """Chan's parallel update: fold ``other`` into ``self`` (in place) and return self."""
        n, m = self.count, other.count
        if m == 0:
            return self
        if n == 0:
            self.__dict__.update({k: np.copy(v) if isinstance(v, np.ndarray) else v for k, v in other.__dict__.items()})
            return self
        delta = other.mean - self.mean
        tot = n + m
        self.mean = self.mean + delta * (m / tot)
        self.m2 = self.m2 + other.m2 + delta ** 2 * (n * m / tot)
        self.count = tot
        self.sum_norm = self.sum_norm + other.sum_norm
        self.sum_sq_norm = self.sum_sq_norm + other.sum_sq_norm
        self.max_norm = np.maximum(self.max_norm, other.max_norm)
        self.min_norm = np.minimum(self.min_norm, other.min_norm)
        return self

    @property
    def mean_norm(self) -> np.ndarray:
        return self.sum_norm / max(self.count, 1)

    @property
    def var(self) -> np.ndarray:
        return self.m2 / max(self.count, 1)

    def pack(self) -> np.ndarray:
        n_models = len(self.sum_norm)
        head = np.stack([np.full(n_models, float(self.count)), self.sum_norm, self.sum_sq_norm, self.max_norm,
                         self.min_norm], 1)
        return np.concatenate([head, self.mean, self.m2], 1)

    @classmethod
    def unpack(cls, a: np.ndarray) -> "RunningStats":
        d = (a.shape[1] - 5) // 2
        s = cls(a.shape[0], d)
        s.count = int(a[0, 0])
        s.sum_norm, s.sum_sq_norm, s.max_norm, s.min_norm = (a[:, j].copy() for j in range(1, 5))
        s.mean, s.m2 = a[:, 5:5 + d].copy(), a[:, 5 + d:].copy()
        return s


# ----------------------------------------------------------------------------- writer (resumable)

class StoreWriter:
    """Writes shards into ``<final>.partial/`` and renames it to ``final`` on ``finalize``.

    ``key`` (a JSON-able dict) identifies what the store holds: models, layer, dtype, corpus, options.
    If a partial folder with the same key exists, the writer resumes it (its complete shards are kept;
    any file not recorded in its progress file is a leftover of an interrupted write and is ignored and
    later overwritten). A partial folder or finished store with a different key is refused.
    ``state`` is a dict the caller may use to persist resume information (e.g. the next batch).
    """

    def __init__(self, final_dir: Path, key: dict):
        self.final = Path(final_dir)
        self.partial = self.final.parent / (self.final.name + ".partial")
        self.key = canonical_key(key)
        if (self.final / MANIFEST).exists():
            raise FileExistsError(f"{self.final} is already a finished store; open it with ActivationStore")
        if self.final.exists():
            raise FileExistsError(f"{self.final} exists but is not an activation store; refusing to write into it")
        paths.ensure_writable(self.final.parent)
        prog = self.partial / PROGRESS
        if prog.exists():
            problem = self._damage(prog)
            if problem is not None:
                # a damaged partial harvest must not be finished into a store: set it aside, start again
                aside = paths.move_aside(self.partial)
                print(f"{problem}: the interrupted harvest is damaged; moved it to {aside} and harvesting from "
                      "the start", flush=True)
        if (self.partial / PROGRESS).exists():
            if self.progress["key"] != self.key:
                diff = "; ".join(key_differences(self.progress["key"], self.key))
                raise ValueError(f"the interrupted harvest in {self.partial} was started with a different "
                                 f"configuration ({diff}); refusing to mix. Delete that folder or use another out_dir.")
        else:
            self.partial.mkdir(exist_ok=True)
            self.progress = {"format": FORMAT, "version": VERSION, "key": self.key, "shards": [], "state": {}}
            self._save()

    def _damage(self, prog: Path) -> str | None:
        """Read ``progress.json`` into ``self.progress`` and check every shard it records (present, its size, its
        sha256): None when the partial harvest can be resumed, else what is wrong (naming the file)."""
        try:
            self.progress = json.loads(prog.read_text())
            shards, _ = self.progress["shards"], self.progress["key"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
            return f"{prog} is unreadable ({type(err).__name__}: {err})"
        for e in shards:
            for part in ("acts", "meta", "stats"):
                try:
                    f = self.partial / e[part]["file"]
                    if not f.exists():
                        return f"{f} (recorded shard {e['index']}) is missing"
                    if f.stat().st_size != e[part]["bytes"] or sha256_file(f) != e[part]["sha256"]:
                        return f"{f} (recorded shard {e['index']}) does not match its recorded size and sha256"
                except (KeyError, TypeError) as err:
                    return f"{prog} records a shard without its {err} entry"
        return None

    @property
    def resumed(self) -> bool:
        return bool(self.progress["shards"])

    @property
    def shards(self) -> list[dict]:
        return self.progress["shards"]

    @property
    def state(self) -> dict:
        return self.progress["state"]

    def set_state(self, **kw) -> None:
        self.progress["state"].update(kw)
        self._save()

    def _save(self) -> None:
        _write_json(self.partial / PROGRESS, self.progress)

    def write_shard(self, acts: np.ndarray, meta: np.ndarray, split: str, state: dict | None = None,
                    info: dict | None = None) -> dict:
        """Write one shard. ``acts`` [n, n_models, d] in the storage dtype; ``meta`` [n] of ``META_DTYPE``.

        ``state`` is stored atomically with the shard record (so a resume sees both or neither);
        ``info`` (JSON-able) is kept in the shard's manifest entry. Statistics are computed from the
        stored values, so they describe exactly what the loader will serve.
        """
        if split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
        if len(acts) != len(meta) or len(acts) == 0:
            raise ValueError(f"a shard needs matching, non-empty acts and meta (got {len(acts)} and {len(meta)} rows)")
        if meta.dtype != META_DTYPE:
            raise ValueError(f"meta must have dtype {META_DTYPE}, got {meta.dtype}")
        i = len(self.shards)
        dtype = self.key.get("dtype", "float32")
        stats = RunningStats.of(from_storage(acts, dtype))
        if stats.min_norm.min() == 0:
            raise ValueError(f"shard {i} holds an all-zero activation row (padding leaked into the store?); not written")
        entry = {"index": i, "split": split, "n_tokens": int(len(acts)),
                 "acts": _save_npy(self.partial / f"acts_{i:05d}.npy", acts),
                 "meta": _save_npy(self.partial / f"meta_{i:05d}.npy", meta),
                 "stats": _save_npy(self.partial / f"stats_{i:05d}.npy", stats.pack()),
                 **(info or {})}
        self.shards.append(entry)
        self.progress["state"].update(state or {})
        self._save()
        return entry

    def adopt_shard(self, src_dir: Path, entry: dict, state: dict | None = None) -> dict:
        """Append a finished shard of another store folder ``src_dir`` (its manifest ``entry``) as the next shard.

        Used to merge the per-rank parts of a distributed harvest. The three files are hard-linked into
        this store under the new index (copied where the filesystem has no hard links), each through a
        temp name + rename; sizes are checked against ``entry`` and its sha256 records are kept (the
        bytes are the same). ``state`` is stored atomically with the record, as in ``write_shard``.
        """
        import shutil

        i = len(self.shards)
        new = {**entry, "index": i}
        for part in ("acts", "meta", "stats"):
            src = Path(src_dir) / entry[part]["file"]
            if not src.exists() or src.stat().st_size != entry[part]["bytes"]:
                raise ValueError(f"cannot merge shard {src}: missing, or its size differs from its manifest "
                                 f"({entry[part]['bytes']} bytes); the rank's part is corrupted, rerun the harvest")
            dst = self.partial / f"{part}_{i:05d}.npy"
            tmp = dst.with_name(dst.name + ".tmp")
            tmp.unlink(missing_ok=True)
            try:
                os.link(src, tmp)
            except OSError:               # no hard links on this filesystem
                shutil.copyfile(src, tmp)
            os.replace(tmp, dst)
            new[part] = {**entry[part], "file": dst.name}
        self.shards.append(new)
        self.progress["state"].update(state or {})
        self._save()
        return new

    def finalize(self, manifest: dict) -> Path:
        """Merge statistics, write the manifest and rename the folder into place. Returns the store path."""
        if not self.shards:
            raise ValueError("no tokens were stored (empty corpus, or every position excluded); nothing to finalize")
        total = RunningStats(0, 0)
        for e in self.shards:
            total.merge(RunningStats.unpack(np.load(self.partial / e["stats"]["file"])))
        np.save(self.partial / "dim_mean.npy", total.mean)
        np.save(self.partial / "dim_var.npy", total.var)
        d = total.mean.shape[1]
        man = {**manifest, "format": FORMAT, "version": VERSION, "key": self.key,
               "key_hash": paths.config_hash(self.key), "dtype": self.key.get("dtype", "float32"),
               "n_models": int(total.mean.shape[0]), "d_model": int(d), "n_tokens": int(total.count),
               "n_tokens_split": {s: int(sum(e["n_tokens"] for e in self.shards if e["split"] == s)) for s in SPLITS},
               "shards": self.shards,
               "norm": {"mean_norm": total.mean_norm.tolist(),
                        "rms_norm": np.sqrt(total.sum_sq_norm / total.count).tolist(),
                        "max_norm": total.max_norm.tolist(), "min_norm": total.min_norm.tolist(),
                        "norm_scale": (math.sqrt(d) / total.mean_norm).tolist(),
                        "dim_mean_file": "dim_mean.npy", "dim_var_file": "dim_var.npy"}}
        _write_json(self.partial / MANIFEST, man)
        (self.partial / PROGRESS).unlink()
        for stray in self.partial.glob("*.tmp"):
            stray.unlink()
        os.rename(self.partial, self.final)
        return self.final


# ----------------------------------------------------------------------------- reader

@dataclass
class Chunk:
    """A contiguous run of store rows: ``index`` [n] global row ids, ``acts`` [n, n_models, d] float32,
    ``meta`` dict of [n] arrays (token_id, doc_id, pos, label, marker, split)."""
    index: np.ndarray
    acts: np.ndarray
    meta: dict


class ActivationStore:
    """A finished store, opened read-only. Activations stay on disk (memory-mapped).

    ``verify=True`` checks every file's sha256 against the manifest (reads the whole store once);
    sizes and presence are always checked. For very large stores pass ``verify=False`` and call
    ``verify()`` when convenient.
    """

    def __init__(self, path, verify: bool = True):
        self.path = Path(path)
        man_path = self.path / MANIFEST
        if not man_path.exists():
            hint = " (an interrupted harvest: rerun it to resume)" if (self.path.parent / (self.path.name + ".partial")).exists() else ""
            raise FileNotFoundError(f"no activation store at {self.path}: {MANIFEST} missing{hint}")
        try:
            self.manifest = json.loads(man_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{man_path} is not valid JSON ({err}): the store is damaged; delete {self.path} "
                             "and harvest again") from None
        if not isinstance(self.manifest, dict) or self.manifest.get("format") != FORMAT \
                or self.manifest.get("version") != VERSION:
            raise ValueError(f"{man_path} is not a version-{VERSION} {FORMAT} manifest")
        missing = [k for k in REQUIRED_KEYS if k not in self.manifest]
        if missing:
            raise ValueError(f"{man_path} lacks {missing}: the store is damaged; delete {self.path} and harvest again")
        if paths.config_hash(self.manifest["key"]) != self.manifest["key_hash"]:
            raise ValueError(f"{man_path}: its key does not hash to its key_hash (an edited manifest?); delete "
                             f"{self.path} and harvest again")
        self.dtype = check_dtype(self.manifest["dtype"])
        self.n_models, self.d_model, self.n_tokens = self.manifest["n_models"], self.manifest["d_model"], self.manifest["n_tokens"]
        self.shards = self.manifest["shards"]
        sizes = np.array([e["n_tokens"] for e in self.shards], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(sizes)])  # shard i holds rows offsets[i]:offsets[i+1]
        if self.offsets[-1] != self.n_tokens:
            raise ValueError(f"{man_path}: shard sizes add up to {self.offsets[-1]}, manifest says {self.n_tokens}")
        for e in self.shards:
            for part in ("acts", "meta", "stats"):
                f = self.path / e[part]["file"]
                if not f.exists():
                    raise FileNotFoundError(f"store {self.path}: shard {e['index']} file {f.name} is missing")
                if f.stat().st_size != e[part]["bytes"]:
                    raise ValueError(f"store {self.path}: shard {e['index']} file {f.name} has {f.stat().st_size} "
                                     f"bytes, manifest says {e[part]['bytes']} (truncated or corrupted)")
        self._check_shapes_and_statistics(man_path)
        self._meta: dict | None = None
        if verify:
            self.verify()

    def _check_shapes_and_statistics(self, man_path: Path) -> None:
        """The manifest's shape and dtype agree with every shard's header, and its normalisation statistics with
        the per-shard statistics (checked on every open: headers and statistics are small)."""
        want = STORAGE[self.dtype]
        total = RunningStats(0, 0)
        def load(name, **kw):
            try:
                return np.load(self.path / name, **kw)
            except (OSError, ValueError) as err:   # e.g. a damaged .npy header: name the file
                raise ValueError(f"{self.path / name} cannot be read ({err}); the store is damaged: delete "
                                 f"{self.path} and harvest again") from None

        for e in self.shards:
            arr = load(e["acts"]["file"], mmap_mode="r")
            if arr.shape != (e["n_tokens"], self.n_models, self.d_model) or arr.dtype != want:
                raise ValueError(f"{man_path} says shard {e['index']} is [{e['n_tokens']}, {self.n_models}, "
                                 f"{self.d_model}] {self.dtype}, its file holds {list(arr.shape)} {arr.dtype} "
                                 f"(an edited manifest?); delete {self.path} and harvest again")
            total.merge(RunningStats.unpack(load(e["stats"]["file"])))
            rows = load(e["meta"]["file"], mmap_mode="r")["split"]
            if e["split"] not in SPLITS or not (rows == SPLITS[e["split"]]).all():
                raise ValueError(f"{man_path} says shard {e['index']} is {e['split']!r}, its rows say "
                                 f"{sorted({k for k, v in SPLITS.items() if (rows == v).any()})} (an edited "
                                 f"manifest?); delete {self.path} and harvest again")
        norm = self.manifest["norm"]
        if not np.allclose(np.asarray(norm["mean_norm"], np.float64), total.mean_norm, rtol=1e-6):
            raise ValueError(f"{man_path}: mean_norm {norm['mean_norm']} disagrees with the shard statistics "
                             f"{total.mean_norm.tolist()} (an edited manifest?); delete {self.path} and harvest again")
        for name, ref in (("dim_mean", total.mean), ("dim_var", total.var)):
            f = self.path / norm[f"{name}_file"]
            try:
                got = np.load(f)
            except (OSError, ValueError) as err:
                raise ValueError(f"{f} cannot be read ({err}); delete {self.path} and harvest again") from None
            if got.shape != ref.shape or not np.allclose(got, ref, rtol=1e-6, atol=1e-9):
                raise ValueError(f"{f} disagrees with the shard statistics (corrupted?); delete {self.path} and "
                                 "harvest again")

    # --- integrity and identity
    def verify(self, progress: bool = False) -> None:
        """Recompute every file's sha256; raise ``ValueError`` naming the first corrupted shard."""
        from tqdm.auto import tqdm
        for e in tqdm(self.shards, desc="verify store", disable=not progress):
            for part in ("acts", "meta", "stats"):
                f = self.path / e[part]["file"]
                got = sha256_file(f)
                if got != e[part]["sha256"]:
                    raise ValueError(f"checksum mismatch in store {self.path}: shard {e['index']} file {f.name} "
                                     f"has sha256 {got[:16]}..., manifest says {e[part]['sha256'][:16]}... (corrupted)")

    @property
    def key(self) -> dict:
        return self.manifest["key"]

    @property
    def layer(self) -> int | None:
        """The hook layer the store was harvested at (None for a store built without one, e.g. in tests)."""
        return self.manifest["key"].get("layer")

    @property
    def mean_norm(self) -> np.ndarray:
        """[n_models] mean L2 norm of each model's stored activations."""
        return np.asarray(self.manifest["norm"]["mean_norm"], dtype=np.float64)

    @property
    def disk_bytes(self) -> int:
        """Bytes the store's shard files take on disk (activations, metadata and statistics), per the manifest."""
        return sum(e[part]["bytes"] for e in self.shards for part in ("acts", "meta", "stats"))

    @property
    def norm_scale(self) -> np.ndarray:
        """[n_models] the paper's input scale s_m = sqrt(d_model) / mean_norm (mean norm becomes sqrt(d))."""
        return math.sqrt(self.d_model) / self.mean_norm

    @property
    def dim_mean(self) -> np.ndarray:
        """[n_models, d_model] per-dimension mean (float64)."""
        return np.load(self.path / self.manifest["norm"]["dim_mean_file"])

    @property
    def dim_var(self) -> np.ndarray:
        """[n_models, d_model] per-dimension (population) variance (float64)."""
        return np.load(self.path / self.manifest["norm"]["dim_var_file"])

    def __len__(self) -> int:
        return self.n_tokens

    def __repr__(self) -> str:
        return (f"ActivationStore({str(self.path)!r}, n_tokens={self.n_tokens}, n_models={self.n_models}, "
                f"d_model={self.d_model}, layer={self.layer}, dtype={self.dtype}, shards={len(self.shards)})")

    # --- raw access
    def shard_acts(self, i: int) -> np.ndarray:
        """Memory map of shard ``i``'s activations [n_i, n_models, d] in the storage dtype.

        Opened afresh on each call (~0.1 ms) and unmapped when the caller drops it, so the pages a pass over
        the store has read leave this process's memory with it: resident memory stays bounded by what is held,
        not by the store's size (``benchmarks/bench_memory.py``)."""
        return np.load(self.path / self.shards[i]["acts"]["file"], mmap_mode="r")

    def shard_meta(self, i: int) -> np.ndarray:
        return np.load(self.path / self.shards[i]["meta"]["file"])

    def read_range(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` (must lie in one shard) as float32 [n, n_models, d]."""
        i = int(np.searchsorted(self.offsets, start, side="right") - 1)
        a, b = start - self.offsets[i], stop - self.offsets[i]
        if not (0 <= a <= b <= self.shards[i]["n_tokens"]):
            raise ValueError(f"rows {start}:{stop} cross a shard boundary")
        return from_storage(self.shard_acts(i)[a:b], self.dtype)

    def acts(self, idx) -> np.ndarray:
        """Activations of the given global row ids, in the given order: float32 [len(idx), n_models, d]."""
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        if len(idx) and (idx.min() < 0 or idx.max() >= self.n_tokens):
            raise IndexError(f"row ids must lie in [0, {self.n_tokens}); got {idx.min()}..{idx.max()}")
        out = np.empty((len(idx), self.n_models, self.d_model), dtype=np.float32)
        shard = np.searchsorted(self.offsets, idx, side="right") - 1
        for i in np.unique(shard):
            sel = np.nonzero(shard == i)[0]
            local = idx[sel] - self.offsets[i]
            order = np.argsort(local, kind="stable")  # sorted reads touch the memmap sequentially
            out[sel[order]] = from_storage(self.shard_acts(int(i))[local[order]], self.dtype)
        return out

    @property
    def meta(self) -> dict:
        """Per-row metadata over the whole store: dict of [n_tokens] arrays
        (token_id, doc_id, pos, label (-1 = unlabelled), marker, split (0 train, 1 held-out)).
        Loaded on first use (about 15 bytes per token)."""
        if self._meta is None:
            allm = np.concatenate([self.shard_meta(i) for i in range(len(self.shards))])
            self._meta = {name: allm[name] for name in META_DTYPE.names}
        return self._meta

    def _shards_of(self, split: str) -> list[dict]:
        if split not in ("train", "heldout", "all"):
            raise ValueError(f"split must be 'train', 'heldout' or 'all', got {split!r}")
        return [e for e in self.shards if split == "all" or e["split"] == split]

    def split_indices(self, split: str) -> np.ndarray:
        """Global row ids of a split, ascending."""
        return np.concatenate([np.arange(self.offsets[e["index"]], self.offsets[e["index"] + 1])
                               for e in self._shards_of(split)] or [np.zeros(0, np.int64)])

    def chunks(self, chunk_tokens: int = 65536, split: str = "all"):
        """Iterate the store in order as ``Chunk`` objects of at most ``chunk_tokens`` rows (for analysis passes)."""
        if chunk_tokens < 1:
            raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
        for e in self._shards_of(split):
            i, base = e["index"], int(self.offsets[e["index"]])
            meta = self.shard_meta(i)
            for a in range(0, e["n_tokens"], chunk_tokens):
                b = min(a + chunk_tokens, e["n_tokens"])
                yield Chunk(np.arange(base + a, base + b), from_storage(self.shard_acts(i)[a:b], self.dtype),
                            {name: meta[name][a:b] for name in META_DTYPE.names})

    def loader(self, batch_size: int, buffer_tokens: int, seed: int, epoch: int = 0, split: str = "train",
               start_batch: int = 0, drop_last: bool = False, chunk_tokens: int | None = None,
               with_indices: bool = False, counter: "ServeCounter | None" = None, rank: int = 0,
               world_size: int = 1) -> "StoreLoader":
        """Shuffled training batches; see ``StoreLoader``."""
        return StoreLoader(self, batch_size, buffer_tokens, seed, epoch, split, start_batch, drop_last,
                           chunk_tokens, with_indices, counter, rank, world_size)


# ----------------------------------------------------------------------------- loader

class ServeCounter:
    """Counts rows served and distinct store rows (= distinct (doc, pos) tokens) served.

    Share one counter across the loaders of successive epochs to watch coverage over a whole run:
    ``distinct`` must keep growing until it reaches the split size (the paper's buffer never did).
    Memory: one byte per store row.
    """

    def __init__(self, n_tokens: int):
        self.seen = np.zeros(n_tokens, dtype=bool)
        self.served = 0
        self.distinct = 0

    def update(self, idx: np.ndarray) -> None:
        new = idx[~self.seen[idx]]
        self.seen[new] = True
        self.distinct += len(np.unique(new))
        self.served += len(idx)


class StoreLoader:
    """Shuffled mini-batches of raw paired activations, one pass (epoch) over a split.

    Order: the split's rows are cut into chunks of ``chunk_tokens`` contiguous rows (within a shard);
    the chunk order is a permutation drawn from (seed, epoch). The resulting row sequence is cut into
    windows of ``buffer_tokens`` rows; each window is read into RAM and its rows permuted (again from
    seed, epoch and the window number); batches are consecutive slices of the concatenated windows.
    So every row of the split appears exactly once per epoch, a row's models stay together (rows are
    [n_models, d] units), the order depends only on (seed, epoch, buffer_tokens, chunk_tokens) and not
    on ``batch_size``, and ``start_batch`` jumps straight to the right window without reading the
    skipped ones. RAM: about ``(buffer_tokens + batch_size) * n_models * d_model * 4`` bytes (float32),
    plus a transient copy while permuting.

    Yields torch float32 tensors [batch, n_models, d_model] of RAW activations, or ``(acts, idx)``
    with ``idx`` the global row ids (int64 numpy) when ``with_indices``.

    Data parallel: with ``world_size > 1`` the loader yields only rank ``rank``'s part of every global
    batch (rows ``part_bounds(len(batch), rank, world_size)`` of it, possibly empty for a last batch
    smaller than the world), and reads only those rows (the window order is computed from indices
    alone). The concatenation over ranks of a step's parts is the 1-rank batch, so training on any
    world size sees the same global batches.
    """

    def __init__(self, store: ActivationStore, batch_size: int, buffer_tokens: int, seed: int, epoch: int = 0,
                 split: str = "train", start_batch: int = 0, drop_last: bool = False,
                 chunk_tokens: int | None = None, with_indices: bool = False, counter: ServeCounter | None = None,
                 rank: int = 0, world_size: int = 1):
        part_bounds(0, rank, world_size)  # validates rank / world_size
        self.rank, self.world_size = rank, world_size
        for name, v in (("batch_size", batch_size), ("buffer_tokens", buffer_tokens)):
            if int(v) != v or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if start_batch < 0 or epoch < 0:
            raise ValueError(f"start_batch and epoch must be >= 0 (got {start_batch}, {epoch})")
        self.store, self.batch_size, self.buffer_tokens = store, int(batch_size), int(buffer_tokens)
        self.seed, self.epoch, self.split = int(seed), int(epoch), split
        self.drop_last, self.with_indices = drop_last, with_indices
        # Chunks much smaller than the buffer, so one window mixes many places in the store.
        self.chunk_tokens = int(chunk_tokens) if chunk_tokens else max(1, min(4096, self.buffer_tokens // 16))
        if self.chunk_tokens < 1:
            raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
        starts = []
        for e in store._shards_of(split):
            a0, b0 = int(store.offsets[e["index"]]), int(store.offsets[e["index"] + 1])
            starts += [(a, min(a + self.chunk_tokens, b0)) for a in range(a0, b0, self.chunk_tokens)]
        self.n_rows = sum(b - a for a, b in starts)
        if self.n_rows == 0:
            raise ValueError(f"store {store.path} has no {split!r} tokens to load")
        chunks = np.array(starts, dtype=np.int64).reshape(-1, 2)
        perm = np.random.default_rng([self.seed, self.epoch, 0]).permutation(len(chunks))
        self._chunks = chunks[perm]                                    # [n_chunks, 2] global (start, stop)
        self._chunk_pos = np.concatenate([[0], np.cumsum(self._chunks[:, 1] - self._chunks[:, 0])])
        self.n_batches = self.n_rows // self.batch_size if drop_last else -(-self.n_rows // self.batch_size)
        if start_batch > self.n_batches:
            raise ValueError(f"start_batch {start_batch} is past the end of the epoch ({self.n_batches} batches)")
        self.start_batch = int(start_batch)
        self.counter = counter if counter is not None else ServeCounter(store.n_tokens)
        self.windows_read = 0  # windows actually loaded (start_batch must not load skipped ones)

    def __len__(self) -> int:
        return self.n_batches - self.start_batch

    def _window_idx(self, k: int) -> np.ndarray:
        """Global row ids of window ``k`` in served order (no activation is read)."""
        lo, hi = k * self.buffer_tokens, min((k + 1) * self.buffer_tokens, self.n_rows)
        c0 = int(np.searchsorted(self._chunk_pos, lo, side="right") - 1)
        c1 = int(np.searchsorted(self._chunk_pos, hi, side="left"))
        idx = np.concatenate([np.arange(self._chunks[c, 0] + max(lo - self._chunk_pos[c], 0),
                                        self._chunks[c, 0] + min(hi, self._chunk_pos[c + 1]) - self._chunk_pos[c])
                              for c in range(c0, c1)])
        perm = np.random.default_rng([self.seed, self.epoch, 1, k]).permutation(len(idx))
        self.windows_read += 1
        return idx[perm]

    def _iter_rank(self):
        """This rank's part of every global batch (``world_size > 1``); reads only those rows."""
        end = self.n_batches * self.batch_size if self.drop_last else self.n_rows
        k_loaded, win_idx = -1, None
        for b in range(self.start_batch, self.n_batches):
            pos = b * self.batch_size
            lo, hi = part_bounds(min(pos + self.batch_size, end) - pos, self.rank, self.world_size)
            parts, p = [], pos + lo
            while p < pos + hi:  # a part may straddle two windows
                k = p // self.buffer_tokens
                if k != k_loaded:
                    win_idx, k_loaded = self._window_idx(k), k
                a = p - k * self.buffer_tokens
                n = min(pos + hi - p, len(win_idx) - a)
                parts.append(win_idx[a:a + n])
                p += n
            idx = np.concatenate(parts) if parts else np.zeros(0, np.int64)
            self.counter.update(idx)
            t = torch.from_numpy(self.store.acts(idx))
            yield (t, idx) if self.with_indices else t

    def _window(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Window ``k`` of the epoch: (acts float32 [w, n_models, d], global idx [w]), rows permuted."""
        lo, hi = k * self.buffer_tokens, min((k + 1) * self.buffer_tokens, self.n_rows)
        c0 = int(np.searchsorted(self._chunk_pos, lo, side="right") - 1)
        c1 = int(np.searchsorted(self._chunk_pos, hi, side="left"))
        parts, idx = [], []
        for c in range(c0, c1):
            a = int(self._chunks[c, 0] + max(lo - self._chunk_pos[c], 0))
            b = int(self._chunks[c, 0] + min(hi, self._chunk_pos[c + 1]) - self._chunk_pos[c])
            parts.append(self.store.read_range(a, b))
            idx.append(np.arange(a, b))
        acts, idx = np.concatenate(parts), np.concatenate(idx)
        perm = np.random.default_rng([self.seed, self.epoch, 1, k]).permutation(len(idx))
        self.windows_read += 1
        return acts[perm], idx[perm]

    def __iter__(self):
        if self.world_size > 1:
            yield from self._iter_rank()
            return
        end = self.n_batches * self.batch_size if self.drop_last else self.n_rows
        pos = self.start_batch * self.batch_size
        k_loaded, win_acts, win_idx = -1, None, None
        while pos < end:
            stop = min(pos + self.batch_size, end)
            parts_a, parts_i = [], []
            while pos < stop:  # a batch may straddle two windows
                k = pos // self.buffer_tokens
                if k != k_loaded:
                    win_acts, win_idx = self._window(k)
                    k_loaded = k
                a = pos - k * self.buffer_tokens
                b = min(stop - k * self.buffer_tokens, len(win_idx))
                parts_a.append(win_acts[a:b])
                parts_i.append(win_idx[a:b])
                pos += b - a
            acts = parts_a[0] if len(parts_a) == 1 else np.concatenate(parts_a)
            idx = parts_i[0] if len(parts_i) == 1 else np.concatenate(parts_i)
            self.counter.update(idx)
            t = torch.from_numpy(np.ascontiguousarray(acts))
            yield (t, idx) if self.with_indices else t
