"""The claim rules the stage records rely on: the smoke-run override and rule names every record carries, claim
10's properties from per-scheme verdicts, and the "not tested" outcomes of claims 1 and 5 when nothing could be
measured."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from thinkdiff import claims


def test_recorded_judges_a_smoke_run_and_names_each_rule():
    raw = {"1": ("supports", "3 exclusive latents"), "9": ("mixed", "EV 0.9 / 0.8")}
    smoke = claims.recorded(raw, tested=False, run_name="smoke", evidence_prefix="relu: ")
    assert smoke == {
        "1": {"verdict": "not tested", "evidence": "relu: smoke run (smoke): 3 exclusive latents",
              "rule": "thinkdiff.claims.claim1_verdict"},
        "9": {"verdict": "not tested", "evidence": "relu: smoke run (smoke): EV 0.9 / 0.8",
              "rule": "thinkdiff.claims.claim9_verdict"}}
    tested = claims.recorded(raw, tested=True, run_name="organism-m")
    assert {k: (c["verdict"], c["evidence"]) for k, c in tested.items()} == raw


def test_rule_name_refuses_a_claim_without_a_rule():
    assert claims.rule_name(10) == "thinkdiff.claims.claim10_verdict"
    with pytest.raises(ValueError, match="'11' has no rule"):
        claims.rule_name("11")
    with pytest.raises(ValueError, match="no rule"):
        claims.recorded({"12": ("supports", "e")}, True, "r")


def test_finding_holds_per_verdict():
    assert claims.finding_holds("supports") is True
    assert claims.finding_holds("mixed") is False
    assert claims.finding_holds("contradicts") is False
    assert claims.finding_holds("not tested") is None
    with pytest.raises(ValueError, match="unknown verdict"):
        claims.finding_holds("proves")


def test_scaling_survives_needs_half_of_the_checked_latents():
    assert claims.scaling_survives(2, 4) is True
    assert claims.scaling_survives(1, 4) is False
    assert claims.scaling_survives(0, 0) is None


def _claim10(claim1, claim3, scaling):
    return claims.claim10_verdict(claims.claim10_properties(claim1, claim3, scaling))


def test_claim10_from_per_scheme_results_each_verdict():
    both = {"relu": "supports", "batchtopk": "supports"}
    survives = {"relu": (3, 4), "batchtopk": (2, 2)}
    v, e = _claim10(both, both, survives)
    assert v == "supports" and "3 of 3 tested properties" in e
    v, e = _claim10(both, {"relu": "supports", "batchtopk": "mixed"}, survives)
    assert v == "mixed" and "marker latents are mostly shared (claim 3): relu yes, batchtopk no" in e
    fails = {"relu": "contradicts", "batchtopk": "supports"}
    v, _ = _claim10(fails, fails, {"relu": (0, 4), "batchtopk": (1, 1)})
    assert v == "contradicts"
    unmeasured = {"relu": "not tested", "batchtopk": "not tested"}
    v, e = _claim10(unmeasured, unmeasured, {"relu": None, "batchtopk": (0, 0)})
    assert v == "not tested" and "not measurable" in e


def test_claim10_properties_keep_what_was_not_measurable():
    props = claims.claim10_properties({"relu": "not tested"}, {"relu": "mixed"}, {"relu": None})
    assert props == {"exclusive latents exist (claim 1)": {"relu": None},
                     "marker latents are mostly shared (claim 3)": {"relu": False},
                     "most distilled-only latents survive latent scaling": {"relu": None}}


def test_claim1_without_a_null_is_not_tested_and_names_the_pair():
    nrn, freq = np.array([0.95, 0.5, 0.05]), np.full(3, 0.01)
    v, e = claims.claim1_verdict(nrn, freq, None, pair="qwen-1.5b")
    assert v == "not tested" and e.startswith("qwen-1.5b has no control model")
    v, e = claims.claim1_verdict(nrn, freq, None, pair="qwen-1.5b", imported=True)
    assert v == "not tested" and e.startswith("the crosscoders are imported")
    with pytest.raises(ValueError, match="at least one null"):
        claims.claim1_verdict(nrn, freq, [])


def test_claim5_without_an_ablation_is_not_tested_with_each_reason():
    v, e = claims.claim5_verdict(None, untested={"deductive": "3 held-out marker occurrences, fewer than 10",
                                                 "alternative": "0 held-out marker occurrences, fewer than 10"})
    assert v == "not tested"
    assert e == ("deductive: not tested (3 held-out marker occurrences, fewer than 10); "
                 "alternative: not tested (0 held-out marker occurrences, fewer than 10)")
    assert claims.claim5_verdict(None) == ("not tested", "no category was ablated")


def test_claim5_still_judges_a_result():
    """The None branch leaves the rule on an ablation result as it was (supports on a clear effect)."""
    rows = [("deductive", m, arm, mean, lo, hi) for m, arm, mean, lo, hi in (
        ("distilled", "targeted_minus_random", -2.0, -3.0, -1.0), ("base", "targeted_minus_random", 0.0, -0.2, 0.2),
        ("distilled", "targeted_minus_shared", -1.0, -2.0, -0.5), ("base", "base_minus_distilled", 2.0, 1.0, 3.0))]
    summary = pd.DataFrame(rows, columns=["category", "model", "arm", "mean", "ci_lo", "ci_hi"]).assign(k=0.2)
    assert claims.claim5_verdict(SimpleNamespace(summary=summary), k=0.2)[0] == "supports"
