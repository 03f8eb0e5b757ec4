"""The real-pair building blocks: the pairs table, real Qwen2 tokenizers, tiny stand-ins, offline loading."""
from __future__ import annotations

import time

import pytest
import torch

from standins import tiny_qwen_pair
from thinkdiff import hf, pairs, qwen, train


@pytest.fixture(scope="module")
def math_tok():
    return qwen.qwen_tokenizer("qwen2.5-math")


@pytest.fixture(scope="module")
def r1_tok():
    return qwen.qwen_tokenizer("r1-distill")


def test_pairs_table_matches_paper():
    """configs/pairs/qwen-*.toml: the paper's four pairs, half-depth hooks, base and distilled of one shape."""
    assert {n for n, p in pairs.PAIRS.items() if p.in_paper} == {"qwen-1.5b", "qwen-7b", "qwen-14b", "qwen-32b"}
    expect = {"qwen-1.5b": (28, 1536, 14), "qwen-7b": (28, 3584, 14), "qwen-14b": (48, 5120, 24),
              "qwen-32b": (64, 5120, 32)}
    for name, (n_layers, d_model, layer) in expect.items():
        p = pairs.get(name)
        arch = p.options["base_arch"]
        assert (arch["n_layers"], arch["d_model"], p.layer) == (n_layers, d_model, layer)
        assert p.layer == arch["n_layers"] // 2                                  # the paper's half-depth hook
        for k in ("n_layers", "d_model", "n_heads", "n_kv_heads", "intermediate_size", "vocab_size"):
            assert arch[k] == p.options["distilled_arch"][k], (name, k)
        assert p.dtype == "bfloat16" and p.placement in pairs.spec.PLACEMENTS
    assert pairs.get("qwen-14b").base == "Qwen/Qwen2.5-14B"          # not a Math model at 14B
    assert pairs.get("qwen-1.5b").options["base_arch"]["tie_word_embeddings"] is True
    assert pairs.get("qwen-1.5b").options["distilled_arch"]["tie_word_embeddings"] is False
    cc = train.PAPER
    assert (cc.n_latents, cc.l1_coeff, cc.lr, cc.batch_size, cc.n_steps * cc.batch_size) == (32768, 2.0, 5e-5, 1024, 400_000_000)


def test_regular_bpe_reproduces_public_ids(math_tok, r1_tok):
    for tok in (math_tok, r1_tok):
        enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
        assert enc("Hello, world!") == [9707, 11, 1879, 0]
        assert enc("cafe\u0301") == [924, 58858]                   # NFC normaliser: é composed
        assert enc("\n\n") == [271]
        for word, tid in {" Wait": 13824, " Therefore": 15277, " Thus": 14301, " Alternatively": 38478,
                          " However": 4354, " But": 1988}.items():
            assert enc(word) == [tid], word
    assert len(math_tok) == len(r1_tok) == 151_665


def test_added_tokens_at_real_ids(math_tok, r1_tok):
    for tok, flavour in ((math_tok, "qwen2.5-math"), (r1_tok, "r1-distill")):
        for token, tid in qwen.REAL_IDS[flavour].items():
            assert tok.convert_tokens_to_ids(token) == tid, (flavour, token)
    # <think> is one added token for R1-Distill, three ordinary pieces for Qwen2.5-Math.
    assert r1_tok("<think>", add_special_tokens=False)["input_ids"] == [151648]
    assert len(math_tok("<think>", add_special_tokens=False)["input_ids"]) == 3
    # BOS: R1 prepends <｜begin▁of▁sentence｜> = 151646, Qwen2.5-Math has none.
    assert math_tok.bos_token is None and math_tok("Hi")["input_ids"] == [13048]
    assert r1_tok.bos_token_id == 151646 and r1_tok("Hi")["input_ids"] == [151646, 13048]
    assert r1_tok.eos_token_id == math_tok.eos_token_id == 151643


def test_chat_templates(math_tok, r1_tok):
    msgs = [{"role": "user", "content": "What is 1+1?"}]
    r1 = r1_tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert r1 == "<｜begin▁of▁sentence｜><｜User｜>What is 1+1?<｜Assistant｜>"
    m = math_tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert m.startswith("<|im_start|>system\nPlease reason step by step")
    assert m.endswith("<|im_start|>user\nWhat is 1+1?<|im_end|>\n<|im_start|>assistant\n")


