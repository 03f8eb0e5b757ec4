# %% [markdown]
# # 05 · Representation geometry across model sizes
#
# The paper's last claim (claim 8): larger distilled models may develop more structured representations,
# which correlates with better distillation. Its evidence is the mean **parallelogram loss** of word
# relations (king − man + woman ≈ queen) per model and size, with no uncertainty and no null.
#
# For word pairs (a_i → b_i), (a_j → b_j) of one relation, in a PCA space fitted per model and relation,
#
# $$\ell_{ij} = \frac{\lVert a_i - b_i - a_j + b_j\rVert}{\sqrt{\lVert a_i\rVert^2 + \lVert b_i\rVert^2 + \lVert a_j\rVert^2 + \lVert b_j\rVert^2}}$$
#
# is 0 for a perfect parallelogram. This notebook measures it on the organism's own relations for every
# size, with **bootstrap CIs over word pairs**, a **permutation null** (pairings shuffled) and an explicit
# link to **distillation performance** (held-out accuracy gain and teacher-forced CE reduction). Then it
# looks at the geometry of the crosscoder's reasoning features, and counts how many of the paper's real
# word pairs survive the single-token filter under the real Qwen tokenizer.
#
# Δ = base − distilled loss: **positive Δ means the distilled model is more parallelogram-like.**
#
# The sizes compared are the runs listed in the run config's `[geometry]` table (`runs`, smallest first): the
# organism's S, M and L, or the Qwen pairs from 1.5B to 32B. A real pair is measured on the paper's word
# relations (`data/relations`) and scored on a math set; the organism on its own relations and problems.

# %% [parameters]
RUN = "organism-m"           # the run config: configs/<RUN>.toml ([geometry]: the runs compared, dims, evaluation)
N_BOOT = 1000                # bootstrap draws over word pairs
N_PERM = 200                 # re-pairings in the permutation null
QWEN_RELATIONS = True        # count single-token survivors of data/relations under the real Qwen tokenizer
THREADS = None              # torch CPU threads (None: one per core; 1 where other jobs share the cores)

# %%
import math
from thinkdiff import session
session.start(globals(), threads=THREADS)  # hub offline, papermill parameters checked, torch threads
import time
import numpy as np
import pandas as pd
import torch
import matplotlib.pyplot as plt
from IPython.display import display
from thinkdiff import geometry as geo
from thinkdiff import evaluate, norms, paths, pipeline, plots, records, world
from thinkdiff import relations as rel_data
from thinkdiff import claims as claim_rules

run = pipeline.load_run(RUN)
G = run.config.geometry
DIMS, CLAIM_DIM, TOP_K, SEED = list(G["dims"]), G["claim_dim"], G["top_k"], G["seed"]
size_runs = {}
for name in G["runs"] or [run.name]:   # each compared size is a run of its own (its pair and hook layer)
    r = run.sibling(name)
    size_runs[r.pair_spec.kind_plugin.size_label(r.pair_spec)] = r
SIZES = list(size_runs)
KIND = run.pair_spec.kind_plugin   # the sort of pair compared: its word relations are read in its vocabulary
assert all(r.pair_spec.kind == KIND.name for r in size_runs.values()), "compare sizes of one kind of pair"
assert CLAIM_DIM in DIMS and len(SIZES) >= 1
print(run, "| sizes compared:", {s: r.name for s, r in size_runs.items()})

# %% [markdown]
# ## 1. The loss, checked on toy data
# Before trusting any number: an exact parallelogram family gives 0, a global rotation and scale change
# nothing, and the null shuffles the pairings of the *same* words.

# %%
rng = np.random.default_rng(SEED)
A = rng.normal(size=(10, 6)); B = A + rng.normal(size=6)
Q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
noisy = B + 0.3 * rng.normal(size=B.shape)
assert geo.pairwise_parallelogram_losses(A, B).max() < 1e-12
assert np.allclose(geo.pairwise_parallelogram_losses(A, noisy), geo.pairwise_parallelogram_losses(3 * A @ Q, 3 * noisy @ Q))
null = geo.permutation_null(A, noisy, n_perm=50, seed=SEED)
print(f"toy: real pairing {geo.pairwise_parallelogram_losses(A, noisy).mean():.3f}, re-paired null mean {null.mean():.3f}")

