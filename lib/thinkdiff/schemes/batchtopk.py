"""BatchTopK (Bussmann et al.): keep the ``k * batch`` largest ``f_i * sum_m ||W_dec[i, m]||`` of the whole batch.

    f = relu(pre) masked to the batch's top k*B scores         (training mode)
    f = relu(pre) masked to score > threshold                   (eval mode: a fixed threshold, estimated as an
                                                                 EMA of the batch cut during training)
    loss = sum_m mean_batch ||x_m - xhat_m||^2 + auxk_alpha * ||e - ehat||^2 / ||e - mean(e)||^2

where e = x - xhat (detached) and ehat decodes the top ``k_aux`` pre-activations of the dead latents (latents
silent for ``dead_tokens`` training tokens). The mean L0 is ``k`` but the budget moves between tokens; there
is no L1 shrinkage (Minder et al.'s case against L1 "exclusive" latents). ``loss`` is the sparse fast path
(``kernels``); ``reference_loss`` the same quantity in plain autograd, which the tests compare with it, and
``dense_loss`` the trainer's dense reference step.
"""
from __future__ import annotations

import torch

from ..kernels import GatherPre, SparseDecode, batch_topk_indices, sparse_code

NAME = "batchtopk"
USES_K = True


def check_config(k, n_latents: int, where: str) -> None:
    """``k``: an integer with 0 < k <= n_latents."""
    if not isinstance(k, int) or isinstance(k, bool) or k <= 0:
        raise ValueError(f"{where}: BatchTopK needs a positive integer k (mean active latents per token), got k={k!r}")
    if k > n_latents:
        raise ValueError(f"{where}: BatchTopK k={k} exceeds the dictionary size n_latents={n_latents}")


