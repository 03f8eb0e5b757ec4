# %% [markdown]
# # 00 · The pair under study, and the distillation model organism
#
# Every run starts by checking that its pair is a distillation worth studying: is the distilled model better
# at math than its base, on held-out problems? For a real pair (`RUN = "qwen-1.5b"`) that is a math set
# scored with math-verify. The real pair `RUN = "smollm2-135m"` (SmolLM2-135M-Instruct and its LoRA-distilled
# reasoner) was distilled on this notebook's teacher rendered in natural English (`thinkdiff.nlworld`), so it
# is scored like the organism, on held-out problems of that world. The rest of this notebook is about the
# embedded default, the organism.
#
# thinkdiff asks what reasoning distillation changes inside a language model. Before touching a
# 1.5B-parameter pair we build one where **the truth is known**: tiny `Qwen2ForCausalLM` models
# (the real architecture of Qwen2.5-Math and DeepSeek-R1-Distill-Qwen) in a synthetic math world.
#
# * Problems are **chains of 3–5 operations on two-digit numbers** in five families (arithmetic, linear
#   equations, word problems, sequences, comparisons). A question lists its quantities as tagged items,
#   `Compute (a) 72 (b) + 6 (c) + 5 (d) - 2.`, so a step-by-step solution can find each one by its tag.
# * The **base** model is trained from scratch on a base corpus: many one-step facts (`47 + 8 = 55.`,
#   as a pretrained model knows arithmetic), items looked up by their tags and repeated lists (the
#   retrieval a pretrained model has from ordinary text), multi-step problems answered **tersely**
#   (`Answer: 43.`, no intermediate values) and plain sentences. It has to compose every operation in
#   one forward pass, as Qwen2.5-Math answers without a long thought.
# * A **programmatic teacher** writes R1-style traces `<think> … </think>`, one easy operation per step
#   (`(c) + 5: 78 + 5 = 83.`: the item it reads, then the operation), with labelled reasoning moves around
#   them: self-reflection (`Wait, …`), deductive (`Therefore / Thus / So`), alternative
#   (`Alternatively, …`) and contrastive (`But / However`).
# * The **distilled** model is the base fine-tuned (SFT) on those traces, which is how DeepSeek
#   distilled R1 into Qwen.
#
# Two kinds of ground truth are planted. The move categories are labelled token by token. And one
# quantity only the distilled model needs: after each operation but the last, the teacher writes " Next" or
# " Then", chosen by **the parity of the result just written XOR the parity of the question's first number**,
# so a model that writes traces must compute that bit at the operation's closing "." to pick the word. The
# base never sees either word and never needs it (`03_label` checks both, against a coin-flip control). Beside
# each pair ships a **control**: the base fine-tuned the same way on plain base-corpus text, the null partner
# claim 1's "distilled-only" latents are judged against. Every later notebook checks its findings against
# these labels.

# %% [parameters]
RUN = "organism-m"          # the run config: configs/<RUN>.toml ([evaluate]: sizes, problems, generation cap)
THREADS = None              # torch CPU threads (None: one per core; 1 where other jobs share the cores)

# %%
from thinkdiff import session
session.start(globals(), threads=THREADS)  # hub offline, papermill parameters checked, torch threads
import time
import numpy as np
import pandas as pd
import matplotlib.pyplot as plt
from IPython.display import HTML, display
from thinkdiff import organism, paths, pipeline, plots, records, world
from thinkdiff.stats import wilson_ci
import torch

run = pipeline.load_run(RUN)
task = run.task                      # what the pair is evaluated on (thinkdiff.tasks)
WORLD = task.has_teacher             # a programmatic teacher and held-out problems of its world
E = run.config.evaluate
# The pairs evaluated side by side: the organism's sizes, or the run's pair alone (label -> pair name).
MEMBERS = dict(run.pair_spec.kind_plugin.members(run.pair_spec, E))
SIZES = list(MEMBERS)
print(run, "| task:", task.name, "| pairs:", MEMBERS, "| evaluation settings:", E)

# %% [markdown]
# ## 1. The world and the teacher
# One problem from each family, with the terse base-corpus answer and the teacher's trace. Each coloured
# span is one planted reasoning move; the underlined "." closes an operation, bold when it is the last one.
# `03_label` tries to recover all of this from the models' activations.