# %% [markdown]
# ## 2. The relations
# On the organism: singular → plural nouns, number word → digit, number word → capitalised number word,
# digit → next digit, each word in the form the corpus uses. On a real pair: the paper's five relations
# (`data/relations`). Words are fed **alone** (one token, position 0), as in the paper, and read at
# resid_pre of each pair's hook layer (the crosscoder's).

# %%
relations = KIND.relations()
{k: v[:3] for k, v in relations.items()}

# %%
pairs, n_params = {}, {}
for size, r in size_runs.items():
    t0 = time.time()
    pairs[size] = r.pair
    n_params[size] = sum(p.numel() for p in pairs[size].base.parameters())
    print(f"{size}: {n_params[size]:,} parameters, hook layer {pairs[size].layer}, loaded in {time.time() - t0:.0f} s")
tok = pairs[SIZES[0]].tokenizer  # one tokenizer for every size (the organism's; the Qwen2.5 one for real pairs)

# %%
results, survival = {}, []
for size in SIZES:
    pr = pairs[size]
    res, surv = geo.analyse_relations((pr.base, pr.distilled), pr.tokenizer, relations, pr.layer, dims=DIMS,
                                      n_boot=N_BOOT, n_perm=N_PERM, seed=SEED)
    results[size] = res
    survival.append(surv.assign(size=size, layer=pr.layer))
survival = pd.concat(survival)
if KIND.relations_single_token:
    assert survival["analysed"].all(), "every relation of this pair's vocabulary is single-token by construction"
survival[survival["size"] == SIZES[0]][["relation", "n_given", "n_kept"]]

# %% [markdown]
# ## 3. Per model, relation and size: mean loss, CI and the null
# `p_null` is the share of re-pairings at least as parallelogram-like as the real pairing; a real pairing
# far below its null means the relation has structure at all. `q_null` adjusts it for the whole grid tested
# per size (relations × bases × PCA dimensions × models, Benjamini–Hochberg: `geo.adjust_null_pvalues`).
# The paper's per-model PCA basis is shown.

# %%
table = pd.concat([r.table for rs in results.values() for r in rs], keys=[s for s, rs in results.items() for _ in rs],
                  names=["size", None]).reset_index(level=0)
table = geo.adjust_null_pvalues(table)
print("comparisons per size:", table.groupby("size")["n_comparisons"].first().to_dict())
per_model = table[table.basis == geo.PER_MODEL]
per_model[per_model.dim == CLAIM_DIM][["size", "relation", "model", "n_pairs", "mean", "mean_lo", "mean_hi",
                                       "null_mean", "null_q025", "p_null", "q_null"]].round(3)

# %% [markdown]
# The loss against PCA dimension: the real pairing (solid, 95 % CI band) and the null median (dotted), per
# relation, for each size.

# %%
rels = list(relations)
fig, axes = plt.subplots(len(SIZES), len(rels), figsize=(3.1 * len(rels), 2.5 * len(SIZES)), squeeze=False)
for s, size in enumerate(SIZES):
    for c, rel in enumerate(rels):
        ax = axes[s][c]
        for model, col in zip(geo.MODEL_NAMES, ("tab:blue", "tab:red")):
            t = per_model[(per_model["size"] == size) & (per_model.relation == rel) & (per_model.model == model)].sort_values("dim")
            ax.plot(t["dim_used"], t["mean"], "o-", color=col, ms=3, label=model)
            ax.fill_between(t["dim_used"], t["mean_lo"], t["mean_hi"], color=col, alpha=0.2)
            ax.plot(t["dim_used"], t["null_q50"], ":", color=col, lw=1)
        ax.set_xscale("log"); ax.set_title(f"{size}: {rel}", fontsize=9)
        ax.set_xlabel("PCA dimension"); ax.set_ylabel("mean parallelogram loss")
