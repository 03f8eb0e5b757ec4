"""The crosscoder's codes over a whole activation store, kept sparse.

Every latent analysis runs off one pass over the store (``encode_store``): ReLU codes are sparse, so counts,
windowed means, exact AUROCs and top activations all come from one CSR matrix [n_tokens, F]. Per-token masks
and labels are always given over *all* store tokens.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from .norms import training_decoder

def check_inputs(cc, store):
    for name in ("W_enc", "W_dec", "b_enc", "b_dec", "encode", "decode"):
        if not hasattr(cc, name):
            raise TypeError(f"crosscoder lacks {name!r}")
    training_decoder(cc.W_dec)
    for name in ("n_tokens", "acts", "meta"):
        if not hasattr(store, name):
            raise TypeError(f"activation store lacks {name!r}")
    if hasattr(cc, "check_compatible"):   # a crosscoder trained on another store or layer is refused by name
        cc.check_compatible(store)


def device_of(cc):
    return cc.W_dec.device


@contextlib.contextmanager
def eval_mode(cc):
    """BatchTopK codes depend on the batch in training mode; analyse in eval mode, then restore."""
    was = getattr(cc, "training", False)
    if hasattr(cc, "train"):
        cc.train(False)
    try:
        with torch.no_grad():
            yield
    finally:
        if hasattr(cc, "train"):
            cc.train(was)


def global_mask(mask, n_tokens: int, what: str = "mask") -> np.ndarray:
    if mask is None:
        return np.ones(n_tokens, dtype=bool)
    mask = np.asarray(mask)
    if mask.dtype != bool or mask.shape != (n_tokens,):
        raise ValueError(f"{what} must be a bool array over all {n_tokens} store tokens, got {mask.dtype} {mask.shape}")
    return mask


def release_freed_memory() -> None:
    """Hand memory freed inside the C heap back to the OS (glibc ``malloc_trim``; elsewhere a no-op).

    A pass over the store allocates large short-lived arrays between small long-lived results; glibc then keeps
    the freed holes, and resident memory grew with the store (encoding 500k tokens: 1.8 GB of anonymous memory
    at the end and a 2.5 GB peak; 0.34 GB and 0.54 GB with this call every 4 chunks: ``benchmarks/bench_memory.py``)."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            import ctypes
            _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim = None


def chunk_indices(idx: np.ndarray, chunk: int, desc: str):
    """Consecutive pieces of ``idx`` of ``chunk`` indices, with a progress bar and the heap trimmed as it goes."""
    if chunk < 1:
        raise ValueError("chunk must be >= 1")
    for i, s in enumerate(tqdm(range(0, len(idx), chunk), desc=desc, leave=False)):
        if i % 4 == 3:
            release_freed_memory()
        yield idx[s: s + chunk]


def load_rows(store, idx, cc) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(store.acts(idx), dtype=np.float32))
    if x.ndim != 3 or x.shape[1] != 2 or x.shape[0] != len(idx):
        raise ValueError(f"store.acts returned {tuple(x.shape)}, expected [{len(idx)}, 2, d]")
    return x.to(device_of(cc), cc.W_dec.dtype)


