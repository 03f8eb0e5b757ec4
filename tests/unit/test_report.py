"""The run report: records carry what they used, and a report refuses stages that used different artifacts."""
from __future__ import annotations

import pytest

from thinkdiff import paths, report


@pytest.fixture
def runs_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "RUNS_DIR", tmp_path)
    return tmp_path


def prov(stage, store="s1", ccs=None):
    return {"stage": stage, "preset": "organism-m", "layer": None, "store": store,
            "crosscoders": ccs or {"relu": "c1"}, "settings": {"x": 1}}


def test_report_lists_each_stage_with_what_it_used(runs_dir):
    report.record("02_train", "r", prov("train"), {"FVU": 0.1})
    report.record("03_label", "r", prov("label"), {"live": 10}, claims={"1": {"verdict": "supports", "evidence": "e", "rule": "r"}})
    text = report.write_report("r").read_text()
    assert "## 02_train" in text and "## 03_label" in text and '"s1"' in text and "**supports**" in text
    assert "| 9 |" in text and "not tested" in text          # a claim no stage tested says so
    assert text.count('Settings: `{"x": 1}`') == 2                # the pre-registered settings are printed


@pytest.mark.parametrize("changed", ["store", "crosscoders"])
def test_report_refuses_stages_that_used_different_artifacts(runs_dir, changed):
    report.record("02_train", "r", prov("train"), {"FVU": 0.1})
    other = prov("label", **({"store": "s2"} if changed == "store" else {"ccs": {"relu": "c2"}}))
    report.record("03_label", "r", other, {"live": 10})
    with pytest.raises(ValueError, match=f"disagree on the {changed}.*02_train.*03_label"):
        report.write_report("r")


def test_record_refuses_unknown_claims_and_verdicts(runs_dir):
    with pytest.raises(ValueError, match="unknown paper claim"):
        report.record("x", "r", prov("label"), {}, claims={"11": {"verdict": "supports"}})
    with pytest.raises(ValueError, match="verdict must be one of"):
        report.record("x", "r", prov("label"), {}, claims={"1": {"verdict": "proves"}})
    with pytest.raises(ValueError, match="evidence .* and its rule"):
        report.record("x", "r", prov("label"), {}, claims={"1": {"verdict": "supports", "evidence": "e"}})
    with pytest.raises(FileNotFoundError, match="no stage records"):
        report.write_report("empty")


def test_report_links_the_static_feature_cards(runs_dir):
    page = runs_dir / "label" / "h" / "cards" / "feature_cards.html"
    with pytest.raises(FileNotFoundError, match="feature cards"):
        report.record("03c_browser", "r", prov("label"), {"cards": 2}, links={"feature cards": page})
    page.parent.mkdir(parents=True)
    page.write_text("<html></html>")
    report.record("03c_browser", "r", prov("label"), {"cards": 2}, links={"feature cards": page})
    out = report.write_report("r")
    text = out.read_text()
    line = next(x for x in text.splitlines() if x.startswith("Open: [feature cards]("))
    target = line.split("](", 1)[1].split(")", 1)[0]
    assert (out.parent / target).resolve() == page.resolve() if not target.startswith("/") else target == page.as_posix()


@pytest.mark.parametrize("isa", [None, "AVX2"])
def test_report_says_how_the_models_computed_and_why(runs_dir, monkeypatch, isa):
    """The precision line names the CPU, its flags, an ISA limit where one is set, and the probe's reason."""
    from thinkdiff import precision

    if isa:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa)
    else:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    probe = {**precision.cpu_bf16_probe(), "bf16": False, "why": "probe: bf16 matmul 0.03x the fp32 rate"}
    monkeypatch.setattr(precision, "cpu_bf16_probe", lambda: probe)
    report.record("02_train", "r", {**prov("train"), "model_dtype": "float32"}, {"FVU": 0.1})
    text = report.write_report("r").read_text()
    assert "Models computed in float32; CPU " in text and "bf16 not used: probe: bf16 matmul 0.03x" in text
    assert ("limited to ONEDNN_MAX_CPU_ISA=AVX2" in text) == bool(isa)


def test_records_are_tied_to_one_config_file_and_one_run(runs_dir, tmp_path):
    """Two run files of the same name, a record naming another run, a record without provenance: refused."""
    import json
    from types import SimpleNamespace

    a = SimpleNamespace(name="r", source="/a/r.toml", hash="aaaa")
    b = SimpleNamespace(name="r", source="/b/r.toml", hash="bbbb")
    report.record("02_train", a, prov("train"), {"FVU": 0.1})
    rec = json.loads((runs_dir / "report" / "r" / "02_train.json").read_text())
    assert rec["config"] == {"source": "/a/r.toml", "hash": "aaaa"} and rec["run"] == "r"
    report.record("03_label", b, prov("label"), {"live": 10})
    with pytest.raises(ValueError, match="different run configs.*02_train.*/a/r.toml.*03_label.*/b/r.toml"):
        report.write_report("r")
    report.record("03_label", a, prov("label"), {"live": 10})
    assert report.write_report("r").exists()
    path = runs_dir / "report" / "r" / "03_label.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "run": "other"}))
    with pytest.raises(ValueError, match="03_label record names run 'other'"):
        report.write_report("r")
    path.write_text(json.dumps({**json.loads(path.read_text()), "run": "r", "provenance": {}}))
    with pytest.raises(ValueError, match="03_label record has no provenance"):
        report.write_report("r")
    with pytest.raises(ValueError, match="needs its provenance"):
        report.record("04_steer", a, {}, {"x": 1})


def test_two_processes_recording_one_stage_do_not_collide(runs_dir):
    """Each write has its own temporary name; both finish and one complete record remains (no .tmp left)."""
    import json
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(2) as ex:
        list(ex.map(_record_many, [(str(runs_dir), i) for i in range(2)]))
    folder = runs_dir / "report" / "r"
    assert json.loads((folder / "02_train.json").read_text())["numbers"]["writer"] in (0, 1)
    assert not list(folder.glob("*.tmp"))


def _record_many(args):
    runs, writer = args
    paths.RUNS_DIR = runs
    for _ in range(30):
        report.record("02_train", "r", prov("train"), {"writer": writer})


def test_a_torn_record_names_its_file(runs_dir):
    report.record("02_train", "r", prov("train"), {"FVU": 0.1})
    path = runs_dir / "report" / "r" / "02_train.json"
    path.write_text(path.read_text()[:-20])
    with pytest.raises(ValueError, match=f"{path} is not valid JSON"):
        report.write_report("r")
