"""Does a different dictionary find the planted gated connective, and does removing its latent change the
distilled model's choice? Train crosscoders that differ in one knob on the store harvested at the gate's analysis
layer and score each with the rules of ``03_label`` §7b (``planted.crosscoder_finding``); the positive control
(the training classes' mean-difference direction projected out) shows what the ablation metric can see.

Usage: python tools/gate_sweep.py [--run organism-m] [--out docs/gate-sweep.md]
Every crosscoder is cached by its key (``runs/``), so a rerun only trains what is new. The metric, the latent's
selection and the matched random latents are exactly those of ``03_label``; only the dictionary changes.
"""
import time

import numpy as np
import pandas as pd
import torch

from sweeps import arguments, markdown
from thinkdiff import metrics, organism, pipeline, planted, world

# One knob at a time, against the default of each scheme.
VARIANTS = [
    ("relu", {}), ("relu", {"l1_coeff": 0.5}), ("relu", {"l1_coeff": 8.0}), ("relu", {"n_latents": 256}),
    ("relu", {"n_latents": 4096}), ("relu", {"n_steps": 4000}),
    ("batchtopk", {}), ("batchtopk", {"k": 4}), ("batchtopk", {"k": 64}), ("batchtopk", {"n_latents": 256}),
    ("batchtopk", {"n_steps": 4000}),
]


def cpu_model() -> str:
    """The CPU's model name and whether it computes bf16 natively (``/proc/cpuinfo``)."""
    info = open("/proc/cpuinfo").read()
    name = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "unknown CPU")
    return f"{name} ({'avx512_bf16' if 'avx512_bf16' in info.split() else 'no native bf16'})"


def main() -> None:
    args = arguments(__doc__, "docs/gate-sweep.md", "a run config (configs/<run>.toml) on an organism pair")
    run = pipeline.load_run(args.run)
    pair, lab = run.pair, run.config.label
    tok = pair.tokenizer
    n_train, n_eval = lab["gate_problems"]
    gate_tr = planted.gate_traces(world.problem_split(0, n_train, "train"), tok, seed=0)
    gate_ev = planted.gate_traces(world.problem_split(0, n_eval, "eval"), tok, seed=1)
    train_acts = planted.gate_activations(pair.distilled, gate_tr)
    eval_acts = planted.gate_activations(pair.distilled, gate_ev)
    probe = planted.layer_probes(train_acts, eval_acts)
    layer = planted.analysis_layer(probe["cv_auroc"]) or pair.layer
    unit = eval_acts["doc"]

    direction = planted.mean_difference_direction(train_acts, layer)
    randoms = planted.random_directions(len(direction), lab["gate_random"], seed=0)
    dm = planted.direction_margins(pair.distilled, layer, gate_ev, np.vstack([direction, randoms]), tok)
    control = planted.causal_control_verdict(planted.ablation_effect(dm, lab["gate_random"], unit))
    print("positive control:", control, flush=True)

    rows = []
    for scheme, over in VARIANTS:
        t0 = time.time()
        knob = {f"train.{scheme}.{k}": x for k, x in over.items()}
        r = pipeline.load_run(args.run, overrides={"harvest.layer": layer, **knob})
        meta, docs = r.store.meta, r.documents()
        cc, codes = r.crosscoder(scheme), r.codes(scheme)
        f = planted.crosscoder_finding(codes, r.relative_norms(scheme), meta["split"],
                                       organism.step_end_labels(docs, meta, field="gate"), cc, pair.base,
                                       pair.distilled, layer, gate_ev, tok, lab["gate_random"], unit, control)
        e = f["effect"]
        dead = metrics.evaluate(cc, r.store, split="heldout", progress=False)["dead_frac"]
        row = {"scheme": scheme, "change": ", ".join(f"{k}={x}" for k, x in over.items()) or "default",
               "dead (held out)": round(float(dead), 3), "latent": f["latent"] if e else "none",
               "relative norm": round(f["relative_norm"], 3), "held-out AUROC": round(f["heldout_auroc"], 3),
               "flip rate": round(e["target_flip_rate"], 3) if e else "n/a",
               "matched random": round(e["random_flip_rate"], 3) if e else "n/a",
               "difference CI": f"[{e['ci'][0]:.3f}, {e['ci'][1]:.3f}]" if e else "n/a",
               "mean margin clean / out": f"{f['margins'][0].mean():.2f} / {f['margins'][1].mean():.2f}" if e else "n/a",
               "verdict": f["verdict"]["verdict"], "seconds": round(time.time() - t0)}
        rows.append(row)
        print(row, flush=True)
    with open(args.out, "w") as fh:
        fh.write(
            f"# Does the dictionary find the gated connective? ({args.run})\n\n"
            "Written by `python tools/gate_sweep.py`; rules as in `03_label` §7b (`planted.crosscoder_finding`): the "
            "distilled-specific latent (relative norm >= 0.9) with the best training AUROC for the gate bit, its "
            "held-out AUROC, and the share of held-out connective choices that flip when it is removed from the "
            f"distilled model, against {lab['gate_random']} latents matched on firing frequency and decoder norm "
            f"(CI over problems). Analysis layer {layer} (chosen on training problems; training CV AUROC per layer "
            f"{np.round(probe['cv_auroc'], 3).tolist()}); {len(unit)} held-out steps of {n_eval} problems. Machine: "
            f"{cpu_model()}, torch {torch.__version__}, {args.threads} threads.\n\n"
            "## Positive control of the ablation\n\n"
            f"Projecting the training classes' mean-difference direction out of the distilled model at layer {layer}: "
            f"**{control['verdict']}** ({control['reason']}); mean connective margin (logit right - wrong) clean "
            f"{dm[0].mean():.2f}, direction out {dm[1].mean():.2f}, random directions out {dm[2:].mean():.2f}.\n\n"
            "## Crosscoders, one knob at a time\n\n" + markdown(pd.DataFrame(rows)) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
