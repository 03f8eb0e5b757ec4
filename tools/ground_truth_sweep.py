"""Which dictionary knob recovers the organism's planted truth? Train crosscoders that differ in one knob
(size, steps, sparsity scheme) on the same store and score each with the rules of ``03_label`` §7.

Usage: python tools/ground_truth_sweep.py [--run organism-m] [--out docs/ground-truth-sweep.md]
Each variant is the run with one training setting overridden (``pipeline.load_run(run, overrides)``); every
crosscoder is cached by its key (``runs/``), so a rerun only trains what is new.
"""
import time

import pandas as pd

from sweeps import arguments, markdown
from thinkdiff import organism, pipeline, probes
from thinkdiff.lexicon import CATEGORIES

# One knob at a time, against the default of each scheme.
VARIANTS = [
    ("relu", {}), ("relu", {"n_steps": 4000}), ("relu", {"n_latents": 4096}), ("relu", {"l1_coeff": 0.5}),
    ("batchtopk", {}), ("batchtopk", {"n_steps": 4000}), ("batchtopk", {"n_latents": 4096}), ("batchtopk", {"k": 32}),
]


def main() -> None:
    args = arguments(__doc__, "docs/ground-truth-sweep.md", "a run config (configs/<run>.toml) on an organism preset")
    base = pipeline.load_run(args.run)
    store, docs = base.store, base.documents()
    targets = probes.organism_targets(store.meta, organism.step_end_labels(docs, store.meta), CATEGORIES)
    ceiling = probes.probe_ceiling(store, targets)
    rows = []
    for scheme, over in VARIANTS:
        t0 = time.time()
        run = pipeline.load_run(args.run, overrides={f"train.{scheme}.{k}": x for k, x in over.items()})
        rec = probes.latent_recovery(run.codes(scheme), store.meta["split"], targets, run.relative_norms(scheme),
                                     ks=(probes.TARGETS["sparse_k"],))
        v = probes.ground_truth_verdicts(ceiling, rec)
        row = {"scheme": scheme, "change": ", ".join(f"{k}={x}" for k, x in over.items()) or "default",
               "targets met": f"{int((v.verdict == 'met').sum())}/{len(v)}", "seconds (train or load, score)": round(time.time() - t0)}
        for kind in ("marker", "span"):
            sel = v[v.index.str.startswith(kind)]
            row[f"{kind}: met"] = int((sel.verdict == "met").sum())
            col = "latent AUROC" if kind == "marker" else "5-sparse probe"
            row[f"{kind}: min {col}"] = round(float(sel[col].min()), 3)
        lo = v.loc["last operation"]
        row["last operation: specific latent AUROC"] = round(float(lo["specific latent AUROC"]), 3)
        row["last operation"] = lo.verdict
        rows.append(row)
        print(row, flush=True)
    table = pd.DataFrame(rows)
    probe_table = ceiling[["base", "distilled"]].round(3).reset_index()
    with open(args.out, "w") as f:
        f.write(f"# Ground-truth recovery by dictionary knob ({args.run})\n\n"
                "Written by `python tools/ground_truth_sweep.py`; rules and targets as in `03_label` §7 "
                "(latents chosen on the store's training split, AUROC on its held-out split).\n\n"
                "## Probe ceilings (held-out AUROC of a dense logistic probe per model)\n\n"
                + markdown(probe_table) + "\n\n## Crosscoders\n\n" + markdown(table) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