def encode(crosscoder, pre: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The code ``f`` [B, F] from pre-activations ``pre`` [B, F]: the batch's top ``k * B`` scores in training
    mode (or before a threshold exists), the fixed threshold in eval mode."""
    f = torch.relu(pre)
    score = f.detach() * crosscoder.decoder_norms("train").sum(-1)
    if crosscoder.training or not torch.isfinite(crosscoder.threshold):
        keep = torch.zeros(score.numel(), dtype=torch.bool, device=f.device)
        keep[batch_topk_indices(score, crosscoder.config.k * batch_size)] = True
        return f * keep.view_as(f)
    return f * (score > crosscoder.threshold)


def _dense(crosscoder, x: torch.Tensor, k: int, dead: torch.Tensor | None, k_aux: int, auxk_alpha: float):
    """(loss, xhat [B, m, d], kept code [B, F], kept scores [k*B]) of batch ``x`` [B, m, d], written plainly:
    dense pre-activations, ``torch.topk`` over all B*F scores, a dense decoder."""
    B, F = x.shape[0], crosscoder.n_latents
    f = torch.relu(crosscoder.pre_acts(x))
    score = f.detach() * crosscoder.W_dec.norm(dim=-1).sum(-1)
    top = score.reshape(-1).topk(min(k * B, score.numel()), sorted=False)
    keep = torch.zeros(f.numel(), dtype=torch.bool, device=f.device)
    keep[top.indices] = True
    code = f * keep.view_as(f)
    x_hat = crosscoder.decode(code)
    loss = (x_hat - x).pow(2).sum(-1).mean(0).sum()
    if dead is not None and len(dead) and auxk_alpha > 0:
        top_dead = f[:, dead].detach().topk(min(k_aux, len(dead)), dim=1).indices
        aux_mask = torch.zeros_like(f, dtype=torch.bool)
        aux_mask[torch.arange(B)[:, None], dead[top_dead]] = True
        e = (x - x_hat).detach().reshape(B, -1)
        e_hat = (f * aux_mask) @ crosscoder.W_dec.reshape(F, -1)
        loss = loss + auxk_alpha * (e_hat - e).pow(2).sum() / (e - e.mean(0)).pow(2).sum()
    return loss, x_hat, code, top.values


def reference_loss(crosscoder, x: torch.Tensor, k: int, dead: torch.Tensor | None = None, k_aux: int = 1,
                   auxk_alpha: float = 1 / 32) -> torch.Tensor:
    """The training loss of batch ``x`` [B, m, d] (training units) written plainly, with ``dead`` the indices of
    dead latents for the auxiliary term: the definition ``loss`` must match."""
    return _dense(crosscoder, x, k, dead, k_aux, auxk_alpha)[0]


def _update_threshold(trainer, batch_cut: torch.Tensor) -> None:
    """The inference threshold: the first batch's cut (lowest kept score), then an EMA of the batch cuts."""
    thr, beta = trainer.model.threshold, trainer.cfg.threshold_beta
    thr.copy_(batch_cut if not torch.isfinite(thr) else beta * thr + (1 - beta) * batch_cut)


def dense_loss(trainer, x: torch.Tensor, step: int):
    """The dense reference step's loss: ``loss``'s outputs from plain autograd (one process only)."""
    m = trainer.model
    dead = (trainer.since_fired >= trainer.cfg.dead_tokens).nonzero().squeeze(1)
    with trainer.autocast():
        loss, xhat, code, kept = _dense(m, x, trainer.cfg.k, dead, trainer.k_aux, trainer.cfg.auxk_alpha)
    loss, xhat, code, kept = loss.float(), xhat.float(), code.float(), kept.float()
    with torch.no_grad():
        fired = code.amax(0) > 0
        nz = kept[kept > 0]
        if nz.numel():
            _update_threshold(trainer, nz.min())
        stats = {"l0": nz.numel() / x.shape[0], "threshold": m.threshold.item()}
        return loss, xhat, stats, trainer._recon(x, xhat), fired


def loss(trainer, x: torch.Tensor, step: int):
    """(loss, xhat, stats, per-model error [m], fired [F]) of a batch ``x`` [B, m, d] in training units.

    The fast path: a dense encoder forward without autograd, the exact global top ``k * batch`` selection,
    then sparse kernels for the decoder and both weight gradients."""
    m, B = trainer.model, x.shape[0]
    F, md = m.n_latents, m.n_models * m.d_model
    x_flat = x.reshape(B, md)
    w_enc, w_dec = m.W_enc.reshape(md, F), m.W_dec.reshape(F, md)
    with torch.no_grad():                            # dense encoder forward; its gradient is sparse
        # rank by f * n (n = decoder-norm sum > 0): relu(pre) * n = relu(x @ (W_enc n) + b_enc n), so
        # scaling the [md, F] weights replaces a pass over the [B, F] scores
        n = m.W_dec.norm(dim=-1).sum(-1)
        # a ones column carries the bias inside the matmul (no [B, F] bias broadcast pass)
        with trainer.autocast():
            score = (torch.cat([x_flat, x_flat.new_ones(B, 1)], 1) @ torch.cat([w_enc * n, (m.b_enc * n)[None]], 0)).float()
        guess = 0.5 * m.threshold.item() if torch.isfinite(m.threshold) else None
        n_keep = trainer.cfg.k * trainer.n_batch
        idx = (batch_topk_indices(score, n_keep, cut_guess=guess) if B
               else torch.zeros(0, dtype=torch.int64, device=x.device))
        if trainer.world is None:
            n_kept = idx.numel()
            batch_thr = score.view(-1)[idx].min() if idx.numel() else score.new_tensor(0.0)
        else:
            idx = trainer._global_topk(score, idx, n_keep)
            n_kept = int(trainer._sum(torch.tensor([idx.numel()], device=x.device)).item())
            low = score.view(-1)[idx].min() if idx.numel() else score.new_tensor(float("inf"))
            batch_thr = trainer.world.all_reduce_(low.reshape(1), "min")[0] if n_kept else score.new_tensor(0.0)
        crow, col, crow_t, row_t, perm, vals = sparse_code(score, idx)
        vals = vals / n[col]                         # back to pre-activations
    vals = GatherPre.apply(vals, x_flat, w_enc, m.b_enc, col, crow_t, row_t, perm)
    xhat = (SparseDecode.apply(vals, w_dec, crow, col, crow_t, row_t, perm) + m.b_dec.reshape(-1)).view_as(x)
    per_model = trainer._recon(x, xhat)
    loss = per_model.sum()
    stats = {"l0": n_kept / trainer.n_batch}
    dead = (trainer.since_fired >= trainer.cfg.dead_tokens).nonzero().squeeze(1)
    if dead.numel() and trainer.cfg.auxk_alpha > 0:
        with torch.no_grad():
            pre_d = score.index_select(1, dead).clamp_min_(0) / n[dead]     # relu(pre) of dead latents
            v, j = pre_d.topk(min(trainer.k_aux, dead.numel()), dim=1)
            flat = (torch.arange(B, device=x.device)[:, None] * F + dead[j])[v > 0].sort().values
            a_crow, a_col, a_crow_t, a_row_t, a_perm, a_vals = sparse_code(score, flat)
            a_vals = a_vals / n[a_col]
        if trainer.world is None:
            n_aux = flat.numel()
        else:      # every rank joins the reductions below, with or without aux entries of its own
            n_aux = int(trainer._sum(torch.tensor([flat.numel()], device=x.device)).item())
        if n_aux:
            e = (x - xhat).detach().reshape(B, md)
            if trainer.world is None:
                den = (e - e.mean(0)).pow(2).sum()
            else:  # squared deviation from the global-batch mean, summed over all ranks' rows
                mean = trainer._sum(e.sum(0)) / trainer.n_batch
                den = trainer._sum((e - mean).pow(2).sum())
            aux = e.new_zeros(())
            if flat.numel():
                a_vals = GatherPre.apply(a_vals, x_flat, w_enc, m.b_enc, a_col, a_crow_t, a_row_t, a_perm)
                ehat = SparseDecode.apply(a_vals, w_dec, a_crow, a_col, a_crow_t, a_row_t, a_perm)
                aux = (ehat - e).pow(2).sum() / den.clamp_min(1e-12)
                loss = loss + trainer.cfg.auxk_alpha * aux
            stats["aux"] = trainer._sum(aux.detach().double().reshape(1)).item()
    with torch.no_grad():
        if n_kept:
            _update_threshold(trainer, batch_thr)
        fired = torch.bincount(col, minlength=F) > 0
        if trainer.world is not None:
            fired = trainer._sum(fired.float()) > 0
    stats["threshold"] = m.threshold.item()
    return loss, xhat, stats, per_model, fired