# %%
import random
rng = random.Random(0)
if not WORLD:
    print(f"{RUN} is evaluated on {task.name!r}, which has no planted world: section 1, the split check and the "
          "teacher-only checks below are skipped.")
COLOURS = {0: "transparent", 1: "#ffd6d6", 2: "#d6e4ff", 3: "#d9f7d6", 4: "#fff1c2"}

def span_html(s):
    text = s.text.replace("<", "&lt;")
    if s.step_end is not None:
        end = "<b><u>.</u></b>" if s.step_end else "<u>.</u>"
        text = text[:-1] + end
    return f'<span style="background:{COLOURS[s.category]}">{text}</span>'

rows = []
for fam, plain, spans in task.examples(rng):
    rows.append(f"<tr><td>{fam}</td><td style='text-align:left'>{plain}</td>"
                f"<td style='text-align:left;font-family:monospace'>{''.join(span_html(s) for s in spans)}</td></tr>")
legend = " ".join(f'<span style="background:{COLOURS[i+1]}">{c}</span>' for i, c in enumerate(world.CATEGORIES))
if WORLD:
    display(HTML(f"<p>{legend}</p><table><tr><th>family</th><th>base corpus / question</th><th>teacher trace</th></tr>{''.join(rows)}</table>"))

# %% [markdown]
# **An honest held-out split.** Problems are held out by their *computation*: the step signature (every
# operation with its operands), not the wording. No evaluation problem shares its signature with any
# problem of the base corpus, the teacher's traces or the harvest corpus, so neither model can have
# memorised an answer. The check below runs on the very sets used here.

# %%
problems = task.problems(E)
train_sigs = task.training_signatures()
if train_sigs is not None:
    shared = train_sigs & {p.signature for p in problems}
    assert not shared, f"{len(shared)} held-out problems share a training computation"
    print(f"{len(train_sigs)} distinct training computations, {len(problems)} held-out problems, none shared;")
    print("held-out problems per family:", pd.Series([p.family for p in problems]).value_counts().to_dict())
else:
    print(f"{len(problems)} held-out problems ({task.name}, seed {E['seed']})")

# %% [markdown]
# The tokenizer is a byte-level BPE trained on this corpus with Qwen2's pre-tokenisation, except that a
# number of up to two digits is one token (the world's quantities are two-digit numbers). The marker words
# must each be one token, as `" Wait"` is in the real Qwen vocabulary.

# %%
tok = run.pair.tokenizer
marker_ids = {w: tok(w, add_special_tokens=False)["input_ids"] for ws in world.MARKERS.values() for w in ws}
print("vocabulary size:", len(tok))
print(marker_ids)
assert all(len(v) == 1 for v in marker_ids.values()), "every marker word is a single token"

# %% [markdown]
# ## 2. Build (or load) the pairs
# Weights ship in `data/organism/` with a manifest holding the config hash; a changed config
# rebuilds (`make organism` rebuilds the shipped copies from scratch, deterministically).

# %%
pairs, build_rows = {}, []
for size, name in MEMBERS.items():
    t0 = time.time()
    pairs[size] = pipeline.load_pair(name)
    build_rows.append({"size": size, **pairs[size].spec.kind_plugin.describe(pairs[size]),
                       "load s": round(time.time() - t0, 1)})
pd.DataFrame(build_rows).set_index("size")

# %% [markdown]
# ## 3. Held-out evaluation
# Greedy decoding on the held-out problems. The base model answers directly; the distilled model thinks
# first. We score exact answers, the share of well-formed generations (`<think> … </think>` then
# `Answer: N.`), the marker rate per 1,000 tokens, and a smooth measure of distillation: the
# **teacher-forced cross-entropy** of held-out teacher traces (nats per token, prompt excluded), which
# moves even where accuracy does not. A real pair is scored with math-verify on the math set (the
# cross-entropy needs teacher traces and is organism-only). Each pair is evaluated once per settings and
# cached (`pipeline.pair_evaluation`): `05_geometry` reads the same numbers.

# %%
results, ce = {}, {}
for size, name in MEMBERS.items():
    ev = pipeline.pair_evaluation(name, E)
    for role in ("base", "distilled"):
        results[(size, role)] = ev[role]
        ce[(size, role)] = ev[role].get("ce", float("nan"))
