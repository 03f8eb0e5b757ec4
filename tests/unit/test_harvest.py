"""Paired harvesting on the tiny random Qwen2 pair: correctness against a plain forward, metadata,
exclusions, reuse, resume after interruption, and every bad input the issue lists."""
from __future__ import annotations

import copy
import hashlib
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import TINY_TEXT, tiny_documents
from thinkdiff import harvest as H
from thinkdiff import paths
from thinkdiff.harvest import HarvestConfig, get_store, harvest_pair
from thinkdiff.store import ActivationStore, StoreWriter


pytestmark = pytest.mark.usefixtures("one_thread")


def make_docs(tok, n=24):
    """``conftest.tiny_documents`` as objects with attributes (the harvest accepts either)."""
    return [SimpleNamespace(**d) for d in tiny_documents(tok, n)]


def _cfg(**kw):
    return HarvestConfig(**{"layer": 2, "batch_size": 4, "shard_tokens": 80, "heldout_fraction": 0.25, **kw})


def _files_sha(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())
            if p.name != "manifest.json"}


def _manifest_without_run(folder):
    """The manifest less what timing measured (the session's speed and the compute-dtype timings)."""
    man = json.loads((folder / "manifest.json").read_text())
    man.pop("run")
    man["compute"] = man["compute"]["dtype"]
    return man


def test_activations_and_metadata_match_a_plain_forward(tiny_pair, tiny_tokenizer, tmp_path):
    base, distilled = tiny_pair
    docs = make_docs(tiny_tokenizer)
    store = harvest_pair(base, distilled, tiny_tokenizer, tiny_tokenizer, docs, _cfg(), out_dir=tmp_path / "s",
                         progress=False)
    meta, acts = store.meta, store.acts(np.arange(store.n_tokens))
    assert store.n_tokens == sum(len(d.input_ids) - 1 for d in docs) and (meta["pos"] >= 1).all()
    for d_id in range(len(docs)):
        rows = np.nonzero(meta["doc_id"] == d_id)[0]
        doc = docs[d_id]
        ids = torch.tensor([doc.input_ids])
        with torch.no_grad():  # unpadded, one document: hidden_states[L] is resid_pre of block L
            ref = [m(ids, output_hidden_states=True).hidden_states[2][0].numpy() for m in (base, distilled)]
        pos = meta["pos"][rows]
        assert np.array_equal(pos, np.arange(1, len(doc.input_ids)))
        for m in (0, 1):
            np.testing.assert_allclose(acts[rows, m], ref[m][pos], atol=2e-5, rtol=1e-4)
        assert np.array_equal(meta["token_id"][rows], np.asarray(doc.input_ids)[pos])
        assert np.array_equal(meta["label"][rows], np.asarray(doc.labels)[pos])
        assert np.array_equal(meta["marker"][rows], np.asarray(doc.marker)[pos])
        assert len(set(meta["split"][rows])) == 1  # a document lies in one split
    # split shards are homogeneous and the held-out choice is deterministic and non-trivial
    held = {int(i) for i in meta["doc_id"][meta["split"] == 1]}
    assert 0 < len(held) < len(docs)
    assert held == {i for i, d in enumerate(H.prepare_documents(docs, tiny_tokenizer, _cfg())) if H._is_heldout(d, _cfg())}
    for e in store.shards:
        assert set(store.shard_meta(e["index"])["split"]) == {int(e["split"] == "heldout")}
    man = store.manifest
    assert man["layer"] == 2 and man["d_model"] == 32 and man["n_models"] == 2 and man["dtype"] == "float32"
    assert man["models"][0]["weight_hash"] != man["models"][1]["weight_hash"]
    assert man["exclusions"]["n_dropped_first"] == len(docs) and man["pairing"]["same_tokenizer_object"]
    assert man["documents"]["kinds"] == {"base": 8, "teacher": 16}
    assert np.allclose(store.mean_norm, np.linalg.norm(acts, axis=2).mean(0), rtol=1e-6)


