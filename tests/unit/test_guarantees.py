"""What thinkdiff promises about its caches: one writer per artifact, no stale locks or leftovers, checked paths."""
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from thinkdiff import paths

REPO = Path(__file__).resolve().parents[2]


def _python(code: str, env: dict | None = None, **kw) -> subprocess.Popen:
    full_env = {**os.environ, "PYTHONPATH": str(REPO / "lib"), **(env or {})}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=full_env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


@pytest.mark.parametrize("value, expect", [("", "set but empty"), ("~/td-runs", str(Path.home() / "td-runs")),
                                           ("rel/runs", "ABS")])
def test_runs_folder_from_the_environment_is_checked(value, expect, tmp_path):
    p = _python("from thinkdiff import paths; print(paths.RUNS_DIR)", {"THINKDIFF_RUNS": value}, cwd=tmp_path)
    out, err = p.communicate(timeout=60)
    if expect == "set but empty":
        assert p.returncode != 0 and "THINKDIFF_RUNS is set but empty" in err
    elif expect == "ABS":
        assert p.returncode == 0 and out.strip() == str((tmp_path / "rel/runs").resolve())
    else:
        assert p.returncode == 0 and out.strip() == expect


def test_writer_lock_names_its_holder_and_a_killed_holder_leaves_no_stale_lock(tmp_path):
    final = tmp_path / "artifact"
    holder = _python(f"""
        import time
        from pathlib import Path
        from thinkdiff import paths
        with paths.writer_lock(Path({str(final)!r})):
            print("held", flush=True)
            time.sleep(60)
        """)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(TimeoutError, match=f"pid {holder.pid}"):
        with paths.writer_lock(final, timeout=0.3, poll=0.05):
            pass
    (tmp_path / ".tmp-artifact-dead0001").mkdir()        # what a writer killed inside atomic_dir leaves
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    t0 = time.time()
    with paths.writer_lock(final, timeout=5):
        assert time.time() - t0 < 2                       # the OS released the dead holder's lock
        assert not (tmp_path / ".tmp-artifact-dead0001").exists()
    assert not Path(str(paths.lock_path(final)) + ".holder").exists()