teacher_rates = task.teacher_marker_rates(tok, problems)
table = pd.DataFrame([{"size": s, "model": r, "accuracy": v["accuracy"],
                       "accuracy (well-formed outputs only)": v.get("accuracy_well_formed", np.nan),
                       "well-formed": v.get("well_formed", np.nan),
                       "think rate": v["think_rate"], "tokens / generation": v["tokens_per_generation"],
                       "teacher-forced CE": ce[(s, r)]}
                      for (s, r), v in results.items()]).set_index(["size", "model"])
table.round(3)

# %% [markdown]
# Accuracy with 95 % Wilson intervals. The paper's distilled models beat their bases at math; the
# organism should too, and the gap should depend on size (`05_geometry` relates it to geometry).

# %%
fig, ax = plt.subplots(figsize=(6, 3.5))
w = 0.38
for j, role in enumerate(("base", "distilled")):
    acc = [results[(s, role)]["accuracy"] for s in SIZES]
    ci = np.array([wilson_ci(sum(results[(s, role)]["correct"]), len(problems)) for s in SIZES])
    x = np.arange(len(SIZES)) + (j - 0.5) * w
    ax.bar(x, acc, w, label=role, yerr=[np.array(acc) - ci[:, 0], ci[:, 1] - np.array(acc)], capsize=3)
ax.set_xticks(range(len(SIZES)), SIZES)
ax.set_xlabel("organism size" if len(SIZES) > 1 else "pair"); ax.set_ylabel("held-out accuracy (95% Wilson CI)")
ax.set_title("Base (terse) vs distilled (thinks first)"); ax.legend(); ax.set_ylim(0, 1)
plots.savefig(fig, "00_accuracy_by_size"); plt.show()

# %% [markdown]
# Per family: where does thinking pay? Each family's accuracy, gain and exact McNemar p (paired over the
# same problems).

# %%
def per_family_plot():
    by_family = pd.concat({s: organism.acceptance_by_family(problems, results[(s, "base")], results[(s, "distilled")])
                           for s in SIZES}, names=["size"])
    fig, axes = plt.subplots(1, len(SIZES), figsize=(4 * len(SIZES), 3.2), sharey=True, squeeze=False)
    for ax, s in zip(axes[0], SIZES):
        by_family.loc[s][["base accuracy", "distilled accuracy"]].plot.bar(ax=ax, width=0.8, legend=ax is axes[0][0])
        ax.set_title(f"organism {s}" if len(SIZES) > 1 else s); ax.set_xlabel("problem family"); ax.set_ylabel("held-out accuracy")
        ax.tick_params(axis="x", rotation=30); ax.set_ylim(0, 1)
    fig.suptitle("Accuracy per problem family"); fig.tight_layout()
    plots.savefig(fig, "00_accuracy_by_family"); plt.show()
    return by_family.round(3)

per_family_plot() if WORLD else print("per-family accuracy: only a task with planted families has it")

# %% [markdown]
# Marker rates per 1,000 generated tokens: does the distilled model use the reasoning words at
# the teacher's rates, and does the base (which saw them only in ordinary roles) avoid them?
# The teacher plants each move with a probability (e.g. a re-check after 25 % of steps); greedy
# decoding keeps only the most likely continuation, so a perfect imitator matches the teacher's
# *rates* only when sampled. Rates below come from a seeded sampled pass (temperature 1) on the
# same problems; the greedy rates are in `results[...]["marker_rate_per_1k"]` for comparison.

# %%
def marker_rate_plot():
    rate_rows = [{"source": "teacher", "category": c, "rate": teacher_rates[c]} for c in world.CATEGORIES]
    for (s, r), v in results.items():
        rate_rows += [{"source": f"{r} {s}", "category": c, "rate": v["sampled_marker_rate_per_1k"][c]}
                      for c in world.CATEGORIES]
    rates = pd.DataFrame(rate_rows).pivot(index="source", columns="category", values="rate")[list(world.CATEGORIES)]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    rates.T.plot.bar(ax=ax, width=0.8)
    ax.set_xlabel("reasoning category"); ax.set_ylabel("marker words per 1,000 tokens")
    ax.set_title("Marker rates: teacher vs sampled generations"); ax.tick_params(axis="x", rotation=0)
    ax.legend(fontsize=7, ncol=2)
    plots.savefig(fig, "00_marker_rates"); plt.show()
    return rates.round(1)