def test_a_model_paired_with_itself_runs_once_per_batch(tiny_pair, tiny_tokenizer, tmp_path, monkeypatch):
    """Claim 1's null store (base with base): one forward per batch, both columns the same numbers, and the same
    store as a harvest that runs an identical copy of the model twice."""
    base = tiny_pair[0]
    calls = []
    real_call = H.LayerReader.__call__
    monkeypatch.setattr(H.LayerReader, "__call__", lambda self, ids, mask: calls.append(id(self)) or real_call(self, ids, mask))
    docs = make_docs(tiny_tokenizer)
    store = harvest_pair(base, base, tiny_tokenizer, tiny_tokenizer, docs, _cfg(), out_dir=tmp_path / "same",
                         progress=False)
    n_batches = len(H._plan(H.prepare_documents(docs, tiny_tokenizer, _cfg()), _cfg()))
    assert len(calls) == n_batches and len(set(calls)) == 1
    acts = store.acts(np.arange(store.n_tokens))
    assert np.array_equal(acts[:, 0], acts[:, 1])
    twin = harvest_pair(base, copy.deepcopy(base), tiny_tokenizer, tiny_tokenizer, docs, _cfg(),
                        out_dir=tmp_path / "twin", progress=False)
    assert len(calls) == 3 * n_batches                      # a copy is another model: read twice
    assert np.array_equal(twin.acts(np.arange(twin.n_tokens)), acts)


def test_documents_without_labels_and_default_layer(tiny_pair, tiny_tokenizer, tmp_path):
    base, distilled = tiny_pair
    store = harvest_pair(base, distilled, tiny_tokenizer, tiny_tokenizer, TINY_TEXT,
                         HarvestConfig(drop_first_position=False, heldout_fraction=0.0),
                         out_dir=tmp_path / "s", progress=False)
    assert store.layer == 2  # n_layers // 2 of the 4-layer pair
    assert (store.meta["label"] == -1).all() and not store.meta["marker"].any() and (store.meta["split"] == 0).all()
    assert store.n_tokens == sum(len(tiny_tokenizer(t)["input_ids"]) for t in TINY_TEXT)


def test_reuse_matching_store_and_refuse_mismatch(tiny_pair, tiny_tokenizer, tmp_path, monkeypatch):
    base, distilled = tiny_pair
    docs = make_docs(tiny_tokenizer, 8)
    monkeypatch.setattr(paths, "RUNS_DIR", tmp_path)
    pair = SimpleNamespace(base=base, distilled=distilled, tokenizer=tiny_tokenizer, layer=1)
    first = get_store(pair, docs, HarvestConfig(batch_size=4), progress=False)
    assert first.layer == 1 and first.path.parent == tmp_path / "harvest"

    def no_forward(*a, **k):
        raise AssertionError("a matching store must be reused without running the models")
    monkeypatch.setattr(H, "LayerReader", no_forward)
    again = get_store(pair, docs, HarvestConfig(batch_size=4), progress=False)
    assert again.path == first.path
    with pytest.raises(ValueError, match="different configuration.*layer"):
        harvest_pair(base, distilled, tiny_tokenizer, tiny_tokenizer, docs, HarvestConfig(layer=3, batch_size=4),
                     out_dir=first.path)
    with pytest.raises(ValueError, match="different configuration.*models"):
        harvest_pair(base, base, tiny_tokenizer, tiny_tokenizer, docs, HarvestConfig(layer=1, batch_size=4),
                     out_dir=first.path)
    with pytest.raises(ValueError, match="different configuration.*dtype"):
        harvest_pair(base, distilled, tiny_tokenizer, tiny_tokenizer, docs,
                     HarvestConfig(layer=1, batch_size=4, dtype="float16"), out_dir=first.path)
    assert ActivationStore(first.path).n_tokens == first.n_tokens  # untouched


