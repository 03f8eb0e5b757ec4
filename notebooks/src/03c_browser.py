# %% [markdown]
# # 03c · Feature cards and the feature browser
#
# What a latent looks like up close, in the manner of Neuronpedia's feature pages: its numbers (relative norm,
# frequency, latent-scaling ratios, scores, ground truth where the run has it), an activation histogram, the
# contexts where it fires most (split by document kind: teacher trace vs base corpus), and the tokens its
# decoder direction promotes through each model's unembedding. The cards read the run's features table
# (`label.run_features`, written by `03_label` or built here if missing).

# %% [parameters]
RUN = "organism-m"          # the run config: configs/<RUN>.toml
N_CARDS = 12                # latents exported as static HTML feature cards
THREADS = 1                 # torch CPU threads

# %%
import os
os.environ.setdefault("HF_HUB_OFFLINE", "1"); os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
import numpy as np
import torch
from thinkdiff import browser, label, lexicon, paths, pipeline, report
torch.set_num_threads(THREADS)
CATS = list(lexicon.CATEGORIES)

# %% [markdown]
# ## 1. The run and its features table

# %%
run = pipeline.load_run(RUN)
pair, store, cc = run.pair, run.store, run.crosscoder()
A, tok = run.codes(), pair.tokenizer
table = label.run_features(run)
alive = table["frequency"].to_numpy() > 0
kind = np.array([d.kind for d in run.documents()], dtype=object)[store.meta["doc_id"]]
print(run)
print(f"{len(table)} latents, {int(alive.sum())} live; labels by source:", table.label_source.value_counts().to_dict())

# %% [markdown]
# ## 2. Feature cards: static HTML export
# Cards for, per category, the best ground-truth latent (organism runs) and the top ReasonScore latent, then
# the most distilled-specific live latents; the file opens in any browser without a kernel.

# %%
pick = []
for c in CATS:
    for col in (f"auroc_{c}", f"score_{c}"):
        if col in table:
            pick.append(int(table.loc[table[col].fillna(-np.inf).idxmax(), "latent"]))
pick += [int(j) for j in table[alive].sort_values("relative_norm", ascending=False)["latent"]]
pick = list(dict.fromkeys(pick))[:N_CARDS]
unembed = {0: browser.unembedding(pair.base), 1: browser.unembedding(pair.distilled)}
card_ctx = browser.max_activating_contexts(cc, store, A, pick, k=6, context=15, group=kind)
cards = [browser.feature_card(j, table, A, card_ctx, cc, unembed, tok) for j in pick]
folder = paths.artifact_dir("label", run.key("label")) / "cards"
table_path, html_path = browser.save_label_outputs(folder, table, cards, tok, title=f"thinkdiff feature cards, {run.name}")
print("features table:", table_path)
print("feature cards:", html_path)
assert html_path.exists() and len(cards) == len(pick)

# %% [markdown]
# ## 3. The feature browser
# Filter by category (sorted by that category's ReasonScore), relative-norm range and minimum score; pick a
# latent to see its card. Cards are built on demand (contexts are computed for the chosen latent).

# %%
def make_card(j):
    c = browser.max_activating_contexts(cc, store, A, [j], k=6, context=15, group=kind)
    return browser.feature_card(j, table, A, c, cc, unembed, tok)

fb = browser.FeatureBrowser(table[alive], make_card, tok)
fb.widget

# %%
report.record("03c_browser", run.name, run.key("label"), {"feature cards": str(html_path), "cards": len(cards),
              "features table": str(table_path)})