def test_two_processes_building_one_artifact_build_it_once(tmp_path):
    final = tmp_path / "artifact"
    code = f"""
        import time
        from pathlib import Path
        from thinkdiff import paths
        final = Path({str(final)!r})
        with paths.writer_lock(final):
            if final.exists():
                print("reused", flush=True)
            else:
                with paths.atomic_dir(final) as tmp:
                    time.sleep(1.0)
                    (tmp / "value").write_text("42")
                print("built", flush=True)
        """
    procs = [_python(code) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    assert sorted(o[0].strip().splitlines()[-1] for o in outs) == ["built", "reused"]
    assert (final / "value").read_text() == "42"
    assert not list(tmp_path.glob(".tmp-*"))


def test_failed_checkpoint_write_leaves_no_temp_file(tmp_path, monkeypatch):
    import torch

    from thinkdiff import train

    def broken(*a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4160 vs 4054")

    monkeypatch.setattr(torch, "save", broken)
    trainer = type("T", (), {"state_dict": lambda self: {}})()
    with pytest.raises(RuntimeError, match="unexpected pos"):        # plenty of space: the error as it is
        train.Trainer.save_checkpoint(trainer, tmp_path)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(paths, "LOW_DISK_BYTES", 1 << 62)            # as if the disk were full
    with pytest.raises(OSError, match=f"disk full writing {tmp_path}/checkpoint.pt; free space and rerun"):
        train.Trainer.save_checkpoint(trainer, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_while_writing_a_store_shard_is_one_plain_error(tmp_path, monkeypatch):
    import errno

    import numpy as np

    from thinkdiff import store

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "save", full)
    with pytest.raises(OSError, match=f"disk full writing {tmp_path}/acts_00000.npy; free space and rerun to resume"):
        store._save_npy(tmp_path / "acts_00000.npy", np.zeros(3))
    assert list(tmp_path.iterdir()) == []


def _saved_crosscoder(tmp_path):
    from thinkdiff.crosscoder import CrossCoder, CrossCoderConfig

    cc = CrossCoder(CrossCoderConfig(d_model=8, n_latents=16, layer=3, store_hash="0123456789ab"), seed=0)
    return cc, cc.fold([1.0, 1.0]).save_pretrained(tmp_path / "cc")


@pytest.mark.parametrize("damage, message", [
    ("flip", "does not match the sha256"), ("truncate", "does not match the sha256"),
    ("json", "not valid JSON"), ("missing_key", "do not match its config_sha256"),
    ("norm_scale", "do not match its config_sha256"), ("store_cleared", "do not match its config_sha256"),
    ("no_checksum", "has no weights_sha256"), ("no_config_checksum", "has no config_sha256"),
    ("unknown", "unknown fields"), ("no_weights", "no model.safetensors")])
def test_a_damaged_crosscoder_is_refused_naming_the_file(tmp_path, damage, message):
    import json

    from thinkdiff.crosscoder import CorruptArtifactError, CrossCoder

    _, folder = _saved_crosscoder(tmp_path)
    w, c = folder / "model.safetensors", folder / "config.json"
    if damage == "flip":
        data = bytearray(w.read_bytes())
        data[-5] ^= 0xFF
        w.write_bytes(bytes(data))
    elif damage == "truncate":
        w.write_bytes(w.read_bytes()[:100])
    elif damage == "json":
        c.write_text(c.read_text()[:-10])
    elif damage == "no_weights":
        w.unlink()
    else:
        raw = json.loads(c.read_text())
        if damage == "missing_key":
            del raw["n_latents"]
        elif damage == "norm_scale":                 # x10 on the distilled side: 77 of 128 latents moved
            raw["norm_scale"] = [1.0, 10.0]
        elif damage == "store_cleared":              # would encode any store
            raw["store_hash"], raw["layer"] = None, None
        elif damage == "no_checksum":
            del raw["weights_sha256"]
        elif damage == "no_config_checksum":
            del raw["config_sha256"]
        else:
            raw["colour"] = "blue"
        c.write_text(json.dumps(raw))
    with pytest.raises(CorruptArtifactError, match=message) as err:
        CrossCoder.from_pretrained(folder)
    assert str(folder) in str(err.value)


def test_a_damaged_cached_crosscoder_is_moved_aside_and_retrained(tmp_path):
    import torch

    from thinkdiff.train import TensorStore, TrainConfig, get_crosscoder

    store = TensorStore(torch.randn(512, 2, 8))
    cfg = TrainConfig(n_latents=16, batch_size=64, n_steps=5, checkpoint_every=0, dead_tokens=1000)
    first = get_crosscoder(store, cfg, out_root=tmp_path, progress=False)
    folder = Path(first.source)
    w = folder / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-5] ^= 0xFF
    w.write_bytes(bytes(data))
    again = get_crosscoder(store, cfg, out_root=tmp_path, progress=False)
    assert Path(again.source) == folder
    assert len(list(tmp_path.glob(f"{folder.name}.broken-*"))) == 1
    torch.testing.assert_close(again.W_dec, first.W_dec)      # retrained from the same seed: the same weights


@pytest.mark.parametrize("damage", ["norm_scale", "unknown_field", "no_weights", "other_store"])
def test_every_damaged_cached_crosscoder_is_moved_aside_and_retrained(tmp_path, damage):
    """Edited fields, unknown keys, a deleted weights file, a folder that does not fit its store: each is set
    aside and rebuilt, instead of an error on every rerun."""
    import json

    import torch

    from thinkdiff.train import TensorStore, TrainConfig, get_crosscoder

    store = TensorStore(torch.randn(512, 2, 8))
    cfg = TrainConfig(n_latents=16, batch_size=64, n_steps=5, checkpoint_every=0, dead_tokens=1000)
    first = get_crosscoder(store, cfg, out_root=tmp_path, progress=False)
    folder = Path(first.source)
    c = folder / "config.json"
    raw = json.loads(c.read_text())
    if damage == "no_weights":
        (folder / "model.safetensors").unlink()
    elif damage == "other_store":                 # a consistent folder, but trained on another store's scale
        import dataclasses

        from thinkdiff.crosscoder import CrossCoder
        other = CrossCoder.from_pretrained(folder)
        other.config = dataclasses.replace(other.config, norm_scale=[1.0, 1.0])
        other.save_pretrained(folder)
    else:
        raw.update({"norm_scale": [v * 10 for v in raw["norm_scale"]]} if damage == "norm_scale" else {"x": 1})
        c.write_text(json.dumps(raw))
    again = get_crosscoder(store, cfg, out_root=tmp_path, progress=False)
    assert Path(again.source) == folder and len(list(tmp_path.glob(f"{folder.name}.broken-*"))) == 1
    torch.testing.assert_close(again.W_dec, first.W_dec)


def test_a_crosscoder_that_did_not_learn_is_not_cached(tmp_path):
    """Training ends, but the crosscoder reconstructs worse than the mean (FVU >= 1): refused, nothing cached,
    no partial checkpoint to resume the same model from."""
    import torch

    from thinkdiff.train import DidNotLearnError, TensorStore, TrainConfig, get_crosscoder

    store = TensorStore(torch.randn(512, 2, 8))
    cfg = TrainConfig(n_latents=16, batch_size=64, n_steps=1, checkpoint_every=0, dead_tokens=1000, dec_init_norm=2.0)
    with pytest.raises(DidNotLearnError, match=r"FVU \[.*\] \(>= 1.0: no better than predicting their mean\); it "
                                               "was not cached"):
        get_crosscoder(store, cfg, out_root=tmp_path, progress=False)
    assert not [p for p in tmp_path.iterdir() if not p.name.startswith(".")]


def test_a_diverging_training_stops_naming_the_step_and_caches_nothing(tmp_path):
    import torch

    from thinkdiff.train import TensorStore, TrainConfig, get_crosscoder

    store = TensorStore(torch.randn(2048, 2, 8))
    cfg = TrainConfig(n_latents=16, batch_size=64, n_steps=200, checkpoint_every=0, dead_tokens=1000, lr=10.0)
    with pytest.raises(FloatingPointError, match=r"diverged at step \d+.*lr 10.0 is likely too high"):
        get_crosscoder(store, cfg, out_root=tmp_path, progress=False)
    assert not [p for p in tmp_path.iterdir() if not p.name.startswith(".") and not p.name.endswith(".partial")]


@pytest.mark.parametrize("edit, message", [
    ("json", "not valid JSON"), ("d_model", "its file holds"), ("dtype", "its file holds"),
    ("mean_norm", "mean_norm .* disagrees"), ("dim_mean", "disagrees with the shard statistics"),
    ("key", "does not hash to its key_hash"), ("drop_norm", "lacks")])
def test_an_edited_or_damaged_store_manifest_is_refused_on_open(tmp_path, edit, message):
    import json

    import numpy as np

    from unit.test_store import make_store
    from thinkdiff.store import ActivationStore

    folder = make_store(tmp_path / "s", [40, 40]).path
    man_path = folder / "manifest.json"
    man = json.loads(man_path.read_text())
    if edit == "json":
        man_path.write_text(man_path.read_text()[:-20])
    else:
        if edit == "d_model":
            man["d_model"] += 1
        elif edit == "dtype":
            man["dtype"] = "float16"
        elif edit == "mean_norm":
            man["norm"]["mean_norm"] = [v * 1.5 for v in man["norm"]["mean_norm"]]
        elif edit == "dim_mean":
            np.save(folder / "dim_mean.npy", np.load(folder / "dim_mean.npy") + 0.5)
        elif edit == "key":
            man["key"]["layer"] = 99
        elif edit == "drop_norm":
            del man["norm"]
        man_path.write_text(json.dumps(man))
    with pytest.raises(ValueError, match=message) as err:
        ActivationStore(folder, verify=False)
    assert str(folder) in str(err.value)


def test_a_crosscoder_is_refused_on_a_store_it_was_not_trained_on(tmp_path):
    from unit.test_store import make_store
    from thinkdiff import codes, label
    from thinkdiff.crosscoder import CrossCoder, CrossCoderConfig

    store = make_store(tmp_path / "s", [40, 40])
    cfg = CrossCoderConfig(d_model=store.d_model, n_latents=16, n_models=store.n_models,
                           store_hash=store.manifest["key_hash"])
    codes.encode_store(CrossCoder(cfg, seed=0), store)              # its own store: fine
    other = CrossCoder(CrossCoderConfig(**{**cfg.__dict__, "store_hash": "0123456789ab"}), seed=0)
    for call in (lambda: codes.encode_store(other, store), lambda: label.latent_scaling(other, store, [0, 1])):
        with pytest.raises(ValueError, match=f"{tmp_path}/s: store hash .* vs 0123456789ab"):
            call()


def test_a_writer_that_loses_the_rename_race_says_so_and_leaves_nothing(tmp_path):
    """Without the writer lock two writers can both start; the one that finishes second gets FileExistsError (not
    an OSError about a non-empty folder), its temporary folder is removed and the first one's artifact stays."""
    final = tmp_path / "artifact"
    with pytest.raises(FileExistsError, match="another process"):
        with paths.atomic_dir(final) as tmp:
            (tmp / "value").write_text("mine")
            final.mkdir()
            (final / "value").write_text("theirs")        # the other writer renamed its folder first
    assert (final / "value").read_text() == "theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["artifact"]


def test_a_damaged_training_checkpoint_restarts_training_instead_of_resuming_other_weights(tmp_path, capsys):
    """Flipped bytes in checkpoint.pt: not loaded, set aside with a message, training starts over and ends with
    the weights of an uninterrupted run; a torn last line of the training log does not stop a resume."""
    import torch

    from thinkdiff.train import TensorStore, TrainConfig, train

    store = TensorStore(torch.randn(1024, 2, 8))
    cfg = TrainConfig(n_latents=16, batch_size=64, n_steps=12, checkpoint_every=4, dead_tokens=1000)
    whole = train(store, cfg, progress=False).crosscoder
    train(store, cfg, ckpt_dir=tmp_path, stop_after=8, progress=False)
    ck = tmp_path / "checkpoint.pt"
    data = bytearray(ck.read_bytes())
    data[len(data) // 2] ^= 0xFF
    ck.write_bytes(bytes(data))
    log = tmp_path / "train_log.jsonl"
    log.write_text(log.read_text() + '{"step": 9, "lo')                  # a kill mid-append
    again = train(store, cfg, ckpt_dir=tmp_path, progress=False).crosscoder
    out = capsys.readouterr().out
    assert "the checkpoint is damaged; moved it to" in out and "training from the start" in out
    assert len(list(tmp_path.glob("checkpoint.pt.broken-*"))) == 1
    torch.testing.assert_close(again.W_dec, whole.W_dec)
    # an intact checkpoint with a torn log line resumes
    train(store, cfg.replace(n_steps=16), ckpt_dir=tmp_path / "b", stop_after=8, progress=False)
    logb = tmp_path / "b" / "train_log.jsonl"
    logb.write_text(logb.read_text() + '{"step": 9, "lo')
    res = train(store, cfg.replace(n_steps=16), ckpt_dir=tmp_path / "b", progress=False)
    assert [r["step"] for r in res.log] == list(range(1, 17))


def test_unclear_errors_name_their_file_and_leave_nothing_behind(tmp_path, monkeypatch):
    """A damaged .npy header names the shard; a full disk at the crosscoder's final write is one plain error and
    caches nothing; stale checkpoint temp files of a killed writer are removed when training starts."""
    import errno

    import torch

    from unit.test_store import make_store
    from thinkdiff import train as T
    from thinkdiff.store import ActivationStore

    folder = make_store(tmp_path / "s", [40, 40]).path
    f = folder / "stats_00001.npy"
    data = f.read_bytes()
    f.write_bytes(b"\x93NUMPY\x01\x00\xff\xffnot a head" + data[20:])         # same size, unreadable header
    with pytest.raises(ValueError, match=r"stats_00001.npy cannot be read .*delete .* and harvest again"):
        ActivationStore(folder, verify=False)

    store = T.TensorStore(torch.randn(512, 2, 8))
    cfg = T.TrainConfig(n_latents=16, batch_size=64, n_steps=5, checkpoint_every=0, dead_tokens=1000)

    def no_space(self, folder):
        raise RuntimeError("SafetensorError: Error while serializing: IoError(No space left on device)")

    monkeypatch.setattr(T.CrossCoder, "save_pretrained", no_space)
    monkeypatch.setattr(paths.shutil, "disk_usage", lambda p: type("U", (), {"free": 1024})())
    with pytest.raises(OSError, match="disk full writing .*model.safetensors") as err:
        T.get_crosscoder(store, cfg, out_root=tmp_path / "cc", progress=False)
    assert err.value.errno == errno.ENOSPC
    assert not [p for p in (tmp_path / "cc").iterdir() if not p.name.startswith(".") and not p.name.endswith(".partial")]
    monkeypatch.undo()

    work = tmp_path / "ck"
    work.mkdir()
    (work / ".checkpoint.pt.dead0001.tmp").write_bytes(b"half a checkpoint")
    T.train(store, cfg.replace(checkpoint_every=5), ckpt_dir=work, progress=False)
    assert not list(work.glob(".checkpoint.pt.*.tmp")) and (work / "checkpoint.pt").exists()


def test_an_empty_harvest_leaves_no_partial_folder(tiny_pair, tiny_tokenizer, tmp_path):
    """Documents of one token each: the first position is dropped, nothing is left to store: a clear error and
    no '<out>.partial' folder."""
    from thinkdiff.harvest import HarvestConfig, harvest_pair

    docs = [{"text": "x", "input_ids": [5]} for _ in range(4)]
    with pytest.raises(ValueError):
        harvest_pair(*tiny_pair, tiny_tokenizer, tiny_tokenizer, docs, HarvestConfig(layer=2), out_dir=tmp_path / "e",
                     progress=False)
    assert not (tmp_path / "e.partial").exists() and not (tmp_path / "e").exists()