@dataclass
class SparseActs:
    """Latent activations of the evaluated tokens, as a sparse [N, F] matrix (entries > 0 only).

    ``token_index`` [N] are the store indices of the evaluated tokens (ascending); ``rows`` index into it.
    """
    token_index: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    vals: np.ndarray
    n_latents: int

    @property
    def n_tokens(self) -> int:
        return len(self.token_index)

    @classmethod
    def from_dense(cls, f, token_index=None) -> "SparseActs":
        """From a dense [N, F] activation matrix (entries <= 0 dropped); ``token_index`` defaults to 0..N-1."""
        f = np.asarray(f, dtype=np.float32)
        r, c = np.nonzero(f > 0)
        ti = np.arange(len(f)) if token_index is None else np.asarray(token_index)
        return cls(ti, r.astype(np.int64), c.astype(np.int64), f[r, c], f.shape[1])

    def local(self, global_array) -> np.ndarray:
        """Restrict an array over all store tokens to the evaluated tokens."""
        return np.asarray(global_array)[self.token_index]

    def sums(self, weights) -> np.ndarray:
        """[K, F] ``sum_t weights[t, k] * f[t, j]`` for ``weights`` [N, K] over the evaluated tokens."""
        w = torch.as_tensor(np.asarray(weights, dtype=np.float64).reshape(self.n_tokens, -1))
        A = torch.sparse_coo_tensor(np.stack([self.cols, self.rows]), torch.as_tensor(self.vals, dtype=torch.float64),
                                    (self.n_latents, self.n_tokens), check_invariants=False)
        return torch.sparse.mm(A, w).T.numpy()

    def counts(self, weights) -> np.ndarray:
        """[K, F] number of evaluated tokens with ``weights[t, k]`` set on which latent j fires."""
        w = np.asarray(weights, dtype=np.float64).reshape(self.n_tokens, -1)
        out = np.zeros((w.shape[1], self.n_latents))
        for k in range(w.shape[1]):
            out[k] = np.bincount(self.cols, weights=w[self.rows, k], minlength=self.n_latents)
        return out

    def frequency(self) -> np.ndarray:
        """[F] fraction of evaluated tokens on which each latent fires."""
        return np.bincount(self.cols, minlength=self.n_latents) / max(self.n_tokens, 1)

    def max_activation(self) -> np.ndarray:
        """[F] each latent's largest activation over the evaluated tokens (0 where it never fires)."""
        out = np.zeros(self.n_latents, np.float64)
        np.maximum.at(out, self.cols, self.vals)
        return out

    def column(self, j: int) -> np.ndarray:
        """[N] dense activations of latent ``j``."""
        out = np.zeros(self.n_tokens, dtype=np.float32)
        sel = self.cols == j
        out[self.rows[sel]] = self.vals[sel]
        return out


def encode_store(cc, store, mask=None, chunk: int = 4096, max_entries: int = 100_000_000) -> SparseActs:
    """Encode the store's tokens (all, or ``mask`` [n_tokens] bool) with the crosscoder, keeping f > 0.

    Uses ``cc.encode`` on raw activations, i.e. the crosscoder's own folded normalisation. Raises before
    going on if the codes grow past ``max_entries`` non-zeros (pass a token mask to subsample).
    """
    check_inputs(cc, store)
    idx = np.nonzero(global_mask(mask, store.n_tokens))[0]
    if len(idx) == 0:
        raise ValueError("the token mask selects no tokens")
    rows, cols, vals, nnz = [], [], [], 0
    with eval_mode(cc):
        for start, part in zip(range(0, len(idx), chunk), chunk_indices(idx, chunk, "encode store")):
            f = cc.encode(load_rows(store, part, cc))
            r, c = torch.nonzero(f > 0, as_tuple=True)
            nnz += len(r)
            if nnz > max_entries:
                raise MemoryError(f"more than {max_entries} non-zero latent activations after {start + len(part)} "
                                  f"of {len(idx)} tokens; pass a smaller token mask")
            rows.append((r + start).cpu().numpy())
            cols.append(c.cpu().numpy())
            vals.append(f[r, c].float().cpu().numpy())
    F = int(cc.W_dec.shape[0])
    return SparseActs(idx, np.concatenate(rows).astype(np.int64), np.concatenate(cols).astype(np.int64),
                      np.concatenate(vals).astype(np.float32), F)


# ---------------------------------------------------------------------------------------------------------
# Latent scaling (Minder et al., docs/prior-art.md §1.5)
# ---------------------------------------------------------------------------------------------------------


def restrict(acts: SparseActs, mask) -> SparseActs:
    """The evaluated tokens of ``acts`` that ``mask`` (bool over *all* store tokens, e.g. held-out) keeps."""
    return restrict_rows(acts, acts.local(np.asarray(mask, bool)))


def restrict_rows(acts: SparseActs, keep) -> SparseActs:
    keep = np.asarray(keep, bool)
    new_row = np.cumsum(keep) - 1
    sel = keep[acts.rows]
    return SparseActs(acts.token_index[keep], new_row[acts.rows[sel]], acts.cols[sel], acts.vals[sel], acts.n_latents)