marker_rate_plot() if WORLD else print("marker rates against a teacher: only a task with a programmatic teacher has them")

# %% [markdown]
# ## 4. Acceptance: is this a distillation that pays?
# The organism is useful only if distillation "took" the way it does in real models. The rule
# (`organism.acceptance`, thresholds in `organism.ACCEPTANCE`, fixed before any model was evaluated): the
# distilled model is at least 0.20 more accurate than its base with an exact McNemar p < 0.01 in its
# favour; the base never writes `<think>`; at least 95 % of distilled generations are well formed; every
# category's sampled marker rate is within ±30 % of the teacher's. With fewer than 200 problems (a smoke
# run) the verdict is "not tested". A real pair gets the gain and the paired test only (its markers have no
# teacher rate to match). The smollm2-135m pair has its own rule (`smollm2_eval.ACCEPTANCE`, fixed before it was
# evaluated): distilled above base with McNemar p < 0.01, base never thinks, >= 90 % well formed, marker rates
# within ±30 % of the teacher's (under 100 problems: "not tested"); and one more look, reported and not judged:
# the share of its "let me check" steps whose recomputation is true arithmetic.

# %%
accept_rows = {s: task.acceptance(results[(s, "base")], results[(s, "distilled")], teacher_rates) for s in SIZES}
acceptance = pd.DataFrame(accept_rows).T
if WORLD:
    acceptance["base CE"] = [ce[(s, "base")] for s in SIZES]
    acceptance["distilled CE"] = [ce[(s, "distilled")] for s in SIZES]
acceptance.index.name = "size"
acceptance

# %% [markdown]
# The smollm2-135m pair's first evaluation was rejected because its base wrote a stray `<think>` inside incoherent
# sampled text. That rule stays, and is reported as it fell. A second rule, registered in
# `smollm2_eval.OPENED_TRACE_RULE` after that result and before this one: the base never *opens* a trace (its
# output never starts with `<think>`, greedy or sampled), judged on a fresh sample of held-out problems
# (`[evaluate] fresh_seed`, never scored before).

# %%
opened = task.extra_check(run.pair, E, problems, run.tested)
if opened is not None:
    print(f"fresh sample: {opened['n']} problems, {opened['also in the first sample']} of them also in the first sample")
    print(f"original rule (base never writes <think>, seed {E['seed']}): "
          f"{acceptance['ok: base never thinks'].iloc[0]}; opened-trace rule (fresh seed {E['fresh_seed']}): {opened}")
else:
    print(f"the task {task.name!r} registers no further check; nothing to add here")

# %% [markdown]
# **Does the gain grow with size?** The size analysis in `05_geometry` needs distillation performance that
# differs across sizes. Per size the gain with a 95 % bootstrap CI over problems; the verdict compares the
# largest with the smallest size (paired over problems) and is reported whichever way it falls.

# %%
trend = organism.gain_trend(results, SIZES, min_eval=None if run.tested else 10**9)
for s, (g, lo, hi) in trend["gains"].items():
    print(f"{s}: gain {g:+.3f} [{lo:+.3f}, {hi:+.3f}]")
if "largest minus smallest" in trend:
    g, lo, hi = trend["largest minus smallest"]
    print(f"{SIZES[-1]} - {SIZES[0]}: {g:+.3f} [{lo:+.3f}, {hi:+.3f}]")
print("gain with size:", trend["verdict"])

# %% [markdown]
# ## 5. Side by side
# A few held-out problems, base vs distilled, for the largest size.

# %%
big = SIZES[-1]
side = pd.DataFrame({"problem": [task.question(p) for p in problems[:6]],
                     "answer": [p.answer for p in problems[:6]],
                     "base": results[(big, "base")]["texts"][:6], "distilled": results[(big, "distilled")]["texts"][:6]})
display(HTML(side.to_html(index=False).replace("\\n", "<br>")))

# %% [markdown]
# ## 6. Record for the run report

# %%
figs = ("accuracy_by_size", "accuracy_by_family", "marker_rates") if WORLD else ("accuracy_by_size",)
records.record_evaluation(run, results, accept_rows, trend, teacher_rates, opened, len(problems),
                          figures=[paths.FIGURES_DIR / f"00_{n}.png" for n in figs])
