"""Crosscoder model: shapes, folding round trip, BatchTopK selection and sparse kernels, save/load, metrics."""
from __future__ import annotations


import pytest
import torch

from thinkdiff import metrics
from thinkdiff.hooks import resid_hook
from thinkdiff.crosscoder import CrossCoder, CrossCoderConfig
from thinkdiff.kernels import batch_topk_indices
from thinkdiff.schemes import batchtopk, relu_l1
from thinkdiff.train import TensorStore, TrainConfig, Trainer


def _cc(activation="relu", k=None, F=48, d=8, seed=0):
    cc = CrossCoder(CrossCoderConfig(d_model=d, n_latents=F, activation=activation, k=k, layer=2), seed=seed)
    with torch.no_grad():        # move off the symmetric init so the test exercises real weights
        g = torch.Generator().manual_seed(seed + 1)
        for p in cc.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return cc


def test_init_follows_paper():
    cc = CrossCoder(CrossCoderConfig(d_model=8, n_latents=32))
    assert torch.allclose(cc.W_dec.norm(dim=-1), torch.full((32, 2), 0.08))
    assert torch.equal(cc.W_enc, cc.W_dec.permute(1, 2, 0))
    assert not cc.b_enc.any() and not cc.b_dec.any()


@pytest.mark.parametrize("bad", [dict(n_latents=0), dict(d_model=-1), dict(activation="gelu"),
                                 dict(activation="batchtopk", k=0), dict(activation="batchtopk", k=33),
                                 dict(activation="batchtopk", k=None)])
def test_bad_config_is_refused(bad):
    with pytest.raises(ValueError):
        CrossCoder(CrossCoderConfig(**{"d_model": 8, "n_latents": 32, **bad}))


@pytest.mark.parametrize("activation,k", [("relu", None), ("batchtopk", 4)])
def test_fold_round_trip(activation, k):
    cc = _cc(activation, k).eval()
    cc.threshold.fill_(0.05)
    scale = torch.tensor([0.3, 2.5])
    raw = torch.randn(64, 2, 8) * torch.tensor([3.0, 0.4])[None, :, None]
    folded = cc.fold(scale.tolist())
    f_ref = cc.encode(raw * scale[None, :, None])
    f_fold = folded.encode(raw)
    assert torch.allclose(f_fold, f_ref, atol=1e-5)
    assert (f_ref > 0).sum() > 0
    # reconstructions map back to raw units exactly (up to fp32 rounding)
    assert torch.allclose(folded.decode(f_ref), cc.decode(f_ref) / scale[None, :, None], atol=1e-5)
    assert torch.allclose(folded.decoder_norms("train"), cc.decoder_norms("train"), atol=1e-6)
    back = folded.unfold()
    for name, p in cc.state_dict().items():
        assert torch.allclose(back.state_dict()[name], p, atol=1e-6), name
    with pytest.raises(ValueError, match="already folded"):
        folded.fold([1.0, 1.0])


def test_batch_topk_selection_is_exact():
    torch.manual_seed(0)
    for B, F, n in [(16, 40, 32), (8, 100, 300), (4, 10, 30)]:
        s = torch.relu(torch.randn(B, F))
        s[0] = torch.rand(F) + 5            # one token wants every latent: the candidate search must widen
        want = s.flatten().topk(min(n, int((s > 0).sum()))).indices.sort().values
        for guess in (None, 0.01, 1.0, 50.0):    # a running-threshold guess may be low, fair or far too high
            assert torch.equal(batch_topk_indices(s, n, cut_guess=guess), want), guess


def test_batchtopk_encode_keeps_k_per_token_on_average():
    cc = _cc("batchtopk", k=5).train()
    f = cc.encode(torch.randn(32, 2, 8))
    assert (f > 0).sum() == 5 * 32
    cc.eval()
    cc.threshold.fill_(1e9)
    assert (cc.encode(torch.randn(32, 2, 8)) > 0).sum() == 0      # eval mode uses the fixed threshold


