"""Probe ceilings and train-selected latent recovery on synthetic data with a known answer."""
import numpy as np
import pytest

from thinkdiff import probes
from thinkdiff.codes import SparseActs


class FakeStore:
    """[n, 2, d] activations: the target is written along one direction of the distilled model only."""

    def __init__(self, n=4000, d=16, seed=0):
        rng = np.random.default_rng(seed)
        self.y = rng.random(n) < 0.1
        self.x = rng.normal(size=(n, 2, d)).astype(np.float32)
        self.x[:, 1, 0] += 3.0 * self.y
        self.n_tokens = n
        self.meta = {"split": (np.arange(n) % 4 == 0).astype(np.int8)}

    def acts(self, idx):
        return self.x[idx]


def test_probe_ceiling_finds_a_distilled_only_target():
    st = FakeStore()
    out = probes.probe_ceiling(st, {"planted": st.y, "noise": np.random.default_rng(1).random(st.n_tokens) < 0.1})
    assert out.loc["planted", "distilled"] > 0.95
    assert out.loc["planted", "base"] < 0.65
    assert abs(out.loc["noise", "distilled"] - 0.5) < 0.1


def test_the_pair_probe_reads_both_models_and_bounds_the_single_ones():
    """A target written half in the base's activations and half in the distilled model's: each model alone
    reads it partly, the pair (what a crosscoder latent sees) reads it best."""
    st = FakeStore()
    rng = np.random.default_rng(2)
    y = rng.random(st.n_tokens) < 0.3
    st.x[:, 0, 2] += 1.5 * y
    st.x[:, 1, 3] += 1.5 * y
    out = probes.probe_ceiling(st, {"split between models": y})
    r = out.loc["split between models"]
    assert r["pair"] > max(r["base"], r["distilled"]) + 0.02
    assert out.attrs["scores"]["split between models"]["pair"].shape == (int((st.meta["split"] == 1).sum()),)


def test_probe_ceiling_skips_excluded_tokens_and_unscorable_targets():
    st = FakeStore()
    y = np.where(st.x[:, 1, 1] > 0, st.y, np.nan)   # half the tokens excluded
    out = probes.probe_ceiling(st, {"half": y, "empty": np.zeros(st.n_tokens, bool)})
    assert out.loc["half", "n_train_pos"] < st.y[st.meta["split"] == 0].sum()
    assert np.isnan(out.loc["empty", "distilled"])
    with pytest.raises(ValueError, match="one value per store token"):
        probes.probe_ceiling(st, {"short": st.y[:10]})


def _acts(seed=0, n=6000, F=20):
    """Latent 3 tracks the target everywhere; latent 7 tracks it on held-out tokens only (must not be chosen)."""
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.1
    split = (np.arange(n) % 3 == 0).astype(np.int8)
    f = np.maximum(rng.normal(size=(n, F)) - 1.5, 0)
    f[:, 3] = np.maximum(f[:, 3], 2.0 * y + 0.5 * rng.random(n) * y)
    f[:, 7] = np.where(split == 1, 3.0 * y, f[:, 7])
    f[:, 11] = np.maximum(f[:, 11], 1.5 * y * (rng.random(n) < 0.8))
    return SparseActs.from_dense(f), split, y


def test_latent_recovery_selects_on_training_tokens_and_scores_held_out():
    acts, split, y = _acts()
    nrn = np.full(20, 0.5)
    nrn[11] = 0.95
    out = probes.latent_recovery(acts, split, {"t": y}, nrn, ks=(2,))
    r = out.loc["t"]
    assert r.best_latent == 3               # not 7, which is perfect only on the held-out tokens
    assert r.auroc > 0.95 and r.relative_norm == 0.5
    assert r.best_specific_latent == 11 and 0.8 < r.specific_auroc < 0.95
    assert r.sparse_probe_k2 >= r.auroc - 0.01


def test_latent_recovery_reports_nothing_without_positives():
    acts, split, y = _acts()
    out = probes.latent_recovery(acts, split, {"none": np.zeros_like(y)}, np.full(20, 0.5))
    assert "best_latent" not in out.columns or np.isnan(out.loc["none"].get("best_latent", np.nan))


def test_organism_targets_cover_spans_markers_and_the_planted_quantity():
    meta = {"label": np.array([-1, 0, 1, 1, 2, 0]), "marker": np.array([0, 0, 1, 0, 1, 0], bool)}
    t = probes.organism_targets(meta, np.array([-1, 0, -1, -1, -1, 1]), ["self_reflection", "deductive"])
    assert np.isnan(t["span: self_reflection"][0]) and list(t["span: self_reflection"][1:]) == [0, 1, 1, 0, 0]
    assert list(t["marker: deductive"]) == [False, False, False, False, True, False]
    lo = t["last operation"]
    assert np.isnan(lo[0]) and lo[1] == 0 and lo[5] == 1 and np.isnan(lo[2:5]).all()


