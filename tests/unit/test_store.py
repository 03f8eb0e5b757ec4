"""The activation store and its loader, on synthetic stores (no models): exactly-once, pairing, resume
of the loader, bounded windows, statistics, integrity errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from thinkdiff.store import (META_DTYPE, ActivationStore, RunningStats, ServeCounter, StoreWriter, from_storage,
                             to_storage)

D = 6


def _rows(start: int, n: int) -> np.ndarray:
    """Rows that encode their own global id: model m's row is id + 0.25 m in dim 0, noise elsewhere."""
    rng = np.random.default_rng(start)
    x = rng.normal(size=(n, 2, D)).astype(np.float32)
    ids = np.arange(start, start + n, dtype=np.float32)
    x[:, 0, 0], x[:, 1, 0] = ids, ids + 0.25
    return x


def _meta(start: int, n: int, split: int) -> np.ndarray:
    m = np.zeros(n, META_DTYPE)
    m["token_id"], m["doc_id"], m["pos"] = np.arange(start, start + n) % 97, np.arange(start, start + n) // 10, np.arange(n)
    m["label"], m["marker"], m["split"] = -1, False, split
    return m


def make_store(folder, sizes, splits=None, dtype="float32", key=None):
    """A store with shards of the given sizes (split per shard, default all train)."""
    w = StoreWriter(folder, key or {"dtype": dtype, "test": True})
    start = 0
    for i, n in enumerate(sizes):
        split = (splits or ["train"] * len(sizes))[i]
        w.write_shard(to_storage(_rows(start, n), dtype), _meta(start, n, int(split == "heldout")), split)
        start += n
    return ActivationStore(w.finalize({"note": "synthetic"}))


def _epoch(store, **kw):
    loader = store.loader(with_indices=True, **kw)
    batches = list(loader)
    return loader, batches