def test_sparse_training_path_matches_dense_autograd():
    """The BatchTopK trainer's sparse kernels give the loss and gradients of the plain dense computation."""
    torch.manual_seed(0)
    acts = torch.randn(200, 2, 8)
    tr = Trainer(TensorStore(acts), TrainConfig(activation="batchtopk", n_latents=48, k=4, n_steps=5, dead_tokens=1))
    with torch.no_grad():
        for p in tr.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    tr.since_fired[:12] = 5                     # 12 dead latents: the aux-k loss is active
    x = acts[:32] * tr.scale[None, :, None]
    loss, *_ = tr.loss(x, 0)
    loss.backward()
    sparse_grads = {n: p.grad.clone() for n, p in tr.model.named_parameters()}

    m = tr.model
    m.zero_grad()
    ref = batchtopk.reference_loss(m, x, k=4, dead=torch.arange(12), k_aux=tr.k_aux, auxk_alpha=tr.cfg.auxk_alpha)
    ref.backward()
    assert torch.allclose(loss, ref, rtol=1e-5)
    for n, p in m.named_parameters():
        assert torch.allclose(sparse_grads[n], p.grad, atol=1e-6), n


def test_relu_loss_on_hand_computed_batch():
    """One latent, d=1: loss = sum_m (x_m - xhat_m)^2 + lambda * f * (|d_0| + |d_1|)."""
    tr = Trainer(TensorStore(torch.ones(20, 2, 1)), TrainConfig(n_latents=1, l1_coeff=0.5, l1_warmup_frac=0, n_steps=3))
    m = tr.model
    with torch.no_grad():
        m.W_enc.copy_(torch.tensor([[[1.0]], [[2.0]]]))          # pre = 1*x0 + 2*x1 + b
        m.b_enc.fill_(-1.0)
        m.W_dec.copy_(torch.tensor([[[0.5], [-1.5]]]))
        m.b_dec.copy_(torch.tensor([[0.1], [0.2]]))
    x = torch.tensor([[[1.0], [1.0]], [[2.0], [-3.0]]])          # f = relu(2) = 2, relu(-5) = 0
    loss, *_ = tr.loss(x, step=0)
    sq0 = (1 - 1.1) ** 2 + (1 + 2.8) ** 2                          # xhat = [2 * 0.5 + 0.1, 2 * -1.5 + 0.2]
    sq1 = (2 - 0.1) ** 2 + (-3 - 0.2) ** 2
    want = (sq0 + sq1) / 2 + 0.5 * (2 * (0.5 + 1.5) + 0) / 2
    assert loss.item() == pytest.approx(want, rel=1e-6)


def test_save_load_and_compatibility(tmp_path):
    cc = _cc("batchtopk", k=3).fold([0.5, 2.0])
    cc.threshold.fill_(0.25)
    cc.save_pretrained(tmp_path / "cc")
    assert {p.name for p in (tmp_path / "cc").iterdir()} == {"config.json", "model.safetensors"}
    back = CrossCoder.from_pretrained(tmp_path / "cc")
    assert back.config == cc.config and not back.training
    for name, t in cc.state_dict().items():
        assert torch.equal(back.state_dict()[name], t), name
    store = TensorStore(torch.randn(40, 2, 8), layer=2)
    with pytest.raises(ValueError, match=r"norm_scale .* \(store\) vs \[0.5 2. \] \(folded"):
        back.check_compatible(store)                     # folded with another store's scale
    matched = _cc("batchtopk", k=3).fold(list(store.norm_scale))
    matched.check_compatible(store)
    for acts, layer, what in [(torch.randn(40, 2, 16), 2, "d_model"), (torch.randn(40, 3, 8), 2, "n_models"),
                              (torch.randn(40, 2, 8), 5, "layer")]:
        with pytest.raises(ValueError, match=what):
            _cc("batchtopk", k=3).check_compatible(TensorStore(acts, layer=layer))


def test_from_pretrained_fails_fast_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="Hugging Face Hub"):
        CrossCoder.from_pretrained("nobody-here/no-such-crosscoder")
    with pytest.raises(FileNotFoundError, match="no crosscoder folder"):
        CrossCoder.from_pretrained(tmp_path / "missing")


