"""What each stage records (``thinkdiff.records``) and the stage helpers it builds on, on small synthetic results:
a four-latent crosscoder over a 4-dim store whose distilled-only latents are known to survive latent scaling or
not, a stand-in run around it, and hand-made result tables. Every record is written to a temporary runs folder and
read back."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from thinkdiff import ablation, codes, label, metrics, norms, pairs, paths, planted, records, train
from thinkdiff.lexicon import CATEGORIES

N, D = 400, 4


class Coder:
    """A folded crosscoder of ``rows``: latent -> (model read, dim read, {model: dim decoded}); a latent reading
    nothing never fires (bias -1)."""

    def __init__(self, rows):
        F = len(rows)
        self.W_enc, self.W_dec = torch.zeros(2, D, F), torch.zeros(F, 2, D)
        self.b_enc, self.b_dec = torch.zeros(F), torch.zeros(2, D)
        for j, (reads, writes) in enumerate(rows):
            for m, dim, w in reads:
                self.W_enc[m, dim, j] = w
            if not reads:
                self.b_enc[j] = -1.0
            for m, dim in writes:
                self.W_dec[j, m, dim] = 1.0

    def encode(self, x):
        return torch.relu(torch.einsum("bmd,mdf->bf", x, self.W_enc) + self.b_enc)

    def decode(self, f):
        return torch.einsum("bf,fmd->bmd", f, self.W_dec) + self.b_dec


# dim 0: distilled only (the base holds none of it); dim 1: shared; dim 2: distilled, half of it in the base too
# (latent scaling calls a latent reading it "shrinkage"); dim 3: base only.
RELU = Coder([([(1, 0, 1.0)], [(1, 0)]),                      # 0: distilled-only, genuine
              ([(0, 1, 0.5), (1, 1, 0.5)], [(0, 1), (1, 1)]),  # 1: shared
              ([(0, 3, 1.0)], [(0, 3)]),                       # 2: base-only
              ([], [(0, 2), (1, 2)])])                         # 3: dead
BATCHTOPK = Coder([([(1, 2, 1.0)], [(1, 2)]),                  # 0: distilled-only, shrinkage
                   ([(0, 1, 0.5), (1, 1, 0.5)], [(0, 1), (1, 1)])])


class Store:
    def __init__(self, seed=0):
        rng = np.random.default_rng(seed)
        a, b, c, e = (rng.uniform(0.5, 1.5, N) * (rng.uniform(size=N) < 0.4) for _ in range(4))
        self.x = np.zeros((N, 2, D), np.float32)
        self.x[:, 1, 0] = a
        self.x[:, :, 1] = b[:, None]
        self.x[:, 1, 2], self.x[:, 0, 2] = c, 0.5 * c
        self.x[:, 0, 3] = e
        self.n_tokens = N
        self.meta = {"split": np.repeat([0, 1], N // 2).astype(np.int8), "token_id": np.arange(N) % 7,
                     "doc_id": np.arange(N) // 20, "pos": np.arange(N) % 20, "label": np.zeros(N, int),
                     "marker": np.zeros(N, bool)}

    def acts(self, idx):
        return self.x[np.asarray(idx)]


class Run:
    """The parts of ``pipeline.Run`` the records read, over the toy store and coders."""

    def __init__(self, coders, tested=True, preset="toy-pair", train_config=None):
        self.store, self._coders, self.tested, self._train = Store(), coders, tested, train_config
        self.name = "toy"
        self.config = SimpleNamespace(schemes=list(coders), preset=preset, name="toy", hash="0123abcd",
                                      source=Path("configs/toy.toml"), imports={},
                                      label={"n_scaling": 10, "k_verdict": 0.2, "ablation_base_margin": 0.5})
        self.pair = SimpleNamespace(layer=2)

    def crosscoder(self, scheme=None):
        return self._coders[scheme or self.config.schemes[0]]

    def codes(self, scheme=None):
        return codes.encode_store(self.crosscoder(scheme), self.store)

    def relative_norms(self, scheme=None, p=2):
        return norms.relative_norm(self.crosscoder(scheme), p=p)

    def train_config(self, scheme=None):
        return self._train

    def key(self, stage):
        return {"stage": stage, "preset": self.config.preset}


@pytest.fixture
def runs_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "RUNS_DIR", tmp_path)
    return tmp_path


def read_record(runs_dir, stage):
    return json.loads((runs_dir / "report" / "toy" / f"{stage}.json").read_text())


# ----------------------------------------------------------------------------------------------- label helpers
def test_scaling_latents_are_the_top_live_ones_and_optionally_distilled_only():
    nrn = np.array([0.95, 0.99, 0.5, 0.92, 0.1, 0.7])
    alive = np.array([True, False, True, True, True, True])
    assert label.scaling_latents(nrn, alive, 3) == [0, 3, 5]              # latent 1 is dead: it takes no place
    assert label.scaling_latents(nrn, alive, 6) == [0, 3, 5, 2, 4]
    assert label.scaling_latents(nrn, alive, 6, min_relative_norm=0.9) == [0, 3]
    assert label.scaling_latents(nrn, ~alive, 6, min_relative_norm=0.9) == [1]


def test_scaling_counts_leave_out_inactive_latents():
    flags = pd.DataFrame({"flag": ["genuine", "shrinkage", "inactive", "genuine", "decoupling"]})
    assert label.scaling_counts(flags) == (2, 4)


def test_genuine_mask_keeps_distilled_only_latents_that_survive_latent_scaling():
    store = Store()
    nrn, freq = norms.relative_norm(RELU), codes.encode_store(RELU, store).frequency()
    np.testing.assert_allclose(nrn, [1.0, 0.5, 0.0, 0.5])
    assert label.genuine_mask(RELU, store, nrn, freq).tolist() == [True, False, False, False]
    assert not label.genuine_mask(RELU, store, nrn, freq, min_frequency=1.0).any()   # none fires that often
    bt_nrn = norms.relative_norm(BATCHTOPK)
    bt = label.genuine_mask(BATCHTOPK, store, bt_nrn, codes.encode_store(BATCHTOPK, store).frequency())
    assert bt.tolist() == [False, False]                                  # its distilled-only latent is shrinkage


def test_claim10_findings_measure_every_scheme_and_reuse_the_main_scaling():
    run = Run({"relu": RELU, "batchtopk": BATCHTOPK})
    masks = {c: np.zeros(N, bool) for c in CATEGORIES}                    # no marker token: claim 3 unmeasurable
    held = run.store.meta["split"] == 1
    scaling = label.latent_scaling(RELU, run.store, [0, 1], mask=held)
    assert scaling.set_index("latent").loc[0, "flag"] == "genuine"
    props = label.claim10_findings(run, masks, scaling, {}, {})
    assert props == {"exclusive latents exist (claim 1)": {"relu": None, "batchtopk": None},
                     "marker latents are mostly shared (claim 3)": {"relu": None, "batchtopk": None},
                     "most distilled-only latents survive latent scaling": {"relu": True, "batchtopk": False}}
    # the main scheme's table is read, not measured again
    relabelled = scaling.assign(flag=np.where(scaling.latent == 0, "shrinkage", scaling.flag))
    got = label.claim10_findings(run, masks, relabelled, {}, {})
    assert got["most distilled-only latents survive latent scaling"]["relu"] is False


def test_reasoning_features_from_moves_or_from_score_labels():
    table = pd.DataFrame({"label_score": ["", "deductive", "", "alternative"]})
    assert label.reasoning_features(table).tolist() == [False, True, False, True]
    moves = pd.DataFrame({"latent": [0, 2], "reasoning": [True, False]})
    assert label.reasoning_features(table, moves).tolist() == [True, False, False, False]


def test_distilled_only_moves_and_what_they_are():
    moves = pd.DataFrame({"latent": [0, 1, 2, 3], "reasoning": [True, False, False, True], "token_id": [5, -1, 7, 2],
                          "base_doc_share": [0.0, 0.5, 0.05, 0.9]})
    nrn = np.array([0.95, 0.91, 0.97, 0.4])
    tok = SimpleNamespace(decode=lambda ids: f"<{ids[0]}>")
    d_only = label.distilled_only_moves(moves, nrn, tok)
    assert d_only.latent.tolist() == [0, 1, 2] and d_only.token.tolist() == ["<5>", "", "<7>"]
    np.testing.assert_allclose(d_only.relative_norm, [0.95, 0.91, 0.97])
    assert label.distilled_only_counts(d_only) == [1, 2, 1]               # only latent 1 is an "other" on base text


def test_context_latents_skip_spans_or_take_the_reasonscore_tops():
    verdicts = pd.DataFrame({"best latent": [3.0, np.nan, 5.0, 1.0]},
                            index=["marker: deductive", "marker: alternative", "span: deductive", "gate"])
    assert label.context_latents(verdicts, None).to_dict() == {"marker: deductive": 3, "gate": 1}
    score = pd.DataFrame({"deductive": [0.1, 0.9, 0.2], "alternative": [0.5, 0.1, 0.2]})
    scores = label.ReasonScores(score, score, score, score, score, {}, 0.7)
    assert label.context_latents(None, scores).to_dict() == {"ReasonScore top: deductive": 1,
                                                             "ReasonScore top: alternative": 0}


# ----------------------------------------------------------------------------------------------- 01_harvest
def test_harvest_record(runs_dir):
    man = {"n_tokens_split": {"train": 900, "heldout": 100}, "pairing": {"ids_identical": True},
           "run": {"tokens_per_s": 1234.5}, "exclusions": {"n_dropped_first": 12, "n_dropped_outlier": 3}}
    store = SimpleNamespace(manifest=man, n_tokens=1000, disk_bytes=3 * 2**20, layer=4, d_model=64,
                            mean_norm=np.array([10.0, 12.5]))
    want = {"tokens": 1000, "train tokens": 900, "held-out tokens": 100, "disk MiB": 3.0, "layer": 4, "d_model": 64,
            "mean raw norm (base, distilled)": [10.0, 12.5], "pairing ids identical": True,
            "distinct tokens served per epoch": 900, "harvest tokens/s": 1234.5, "excluded: first position": 12,
            "excluded: outliers": 3}
    assert records.harvest_numbers(store, 900) == want
    fig = runs_dir / "01_norms.png"
    records.record_harvest(Run({"relu": RELU}), store, 900, [fig])
    rec = read_record(runs_dir, "01_harvest")
    assert rec["numbers"] == want and rec["figures"] == [fig.resolve().as_posix()] and rec["claims"] == {}
    assert rec["provenance"] == {"stage": "harvest", "preset": "toy-pair"}


# ----------------------------------------------------------------------------------------------- 02_train
EVALS = {"relu": {"fvu": [0.1, 0.2], "ev": [0.9, 0.8], "l0": 40.0, "dead_frac": 0.25, "n_tokens": 500},
         "batchtopk": {"fvu": [0.05, 0.3], "ev": [0.95, 0.7], "l0": 32.0, "dead_frac": 0.0, "n_tokens": 500}}
SPLICED = {s: {m: {"ce_clean": 1.0, "ce_spliced": 1.5, "ce_zero": 3.0, "kl_spliced": 0.1 * (i + 1),
                   "kl_zero": 2.0, "ce_recovered": 0.75 - 0.1 * i} for i, m in enumerate(("base", "distilled"))}
           for s in EVALS}


def test_quality_and_spliced_tables():
    q = metrics.quality_table(EVALS)
    assert list(q.columns) == ["relu", "batchtopk"]
    assert q["relu"].to_dict() == {"FVU base": 0.1, "FVU distilled": 0.2, "EV base": 0.9, "EV distilled": 0.8,
                                   "L0": 40.0, "dead fraction": 0.25, "held-out tokens": 500.0}
    sp = metrics.spliced_table(SPLICED)
    assert sp.index.tolist() == [(s, m) for s in EVALS for m in ("base", "distilled")]
    assert sp.loc[("batchtopk", "distilled"), "ce_recovered"] == pytest.approx(0.65)


def test_train_numbers_per_scheme():
    got = records.train_numbers(metrics.quality_table(EVALS), metrics.spliced_table(SPLICED))
    assert list(got)[:11] == ["relu FVU base", "relu FVU distilled", "relu EV base", "relu EV distilled", "relu L0",
                              "relu dead fraction", "relu held-out tokens", "relu CE recovered base",
                              "relu KL spliced base", "relu CE recovered distilled", "relu KL spliced distilled"]
    assert len(got) == 22 and got["batchtopk L0"] == 32.0 and got["relu KL spliced distilled"] == pytest.approx(0.2)
    assert got["batchtopk CE recovered distilled"] == pytest.approx(0.65)


def test_train_record_judges_claim9_only_at_the_papers_settings_and_never_on_a_smoke_run(runs_dir):
    quality, spliced = metrics.quality_table(EVALS), metrics.spliced_table(SPLICED)
    paper = Run({"relu": RELU}, preset=pairs.paper_pairs()[0], train_config=train.PAPER)
    got = records.record_train(paper, quality, spliced, [])
    assert got["9"]["verdict"] == "mixed"                                  # EV 0.9 / 0.8 against the bar 0.875
    assert got["9"]["evidence"].startswith("relu: held-out explained variance base 0.900 / distilled 0.800")
    assert got["9"]["rule"] == "thinkdiff.claims.claim9_verdict"
    rec = read_record(runs_dir, "02_train")
    assert rec["claims"] == got and rec["numbers"]["relu EV distilled"] == 0.8
    elsewhere = records.train_claims(Run({"relu": RELU}, train_config=train.PAPER), quality)["9"]
    assert elsewhere["verdict"] == "not tested" and "'toy-pair' is not one of the paper's" in elsewhere["evidence"]
    smoke = records.train_claims(Run({"relu": RELU}, tested=False, preset=paper.config.preset,
                                     train_config=train.PAPER), quality)["9"]
    assert smoke["verdict"] == "not tested" and smoke["evidence"].startswith("relu: smoke run (toy): held-out")


# ----------------------------------------------------------------------------------------------- 03_label
def label_results(run):
    held = run.store.meta["split"] == 1
    scaling = label.latent_scaling(RELU, run.store, label.scaling_latents(run.relative_norms(), np.ones(4, bool), 3),
                                   mask=held)
    finding = {"latent": 0, "relative_norm": 0.97, "heldout_auroc": 0.931, "verdict": {"verdict": "found", "reason": "r"},
               "effect": {"target_flip_rate": 0.12, "random_flip_rate": 0.01, "ci": (0.0812, 0.1534)},
               "margins": np.array([[1.0, 2.0], [0.5, 0.25]])}
    parity = pd.Series({"best_latent": 1.0, "relative_norm": 0.5, "auroc": 0.99})
    ceiling = pd.DataFrame({"base": [0.81234, 0.6], "distilled": [0.9, 0.95], "pair": [0.91, 0.96]},
                           index=["marker: deductive", "gate"])
    verdicts = pd.DataFrame({"latent AUROC": [0.97, 0.6], "latent relative norm": [0.5, 0.95],
                             "5-sparse probe": [0.9, 0.7], "specific latent AUROC": [np.nan, 0.93],
                             "ci_lo": [0.95, np.nan], "ci_hi": [0.99, np.nan], "verdict": ["met", "not tested"]},
                            index=["marker: deductive", "gate"])
    d_only = pd.DataFrame({"reasoning": [True, False], "base_doc_share": [0.0, 0.3]})
    return dict(scaling=scaling, genuine={"relu": np.array([True, False, False, False])},
                null_counts={"relu": [{"distilled_only": 1, "distilled_only_genuine": 0, "base_only": 2}]},
                d_only=d_only, gate_checks={"(a) audit": {"verdict": "no giveaway", "reason": "why"}}, gate_layer=3,
                gate_cv_auroc=np.array([0.51234, 0.9]), gate_found={"relu": planted.finding_summary(finding, 3, parity)},
                ceiling=ceiling, ground_truth={"relu": verdicts})


def test_label_numbers_from_the_stage_results():
    run = Run({"relu": RELU})
    got = records.label_numbers(run, **label_results(run))
    assert got == {
        "live latents": 3, "mean relative norm L2 (live)": pytest.approx(0.5), "mean relative norm L1 (live)":
            pytest.approx(0.5), "latents nrn >= 0.9": 1, "latents nrn <= 0.1": 1, "latent scaling genuine / checked":
            [1, 2],
        "distilled-only latents (live): reasoning features / others / others firing on base documents": [1, 1, 1],
        "relu claim 1 real pair (distilled-only / surviving latent scaling / base-only)": [1, 1, 1],
        "relu claim 1 null, base vs control, per seed (distilled-only / surviving / base-only)": [[1, 0, 2]],
        "gated connective (a) audit": ["no giveaway", "why"],
        "gated connective analysis layer (chosen on training problems) / hook layer": [3, 2],
        "gated connective distilled probe training CV AUROC per layer": [0.512, 0.9],
        "relu gated connective latent (layer / id / relative norm / held-out AUROC / flip rate / matched random flip "
        "rate / difference CI / verdict)": [3, 0, 0.97, 0.931, 0.12, 0.01, (0.081, 0.153), "found"],
        "probe ceiling marker: deductive (base / distilled / pair)": [0.8123, 0.9, 0.91],
        "probe ceiling gate (base / distilled / pair)": [0.6, 0.95, 0.96],
        "relu marker: deductive: latent AUROC / nrn / 5-sparse / specific AUROC / CI of the judged quantity / verdict":
            [0.97, 0.5, 0.9, pytest.approx(np.nan, nan_ok=True), [0.95, 0.99], "met"],
        "relu gate: latent AUROC / nrn / 5-sparse / specific AUROC / CI of the judged quantity / verdict":
            [0.6, 0.95, 0.7, 0.93, [pytest.approx(np.nan, nan_ok=True)] * 2, "not tested"]}


def test_label_numbers_without_labels_null_or_gate():
    run = Run({"relu": RELU, "batchtopk": BATCHTOPK})
    got = records.label_numbers(run, label_results(run)["scaling"], {}, {})
    assert list(got) == ["live latents", "mean relative norm L2 (live)", "mean relative norm L1 (live)",
                         "latents nrn >= 0.9", "latents nrn <= 0.1", "latent scaling genuine / checked",
                         "relu claim 1 real pair (distilled-only / surviving latent scaling / base-only)",
                         "batchtopk claim 1 real pair (distilled-only / surviving latent scaling / base-only)"]
    assert got["batchtopk claim 1 real pair (distilled-only / surviving latent scaling / base-only)"] == [1, None, 0]


def test_label_record_writes_numbers_and_judged_claims(runs_dir):
    run = Run({"relu": RELU}, tested=False)
    raw = {"1": ("supports", "1 distilled-only"), "10": ("mixed", "1 of 2")}
    got = records.record_label(run, raw, [runs_dir / "03_latent_scaling.png"], **label_results(run))
    assert got == {"1": {"verdict": "not tested", "evidence": "smoke run (toy): 1 distilled-only",
                         "rule": "thinkdiff.claims.claim1_verdict"},
                   "10": {"verdict": "not tested", "evidence": "smoke run (toy): 1 of 2",
                          "rule": "thinkdiff.claims.claim10_verdict"}}
    rec = read_record(runs_dir, "03_label")
    assert rec["claims"] == got and rec["numbers"]["live latents"] == 3
    assert rec["numbers"]["relu gate: latent AUROC / nrn / 5-sparse / specific AUROC / CI of the judged quantity / "
                          "verdict"][4] == ["nan", "nan"]                 # JSON keeps a NaN as text


def test_planted_audit_and_finding_rows():
    audit = {"verdict": "no giveaway", "auroc_visible": 0.5123, "auroc_with_interaction": 0.99, "n_eval": 40}
    assert planted.audit_verdict(audit) == {
        "verdict": "no giveaway", "reason": "visible features 0.512, with the interaction 0.990 (40 held-out steps)"}
    none = {"latent": np.nan, "relative_norm": np.nan, "heldout_auroc": np.nan, "effect": None, "margins": None,
            "verdict": {"verdict": "missed", "reason": "no live distilled-specific latent was chosen"}}
    row = planted.finding_summary(none, 5, pd.Series(dtype=float))
    assert row["difference CI"] is None and row["mean margin clean / latent out"] is None
    assert np.isnan(row["flip rate"]) and np.isnan(row["parity latent"]) and row["verdict"] == "missed"


# ----------------------------------------------------------------------------------------------- 03b_ablation
def test_testable_occurrences_need_enough_held_out_markers():
    occ = {c: list(range(n)) for c, n in zip(CATEGORIES, (25, 19, 10, 0))}
    kept, untested = ablation.testable_occurrences(occ, 40)              # needs min(40, 20) = 20
    assert list(kept) == ["self_reflection"]
    assert untested == {"deductive": "19 held-out marker occurrences, fewer than 20",
                        "alternative": "10 held-out marker occurrences, fewer than 20",
                        "contrastive": "0 held-out marker occurrences, fewer than 20"}
    kept, untested = ablation.testable_occurrences(occ, 10)              # a run asking for 10 needs 10
    assert list(kept) == ["self_reflection", "deductive", "alternative"] and list(untested) == ["contrastive"]


def ablation_result():
    rows = [(k, "deductive", m, arm, mean, mean - 0.5, mean + 0.5)
            for k in (0.05, 0.2) for m, arm, mean in (
                ("distilled", "targeted", -1.23456), ("distilled", "targeted_minus_random", -0.9),
                ("base", "targeted_minus_random", 0.1), ("distilled", "recon", -0.2))]
    return SimpleNamespace(summary=pd.DataFrame(rows, columns=["k", "category", "model", "arm", "mean", "ci_lo",
                                                               "ci_hi"]))


def test_ablation_numbers_keep_the_judged_k_and_the_recorded_arms():
    got = records.ablation_numbers(ablation_result(), 0.2, {"deductive": [1, 2, 3]})
    assert got == {"k judged": 0.2, "occurrences per category": {"deductive": 3},
                   "ablation k=0.2 deductive distilled targeted": [-1.235, -1.735, -0.735],
                   "ablation k=0.2 deductive distilled targeted_minus_random": [-0.9, -1.4, -0.4],
                   "ablation k=0.2 deductive base targeted_minus_random": [0.1, -0.4, 0.6]}
    assert records.ablation_numbers(None, 0.2, {}) == {"k judged": 0.2, "occurrences per category": {}}


def test_ablation_record_with_and_without_an_ablation(runs_dir):
    run = Run({"relu": RELU})
    untested = {c: "too few" for c in CATEGORIES if c != "deductive"}
    got = records.record_ablation(run, ablation_result(), {"deductive": [1, 2]}, untested, [])
    assert got["5"]["verdict"] == "contradicts" and got["5"]["rule"] == "thinkdiff.claims.claim5_verdict"
    assert "contrastive: not tested (too few)" in got["5"]["evidence"]
    assert read_record(runs_dir, "03b_ablation")["claims"] == got
    none = records.record_ablation(run, None, {}, {c: "too few" for c in CATEGORIES}, [])
    assert none["5"]["verdict"] == "not tested" and none["5"]["evidence"].startswith("self_reflection: not tested")
    assert read_record(runs_dir, "03b_ablation")["numbers"] == {"k judged": 0.2, "occurrences per category": {}}


# ----------------------------------------------------------------------------------------------- 03c_browser
def test_browser_record_links_the_cards(runs_dir):
    cards, table = runs_dir / "cards.html", runs_dir / "features.parquet"
    assert records.browser_numbers(cards, table, 4) == {"feature cards": str(cards), "cards": 4,
                                                        "features table": str(table)}
    with pytest.raises(FileNotFoundError, match="feature cards"):
        records.record_browser(Run({"relu": RELU}), cards, table, 4)   # a link must exist
    cards.write_text("<html></html>")
    records.record_browser(Run({"relu": RELU}), cards, table, 4)
    rec = read_record(runs_dir, "03c_browser")
    assert rec["numbers"]["cards"] == 4 and rec["links"] == {"feature cards": cards.as_posix()}



# ----------------------------------------------------------------------------------------------- 03d_adl
@pytest.mark.parametrize("tested", [True, False])
def test_adl_record_keeps_the_closeness_verdict_only_on_a_tested_run(runs_dir, tested):
    from thinkdiff import adl, claims

    run = Run({"relu": RELU}, tested=tested)
    run.config.adl = {"first_tokens": 5, "n_texts": 3, "n_random": 50}
    meta = run.store.meta
    rows, off = adl.first_token_rows(meta["doc_id"], meta["pos"], 5, 3)
    delta, per, counts = adl.mean_difference(run.store.acts(rows), off, 5)
    diff = {"delta": delta, "per_position": per, "counts": counts, "n_tokens": len(rows), "n_texts": 3}
    D = adl.decoder_differences(RELU)
    close = adl.closeness(delta, D[[0]], 50)
    verdict = claims.adl_closeness_verdict(close, 1)
    table = pd.DataFrame({"ADL: rank in distilled lens": [3]}, index=pd.Index(["deductive"], name="category"))
    numbers = records.adl_numbers(run, diff, {"distilled": {"promoted": ["a"], "suppressed": ["b"]}}, table, close, 1,
                                  verdict)
    records.record_adl(run, numbers, figures=[])
    rec = read_record(runs_dir, "03d_adl")["numbers"]
    assert rec["texts used"] == 3 and rec["tokens averaged"] == 15 and rec["distilled lens promoted"] == ["a"]
    assert rec["lens table"] == {"deductive": {"ADL: rank in distilled lens": 3}}
    assert rec["closer than random"]["verdict"] == (verdict[0] if tested else "not tested")
    assert rec["closer than random"]["rule"] == "thinkdiff.claims.adl_closeness_verdict"
    # no planted concept passed: recorded as not tested, with the rule that says so
    assert rec["closer to the planted concept than random"]["verdict"] == "not tested"
    assert "planted concept: permutation p" not in rec
    concept = {**adl.closeness(delta, D[[2]], 50), "n_steps": 40, "layer": 2, "auroc": 0.61234}
    concept_verdict = claims.adl_concept_verdict(concept)
    numbers = records.adl_numbers(run, diff, {"distilled": {"promoted": ["a"], "suppressed": ["b"]}}, table, close, 1,
                                  verdict, concept, concept_verdict)
    assert numbers["planted concept: layer, scored steps"] == [2, 40]
    assert numbers["planted concept: training AUROC of its direction"] == 0.6123
    assert numbers["planted concept: permutation p"] == round(concept["p"], 4)
    assert numbers["closer to the planted concept than random"] == {
        "verdict": concept_verdict[0] if tested else "not tested",
        "evidence": concept_verdict[1] if tested else f"smoke run ({run.name}): {concept_verdict[1]}",
        "rule": "thinkdiff.claims.adl_concept_verdict"}

# ----------------------------------------------------------------------------------------------- 00, 04, 05
def _eval_result(acc, think, teacher=True):
    r = {"accuracy": acc, "think_rate": think}
    if teacher:
        r.update(well_formed=1.0, accuracy_well_formed=acc, ce=1.5, family_accuracy={"arith": acc},
                 sampled_marker_rate_per_1k={"deductive": 3.0})
    return r


def test_evaluation_numbers_follow_the_task_not_the_pair():
    from thinkdiff import tasks

    results = {("M", "base"): _eval_result(0.4, 0.0), ("M", "distilled"): _eval_result(0.9, 1.0)}
    accept = {"M": {"gain": 0.5, "McNemar p": 1e-9, "marker rate / teacher": {"deductive": 1.0}, "verdict": "accepted"}}
    trend = {"verdict": "not tested"}
    world = records.evaluation_numbers(tasks.get("organism-world"), results, accept, trend, {"deductive": 3.0}, None,
                                       200, tested=True)
    assert world["M organism acceptance"] == "accepted" and world["M distilled teacher-forced CE"] == 1.5
    assert world["teacher marker rate per 1k"] == {"deductive": 3.0} and world["n_eval"] == 200
    smoke = records.evaluation_numbers(tasks.get("organism-world"), results, accept, trend, {}, None, 12, tested=False)
    assert smoke["M organism acceptance"] == "not tested"
    plain = {k: _eval_result(v["accuracy"], v["think_rate"], teacher=False) for k, v in results.items()}
    math = records.evaluation_numbers(tasks.get("math"), plain, {"M": {"gain": 0.5, "McNemar p": 0.01}}, trend, None,
                                      None, 100, tested=True)
    assert set(math) == {"M base accuracy", "M base think rate", "M distilled accuracy", "M distilled think rate",
                         "M accuracy gain (distilled - base)", "M McNemar p", "gain with size", "n_eval"}
    opened = {"n": 100, "greedy opened share": 0.0, "sampled opened share": 0.01, "verdict": "fails"}
    english = records.evaluation_numbers(tasks.get("english-world"), results,
                                         {"M": {**accept["M"], "distilled checks": 7, "true check share": 0.9}},
                                         trend, {}, opened, 100, tested=True)
    assert english["M pair acceptance"] == "accepted" and english["M distilled checks written"] == 7
    assert english["base opens a trace (fresh sample: n, greedy share, sampled share, verdict)"][-1] == "fails"


def test_claim8_is_recorded_with_its_dimension_and_never_judged_on_a_smoke_run():
    got = records.geometry_claims(Run({"relu": RELU}), ("mixed", "slope -0.04"), 2)["8"]
    assert got == {"verdict": "mixed", "evidence": "PCA 2, per-model basis: slope -0.04",
                   "rule": "thinkdiff.claims.claim8_verdict (log10 parameters, PCA 2)"}
    smoke = records.geometry_claims(Run({"relu": RELU}, tested=False), ("mixed", "slope -0.04"), 2)["8"]
    assert smoke["verdict"] == "not tested" and smoke["evidence"].startswith("smoke run (toy): PCA 2")


def test_steering_claims_without_a_latent_are_recorded_not_tested_at_the_claim_strength():
    run = Run({"relu": RELU})
    run.config.steer = {"alphas": [-1, 1], "control_alphas": [1], "claim_alpha": 1, "noninferiority_margin": 0.05,
                        "min_prompts": 20, "seed": 0}
    untested = {"6": ("not tested", "nothing to steer with: no latent"), "7": ("not tested", "no matched control")}
    got, per_alpha = records.steer_claims(run, None, {}, untested, n_boot=10)
    assert list(got) == ["6", "7"] and per_alpha.empty
    assert got["6"] == {"verdict": "not tested", "evidence": "nothing to steer with: no latent",
                        "rule": "thinkdiff.claims.claim6_verdict at alpha = 1"}