def test_exactly_once_paired_and_shuffled_random_configs(tmp_path):
    """Property test over random shard/buffer/chunk/batch sizes: every row exactly once per epoch, the two
    models' rows of a token stay together, epochs differ in order, batches have the promised sizes."""
    rng = np.random.default_rng(123)
    for trial in range(12):
        sizes = rng.integers(1, 120, size=rng.integers(1, 6)).tolist()
        store = make_store(tmp_path / f"s{trial}", sizes)
        n = sum(sizes)
        batch, buffer = int(rng.integers(1, 40)), int(rng.integers(1, 150))
        chunk = int(rng.integers(1, 30)) if trial % 2 else None
        orders = []
        for epoch in (0, 1):
            loader, batches = _epoch(store, batch_size=batch, buffer_tokens=buffer, seed=trial, epoch=epoch,
                                     chunk_tokens=chunk)
            idx = np.concatenate([i for _, i in batches])
            assert sorted(idx.tolist()) == list(range(n)), (trial, sizes, batch, buffer)
            assert [len(i) for _, i in batches] == [batch] * (n // batch) + ([n % batch] if n % batch else [])
            assert len(batches) == len(loader)
            for x, i in batches:
                assert x.dtype == torch.float32 and x.shape == (len(i), 2, D)
                assert torch.equal(x[:, 0, 0], torch.from_numpy(i).float())          # row is the one named
                assert torch.equal(x[:, 1, 0], torch.from_numpy(i).float() + 0.25)   # and its pair matches
            orders.append(idx)
        if n >= 8:
            assert not np.array_equal(orders[0], orders[1]), "two epochs gave the same order"


def test_disk_bytes_is_what_the_shard_files_take(tmp_path):
    store = make_store(tmp_path / "s", [30, 12], splits=["train", "heldout"])
    on_disk = sum(f.stat().st_size for f in store.path.iterdir() if f.name.startswith(("acts_", "meta_", "stats_")))
    assert store.disk_bytes == on_disk > 30 * 2 * D * 4


def test_drop_last_and_determinism(tmp_path):
    store = make_store(tmp_path / "s", [37, 50, 13])
    a = [i for _, i in _epoch(store, batch_size=16, buffer_tokens=40, seed=3, drop_last=True)[1]]
    assert [len(i) for i in a] == [16] * 6 and len(np.unique(np.concatenate(a))) == 96
    b = [i for _, i in _epoch(store, batch_size=16, buffer_tokens=40, seed=3, drop_last=True)[1]]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    # the order does not depend on the batch size, only on (seed, epoch, buffer, chunk)
    c = np.concatenate([i for _, i in _epoch(store, batch_size=5, buffer_tokens=40, seed=3)[1]])
    assert np.array_equal(np.concatenate(a), c[:96])
    d = np.concatenate([i for _, i in _epoch(store, batch_size=16, buffer_tokens=40, seed=4)[1]])
    assert not np.array_equal(d, c)
    # rows are shuffled inside a window too: with one chunk per window a batch is still not a contiguous run
    one = [i for _, i in _epoch(store, batch_size=16, buffer_tokens=40, chunk_tokens=40, seed=3)[1]]
    assert not any(np.array_equal(np.sort(i), np.arange(i.min(), i.min() + len(i))) for i in one[:4])


def test_start_batch_resumes_exactly_without_reading_skipped_windows(tmp_path):
    store = make_store(tmp_path / "s", [300, 200, 123])
    kw = dict(batch_size=32, buffer_tokens=64, seed=7, epoch=2)
    full_loader, full = _epoch(store, **kw)
    for k in (0, 1, 5, 9, len(full)):
        loader, rest = _epoch(store, start_batch=k, **kw)
        assert len(rest) == len(full) - k == len(loader)
        assert all(torch.equal(x, y) and np.array_equal(i, j) for (x, i), (y, j) in zip(rest, full[k:]))
        # windows actually read: only those the remaining batches touch
        first_window = k * 32 // 64
        assert loader.windows_read <= full_loader.windows_read - first_window
    with pytest.raises(ValueError, match="past the end"):
        store.loader(batch_size=32, buffer_tokens=64, seed=7, start_batch=len(full) + 1)


def test_window_is_the_ram_bound(tmp_path):
    """Every window the loader materialises has at most buffer_tokens rows, whatever the store size."""
    store = make_store(tmp_path / "s", [500, 500])
    loader = store.loader(batch_size=8, buffer_tokens=50, seed=0)
    sizes = []
    orig = loader._window
    loader._window = lambda k: (lambda r: (sizes.append(len(r[1])), r)[1])(orig(k))
    assert sum(len(x) for x in loader) == 1000
    assert max(sizes) <= 50 and len(sizes) == 20


def test_distinct_tokens_served_keeps_growing(tmp_path):
    """The guard against the paper's stale-buffer bug: each batch brings new (doc, pos) tokens until the
    split is covered, and a counter shared across epochs reaches exactly the split size."""
    store = make_store(tmp_path / "s", [100, 100, 56])
    counter = ServeCounter(store.n_tokens)
    history = []
    for epoch in (0, 1):
        for _ in store.loader(batch_size=16, buffer_tokens=64, seed=0, epoch=epoch, counter=counter):
            history.append(counter.distinct)
    first = history[:16]
    assert all(b > a for a, b in zip(first, first[1:])), "distinct-token count stalled in the first epoch"
    assert counter.distinct == 256 and counter.served == 512 and history[-1] == 256


def test_splits_partition_the_store(tmp_path):
    store = make_store(tmp_path / "s", [40, 30, 20, 10], splits=["train", "train", "heldout", "heldout"])
    tr = np.concatenate([i for _, i in _epoch(store, batch_size=9, buffer_tokens=25, seed=1, split="train")[1]])
    he = np.concatenate([i for _, i in _epoch(store, batch_size=9, buffer_tokens=25, seed=1, split="heldout")[1]])
    al = np.concatenate([i for _, i in _epoch(store, batch_size=9, buffer_tokens=25, seed=1, split="all")[1]])
    assert sorted(tr) == list(range(70)) and sorted(he) == list(range(70, 100)) and sorted(al) == list(range(100))
    assert np.array_equal(store.split_indices("heldout"), np.arange(70, 100))
    assert (store.meta["split"][70:] == 1).all() and (store.meta["split"][:70] == 0).all()
    assert store.manifest["n_tokens_split"] == {"train": 70, "heldout": 30}
    with pytest.raises(ValueError, match="split must be"):
        store.loader(batch_size=4, buffer_tokens=8, seed=0, split="test")
    only_train = make_store(tmp_path / "t", [10])
    with pytest.raises(ValueError, match="no 'heldout' tokens"):
        only_train.loader(batch_size=4, buffer_tokens=8, seed=0, split="heldout")


def test_random_access_chunks_and_meta(tmp_path):
    store = make_store(tmp_path / "s", [7, 11, 5])
    idx = np.array([22, 0, 7, 6, 18, 7])
    got = store.acts(idx)
    assert got.shape == (6, 2, D) and np.array_equal(got[:, 0, 0], idx.astype(np.float32))
    assert np.array_equal(got[:, 1, 0], idx + 0.25)
    chunks = list(store.chunks(chunk_tokens=4))
    assert np.array_equal(np.concatenate([c.index for c in chunks]), np.arange(23))
    assert np.array_equal(np.concatenate([c.acts for c in chunks])[:, 0, 0], np.arange(23, dtype=np.float32))
    assert np.array_equal(np.concatenate([c.meta["token_id"] for c in chunks]), store.meta["token_id"])
    assert set(store.meta) == set(META_DTYPE.names) and len(store.meta["pos"]) == 23
    with pytest.raises(IndexError):
        store.acts([23])


def test_statistics_match_the_data(tmp_path):
    store = make_store(tmp_path / "s", [50, 70, 30])
    x = store.acts(np.arange(store.n_tokens)).astype(np.float64)
    norms = np.linalg.norm(x, axis=2)
    assert np.allclose(store.mean_norm, norms.mean(0))
    assert np.allclose(store.norm_scale, np.sqrt(D) / norms.mean(0))
    assert np.allclose(store.dim_mean, x.mean(0)) and np.allclose(store.dim_var, x.var(0))
    assert np.allclose(store.manifest["norm"]["rms_norm"], np.sqrt((norms ** 2).mean(0)))
    # Chan merge of uneven blocks equals the one-shot statistics
    rng = np.random.default_rng(0)
    y = rng.normal(3, 2, size=(101, 2, 5))
    merged = RunningStats(0, 0)
    for a, b in ((0, 1), (1, 40), (40, 41), (41, 101)):
        merged.merge(RunningStats.of(y[a:b]))
    whole = RunningStats.of(y)
    assert merged.count == 101 and np.allclose(merged.mean, whole.mean) and np.allclose(merged.var, y.var(0))
    assert np.allclose(RunningStats.unpack(merged.pack()).m2, merged.m2)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_low_precision_storage(tmp_path, dtype):
    x = np.random.default_rng(0).normal(size=(9, 2, D)).astype(np.float32)
    back = from_storage(to_storage(x, dtype), dtype)
    assert back.dtype == np.float32 and np.allclose(back, x, rtol=1e-2, atol=1e-2)
    store = make_store(tmp_path / dtype, [20, 9], dtype=dtype)
    got = next(iter(store.loader(batch_size=29, buffer_tokens=29, seed=0, with_indices=True)))
    assert torch.allclose(got[0][:, 0, 0], torch.from_numpy(got[1]).float(), rtol=1e-2)


def test_float16_overflow_is_a_clear_error():
    with pytest.raises(ValueError, match="overflow float16"):
        to_storage(np.full((1, 2, 3), 1e6, np.float32), "float16")


def test_corrupted_missing_and_truncated_shards(tmp_path):
    store = make_store(tmp_path / "s", [20, 20])
    f = store.path / store.shards[1]["acts"]["file"]
    raw = bytearray(f.read_bytes())
    raw[-3] ^= 0xFF
    f.write_bytes(bytes(raw))
    ActivationStore(store.path, verify=False)  # same size: only the checksum can tell
    with pytest.raises(ValueError, match="checksum mismatch.*shard 1"):
        ActivationStore(store.path)
    f.write_bytes(bytes(raw[:-8]))
    with pytest.raises(ValueError, match="shard 1 .*bytes"):
        ActivationStore(store.path, verify=False)
    f.unlink()
    with pytest.raises(FileNotFoundError, match="shard 1 .*missing"):
        ActivationStore(store.path, verify=False)
    with pytest.raises(FileNotFoundError, match="no activation store"):
        ActivationStore(tmp_path / "nowhere")


def test_writer_resumes_same_key_and_refuses_other_key(tmp_path):
    final = tmp_path / "s"
    w = StoreWriter(final, {"dtype": "float32", "layer": 2})
    w.write_shard(_rows(0, 5), _meta(0, 5, 0), "train", state={"next_batch": 1})
    (w.partial / "acts_00001.npy.tmp").write_bytes(b"half a shard")  # an interrupted write
    with pytest.raises(ValueError, match="different configuration.*layer"):
        StoreWriter(final, {"dtype": "float32", "layer": 3})
    w2 = StoreWriter(final, {"dtype": "float32", "layer": 2})
    assert w2.resumed and w2.state["next_batch"] == 1 and len(w2.shards) == 1
    w2.write_shard(_rows(5, 4), _meta(5, 4, 0), "train")
    store = ActivationStore(w2.finalize({}))
    assert store.n_tokens == 9 and not list(store.path.glob("*.tmp")) and not (store.path / "progress.json").exists()
    with pytest.raises(FileExistsError, match="already a finished store"):
        StoreWriter(final, {"dtype": "float32", "layer": 2})
    zero = _rows(9, 3)
    zero[1, 1] = 0
    with pytest.raises(ValueError, match="all-zero activation row"):
        StoreWriter(tmp_path / "z", {"dtype": "float32"}).write_shard(zero, _meta(9, 3, 0), "train")
    with pytest.raises(ValueError, match="no tokens"):
        StoreWriter(tmp_path / "empty", {"dtype": "float32"}).finalize({})
    man = json.loads((store.path / "manifest.json").read_text())
    assert [e["n_tokens"] for e in man["shards"]] == [5, 4] and all(len(e["acts"]["sha256"]) == 64 for e in man["shards"])


def test_bad_loader_arguments(tmp_path):
    store = make_store(tmp_path / "s", [10])
    for kw in ({"batch_size": 0}, {"buffer_tokens": 0}, {"start_batch": -1}):
        with pytest.raises(ValueError):
            store.loader(**{"batch_size": 4, "buffer_tokens": 8, "seed": 0, **kw})