axes[0][0].legend(fontsize=7)
fig.suptitle("Parallelogram loss vs PCA dimension (dotted: re-paired null median)")
fig.tight_layout(); plots.savefig(fig, "05_loss_vs_dim"); plt.show()

# %% [markdown]
# Empirical CDFs of all quadruple losses at PCA dim `CLAIM_DIM`: base vs distilled, and one re-pairing of
# the same words (dotted).

# %%
fig = geo.plot_ecdf_grid(results, dim=CLAIM_DIM)
plots.savefig(fig, "05_ecdf_grid"); plt.show()

# %% [markdown]
# ## 4. Distillation performance per size
# Two measures, each paired over the same items: the held-out **accuracy gain** (distilled − base, greedy,
# exact answer), and the **teacher-forced CE reduction** (base − distilled nats/token on held-out teacher
# traces), a smooth measure that is not capped by the base's inability to answer. A real pair is scored on
# the math set with math-verify; it has no programmatic teacher, so it has no CE measure. Both come
# from the one cached evaluation of each pair under this run's `[evaluate]` settings, the numbers `00` shows.

# %%
perf_acc, perf_ce, perf_rows, correct = {}, {}, [], {}
for size, r in size_runs.items():
    ev = pipeline.pair_evaluation(r.config.preset, run.config.evaluate)
    correct[size] = (ev["base"]["correct"], ev["distilled"]["correct"])
    perf_acc[size] = evaluate.accuracy_gain(ev["base"]["correct"], ev["distilled"]["correct"], seed=SEED)
    row = {"size": size, "base acc": ev["base"]["accuracy"], "distilled acc": ev["distilled"]["accuracy"],
           "acc gain": perf_acc[size]["gain"], "gain lo": perf_acc[size]["lo"], "gain hi": perf_acc[size]["hi"]}
    if "ce_nll" in ev["base"]:   # a task with a teacher: the teacher-forced CE of its held-out traces
        perf_ce[size] = evaluate.ce_reduction(ev["base"]["ce_nll"], ev["distilled"]["ce_nll"], ev["base"]["ce_tokens"], seed=SEED)
        row.update({"base CE": ev["base"]["ce"], "distilled CE": ev["distilled"]["ce"], "CE reduction": perf_ce[size]["gain"],
                    "red lo": perf_ce[size]["lo"], "red hi": perf_ce[size]["hi"]})
    perf_rows.append(row)
perf = pd.DataFrame(perf_rows).set_index("size")
perf.round(3)

# %% [markdown]
# ## 5. Δ (base − distilled) against size and distillation performance
# One point per size and relation, and the size's pooled mean over relations (black squares; its CI pools
# the relations' bootstrap draws): against log10 parameters (the axis claim 8 is judged on), and against the
# measured distillation gain.

# %%
size_params = geo.size_table(results, {s: math.log10(n) for s, n in n_params.items()}, dim=CLAIM_DIM)
size_acc = geo.size_table(results, perf_acc, dim=CLAIM_DIM)
HAS_CE = set(perf_ce) == set(SIZES)
size_ce = geo.size_table(results, perf_ce, dim=CLAIM_DIM) if HAS_CE else None
panels = ([(size_params, "parameters (log10)"), (size_acc, "accuracy gain (distilled - base)")]
          + ([(size_ce, "CE reduction (base - distilled, nats/token)")] if HAS_CE else []))
fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
for ax, (tab, what) in zip(axes[0], panels):
    geo.plot_delta_vs_performance(tab, title=f"vs {what.split(' (')[0]}, PCA {CLAIM_DIM}", xlabel=what, ax=ax)
fig.suptitle("Geometry across sizes: vs model size and vs distillation performance (95% CIs)")
fig.tight_layout(); plots.savefig(fig, "05_delta_vs_performance"); plt.show()