def test_interrupted_harvest_resumes_to_an_identical_store(tiny_pair, tiny_tokenizer, tmp_path, monkeypatch):
    base, distilled = tiny_pair
    docs = make_docs(tiny_tokenizer)
    cfg = _cfg(outlier_norm_multiple=50.0)
    whole = harvest_pair(base, distilled, tiny_tokenizer, tiny_tokenizer, docs, cfg, out_dir=tmp_path / "a",
                         progress=False)
    assert len(whole.shards) >= 4

    calls = {"forward": 0, "shards": 0}
    real_write, real_forward = StoreWriter.write_shard, H._forward_pair

    def crashing_write(self, *a, **k):
        if calls["shards"] == 2:
            (self.partial / "acts_00002.npy.tmp").write_bytes(b"torn write")  # as if killed mid-write
            raise KeyboardInterrupt("killed")
        calls["shards"] += 1
        return real_write(self, *a, **k)

    def counting_forward(*a, **k):
        calls["forward"] += 1
        return real_forward(*a, **k)
    monkeypatch.setattr(StoreWriter, "write_shard", crashing_write)
    monkeypatch.setattr(H, "_forward_pair", counting_forward)
    with pytest.raises(KeyboardInterrupt):
        harvest_pair(base, distilled, tiny_tokenizer, tiny_tokenizer, docs, cfg, out_dir=tmp_path / "b", progress=False)
    assert not (tmp_path / "b").exists() and (tmp_path / "b.partial" / "progress.json").exists()
    with pytest.raises(FileNotFoundError, match="interrupted harvest"):
        ActivationStore(tmp_path / "b")

    monkeypatch.setattr(StoreWriter, "write_shard", real_write)
    calls["forward"] = 0
    resumed = harvest_pair(base, distilled, tiny_tokenizer, tiny_tokenizer, docs, cfg, out_dir=tmp_path / "b",
                           progress=False)
    done_batches = whole.shards[1]["batches"][1]
    n_batches = whole.shards[-1]["batches"][1]
    assert calls["forward"] == n_batches - done_batches  # restarted after the last complete shard
    assert _files_sha(whole.path) == _files_sha(resumed.path)
    assert _manifest_without_run(whole.path) == _manifest_without_run(resumed.path)
    assert not (tmp_path / "b.partial").exists()


def test_outlier_positions_are_excluded_and_recorded(tiny_pair, tiny_tokenizer, tmp_path):
    base, distilled = tiny_pair
    docs = make_docs(tiny_tokenizer, 10)
    sink = tiny_tokenizer(" apples")["input_ids"][0]
    loud = copy.deepcopy(distilled)
    with torch.no_grad():  # an "attention sink": one token whose residual norm is ~1000x the others
        loud.model.embed_tokens.weight[sink] *= 1000
    store = harvest_pair(base, loud, tiny_tokenizer, tiny_tokenizer, docs, _cfg(outlier_norm_multiple=10.0),
                         out_dir=tmp_path / "s", progress=False)
    n_sink = sum(int((np.asarray(d.input_ids[1:]) == sink).sum()) for d in docs)
    ex = store.manifest["exclusions"]
    assert n_sink > 0 and ex["n_dropped_outlier"] == n_sink
    assert sink not in set(store.meta["token_id"].tolist())
    assert {o["token"] for o in ex["outliers"]} == {" apples"} and len(ex["outliers"]) == n_sink
    assert ex["outlier_threshold"][1] == pytest.approx(10 * ex["median_norm"][1])
    assert store.n_tokens == sum(len(d.input_ids) - 1 for d in docs) - n_sink


