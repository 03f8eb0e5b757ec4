"""The pair evaluation stage: evaluated once per pair and settings, then read from its cache by every stage."""
import pytest


def test_pair_evaluation_is_computed_once_and_read_by_every_stage(tmp_path, monkeypatch):
    """00 and 05 read one evaluation per pair and settings: the second call is served from the cache."""
    from thinkdiff import organism, paths, pipeline

    monkeypatch.setattr(paths, "RUNS_DIR", tmp_path)
    settings = {"n_eval": 5, "max_new_tokens": 8, "seed": 0, "sizes": ["S"]}
    first = pipeline.pair_evaluation("organism-s", settings)
    assert set(first) == {"base", "distilled"}
    for role in first:
        r = first[role]
        assert len(r["correct"]) == len(r["ce_nll"]) == len(r["ce_tokens"]) == 5
        assert r["ce"] == pytest.approx(sum(r["ce_nll"]) / sum(r["ce_tokens"]))

    def no_more(*a, **k):
        raise AssertionError("evaluated twice")

    monkeypatch.setattr(organism, "evaluate", no_more)
    again = pipeline.pair_evaluation("organism-s", {**settings, "sizes": ["S", "M"]})   # sizes do not matter
    assert again["distilled"]["correct"] == first["distilled"]["correct"]
    with pytest.raises(AssertionError, match="twice"):
        pipeline.pair_evaluation("organism-s", {**settings, "n_eval": 6})