# %% [markdown]
# The per-size table (PCA dim `CLAIM_DIM`, per-model basis), and the pooled Δ at every PCA dimension, so a
# conclusion that holds only at one dimension is visible as such.

# %%
display(size_acc[["size", "relation", "n_pairs", "base_mean", "distilled_mean", "null_mean_base", "null_mean_distilled",
                  "delta", "delta_lo", "delta_hi", "ci_excludes_zero", "perf_gain", "perf_lo", "perf_hi"]].round(4))
by_dim = pd.concat([geo.size_table(results, perf_acc, dim=k).assign(dim=k) for k in DIMS])
by_dim = by_dim[by_dim.relation == "all relations"]
by_dim.assign(ci=[f"{d:+.4f} [{lo:+.4f}, {hi:+.4f}]" for d, lo, hi in zip(by_dim.delta, by_dim.delta_lo, by_dim.delta_hi)]
              ).pivot(index="size", columns="dim", values="ci").loc[SIZES]

# %% [markdown]
# ## 6. Claim 8
# Fixed rule (`claims.claim8_verdict`): sizes are ordered by **parameter count**, never by performance. The
# trend is the slope of the pooled Δ (base − distilled) against log10 parameters, with a bootstrap CI that
# resamples relations and word pairs: supports if the CI is above 0, contradicts if below, mixed if it holds 0.
# The slope against the measured accuracy gain (problems resampled too) is reported beside it. With fewer than
# four sizes the claim is not tested: three points in a strict order arise by chance one time in six.

# %%
claims = records.geometry_claims(run, claim_rules.claim8_verdict(geo.deltas_by_size(results, dim=CLAIM_DIM), n_params,
                                                               correct, n_boot=N_BOOT, seed=SEED), CLAIM_DIM)
print(f"claim 8: {claims['8']['verdict'].upper()} - {claims['8']['evidence']}")

# %% [markdown]
# ## 7. Feature geometry of the reasoning latents (this run's main crosscoder)
# Each latent is assigned to the category where its score is highest (ground-truth AUROC on the organism,
# ReasonScore on a real pair); the top `TOP_K` per category by that score; cosine similarity of their
# decoder directions on each model's side.

# %%
cc = run.crosscoder()
scores, score_name = run.category_scores()
best_cat = scores[list(world.CATEGORIES)].fillna(-np.inf).idxmax(axis=1)  # each latent counts for one category only
top = {cat: list(scores.loc[best_cat == cat, cat].sort_values(ascending=False).index[:TOP_K]) for cat in world.CATEGORIES}
print(f"latents per category by {score_name}:", {c: len(v) for c, v in top.items()})
top = {c: v for c, v in top.items() if v}
lat = [j for cat in top for j in top[cat]]
names = [f"{j} {cat[:4]}" for cat in top for j in top[cat]]
fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
for ax, m in zip(axes, (0, 1)):
    geo.plot_cosine_matrix(geo.decoder_cosines(cc, lat, model_index=m), title=f"{geo.MODEL_NAMES[m]} side", labels=names, ax=ax)
fig.suptitle(f"Decoder cosine similarity of the top-{TOP_K} latents per category ({run.name})")
fig.tight_layout()   # again, now that the figure has a title above the two panels
plots.savefig(fig, "05_feature_cosines"); plt.show()
within = {}
for m in (0, 1):
    cos = geo.decoder_cosines(cc, lat, model_index=m).to_numpy()
    group = np.array([c for c in top for _ in top[c]])
    blocks = (group[:, None] == group[None, :]) & ~np.eye(len(lat), dtype=bool)
    # mean cosine within a category block (off-diagonal) vs across categories
    within[geo.MODEL_NAMES[m]] = (float(np.nanmean(cos[blocks])), float(np.nanmean(cos[~blocks & ~np.eye(len(lat), dtype=bool)])))
print({k: f"within-category mean cos {w:.3f}, across {a:.3f}" for k, (w, a) in within.items()})