def test_tokenizer_pairing(tiny_pair, tiny_tokenizer, tmp_path):
    base, distilled = tiny_pair
    docs = make_docs(tiny_tokenizer, 6)
    other = copy.deepcopy(tiny_tokenizer)
    other.add_tokens(["apples"])  # one more merge-like entry: " apples" now encodes differently
    with pytest.raises(ValueError, match=r"token pairing failed.*document 0.*Ann has 3 apples.*Base ids"):
        harvest_pair(base, distilled, tiny_tokenizer, other, docs, _cfg(), out_dir=tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.partial").exists()
    templated = copy.deepcopy(tiny_tokenizer)
    templated.chat_template = "{% for m in messages %}<think>{{ m['content'] }}{% endfor %}"
    store = harvest_pair(base, distilled, tiny_tokenizer, templated, docs, _cfg(), out_dir=tmp_path / "s",
                         progress=False)
    pairing = store.manifest["pairing"]
    assert pairing["chat_template"]["differs"] and pairing["n_documents_checked"] == 6
    assert not pairing["same_tokenizer_object"] and pairing["ids_identical"]
    assert tiny_tokenizer.padding_side == templated.padding_side == "right"  # nnsight got copies


def test_bad_inputs_raise_clear_errors(tiny_pair, tiny_tokenizer, tmp_path):
    from transformers import Qwen2Config, Qwen2ForCausalLM
    base, distilled = tiny_pair
    docs = make_docs(tiny_tokenizer, 4)
    run = lambda b=base, d=distilled, ds=docs, cfg=_cfg(): harvest_pair(  # noqa: E731
        b, d, tiny_tokenizer, tiny_tokenizer, ds, cfg, out_dir=tmp_path / "s", progress=False)
    for layer in (0, 5):
        with pytest.raises(ValueError, match=f"layer {layer} is out of range.*n_layers = 4"):
            run(cfg=_cfg(layer=layer))
    with pytest.raises(ValueError, match="empty corpus"):
        run(ds=[])
    with pytest.raises(TypeError, match="one string"):
        run(ds="Wait, 3 + 4 = 7.")
    with pytest.raises(TypeError, match="generator"):
        run(ds=(d for d in docs))
    with pytest.raises(ValueError, match="layer must be an integer"):
        run(cfg=_cfg(layer=True))
    with pytest.raises(ValueError, match="empty corpus"):
        run(ds=["", ""])
    with pytest.raises(ValueError, match="3 labels"):
        run(ds=[{"text": "x", "input_ids": [5, 6], "labels": [0, 1, 2]}])
    with pytest.raises(ValueError, match="outside the base model's vocabulary"):
        run(ds=[{"text": "x", "input_ids": [5, 10_000]}])
    for bad in ({"batch_size": 0}, {"dtype": "int8"}, {"heldout_fraction": 1.0}, {"outlier_norm_multiple": 0.5}):
        with pytest.raises(ValueError):
            run(cfg=_cfg(**bad))
    narrow = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tiny_tokenizer), hidden_size=16, intermediate_size=32,
                                          num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=1))
    with pytest.raises(ValueError, match="d_model 32 vs 16"):
        run(d=narrow)
    broken = copy.deepcopy(distilled)
    with torch.no_grad():
        broken.model.embed_tokens.weight[docs[2].input_ids[3]] = float("nan")
    with pytest.raises(ValueError, match="non-finite.*position"):
        run(d=broken)
    assert not (tmp_path / "s").exists()  # nothing finished was written


def test_compute_dtype_rule_and_record(tiny_pair, tiny_tokenizer, tmp_path):
    """bf16 autocast only where it pays (each outcome of the rule), the choice recorded in the manifest, and a
    bf16 harvest within the stated tolerance of the float32 one."""
    assert H.bf16_pays(1.0, 0.5, 0.004)                     # faster and accurate
    assert not H.bf16_pays(1.0, 0.9, 0.004)                 # not fast enough to pay
    assert not H.bf16_pays(1.0, 0.3, 0.05)                  # fast but too far from float32
    with pytest.raises(ValueError, match="compute_dtype"):
        HarvestConfig(compute_dtype="float16").validate()
    base, distilled = tiny_pair
    docs = make_docs(tiny_tokenizer)
    stores = {dt: harvest_pair(base, distilled, tiny_tokenizer, tiny_tokenizer, docs,
                               HarvestConfig(layer=2, batch_size=4, compute_dtype=dt), out_dir=tmp_path / dt,
                               progress=False) for dt in ("float32", "bfloat16", "auto")}
    plain = stores["float32"].manifest["compute"]
    assert (plain["dtype"], plain["chosen_by"], plain["weights"]["dtype"]) == ("float32", "config", ["float32"])
    assert plain["weights"]["cpu_probe"]["cpu"]            # the CPU and its bf16 probe, whatever the choice
    explicit = stores["bfloat16"].manifest["compute"]
    assert explicit["dtype"] == "bfloat16" and explicit["chosen_by"] == "config"
    auto = stores["auto"].manifest["compute"]
    assert auto["chosen_by"] == "auto"
    if auto["weights"]["cpu_probe"]["bf16"]:                # bf16 may pay here: timed and measured
        assert auto["tolerance"] == H.BF16_TOLERANCE
        assert auto["dtype"] == ("bfloat16" if H.bf16_pays(auto["float32_s"], auto["bfloat16_s"],
                                                           auto["relative_error"]) else "float32")
    else:                                                    # emulated bf16: float32 without a slow trial
        assert auto["dtype"] == "float32" and "float32_s" not in auto and "probe" in auto["why"]
    rows = np.arange(stores["float32"].n_tokens)
    a, b = stores["float32"].acts(rows), stores["bfloat16"].acts(rows)
    assert 0 < np.linalg.norm(b - a) / np.linalg.norm(a) <= H.BF16_TOLERANCE      # autocast really ran
    assert explicit["relative_error"] == pytest.approx(np.linalg.norm(b - a) / np.linalg.norm(a), rel=0.5)


