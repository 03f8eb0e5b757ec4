# %% [markdown]
# # 01 · Harvesting paired activations
#
# A crosscoder learns from pairs of vectors: the base model's and the distilled model's residual
# stream **at the same token of the same text**. This notebook runs both models of the pair over a
# corpus that mixes teacher traces (what distillation added) with base-corpus text (what both know),
# reads the residual stream entering block `n_layers // 2` (the paper's `resid_pre` of the middle
# block), and writes it to a sharded on-disk store with a manifest.
#
# What to harvest (corpus, layer, exclusions) is part of the **run config** `configs/<RUN>.toml`, shared
# by every notebook: change it there, and `02`–`05` see the new store.
#
# The paper's own buffer silently stopped refreshing after its first fill, so its crosscoders saw a
# few tens of thousands of distinct tokens instead of hundreds of millions. We check the opposite
# here: every stored token is served exactly once per epoch.

# %% [parameters]
RUN = "organism-m"             # the run config: configs/<RUN>.toml (pair, corpus, layer, exclusions)
THREADS = None              # torch CPU threads (None: one per core; 1 where other jobs share the cores)

# %%
from thinkdiff import session
session.start(globals(), threads=THREADS)  # hub offline, papermill parameters checked, torch threads
import numpy as np
import pandas as pd
import matplotlib.pyplot as plt
from thinkdiff import lexicon, pipeline, plots, records
import torch
figures = plots.Figures()   # every figure this notebook saves, for the run report

# %% [markdown]
# ## 1. The pair and the corpus
# Both models must see identical token ids; the harvest checks the two tokenizers before it starts
# and stops, naming the first differing text, if they disagree.

# %%
run = pipeline.load_run(RUN)
pair = run.pair
docs = run.documents()
print(run)
print(f"{pair.spec.name}: {pair.n_layers} blocks, d_model {pair.d_model}, hook = resid_pre of block {pair.layer}")
print("harvest settings:", run.config.harvest)
kinds = pd.Series([d.kind for d in docs]).value_counts()
print(kinds.to_dict(), f"{sum(len(d.input_ids) for d in docs):,} tokens before exclusions")

# %% [markdown]
# ## 2. Harvest
# Batched, under `torch.no_grad()`, each forward pass stopped at the hook layer. The store is keyed
# by everything that made it (models' weight hashes, layer, corpus hash, exclusions), so re-running
# this cell reuses it, and a different config gets a new store rather than mixing into this one.

# %%
store = run.store
man = store.manifest
print(store)
print(f"tokens: {store.n_tokens:,} (train {man['n_tokens_split']['train']:,}, held-out "
      f"{man['n_tokens_split']['heldout']:,}); disk {store.disk_bytes / 2**20:.1f} MiB in {len(man['shards'])} shards; "
      f"harvest throughput {man['run']['tokens_per_s']} tokens/s")

# %% [markdown]
# The pairing check passed (or the harvest would have stopped). The manifest also records what
# differs between the two tokenizers' chat templates even where the ids agree.

# %%
print(pd.Series(man["pairing"]).to_string())
assert man["pairing"]["ids_identical"], "both models must see identical token ids"

# %% [markdown]
# ## 3. Activation norms, before and after normalisation
# The crosscoder trains on each model's activations scaled so that the mean norm is √d_model (the
# paper's normalisation; the scale is folded into the saved crosscoder later). Distillation may
# change the scale of the residual stream, which is one reason the two models need separate scales.

# %%
rng = np.random.default_rng(0)
idx = np.sort(rng.choice(store.n_tokens, size=min(20000, store.n_tokens), replace=False))
acts = store.acts(idx)                                    # [n, 2, d] raw
norms = np.linalg.norm(acts, axis=-1)                     # [n, 2]
scaled = norms * store.norm_scale[None, :]
fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
for m, name in enumerate(("base", "distilled")):
    axes[0].hist(norms[:, m], bins=60, alpha=0.6, label=name)
    axes[1].hist(scaled[:, m], bins=60, alpha=0.6, label=name)
axes[0].set_title("raw residual norms"); axes[1].set_title(f"normalised (mean = √d = {np.sqrt(store.d_model):.1f})")
for ax in axes:
    ax.set_xlabel("L2 norm"); ax.set_ylabel("tokens"); ax.legend()
figures.save(fig, "01_norms")
print("mean raw norm per model:", np.round(store.mean_norm, 3), " scale:", np.round(store.norm_scale, 3))
assert np.allclose(scaled.mean(0), np.sqrt(store.d_model), rtol=0.05)

# %% [markdown]
# ## 4. Outlier positions
# Real Qwen models put attention-sink tokens at the first position with norms ~100× the median;
# left in, they wreck crosscoder training. Here: the norm by position, and the tokens with the
# largest norm relative to the median (excluded when the run sets `outlier_norm_multiple`).

# %%
meta = store.meta
pos = meta["pos"][idx]
by_pos = pd.DataFrame({"pos": np.minimum(pos, 100), "base": norms[:, 0], "distilled": norms[:, 1]}).groupby("pos").median()
fig, ax = plt.subplots(figsize=(7, 3))
by_pos.plot(ax=ax)
ax.set_xlabel("token position (100 = 100 or later)"); ax.set_ylabel("median L2 norm")
ax.set_title("Residual norm by position"); figures.save(fig, "01_norm_by_position")
ratio = norms.max(1) / np.median(norms, axis=0).max()
top = np.argsort(-ratio)[:8]
tok = pair.tokenizer
pd.DataFrame({"token": [repr(tok.decode([int(meta["token_id"][idx[i]])])) for i in top], "position": pos[top],
              "norm / median": ratio[top].round(2)})

# %% [markdown]
# Exclusions applied by this harvest (recorded in the manifest):

# %%
{k: v for k, v in man["exclusions"].items() if k != "outliers"}

# %% [markdown]
# ## 5. Per-token ground truth
# Every stored token carries its document, position, token id, and for the organism the planted
# reasoning category and marker flag, which `03_label` uses to score latents. Real corpora have no
# planted labels (every token is "unlabelled").

# %%
# NBVAL_CHECK_OUTPUT
labels = pd.Series(meta["label"]).map({0: "none", -1: "unlabelled", **{i + 1: c for i, c in enumerate(lexicon.CATEGORIES)}})
if not run.has_labels:
    print(f"{RUN}: no planted labels in this corpus; the ground-truth sections of 03_label are skipped.")
pd.DataFrame({"tokens": labels.value_counts(), "marker tokens": labels[meta["marker"].astype(bool)].value_counts()}).fillna(0).astype(int)

# %% [markdown]
# ## 6. Every token exactly once per epoch
# The training loader shuffles across shards with a bounded buffer. We run one epoch and count
# distinct (document, position) rows served: it must equal the split size, with no repeats.

# %%
# NBVAL_CHECK_OUTPUT
from thinkdiff.store import ServeCounter
counter = ServeCounter(store.n_tokens)
n_rows = 0
for batch in store.loader(batch_size=1024, buffer_tokens=32768, seed=0, split="train", counter=counter):
    n_rows += len(batch)
n_train = man["n_tokens_split"]["train"]
print(f"served {counter.served:,} rows, {counter.distinct:,} distinct, train split {n_train:,}")
assert counter.served == counter.distinct == n_train == n_rows

# %% [markdown]
# ## 7. Record for the run report
# The store's size, split, disk use, layer, norms, pairing check, exclusions and throughput, and the distinct
# tokens one epoch served (`records.harvest_numbers`).

# %%
records.record_harvest(run, store, counter.distinct, figures)
