"""Crosscoder quality metrics, each with one definition.

- **FVU** per model m (fraction of variance unexplained), over a set of tokens t::

      FVU_m = sum_t ||x_tm - xhat_tm||^2 / sum_t ||x_tm - mean_t(x_tm)||^2

  the mean is per dimension over the same tokens (conventional "batch" FVU, not the legacy per-token
  variant). **EV_m = 1 - FVU_m**. A perfect reconstruction has FVU 0; predicting the mean has FVU 1.
- **L0**: mean number of latents with ``f_i > 0`` per token.
- **Dead fraction**: share of latents with no activation on any token of the evaluated window.
- **Density** of latent i: share of evaluated tokens on which it is active (histogram on log10 scale).
- **Spliced-in loss** per model: next-token cross-entropy (nats/token) when the activation at the hook
  (resid_pre of block L = output of ``model.model.layers[L-1]``) is replaced by the crosscoder's
  reconstruction, against the clean CE and the CE with that activation zeroed; KL(clean || spliced)
  per token; ``ce_recovered = (CE_zero - CE_spliced) / (CE_zero - CE_clean)``.

The crosscoder is used as given: a folded one (raw units, ``eval()`` mode) as ``train`` returns.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from .hooks import resid_hook, resid_replaced


def fvu(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """FVU per model, ``[n_models]``, of reconstructions ``x_hat`` of ``x``, both [n_tokens, n_models, d]."""
    if x.shape != x_hat.shape or x.ndim != 3:
        raise ValueError(f"fvu needs two [n_tokens, n_models, d] tensors of one shape, got {tuple(x.shape)} "
                         f"and {tuple(x_hat.shape)}")
    x, x_hat = x.double(), x_hat.double()
    sse = (x - x_hat).pow(2).sum(dim=(0, 2))
    sst = (x - x.mean(0, keepdim=True)).pow(2).sum(dim=(0, 2))
    return (sse / sst).float()


def explained_variance(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """``1 - FVU`` per model, ``[n_models]``."""
    return 1 - fvu(x, x_hat)


def l0(f: torch.Tensor) -> float:
    """Mean number of active (> 0) latents per token of a code ``f`` [n_tokens, F]."""
    return (f > 0).sum(1, dtype=torch.float64).mean().item()


def dead_fraction(active_counts) -> float:
    """Share of latents whose activation count over the window is zero."""
    c = np.asarray(active_counts)
    return float((c == 0).mean())


def density_histogram(density, bins: int = 40, lo: float = -7.0):
    """Histogram data of latent densities on a log10 scale.

    Returns ``(counts [bins], edges [bins + 1] in log10 density, n_dead)``; dead latents (density 0)
    cannot sit on a log axis and are counted apart.
    """
    d = np.asarray(density, dtype=np.float64)
    alive = d[d > 0]
    counts, edges = np.histogram(np.log10(alive), bins=bins, range=(lo, 0.0))
    return counts, edges, int((d == 0).sum())


@torch.no_grad()
def evaluate(crosscoder, store, split: str = "heldout", batch_size: int = 4096, max_tokens: int | None = None,
             progress: bool = True) -> dict:
    """Stream ``split`` of ``store`` through ``crosscoder`` (raw units) and return the held-out metrics.

    Returns ``{"n_tokens", "fvu": [n_models], "ev": [n_models], "l0", "dead_frac",
    "density": np.ndarray [F]}``. FVU sums are accumulated in float64 over all evaluated tokens, so the
    per-dimension mean is that of the whole window, not of each batch.
    """
    from tqdm.auto import tqdm

    crosscoder.check_compatible(store)
    m, d, F = crosscoder.n_models, crosscoder.d_model, crosscoder.n_latents
    dev = crosscoder.W_dec.device
    sse = torch.zeros(m, dtype=torch.float64)
    s1 = torch.zeros(m, d, dtype=torch.float64)
    s2 = torch.zeros(m, d, dtype=torch.float64)
    counts = torch.zeros(F, dtype=torch.int64)
    n = 0
    active_total = 0
    for x in tqdm(store.loader(batch_size, batch_size, 0, epoch=0, split=split), desc=f"evaluate {split}",
                  disable=not progress, leave=False):
        if max_tokens is not None and n >= max_tokens:
            break
        if max_tokens is not None:
            x = x[: max_tokens - n]
        x = x.to(dev, torch.float32)
        f = crosscoder.encode(x)
        x_hat = crosscoder.decode(f)
        xd = x.double().cpu()
        sse += (xd - x_hat.double().cpu()).pow(2).sum(dim=(0, 2))
        s1 += xd.sum(0)
        s2 += xd.pow(2).sum(0)
        act = (f > 0).cpu()
        counts += act.sum(0)
        active_total += int(act.sum())
        n += x.shape[0]
    if n == 0:
        raise ValueError(f"the store's {split!r} split served no tokens to evaluate")
    sst = (s2 - s1.pow(2) / n).sum(1)
    fv = (sse / sst).numpy()
    density = (counts.double() / n).numpy()
    return {"n_tokens": n, "fvu": fv.tolist(), "ev": (1 - fv).tolist(), "l0": active_total / n,
            "dead_frac": dead_fraction(counts.numpy()), "density": density}


def quality_table(evals: dict) -> pd.DataFrame:
    """[quantity x scheme] held-out quality of each crosscoder (``evals``: scheme -> ``evaluate``'s result): FVU and
    EV per model, L0, dead fraction and the number of held-out tokens."""
    return pd.DataFrame({s: {"FVU base": e["fvu"][0], "FVU distilled": e["fvu"][1], "EV base": e["ev"][0],
                             "EV distilled": e["ev"][1], "L0": e["l0"], "dead fraction": e["dead_frac"],
                             "held-out tokens": e["n_tokens"]} for s, e in evals.items()})


def spliced_table(results: dict) -> pd.DataFrame:
    """``spliced_loss``'s results for a dict of crosscoders as one table indexed by (scheme, model)."""
    rows = [{"scheme": s, "model": m, **v} for s, per_model in results.items() for m, v in per_model.items()]
    return pd.DataFrame(rows).set_index(["scheme", "model"])


def _ce_and_logp(logits, input_ids, valid):
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    nll = -logp.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    return (nll[valid].mean().item(), logp)


@torch.no_grad()
def spliced_loss(models, input_ids: torch.Tensor, attention_mask: torch.Tensor, crosscoder, layer: int,
                 splice_mask: torch.Tensor | None = None, names=None) -> dict:
    """Next-token CE and KL per model with the hook activation replaced by the crosscoder reconstruction.

    ``models``: the HF causal LMs in crosscoder order (base, distilled); ``input_ids``/``attention_mask``
    [batch, seq] (held-out text); ``crosscoder``: any callable mapping raw activations
    [n_tokens, n_models, d] to reconstructions of that shape (a folded ``CrossCoder``), or a dict
    ``{name: crosscoder}`` to measure several against one set of clean and zero-ablated forwards; ``layer``:
    the hook (resid_pre of block L). ``splice_mask`` [batch, seq] bool: positions whose activation is
    replaced (default: every attended position; pass one without position 0 to spare attention sinks).

    Returns ``{model name: {"ce_clean", "ce_spliced", "ce_zero", "kl_spliced", "kl_zero", "ce_recovered"}}``
    (``{crosscoder name: {model name: ...}}`` for a dict); CE in nats per predicted token over positions t with
    tokens t and t+1 attended; KL(clean || other) per token over the same positions. The spliced and zeroed
    forwards give every position its hook activation (clean where not spliced), so they skip the blocks below it.
    """
    models = list(models)
    names = list(names) if names is not None else (["base", "distilled"] if len(models) == 2
                                                   else [f"model_{i}" for i in range(len(models))])
    if input_ids.ndim != 2 or attention_mask.shape != input_ids.shape:
        raise ValueError(f"input_ids and attention_mask must both be [batch, seq], got {tuple(input_ids.shape)} "
                         f"and {tuple(attention_mask.shape)}")
    mask = attention_mask.bool()
    splice = mask if splice_mask is None else (splice_mask.bool() & mask)
    valid = mask[:, :-1] & mask[:, 1:]
    if not valid.any():
        raise ValueError("spliced_loss needs at least one pair of consecutive attended tokens")
    clean_acts, clean = [], []
    for mdl in models:
        store = {}

        def grab(out, store=store):
            store["x"] = out

        with resid_hook(mdl, layer, grab):
            logits = mdl(input_ids=input_ids, attention_mask=attention_mask).logits
        clean_acts.append(store["x"])
        clean.append(_ce_and_logp(logits, input_ids, valid))

    def replaced(i, repl):
        """CE and KL of model i with its spliced positions set to ``repl`` [n_tokens, d]."""
        full = clean_acts[i].clone()
        full[splice] = repl.to(full.dtype)
        with resid_replaced(models[i], layer, full):
            logits = models[i](input_ids=input_ids, attention_mask=attention_mask).logits
        ce, logp = _ce_and_logp(logits, input_ids, valid)
        logp_clean = clean[i][1]
        return ce, (logp_clean.exp() * (logp_clean - logp)).sum(-1)[valid].mean().item()

    x = torch.stack([a[splice] for a in clean_acts], dim=1)            # [n_tokens, n_models, d]
    zero = [replaced(i, torch.zeros_like(x[:, i])) for i in range(len(models))]
    coders = crosscoder if isinstance(crosscoder, dict) else {None: crosscoder}
    results = {}
    for cname, cc in coders.items():
        x_hat = cc(x.float())
        if x_hat.shape != x.shape:
            raise ValueError(f"crosscoder returned {tuple(x_hat.shape)} for activations {tuple(x.shape)}")
        out = {}
        for i, name in enumerate(names):
            res = {"ce_clean": clean[i][0]}
            res["ce_spliced"], res["kl_spliced"] = replaced(i, x_hat[:, i])
            res["ce_zero"], res["kl_zero"] = zero[i]
            gap = res["ce_zero"] - res["ce_clean"]
            res["ce_recovered"] = (res["ce_zero"] - res["ce_spliced"]) / gap if gap != 0 else float("nan")
            out[name] = res
        results[cname] = out
    return results if isinstance(crosscoder, dict) else results[None]