def test_think_mask_and_spans_among_think_tokens():
    """Two documents, stored out of order: <think> = 8, </think> = 9; the tags themselves are outside."""
    meta = {"doc_id": np.array([1, 1, 1, 0, 0, 0, 0, 0, 0]), "pos": np.array([2, 0, 1, 0, 1, 2, 3, 4, 5]),
            "token_id": np.array([5, 8, 5, 5, 8, 5, 5, 9, 5]),
            "label": np.array([0, 0, 1, 0, 0, 1, 0, 0, 0]), "marker": np.zeros(9, bool)}
    inside = probes.think_mask(meta, [8], [9])
    assert inside.tolist() == [True, False, True, False, False, True, True, False, False]
    t = probes.organism_targets(meta, np.full(9, -1), ["self_reflection"], in_think=inside)
    span = t["span: self_reflection"]
    assert np.isnan(span[~inside]).all() and span[inside].tolist() == [0, 1, 1, 0]


def test_verdicts_carry_a_ci_and_say_when_the_threshold_is_inside_it():
    """Held-out scores over 60 documents: a marker latent at AUROC ~0.95 (threshold inside its CI) and one
    far above it."""
    rng = np.random.default_rng(0)
    y = rng.random(3000) < 0.2
    doc = np.repeat(np.arange(60), 50)
    close, clear = y + rng.normal(0, 0.45, 3000), y + rng.normal(0, 0.1, 3000)
    ceiling, rec = _tables()
    rec.attrs["scores"] = {"marker: a": {"y": y, "doc": doc, "latent": close}}
    from sklearn.metrics import roc_auc_score
    rec.loc["marker: a", "auroc"] = roc_auc_score(y, close)
    v = probes.ground_truth_verdicts(ceiling, rec)
    r = v.loc["marker: a"]
    assert r.ci_lo <= 0.95 <= r.ci_hi and "not decisive" in r.reason
    rec.attrs["scores"]["marker: a"]["latent"] = clear
    rec.loc["marker: a", "auroc"] = roc_auc_score(y, clear)
    r = probes.ground_truth_verdicts(ceiling, rec).loc["marker: a"]
    assert r.ci_lo > 0.95 and "95% CI" in r.reason and "not decisive" not in r.reason
    assert np.isnan(v.loc["span: a", "ci_lo"])               # no scores kept for it: no CI, no claim of one


def _tables(over=None):
    import pandas as pd
    names = ["marker: a", "span: a", "last operation"]
    ceiling = pd.DataFrame({"base": [0.99, 0.97, 0.70], "distilled": [0.99, 0.98, 0.99]}, index=names)
    rec = pd.DataFrame({"best_latent": [1, 2, 3], "auroc": [0.97, 0.90, 0.80], "relative_norm": [0.5, 0.5, 0.5],
                        "sparse_probe_k5": [0.98, 0.95, 0.9], "best_specific_latent": [4, 5, 6],
                        "specific_auroc": [0.6, 0.6, 0.93]}, index=names)
    for (table, row, col), v in (over or {}).items():
        (ceiling if table == "c" else rec).loc[row, col] = v
    return ceiling, rec


def test_ground_truth_verdicts_met():
    v = probes.ground_truth_verdicts(*_tables())
    assert list(v.verdict) == ["met", "met", "met"]


@pytest.mark.parametrize("over, target, verdict", [
    ({("r", "marker: a", "auroc"): 0.9}, "marker: a", "missed"),
    ({("r", "span: a", "sparse_probe_k5"): 0.90}, "span: a", "missed"),
    ({("r", "last operation", "specific_auroc"): 0.85}, "last operation", "missed"),
    ({("c", "last operation", "base"): 0.95}, "last operation", "not planted"),
    ({("c", "last operation", "distilled"): 0.9}, "last operation", "not planted"),
    ({("r", "last operation", "specific_auroc"): np.nan}, "last operation", "missed"),
])
def test_ground_truth_verdicts_each_failure(over, target, verdict):
    v = probes.ground_truth_verdicts(*_tables(over))
    assert v.loc[target, "verdict"] == verdict
    assert (v.drop(index=target).verdict == "met").all()


def test_ground_truth_verdicts_smoke_run_is_not_tested():
    v = probes.ground_truth_verdicts(*_tables(), tested=False)
    assert set(v.verdict) == {"not tested"}
