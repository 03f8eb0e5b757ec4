# %% [markdown]
# # 03c · Feature cards and the feature browser
#
# What a latent looks like up close, in the manner of Neuronpedia's and SAEDashboard's feature pages: its label
# and where the label came from, where its relative norm sits on the pair's relative-norm histogram, each
# model's decoder norm and their cosine, how often and how strongly it fires, per-category ground-truth AUROC
# and ReasonScore, latent scaling in words, its top activating contexts for each model and each corpus kind
# (teacher trace vs base corpus), the tokens each model's decoder direction promotes and suppresses, and its
# most similar latents. The cards read the run's features table (`label.run_features`, written by `03_label`
# or built here if missing).

# %% [parameters]
RUN = "organism-m"          # the run config: configs/<RUN>.toml
N_CARDS = 8                 # distilled-only extremes exported as static cards, beside the top latents per category
THREADS = None              # torch CPU threads (None: one per core; 1 where other jobs share the cores)

# %%
from thinkdiff import session
session.start(globals(), threads=THREADS)  # hub offline, papermill parameters checked, torch threads
import numpy as np
import torch
from thinkdiff import browser, label, paths, pipeline, records

# %% [markdown]
# ## 1. The run and its features table

# %%
run = pipeline.load_run(RUN)
SCHEME, *OTHER_SCHEMES = run.config.schemes
pair, store, cc = run.pair, run.store, run.crosscoder(SCHEME)
A, tok = run.codes(SCHEME), pair.tokenizer
table = label.run_features(run)
alive = table["frequency"].to_numpy() > 0
kind = np.array([d.kind for d in run.documents()], dtype=object)[store.meta["doc_id"]]
print(run)
print(f"{len(table)} latents, {int(alive.sum())} live; labels by source:", table.label_source.value_counts().to_dict())

# %% [markdown]
# ## 2. Feature cards: static HTML export
# Cards for, per category, the best ground-truth latent (organism runs) and the top ReasonScore latent, then
# the `N_CARDS` most distilled-specific live latents (`browser.export_picks`). The file opens in any browser without a
# kernel or a network (inline CSS and SVG, no scripts), and the run report links it.

# %%
unembed = {0: browser.unembedding(pair.base), 1: browser.unembedding(pair.distilled)}
maker = browser.CardMaker(table, A, cc, store, tok, unembed, group=kind, scheme=SCHEME,
                          others={s: run.crosscoder(s) for s in OTHER_SCHEMES})
sections = browser.export_picks(table, per_category=1, n_extremes=N_CARDS)
pick = [j for js in sections.values() for j in js]
cards = maker.cards(pick)
folder = paths.artifact_dir("label", run.key("label")) / "cards"
table_path, html_path = browser.save_label_outputs(folder, table, cards, tok, title=f"thinkdiff feature cards, {run.name}",
                                                   sections=sections)
print("features table:", table_path)
print("feature cards:", html_path)
assert html_path.exists() and len(cards) == len(pick)

# %% [markdown]
# ## 3. The feature browser
# Jump to a latent by id, filter by category (the list is then sorted by that category's ReasonScore),
# relative-norm range, ReasonScore, ground-truth AUROC and firing frequency, or sort by any column; a card is
# always on show, and its most similar latents are one click away. Cards are built on demand. Saved without
# a kernel, the notebook keeps a static rendering of the card on show.

# %%
fb = browser.FeatureBrowser(table[alive], maker, tok)
fb

# %% [markdown]
# ## 4. Record for the run report
# Where the cards and the features table are, and how many cards; the report links the cards.

# %%
records.record_browser(run, html_path, table_path, len(cards))
