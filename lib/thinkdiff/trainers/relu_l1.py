"""The paper's sparsity scheme: ReLU with an L1 penalty weighted by the sum of the per-model decoder norms.

    f = relu(sum_m x_m W_enc[m] + b_enc)
    loss = sum_m mean_batch ||x_m - xhat_m||^2 + lambda * mean_batch sum_i f_i * sum_m ||W_dec[i, m]||_2

(training units; lambda warms up from 0). Weighting the L1 by the *sum* of decoder norms is what lets a latent
become model-exclusive (Anthropic's crosscoder loss, as in Baek & Tegmark). ``loss`` is the fused fast path
(``kernels.ReluCoder``); ``reference_loss`` the same quantity in plain autograd, which the tests compare with it.
"""
from __future__ import annotations

import torch

from ..kernels import ReluCoder

NAME = "relu"
USES_K = False
L0_ROWS = 512   # the logged training L0 counts nonzeros over this many rows of each batch (held-out: metrics)


def check_config(k, n_latents: int, where: str) -> None:
    """No scheme-specific settings (``k`` is ignored)."""


def encode(crosscoder, pre: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The code ``f`` [B, F] from pre-activations ``pre`` [B, F]."""
    return torch.relu(pre)


def reference_loss(crosscoder, x: torch.Tensor, l1_coeff: float) -> torch.Tensor:
    """The loss of batch ``x`` [B, m, d] (training units) written plainly: the definition ``loss`` must match."""
    f = torch.relu(crosscoder.pre_acts(x))
    recon = (crosscoder.decode(f) - x).pow(2).sum(-1).mean(0).sum()
    return recon + l1_coeff * (f @ crosscoder.W_dec.norm(dim=-1).sum(-1)).mean()


def loss(trainer, x: torch.Tensor, step: int):
    """(loss, xhat, stats, per-model error [m], fired [F]) of a batch ``x`` [B, m, d] in training units."""
    m, B = trainer.model, x.shape[0]
    md, F = m.n_models * m.d_model, m.n_latents
    dec_norm_sum = m.W_dec.norm(dim=-1).sum(-1)      # [F], training units (model is unfolded)
    xhat, f, l1 = ReluCoder.apply(x.reshape(B, md), m.W_enc.reshape(md, F), m.b_enc,
                                  m.W_dec.reshape(F, md), m.b_dec.reshape(md), dec_norm_sum)
    xhat = xhat.view_as(x)
    per_model = trainer._recon(x, xhat)
    lam = trainer.l1_coeff_at(step)
    # l1 is the mean over this rank's rows; B / n_batch makes it this rank's share of the global mean
    l1 = l1 * (B / trainer.n_batch) if B else None      # (a rank without rows adds no L1 term)
    loss = per_model.sum() + lam * l1 if B else per_model.sum()
    with torch.no_grad():
        # the cheapest full pass over f (for dead latents)
        fired = f.amax(0) > 0 if B else torch.zeros(F, dtype=torch.bool, device=x.device)
        # counting nonzeros costs ~4 matmul-free passes at 4096 x 8192, so the logged L0 is taken
        # over the first L0_ROWS tokens of the batch (split over ranks; held-out L0: metrics.evaluate)
        r = -(-L0_ROWS // (trainer.world.world_size if trainer.world else 1))
        red = trainer._sum(torch.tensor([l1.item() if B else 0.0, torch.count_nonzero(f[:r]).item(), min(B, r)],
                                        dtype=torch.float64, device=x.device))
        if trainer.world is not None:
            fired = trainer._sum(fired.float()) > 0
    return loss, xhat, {"l1": red[0].item(), "l1_coeff": lam, "l0": red[1].item() / red[2].item()}, per_model, fired