@pytest.mark.parametrize("native", [True, False], ids=["bf16-native", "bf16-emulated"])
def test_auto_compute_follows_the_cpu_probe(native, tiny_pair, tiny_tokenizer, tmp_path, monkeypatch):
    """Both answers of the probe, on any CPU: "auto" skips the bf16 trial where bf16 is emulated."""
    from thinkdiff import precision

    monkeypatch.setattr(precision, "cpu_bf16_probe", lambda: {"bf16": native, "why": f"test: native={native}"})
    base, distilled = tiny_pair
    store = harvest_pair(base, distilled, tiny_tokenizer, tiny_tokenizer, make_docs(tiny_tokenizer),
                         HarvestConfig(layer=2, batch_size=4, compute_dtype="auto"), out_dir=tmp_path / "s",
                         progress=False)
    got = store.manifest["compute"]
    assert got["weights"]["cpu_probe"]["bf16"] is native
    assert ("float32_s" in got) is native                   # timed only where bf16 may pay
    if not native:
        assert got["dtype"] == "float32" and "native=False" in got["why"]


def test_one_problem_computation_never_sits_on_both_sides_of_the_split():
    """The organism's harvest draws training problems with replacement, so one computation comes back in several
    documents; the split follows the computation (``Document.group``), not each document's tokens."""
    from thinkdiff import organism

    tok = organism.get_tokenizer()
    docs = organism.harvest_documents(tok, n_docs=1500, teacher_fraction=0.5, seed=1)
    cfg = HarvestConfig(heldout_fraction=0.1)
    prepared = H.prepare_documents(docs, tok, cfg)
    sides, by_tokens = {}, {}
    for d in prepared:
        if d.group:
            sides.setdefault(d.group, set()).add(H._is_heldout(d, cfg))
            by_tokens.setdefault(d.group, set()).add(H._is_heldout(H._Doc(d.ids, d.labels, d.marker, d.text, d.kind,
                                                                          d.n_truncated), cfg))
    repeated = [g for g, docs_of in sides.items() if sum(x.group == g for x in prepared) > 1]
    assert len(repeated) > 20                                   # computations do come back
    assert all(len(s) == 1 for s in sides.values())             # each on one side only
    assert any(len(s) == 2 for s in by_tokens.values())         # which splitting by tokens did not ensure
    held = [d for d in prepared if H._is_heldout(d, cfg)]
    assert 0.05 < len(held) / len(prepared) < 0.15


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "progress"])
def test_a_damaged_partial_harvest_starts_over_instead_of_finishing_a_broken_store(tiny_pair, tiny_tokenizer, tmp_path,
                                                                                   monkeypatch, capsys, damage):
    """A recorded shard with flipped bytes, cut short or deleted, or an unreadable progress.json: the partial
    harvest is set aside with a message naming the file, and the store is harvested again from the start."""
    base, distilled = tiny_pair
    docs = make_docs(tiny_tokenizer)
    cfg = _cfg()
    whole = harvest_pair(base, distilled, tiny_tokenizer, tiny_tokenizer, docs, cfg, out_dir=tmp_path / "a",
                         progress=False)
    real_write = StoreWriter.write_shard
    calls = {"shards": 0}

    def crashing_write(self, *a, **k):
        if calls["shards"] == 2:
            raise KeyboardInterrupt("killed")
        calls["shards"] += 1
        return real_write(self, *a, **k)

    monkeypatch.setattr(StoreWriter, "write_shard", crashing_write)
    with pytest.raises(KeyboardInterrupt):
        harvest_pair(base, distilled, tiny_tokenizer, tiny_tokenizer, docs, cfg, out_dir=tmp_path / "b", progress=False)
    monkeypatch.setattr(StoreWriter, "write_shard", real_write)
    part = tmp_path / "b.partial"
    shard = part / "acts_00001.npy"
    if damage == "flip":
        data = bytearray(shard.read_bytes())
        data[-3] ^= 0xFF
        shard.write_bytes(bytes(data))
    elif damage == "truncate":
        shard.write_bytes(shard.read_bytes()[:-40])
    elif damage == "delete":
        shard.unlink()
    else:
        (part / "progress.json").write_text('{"format": "thinkdiff-activation-store", "shar')
    resumed = harvest_pair(base, distilled, tiny_tokenizer, tiny_tokenizer, docs, cfg, out_dir=tmp_path / "b",
                           progress=False)
    out = capsys.readouterr().out
    assert "the interrupted harvest is damaged; moved it to" in out
    assert ("acts_00001.npy" in out) if damage != "progress" else ("progress.json" in out)
    assert _files_sha(whole.path) == _files_sha(resumed.path)
    resumed.verify()
    assert len(list(tmp_path.glob("b.partial.broken-*"))) == 1