# %% [markdown]
# How aligned are the base-side and distilled-side directions of a latent? For every latent with both
# sides non-zero: the cosine between them, against relative norm. Shared latents that are really the same
# direction in both models sit near cos 1.

# %%
align = geo.side_alignment(cc)
live = align[(align.norm_base > 0) & (align.norm_distilled > 0)]
fig, ax = plt.subplots(figsize=(6, 3.8))
ax.scatter(live["rel_norm"], live["cos_base_distilled"], s=5, alpha=0.4, color="grey", label="all latents")
sel = live[live.latent.isin(lat)]
ax.scatter(sel["rel_norm"], sel["cos_base_distilled"], s=25, color="tab:red", label="top reasoning latents")
ax.set_xlabel("relative norm (1 = distilled-only)"); ax.set_ylabel("cos(base side, distilled side)")
ax.set_title(f"Base vs distilled decoder alignment ({run.name})"); ax.legend(fontsize=7)
plots.savefig(fig, "05_side_alignment"); plt.show()
lo, hi = norms.SHARED_BAND
shared_band = live[(live.rel_norm >= lo) & (live.rel_norm <= hi)]
print(f"median cos(base, distilled): shared latents ({lo} <= NRN <= {hi}) {shared_band.cos_base_distilled.median():.3f} "
      f"(n={len(shared_band)}), top reasoning latents {sel.cos_base_distilled.median():.3f} (n={len(sel)})")

# %% [markdown]
# A 2-D PCA map of the distilled-side unit decoder directions of all latents, coloured by relative norm
# and by category (the top-`TOP_K` lists above; the rest "none").

# %%
cat_of = {j: cat for cat in top for j in top[cat]}
alive = [j for j in range(cc.W_dec.shape[0]) if float(cc.W_dec[j, 1].detach().norm()) > 0]
dmap = geo.decoder_map(cc, alive, categories=[cat_of.get(j, "none") for j in alive], model_index=1)
fig = geo.plot_decoder_map(dmap.sort_values("category", key=lambda c: c != "none"),
                           title=f"Distilled-side decoder directions, PCA ({run.name})")
plots.savefig(fig, "05_decoder_map"); plt.show()

# %% [markdown]
# ## 8. The paper's real word relations under the Qwen tokenizer
# `data/relations` holds the project's own lists for the paper's five relations. The paper fed each word
# alone, so only pairs whose two words are each a single token survive; here is how many, next to the
# number the paper reports keeping (and, for comparison, how many survive as mid-sentence words with a
# leading space, which is how Qwen's vocabulary stores most whole words).

# %%
if QWEN_RELATIONS:
    from thinkdiff import qwen
    qtok = qwen.qwen_tokenizer()
    qrows = []
    for name in rel_data.RELATIONS:
        given = rel_data.load_relation(name)
        kept, dropped = geo.filter_single_token(given, qtok)
        spaced, _ = geo.filter_single_token([(" " + a, " " + b) for a, b in given], qtok)
        qrows.append({"relation": name, "pairs written": len(given), "single-token pairs": len(kept),
                      "share kept": round(len(kept) / len(given), 3), "with leading space": len(spaced),
                      "paper kept": rel_data.PAPER_KEPT[name]})
    qwen_table = pd.DataFrame(qrows).set_index("relation")
    display(qwen_table)
else:
    qwen_table = None

# %% [markdown]
# ## 9. Record for the run report

# %%
numbers = records.geometry_numbers(
    run, SIZES, N_BOOT, N_PERM, size_acc, perf_acc, perf_ce if HAS_CE else {}, per_model, within,
    float(shared_band.cos_base_distilled.median()),
    None if qwen_table is None else {k: int(v) for k, v in qwen_table["single-token pairs"].items()})
figs = ["05_loss_vs_dim", "05_ecdf_grid", "05_delta_vs_performance", "05_feature_cosines", "05_side_alignment", "05_decoder_map"]
records.record_geometry(run, numbers, claims, figures=[paths.FIGURES_DIR / f"{f}.png" for f in figs])
