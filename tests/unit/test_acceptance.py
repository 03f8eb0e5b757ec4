"""The organism's acceptance rule and its paired test: each outcome reachable."""
import numpy as np
import pytest

from thinkdiff import organism, stats
from thinkdiff.world import CATEGORIES

RATES = {c: 10.0 for c in CATEGORIES}


def _result(correct, think_rate=0.0, well_formed=1.0, rates=None):
    correct = list(correct)
    return {"correct": correct, "accuracy": float(np.mean(correct)), "think_rate": think_rate,
            "sampled_think_rate": think_rate, "well_formed": well_formed,
            "sampled_marker_rate_per_1k": rates or dict(RATES)}


def _pair(n=200, base_right=40, distilled_right=120, overlap=30):
    base = np.zeros(n, bool)
    dist = np.zeros(n, bool)
    base[:base_right] = True
    dist[base_right - overlap:base_right - overlap + distilled_right] = True
    return base, dist


def test_mcnemar_counts_discordant_pairs_and_is_exact():
    a = np.array([1, 1, 0, 0, 0, 0, 0, 0, 0, 0], bool)
    b = np.array([1, 0, 1, 1, 1, 1, 1, 1, 1, 1], bool)
    r = stats.mcnemar(a, b)
    assert (r["a_only"], r["b_only"]) == (1, 8)
    assert r["p"] == pytest.approx(2 * (1 + 9) / 2 ** 9)   # exact two-sided binomial, 9 discordant pairs
    assert stats.mcnemar(a, a)["p"] == 1.0
    with pytest.raises(ValueError, match="equal-length"):
        stats.mcnemar(a, b[:5])


def test_acceptance_accepts_a_distillation_that_pays():
    b, d = _pair()
    acc = organism.acceptance(_result(b), _result(d), RATES)
    assert acc["verdict"] == "accepted" and acc["gain"] == pytest.approx(0.4)
    assert acc["McNemar p"] < 1e-6


@pytest.mark.parametrize("case, failing", [
    ("small gain", "ok: gain"),
    ("base better", "ok: paired test"),
    ("base thinks", "ok: base never thinks"),
    ("malformed", "ok: well formed"),
    ("marker rates off", "ok: marker rates"),
])
def test_acceptance_rejects_each_failure(case, failing):
    b, d = _pair()
    kw_b, kw_d, rates = {}, {}, dict(RATES)
    if case == "small gain":
        b, d = _pair(base_right=40, distilled_right=70, overlap=10)
    elif case == "base better":
        d, b = _pair(base_right=40, distilled_right=120, overlap=30)
    elif case == "base thinks":
        kw_b["think_rate"] = 0.01
    elif case == "malformed":
        kw_d["well_formed"] = 0.9
    else:
        rates["alternative"] = 14.0
    acc = organism.acceptance(_result(b, **kw_b), _result(d, rates=rates, **kw_d), RATES)
    assert acc["verdict"] == "rejected"
    assert acc[failing] is False
    assert sum(v is False for k, v in acc.items() if k.startswith("ok: ")) >= 1


def test_acceptance_on_a_smoke_run_is_not_tested():
    b, d = _pair(n=24, base_right=4, distilled_right=20, overlap=4)
    assert organism.acceptance(_result(b), _result(d), RATES)["verdict"] == "not tested"
    with pytest.raises(ValueError, match="different problem counts"):
        organism.acceptance(_result(b), _result(d[:10]), RATES)


def _results(gains, n=300, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for s, g in gains.items():
        base = rng.random(n) < 0.2
        dist = rng.random(n) < 0.2 + g
        out[(s, "base")], out[(s, "distilled")] = _result(base), _result(dist)
    return out


@pytest.mark.parametrize("gains, verdict", [
    ({"S": 0.1, "M": 0.3, "L": 0.6}, "grows"),
    ({"S": 0.6, "M": 0.3, "L": 0.1}, "shrinks"),
    ({"S": 0.3, "M": 0.3, "L": 0.3}, "does not differ"),
])
def test_gain_trend_each_outcome(gains, verdict):
    assert organism.gain_trend(_results(gains), list(gains))["verdict"] == verdict


def test_gain_trend_smoke_run_is_not_tested():
    r = _results({"S": 0.1, "L": 0.6}, n=24)
    t = organism.gain_trend(r, ["S", "L"])
    assert t["verdict"] == "not tested" and set(t["gains"]) == {"S", "L"}


def test_acceptance_by_family_splits_problems():
    from thinkdiff import world
    probs = organism.eval_problems(50)
    b = _result([p.family == "linear" for p in probs])
    d = _result([True] * 50)
    t = organism.acceptance_by_family(probs, b, d)
    assert t.loc["linear", "gain"] == 0 and t.loc["arith", "gain"] == 1 and t.loc["arith", "n"] == 10
    assert list(t.index) == list(world.FAMILIES)