def test_fvu_definition():
    torch.manual_seed(0)
    x = torch.randn(100, 2, 6) * torch.tensor([1.0, 5.0])[None, :, None] + 3
    assert torch.allclose(metrics.fvu(x, x.clone()), torch.zeros(2))
    assert torch.allclose(metrics.fvu(x, x.mean(0, keepdim=True).expand_as(x)), torch.ones(2), atol=1e-6)
    noisy = x.clone()
    noisy[:, 1] += 0.1 * torch.randn(100, 6)
    err = (noisy - x)[:, 1].pow(2).sum()
    var = (x[:, 1] - x[:, 1].mean(0)).pow(2).sum()
    assert metrics.fvu(x, noisy)[1].item() == pytest.approx((err / var).item(), rel=1e-5)
    assert torch.allclose(metrics.explained_variance(x, noisy), 1 - metrics.fvu(x, noisy))


def test_l0_dead_and_density():
    f = torch.tensor([[0.0, 1.0, 2.0, 0.0], [0.0, 0.0, 3.0, 0.0]])
    assert metrics.l0(f) == 1.5
    assert metrics.dead_fraction((f > 0).sum(0)) == 0.5
    counts, edges, n_dead = metrics.density_histogram([0.0, 0.5, 1e-3, 1.0], bins=7)
    assert n_dead == 1 and counts.sum() == 3 and edges[-1] == 0.0


def test_evaluate_streams_the_heldout_split():
    torch.manual_seed(0)
    acts = torch.randn(300, 2, 8)
    store = TensorStore(acts, layer=2, heldout_frac=0.2)
    cc = _cc().fold(store.norm_scale.tolist()).eval()
    res = metrics.evaluate(cc, store, batch_size=17, progress=False)
    held = acts[240:]
    with torch.no_grad():
        f = cc.encode(held)
        want = metrics.fvu(held, cc.decode(f))
    assert res["n_tokens"] == 60
    assert torch.allclose(torch.tensor(res["fvu"]), want, atol=1e-5)
    assert res["l0"] == pytest.approx(metrics.l0(f))
    assert res["dead_frac"] == pytest.approx(((f > 0).sum(0) == 0).float().mean().item())


def test_spliced_loss_identity_equals_clean(tiny_pair, tiny_tokenizer):
    base, distilled = tiny_pair
    enc = tiny_tokenizer(["Ann has 3 apples. Wait, 3 + 4 = 7.", "So the sum is 9."], return_tensors="pt", padding=True)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    res = metrics.spliced_loss((base, distilled), ids, mask, lambda x: x, layer=2)
    for name in ("base", "distilled"):
        r = res[name]
        assert r["ce_spliced"] == pytest.approx(r["ce_clean"], abs=1e-5)
        assert abs(r["kl_spliced"]) < 1e-5
        assert r["ce_zero"] != pytest.approx(r["ce_clean"], abs=1e-3) and r["kl_zero"] > 1e-4
        assert r["ce_recovered"] == pytest.approx(1.0, abs=1e-4)
    # the clean CE is the model's own next-token loss on the attended positions
    logits = base(input_ids=ids, attention_mask=mask).logits[:, :-1]
    valid = mask[:, :-1].bool() & mask[:, 1:].bool()
    ce = torch.nn.functional.cross_entropy(logits[valid], ids[:, 1:][valid])
    assert res["base"]["ce_clean"] == pytest.approx(ce.item(), rel=1e-5)
    # a real crosscoder in the loop: shapes line up and the numbers are finite
    cc = _cc(d=32, F=64).eval()
    out = metrics.spliced_loss((base, distilled), ids, mask, cc, layer=2)
    assert all(torch.isfinite(torch.tensor(v)) for r in out.values() for v in r.values())
    with pytest.raises(ValueError, match="layer"):
        metrics.spliced_loss((base, distilled), ids, mask, lambda x: x, layer=9)
    # several crosscoders share the clean and zeroed forwards; the zeroed one equals a full forward's
    both = metrics.spliced_loss((base, distilled), ids, mask, {"identity": lambda x: x, "cc": cc}, layer=2)
    assert set(both) == {"identity", "cc"}
    for name in ("base", "distilled"):
        assert both["identity"][name] == pytest.approx(res[name]) and both["cc"][name] == pytest.approx(out[name])

    def zero(o):
        o = o.clone()
        o[mask.bool()] = 0
        return o

    with torch.no_grad(), resid_hook(base, 2, zero):
        zl = base(input_ids=ids, attention_mask=mask).logits[:, :-1]
    assert res["base"]["ce_zero"] == pytest.approx(
        torch.nn.functional.cross_entropy(zl[valid], ids[:, 1:][valid]).item(), rel=1e-5)


