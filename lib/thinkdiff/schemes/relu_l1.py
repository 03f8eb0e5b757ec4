"""The paper's sparsity scheme: ReLU with an L1 penalty weighted by the sum of the per-model decoder norms.

    f = relu(sum_m x_m W_enc[m] + b_enc)
    loss = sum_m mean_batch ||x_m - xhat_m||^2 + lambda * mean_batch sum_i f_i * sum_m ||W_dec[i, m]||_2

(training units; lambda warms up from 0). Weighting the L1 by the *sum* of decoder norms is what lets a latent
become model-exclusive (Anthropic's crosscoder loss, as in Baek & Tegmark). ``loss`` is the fast path (sparse
kernels when few latents fire, the fused ``kernels.ReluCoder`` otherwise); ``reference_loss`` the same quantity in
plain autograd, which the tests compare with it, and ``dense_loss`` the trainer's dense reference step.
"""
from __future__ import annotations

import torch

from ..kernels import GatherPre, ReluCoder, SparseDecode, positive_positions, sparse_code

NAME = "relu"
USES_K = False
L0_ROWS = 512   # dense path: the logged training L0 counts nonzeros over this many rows of each batch
# Above this share of non-zero code entries the dense fused kernel is faster than the sparse one (measured by
# benchmarks/bench_train.py --crossover on this 2-core machine; see docs/speed-and-precision.md, `make bench`).
SPARSE_MAX_DENSITY = 0.05


def check_config(k, n_latents: int, where: str) -> None:
    """No scheme-specific settings (``k`` is ignored)."""


def encode(crosscoder, pre: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The code ``f`` [B, F] from pre-activations ``pre`` [B, F]."""
    return torch.relu(pre)


def _dense(crosscoder, x: torch.Tensor, l1_coeff: float):
    """(loss, xhat [B, m, d], f [B, F], l1 term) of batch ``x`` [B, m, d], written plainly."""
    f = torch.relu(crosscoder.pre_acts(x))
    xhat = crosscoder.decode(f)
    l1 = (f @ crosscoder.W_dec.norm(dim=-1).sum(-1)).mean()
    return (xhat - x).pow(2).sum(-1).mean(0).sum() + l1_coeff * l1, xhat, f, l1


def reference_loss(crosscoder, x: torch.Tensor, l1_coeff: float) -> torch.Tensor:
    """The loss of batch ``x`` [B, m, d] (training units) written plainly: the definition ``loss`` must match."""
    return _dense(crosscoder, x, l1_coeff)[0]


def dense_loss(trainer, x: torch.Tensor, step: int):
    """The dense reference step's loss: ``loss``'s outputs from plain autograd (one process only).

    Five dense [B, F] matmuls whatever the sparsity; the benchmarks report the fast path as a ratio to it."""
    lam = trainer.l1_coeff_at(step)
    with trainer.autocast():
        loss, xhat, f, l1 = _dense(trainer.model, x, lam)
    loss, xhat, f, l1 = loss.float(), xhat.float(), f.float(), l1.float()
    with torch.no_grad():
        stats = {"l1": l1.item(), "l1_coeff": lam, "l0": (f > 0).sum().item() / x.shape[0]}
        return loss, xhat, stats, trainer._recon(x, xhat), f.amax(0) > 0


def loss(trainer, x: torch.Tensor, step: int):
    """(loss, xhat, stats, per-model error [m], fired [F]) of a batch ``x`` [B, m, d] in training units.

    The encoder forward is one dense matmul without autograd. When at most ``SPARSE_MAX_DENSITY`` of the code
    is non-zero (a trained crosscoder: tens of latents of thousands), the decoder, the L1 term and every
    backward product run on the active entries only (the sparse kernels BatchTopK uses); otherwise (early
    training, when half the latents fire) the fused dense kernel ``ReluCoder`` does."""
    m, B = trainer.model, x.shape[0]
    md, F = m.n_models * m.d_model, m.n_latents
    x_flat, w_enc, w_dec = x.reshape(B, md), m.W_enc.reshape(md, F), m.W_dec.reshape(F, md)
    dec_norm_sum = m.W_dec.norm(dim=-1).sum(-1)      # [F], training units (model is unfolded)
    with torch.no_grad():
        # a ones column carries the bias inside the matmul (no [B, F] bias broadcast pass)
        xa = torch.cat([x_flat, x_flat.new_ones(B, 1)], 1)
        with trainer.autocast():
            f = (xa @ torch.cat([w_enc, m.b_enc[None]], 0)).float().relu_()
        nnz = int(torch.count_nonzero(f)) if B else 0
    lam = trainer.l1_coeff_at(step)
    if B and nnz <= SPARSE_MAX_DENSITY * B * F:
        with torch.no_grad():
            crow, col, crow_t, row_t, perm, vals = sparse_code(f, positive_positions(f))
            fired = torch.bincount(col, minlength=F) > 0
            del f
        vals = GatherPre.apply(vals, x_flat, w_enc, m.b_enc, col, crow_t, row_t, perm)
        xhat = SparseDecode.apply(vals, w_dec, crow, col, crow_t, row_t, perm) + m.b_dec.reshape(-1)
        l1 = (vals * dec_norm_sum[col]).sum() / B
        l0_num, l0_den = float(nnz), B                   # exact: the pattern is at hand
    else:
        xhat, l1 = ReluCoder.apply(f, xa, w_enc, m.b_enc, w_dec, m.b_dec.reshape(md), dec_norm_sum)
        with torch.no_grad():
            # the cheapest full pass over f (for dead latents)
            fired = f.amax(0) > 0 if B else torch.zeros(F, dtype=torch.bool, device=x.device)
            # counting nonzeros of a dense code costs ~4 matmul-free passes at 4096 x 8192, so the logged L0 is
            # taken over the first L0_ROWS tokens of the batch (split over ranks; held-out L0: metrics.evaluate)
            r = -(-L0_ROWS // (trainer.world.world_size if trainer.world else 1))
            l0_num, l0_den = float(torch.count_nonzero(f[:r])), min(B, r)
    xhat = xhat.view_as(x)
    per_model = trainer._recon(x, xhat)
    # l1 is the mean over this rank's rows; B / n_batch makes it this rank's share of the global mean
    l1 = l1 * (B / trainer.n_batch) if B else None      # (a rank without rows adds no L1 term)
    loss = per_model.sum() + lam * l1 if B else per_model.sum()
    with torch.no_grad():
        red = trainer._sum(torch.tensor([l1.item() if B else 0.0, l0_num, l0_den], dtype=torch.float64,
                                        device=x.device))
        if trainer.world is not None:
            fired = trainer._sum(fired.float()) > 0
    return loss, xhat, {"l1": red[0].item(), "l1_coeff": lam, "l0": red[1].item() / red[2].item()}, per_model, fired
