"""Fast kernels of crosscoder training: fused and sparse autograd functions, exact batch top-k selection.

A kept-latent pattern is a CSR matrix [batch, F] with about k*batch entries, so the decoder and both weight
gradients cost O(k*batch*n_models*d) instead of O(batch*F*n_models*d): a BatchTopK step costs little more
than the dense encoder forward; the ReLU trainer uses the same kernels on the non-zero entries of its code when
few fire. ``ReluCoder`` fuses the dense ReLU crosscoder's decoder, L1 term and backward.
Each kernel is checked against the dense reference loss of its scheme (``schemes.<scheme>.reference_loss``)
in ``tests/unit/test_crosscoder.py``.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import torch


def _csr(crow: torch.Tensor, col: torch.Tensor, vals: torch.Tensor, shape) -> torch.Tensor:
    with warnings.catch_warnings():   # torch calls CSR "beta"; the kernels used here are covered by tests
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        return torch.sparse_csr_tensor(crow, col, vals, shape, check_invariants=False)


def _csr_t(pat_t, vals, shape):
    """Transpose [F, B] of a CSR code [B, F], as CSR, from the precomputed transposed pattern.

    ``pat_t = (crow_t, row_t, perm)`` (see ``sparse_code``): building it once per step avoids torch's
    generic CSC -> CSR conversion, which sorts and was the slowest part of the sparse step.
    """
    crow_t, row_t, perm = pat_t
    return _csr(crow_t, row_t, vals[perm], (shape[1], shape[0]))


class GatherPre(torch.autograd.Function):
    """Pre-activations at the pattern positions, ``vals[j] = x[row_j] . W_enc[:, col_j] + b_enc[col_j]``.

    Forward takes the values already computed by the dense encoder (no recomputation); backward sends
    gradients to ``W_enc`` [md, F] and ``b_enc`` [F] only (activations are data, never trained).
    """

    @staticmethod
    def forward(ctx, vals, x_flat, w_enc_flat, b_enc, col, crow_t, row_t, perm):
        ctx.save_for_backward(x_flat, col, crow_t, row_t, perm)
        ctx.F = w_enc_flat.shape[1]
        return vals.clone()

    @staticmethod
    def backward(ctx, g):
        x_flat, col, crow_t, row_t, perm = ctx.saved_tensors
        B, F = x_flat.shape[0], ctx.F
        g = g.to(x_flat.dtype)
        # dW_enc^T [F, md] = S^T [F, B] @ x [B, md]
        g_w = torch.sparse.mm(_csr_t((crow_t, row_t, perm), g, (B, F)), x_flat).t()
        g_b = torch.zeros(F, dtype=g.dtype, device=g.device).index_add_(0, col, g)
        return None, None, g_w, g_b, None, None, None, None


class SparseDecode(torch.autograd.Function):
    """``out [B, md] = S @ W_dec_flat`` for a CSR code ``S`` [B, F]; gradients to the values and W_dec."""

    @staticmethod
    def forward(ctx, vals, w_dec_flat, crow, col, crow_t, row_t, perm):
        ctx.save_for_backward(vals, w_dec_flat, crow, col, crow_t, row_t, perm)
        ctx.B = crow.numel() - 1
        return torch.sparse.mm(_csr(crow, col, vals.to(w_dec_flat.dtype), (ctx.B, w_dec_flat.shape[0])), w_dec_flat)

    @staticmethod
    def backward(ctx, g):
        vals, w, crow, col, crow_t, row_t, perm = ctx.saved_tensors
        B, F = ctx.B, w.shape[0]
        g = g.to(w.dtype).contiguous()
        # dvals_j = g[row_j] . W_dec[col_j]  (sampled dense-dense product on the pattern)
        pattern = _csr(crow, col, torch.zeros_like(vals, dtype=w.dtype), (B, F))   # zeros: beta=0 still reads them
        g_vals = torch.sparse.sampled_addmm(pattern, g, w.t(), beta=0.0).values().to(vals.dtype)
        g_w = torch.sparse.mm(_csr_t((crow_t, row_t, perm), vals.to(w.dtype), (B, F)), g)   # S^T @ g [F, md]
        return g_vals, g_w, None, None, None, None, None


class ReluCoder(torch.autograd.Function):
    """Fused dense ReLU crosscoder decoder, L1 term and backward on flat views, for the trainer.

    Inputs: the code ``f = relu(xa @ [W_enc; b_enc])`` [B, F] already computed without autograd (the trainer
    measures its density first), ``xa = [x, 1]`` [B, md+1], ``W_enc [md, F]``, ``b_enc [F]``, ``W_dec [F, md]``,
    ``b_dec [md]``, decoder norm sums ``n [F]``. Outputs ``xhat [B, md]`` and the batch-mean L1 term
    ``mean_b sum_i f_bi n_i``. Same maths as plain autograd, but every [B, F]-sized bias, L1 and reduction
    term rides inside the matmuls (the ones column of ``xa`` carries b_enc's gradient; a constant column
    appended to the output gradient carries the L1 gradient and d/dn), so besides the matmuls only the
    in-place ReLU and its fused backward touch [B, F] memory.
    """

    @staticmethod
    def forward(ctx, f, xa, w_enc, b_enc, w_dec, b_dec, n):
        xhat = torch.addmm(b_dec, f, w_dec)
        l1 = torch.mv(f, n).mean()
        ctx.save_for_backward(xa, w_dec, n, f)
        return xhat, l1

    @staticmethod
    def backward(ctx, g_xhat, g_l1):
        xa, w_dec, n, f = ctx.saved_tensors
        B = xa.shape[0]
        c = (g_l1 / B) if g_l1 is not None else g_xhat.new_zeros(())
        ga = torch.cat([g_xhat, c.expand(B, 1)], dim=1)                 # [B, md+1]
        g_pre = ga @ torch.cat([w_dec, n[:, None]], dim=1).t()            # g_xhat W_dec^T + c n
        g_pre = torch.ops.aten.threshold_backward(g_pre, f, 0)
        g_dec = f.t() @ ga                                               # [F, md+1]: dW_dec | c * f.sum(0)
        g_enc = xa.t() @ g_pre                                           # [md+1, F]: dW_enc ; db_enc
        return None, None, g_enc[:-1], g_enc[-1], g_dec[:, :-1], g_xhat.sum(0), g_dec[:, -1]


def positive_positions(t: torch.Tensor, cut: float = 0.0) -> torch.Tensor:
    """Ascending flat indices (int64) of the entries of ``t`` above ``cut``. On the CPU numpy's single-threaded
    scan is ~4x faster than torch's compare + nonzero at 4096 x 8192 (12 vs 54 ms, one thread)."""
    if t.device.type == "cpu":
        return torch.from_numpy(np.flatnonzero(t.detach().numpy().reshape(-1) > cut))
    return (t.reshape(-1) > cut).nonzero().squeeze(1)