def test_tokenizer_differences_catch_bos_and_specials(math_tok, r1_tok):
    texts = ["Ann has 3 apples. Wait, 3 + 4 = 7.", "<think> 2 + 5 = 7 </think> Answer: 7"]
    same = qwen.tokenizer_differences(math_tok, math_tok, texts)
    assert same["identical_ids"] and same["first_mismatch"] is None and not same["added_tokens"]
    d = qwen.tokenizer_differences(math_tok, r1_tok, texts)
    print("\nQwen2.5-Math vs R1-Distill:", {k: v for k, v in d.items() if k != "added_tokens"})
    assert d["adds_bos"] == (False, True)
    assert not d["identical_ids"] and d["n_texts_differ"] == 2
    fm = d["first_mismatch"]
    assert fm["index"] == 0 and fm["position"] == 0 and fm["ids_b"][0] == 151646 and fm["ids_b"][1:] == fm["ids_a"]
    assert d["specials"]["bos"] == ((None, None), (qwen.BOS_R1, 151646))
    assert d["added_tokens"][151648] == ("<|box_start|>", "<think>")
    assert d["chat_template_differs"]
    with pytest.raises(ValueError, match="at least one text"):
        qwen.tokenizer_differences(math_tok, r1_tok, [])


def test_tiny_pair_saves_and_loads_offline():
    torch.set_num_threads(1)
    pair = tiny_qwen_pair(hidden=64, layers=4)
    assert pair.layer == 2 and (pair.base_path / "config.json").exists()
    t0 = time.time()
    hp = hf.load_hf_pair(pair.base_path, pair.distilled_path, dtype="float32", device_map="cpu")
    print(f"\ntiny qwen-1.5b pair loaded offline in {time.time() - t0:.2f} s")
    for m in (hp.base, hp.distilled):
        assert type(m).__name__ == "Qwen2ForCausalLM" and not m.training
        assert (m.config.vocab_size, m.config.hidden_size, m.config.num_hidden_layers) == (151936, 64, 4)
        assert m.config.rope_parameters["rope_theta"] == 10000.0 and m.config.rms_norm_eps == 1e-6
    assert hp.base.config.tie_word_embeddings and not hp.distilled.config.tie_word_embeddings
    assert (hp.base.config.max_position_embeddings, hp.distilled.config.max_position_embeddings) == (4096, 131072)
    assert hp.base_tokenizer.bos_token is None and hp.distilled_tokenizer.bos_token_id == 151646
    assert hp.distilled_tokenizer.chat_template == qwen.R1_CHAT_TEMPLATE     # travels with the saved folder
    ids = torch.tensor([hp.base_tokenizer("Wait, 3 + 4 = 7. Therefore", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        ob = hp.base(ids, output_hidden_states=True)
        od = hp.distilled(ids, output_hidden_states=True)
    assert ob.logits.shape == (1, ids.shape[1], 151936)
    assert ob.hidden_states[pair.layer].shape == (1, ids.shape[1], 64)
    assert not torch.allclose(ob.hidden_states[pair.layer], od.hidden_states[pair.layer])
    assert tiny_qwen_pair(hidden=64, layers=4).base_path == pair.base_path   # cached
    with pytest.raises(ValueError, match="vocab"):
        tiny_qwen_pair(vocab=10)
    with pytest.raises(ValueError, match="lacks"):
        qwen.tiny_qwen_pair("qwen-3b", {"n_layers": 28}, {"n_layers": 28})


def test_hub_ids_fail_fast_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.time()
    with pytest.raises(RuntimeError) as err:
        hf.load_hf_pair("Qwen/Qwen2.5-Math-1.5B", "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B")
    elapsed = time.time() - t0
    assert elapsed < 5.0, elapsed
    msg = str(err.value)
    assert "Qwen/Qwen2.5-Math-1.5B" in msg and "huggingface-cli download" in msg and "local folder" in msg
    with pytest.raises(FileNotFoundError, match="does not exist"):
        hf.load_hf_pair(tmp_path / "nope", tmp_path / "nope2")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        hf.load_hf_pair(tmp_path, tmp_path)
    with pytest.raises(ValueError, match="dtype"):
        hf.load_hf_pair(tmp_path, tmp_path, dtype="int8")


@pytest.mark.skipif(torch.cuda.device_count() >= 2, reason="placement errors are for machines without 2 GPUs")
def test_placement_needs_gpus():
    with pytest.raises(RuntimeError, match="GPU"):
        hf._device_for("split", 1)
    with pytest.raises(ValueError, match="placement"):
        hf._device_for("everywhere", 0)