def test_a_shard_relabelled_in_the_manifest_is_refused(tiny_pair, tiny_tokenizer, tmp_path):
    base, distilled = tiny_pair
    store = harvest_pair(*tiny_pair, tiny_tokenizer, tiny_tokenizer, make_docs(tiny_tokenizer), _cfg(),
                         out_dir=tmp_path / "s", progress=False)
    man_path = store.path / "manifest.json"
    man = json.loads(man_path.read_text())
    i = next(k for k, e in enumerate(man["shards"]) if e["split"] == "train")
    man["shards"][i]["split"] = "heldout"
    man_path.write_text(json.dumps(man))
    with pytest.raises(ValueError, match=f"says shard {i} is 'heldout', its rows say \\['train'\\]"):
        ActivationStore(store.path, verify=False)


@pytest.mark.parametrize("damage", ["manifest_deleted", "manifest_torn", "shard_flipped"])
def test_a_damaged_finished_store_is_moved_aside_and_harvested_again(tiny_pair, tiny_tokenizer, tmp_path, capsys,
                                                                     damage):
    base, distilled = tiny_pair
    docs, cfg = make_docs(tiny_tokenizer), _cfg()
    first = harvest_pair(base, distilled, tiny_tokenizer, tiny_tokenizer, docs, cfg, out_dir=tmp_path / "s",
                         progress=False)
    want = _files_sha(first.path)
    man = first.path / "manifest.json"
    if damage == "manifest_deleted":
        man.unlink()
    elif damage == "manifest_torn":
        man.write_text(man.read_text()[:-30])
    else:
        f = first.path / "acts_00001.npy"
        data = bytearray(f.read_bytes())
        data[-3] ^= 0xFF
        f.write_bytes(bytes(data))
    again = harvest_pair(base, distilled, tiny_tokenizer, tiny_tokenizer, docs, cfg, out_dir=tmp_path / "s",
                         progress=False)
    assert "moved the damaged store to" in capsys.readouterr().out
    assert _files_sha(again.path) == want and len(list(tmp_path.glob("s.broken-*"))) == 1
    # a folder that is not a store is never moved: the harvest refuses to write into it
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not an activation store"):
        harvest_pair(base, distilled, tiny_tokenizer, tiny_tokenizer, docs, cfg, out_dir=tmp_path / "mine",
                     progress=False)
    assert (tmp_path / "mine" / "notes.txt").exists()


def test_a_store_key_names_a_local_model_by_its_folder_not_its_location(tiny_pair, tmp_path):
    """The same weights saved in two checkouts' folders have one identity (the store is found, not rebuilt);
    other weights under the same folder name do not."""
    import transformers

    from thinkdiff.harvest import model_identity

    base, distilled = tiny_pair
    for where in ("checkout-a", "checkout-b"):
        base.save_pretrained(tmp_path / where / "base")
    a, b = (transformers.AutoModelForCausalLM.from_pretrained(tmp_path / w / "base") for w in ("checkout-a", "checkout-b"))
    assert str(tmp_path) in a.name_or_path
    assert model_identity(a) == model_identity(b) and model_identity(a)["name_or_path"] == "base"
    distilled.save_pretrained(tmp_path / "checkout-c" / "base")
    c = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "checkout-c" / "base")
    assert model_identity(c) != model_identity(a)