def sparse_code(pre: torch.Tensor, flat_idx: torch.Tensor):
    """CSR pattern of sorted flat indices into ``pre`` [B, F], its transpose, and the values there.

    Returns ``(crow, col, crow_t, row_t, perm, vals)``: ``crow [B+1]``/``col [nnz]`` the CSR pattern,
    ``crow_t [F+1]``/``row_t [nnz]`` the pattern of the transpose [F, B], ``perm`` the entry order of
    the transpose, ``vals [nnz]`` = ``pre`` at the pattern.
    """
    B, F = pre.shape
    rows, col = flat_idx // F, flat_idx % F
    crow = torch.zeros(B + 1, dtype=torch.int64, device=pre.device)
    crow[1:] = torch.bincount(rows, minlength=B).cumsum(0)
    # rows stay ascending within each column. On the CPU numpy's stable integer sort (a radix sort, one thread)
    # takes ~8 ms at 131k entries right after a large matmul, where torch's threaded sort took 20-190 ms
    perm = (torch.from_numpy(np.argsort(col.numpy(), kind="stable")) if col.device.type == "cpu"
            else torch.argsort(col, stable=True))
    crow_t = torch.zeros(F + 1, dtype=torch.int64, device=pre.device)
    crow_t[1:] = torch.bincount(col, minlength=F).cumsum(0)
    return crow, col, crow_t, rows[perm], perm, pre.reshape(-1)[flat_idx]


def batch_topk_indices(score: torch.Tensor, n_keep: int, cut_guess: float | None = None) -> torch.Tensor:
    """Sorted flat indices of the ``n_keep`` largest *positive* entries of ``score`` [B, F].

    Exact, but avoids a top-k over all B*F entries (about 1 s at 4096 x 8192 on this CPU). With a
    positive ``cut_guess`` (the trainer passes half its running threshold): if at least ``n_keep``
    entries exceed it, the winners are all among them, so only those are ranked (lowering the guess
    if not); ties at the cut are all kept on this path.
    Otherwise: take each row's top ``m`` candidates, select globally among those, and double ``m``
    whenever some row might hold more winners than it offered (its m-th candidate is not below the cut).
    """
    B, F = score.shape
    n_keep = min(n_keep, B * F)
    flat_all = score.reshape(-1)
    cut = cut_guess
    for _ in range(3 if cut is not None and math.isfinite(cut) and cut > 0 else 0):
        cand = positive_positions(flat_all, cut)                  # ascending, so no sort is needed
        if cand.numel() >= n_keep:
            v = flat_all[cand]
            kth = v.kthvalue(v.numel() - n_keep + 1).values           # the n_keep-th largest value
            return cand[v >= kth]                                     # (entries tied with it all stay)
        cut /= 4
    m = min(F, max(1, 4 * math.ceil(n_keep / B)))
    while True:
        cand_v, cand_i = score.topk(m, dim=1, sorted=False)          # [B, m]
        flat_v = cand_v.reshape(-1)
        kk = min(n_keep, flat_v.numel())
        top_v, top_j = flat_v.topk(kk, sorted=False)
        cut = top_v.min()
        row_min = cand_v.min(dim=1).values
        # a row whose weakest candidate is positive and not below the cut may hide more winners
        if m == F or not bool(((row_min >= cut) & (row_min > 0)).any()):
            break
        m = min(F, 2 * m)
    keep = top_v > 0
    top_j = top_j[keep]
    rows = torch.div(top_j, m, rounding_mode="floor")
    flat = rows * F + cand_i.reshape(-1)[top_j]
    return flat.sort().values