@pytest.mark.parametrize("bias, path", [(0.0, "dense"), (-0.6, "sparse")])
def test_relu_fast_paths_match_dense_autograd(monkeypatch, bias, path):
    """Both branches of the ReLU fast step (fused dense kernel when many latents fire, sparse kernels when few)
    give the loss and gradients of the plain autograd computation, and the density rule picks the branch."""
    from thinkdiff import kernels

    torch.manual_seed(0)
    acts = torch.randn(200, 2, 8)
    tr = Trainer(TensorStore(acts), TrainConfig(n_latents=48, l1_coeff=0.7, l1_warmup_frac=0, n_steps=5))
    with torch.no_grad():
        for p in tr.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        tr.model.b_enc.add_(bias)
    used = []
    monkeypatch.setattr(relu_l1, "SparseDecode", type("Spy", (), {"apply": staticmethod(
        lambda *a: used.append("sparse") or kernels.SparseDecode.apply(*a))}))
    x = acts[:32] * tr.scale[None, :, None]
    loss, _, stats, _, fired = tr.loss(x, 0)
    loss.backward()
    fast = {n: p.grad.clone() for n, p in tr.model.named_parameters()}
    m = tr.model
    m.zero_grad()
    ref = relu_l1.reference_loss(m, x, l1_coeff=0.7)
    ref.backward()
    assert (used == ["sparse"]) == (path == "sparse"), (used, stats["l0"])
    assert torch.allclose(loss, ref, rtol=1e-6)
    for n, p in m.named_parameters():
        assert torch.allclose(fast[n], p.grad, atol=1e-6), n
    with torch.no_grad():
        f = torch.relu(m.pre_acts(x))
    assert torch.equal(fired, f.amax(0) > 0)
    if path == "sparse":                         # the sparse branch logs the exact L0
        assert stats["l0"] == pytest.approx((f > 0).sum().item() / 32)


def test_dense_reference_step_is_the_fast_step():
    """``Trainer(dense_reference=True)``: the same loss and gradients as the fast kernels, for both schemes."""
    torch.manual_seed(0)
    acts = torch.randn(200, 2, 8)
    for cfg in (TrainConfig(n_latents=48, l1_coeff=0.7, l1_warmup_frac=0, n_steps=5),
                TrainConfig(activation="batchtopk", n_latents=48, k=4, n_steps=5, dead_tokens=1)):
        trs = [Trainer(TensorStore(acts), cfg, dense_reference=d) for d in (False, True)]
        grads, losses = [], []
        for tr in trs:
            tr.since_fired[:12] = 5              # BatchTopK: 12 dead latents, the aux-k loss is active
            loss, *_ = tr.loss(acts[:32] * tr.scale[None, :, None], 0)
            loss.backward()
            losses.append(loss.item())
            grads.append({n: p.grad for n, p in tr.model.named_parameters()})
        assert losses[0] == pytest.approx(losses[1], rel=1e-6), cfg.activation
        for n in grads[0]:
            assert torch.allclose(grads[0][n], grads[1][n], atol=1e-6), (cfg.activation, n)
    with pytest.raises(ValueError, match="one process"):
        Trainer(TensorStore(acts), cfg, world=type("W", (), {"world_size": 2})(), dense_reference=True)


def test_every_scheme_is_one_module_with_the_whole_interface():
    """Adding a scheme touches one file and one registry line: the crosscoder, the trainer and the run configs
    read every scheme from schemes.SCHEMES."""
    from thinkdiff import schemes
    from thinkdiff.train import ORGANISM, TrainConfig

    assert set(schemes.SCHEMES) == set(ORGANISM) == {"relu", "batchtopk"}
    for name, mod in schemes.SCHEMES.items():
        assert mod.NAME == name
        for attr in ("USES_K", "check_config", "encode", "loss", "reference_loss"):
            assert hasattr(mod, attr), (name, attr)
        assert TrainConfig(activation=name).validate().activation == name
    with pytest.raises(ValueError, match="unknown sparsity scheme 'gelu'"):
        schemes.get("gelu")
