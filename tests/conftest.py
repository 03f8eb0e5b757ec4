"""Shared fixtures: a tiny tokenizer and a tiny random Qwen2 pair, built in about a second, and the test
session's runs/ folder.

The tiny models stand in for a model pair wherever a test needs the real architecture but not trained
weights. Tests that need the trained organism use ``thinkdiff.organism`` directly; the smollm2-135m tests and
notebooks share one rebuild of that pair per worker (``smollm2_rebuilt``, ``smollm2_smoke_run``). ``test_runs`` is one
runs/ and figures/ folder for the whole session: the notebook tests fill it and the real-browser tests reuse
what they built. Tests marked ``browser`` need Chromium and chromedriver: without them they are skipped
(and the summary says how to enable them), except under ``CI=true``, where they fail.
"""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# `make test` runs two pytest-xdist workers on two cores: each worker (and every notebook kernel or torchrun it
# starts) on one thread, since two threads per worker oversubscribe the cores and slow every test several-fold.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

# Tests that share a module- or session-scoped fixture run on one worker (xdist --dist loadgroup): each test file
# is a group, named by its path under tests/ without ".py" (tiers may hold files of the same name), and the
# notebook and real-browser tests share one, since the browser reuses the executed notebooks, as do the smollm2-135m
# tests and notebooks, which share its rebuild, and the README quickstart, which reads the smoke run's crosscoder. The notebooks on the real-pair stand-in build a run of their own, so
# they form a group apart.
TESTS_DIR = Path(__file__).resolve().parent
SHARED_GROUPS = {"e2e/test_notebooks": "notebooks", "e2e/test_real_browser": "notebooks",
                 "e2e/test_readme_quickstart": "notebooks",
                 "integration/test_smollm2": "smollm2", "e2e/test_smollm2": "smollm2"}
OWN_GROUPS = {"test_notebook_executes_on_a_real_pair_stand_in": "notebooks-real-pair"}


def xdist_group(item) -> str:
    """The xdist group of a collected test: its own, its file's shared one, or its file's path under tests/."""
    module = Path(item.path).resolve().relative_to(TESTS_DIR).with_suffix("").as_posix()
    return OWN_GROUPS.get(item.originalname, SHARED_GROUPS.get(module, module))

TINY_TEXT = [
    "Ann has 3 apples. Ben gives her 4 more apples. Wait, let me check: 3 + 4 = 7.",
    "Therefore the answer is 7. Thus we are done. So the sum is 9.",
    "Alternatively, 4 + 3 = 7. But 7 is less than 8. However, 8 is more than 2.",
    "<think> 2 + 5 = 7. Wait, that is wrong. 2 + 5 = 7. </think> Answer: 7.",
    "The box is heavy, but Dan carries it. Eva waited at the door.",
]


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>", "<think>", "</think>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(TINY_TEXT * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def _tiny_qwen(vocab_size: int, seed: int):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=True, eos_token_id=0, pad_token_id=0, bos_token_id=None)
    return Qwen2ForCausalLM(cfg).eval()


@pytest.fixture(scope="session")
def tiny_pair(tiny_tokenizer):
    """(base, distilled): the distilled model is the base with a seeded perturbation, like a short fine-tune."""
    base = _tiny_qwen(len(tiny_tokenizer), seed=0)
    distilled = _tiny_qwen(len(tiny_tokenizer), seed=0)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in distilled.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return base, distilled


@pytest.fixture
def one_thread():
    """Torch on one thread for the test (as torchrun workers with OMP_NUM_THREADS=1: the same float rounding)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_documents(tok, n: int = 24) -> list[dict]:
    """Organism-like documents over ``TINY_TEXT``: text, ids, a category label and a marker flag per token, kind."""
    docs = []
    for i in range(n):
        text = TINY_TEXT[i % len(TINY_TEXT)] + f" Doc {i}."
        ids = tok(text)["input_ids"]
        docs.append({"text": text, "input_ids": ids, "labels": [(j + i) % 5 for j in range(len(ids))],
                     "marker": [j % 7 == 0 for j in range(len(ids))], "kind": "teacher" if i % 3 else "base"})
    return docs


@pytest.fixture(scope="session")
def test_runs(tmp_path_factory):
    """One runs/ and figures/ folder for the whole session, so notebooks reuse each other's artifacts (as in
    ``make demo``) and the real-browser tests reuse the notebooks', without touching the demo's own caches,
    figures or report."""
    root = tmp_path_factory.mktemp("nb-runs")
    old = {k: os.environ.get(k) for k in ("THINKDIFF_RUNS", "THINKDIFF_FIGURES")}
    os.environ["THINKDIFF_RUNS"] = str(root / "runs")
    os.environ["THINKDIFF_FIGURES"] = str(root / "figures")
    yield root
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


# ------------------------------------------------------------------------------------------- smollm2-135m
@pytest.fixture(scope="session")
def smollm2_runs(tmp_path_factory):
    """A runs folder holding the smollm2-135m pair rebuilt from the GGUF and the shipped adapter into an empty
    folder (what a fresh clone does); built once per worker for its integration and notebook tests (one group)."""
    from thinkdiff import paths, smollm2

    torch.set_num_threads(1)
    runs = tmp_path_factory.mktemp("smollm2-runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(paths, "RUNS_DIR", runs)
        smollm2.pair_dirs()
    return runs


@pytest.fixture(scope="module")
def smollm2_rebuilt(smollm2_runs):
    """(base folder, distilled folder) of the rebuilt pair, with ``paths.RUNS_DIR`` on its runs folder for the
    module (the smoke run's store and crosscoders land there too)."""
    from thinkdiff import paths, pipeline, smollm2

    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(paths, "RUNS_DIR", smollm2_runs)
        yield smollm2.pair_dirs()
        pipeline._PAIRS.pop(("smollm2-135m", None, "auto"), None)


@pytest.fixture(scope="module")
def smollm2_smoke_run(smollm2_rebuilt):
    """The smollm2-smoke run (configs/smollm2-smoke.toml) on the rebuilt pair."""
    from thinkdiff import pipeline

    return pipeline.load_run("smollm2-smoke", progress=False)


# ------------------------------------------------------------------------------------------- test order
def pytest_addoption(parser):
    parser.addoption("--test-order", default="file",
                     help="run the collected tests in file order (default), 'reverse', or 'random:SEED' "
                          "(shows that no test depends on another having run first)")


def _reorder(config, items) -> None:
    import random

    order = config.getoption("--test-order")
    if order == "reverse":
        items.reverse()
    elif order.startswith("random:"):
        random.Random(order.split(":", 1)[1]).shuffle(items)
    elif order != "file":
        raise pytest.UsageError(f"--test-order {order!r}: use file, reverse or random:SEED")


# ------------------------------------------------------------------------------------------- real-browser tests
@pytest.hookimpl(tryfirst=True)   # before xdist reads the xdist_group marks (--dist loadgroup), or no group forms
def pytest_collection_modifyitems(config, items):
    _reorder(config, items)
    moved = [k for k in SHARED_GROUPS if not (TESTS_DIR / f"{k}.py").is_file()]
    if moved:   # a renamed file would silently leave its group and lose the fixtures it shares
        raise pytest.UsageError(f"tests/conftest.py SHARED_GROUPS names missing test files: {moved}")
    for it in items:
        it.add_marker(pytest.mark.xdist_group(xdist_group(it)))
    import realbrowser
    from realbrowser import REPORT as BROWSER_REPORT

    marked = [it for it in items if it.get_closest_marker("browser")]
    why = realbrowser.missing_browser() if marked else None
    if why is None or realbrowser.in_ci():     # under CI a missing browser fails the tests instead
        return
    BROWSER_REPORT.update(skipped=len(marked), reason=why)
    skip = pytest.mark.skip(reason=f"real-browser test: {why}; enable with: {realbrowser.ENABLE_COMMAND}")
    for it in marked:
        it.add_marker(skip)


def pytest_collection_finish(session):
    """Under ``--dist loadgroup`` each worker names a test's group in its node id (``...::test@group``); a pytest or
    pytest-xdist that drops it (pytest 9.2 with xdist 3.8) would silently scatter the groups' shared fixtures over
    both workers and rebuild them on each, so it is an error here."""
    if getattr(session.config.option, "loadgroup", False):
        ungrouped = [it.nodeid for it in session.items if "@" not in it.nodeid.rsplit("]", 1)[-1]]
        if ungrouped:
            raise pytest.UsageError(f"pytest-xdist lost the xdist_group of {len(ungrouped)} tests (e.g. {ungrouped[0]}): "
                                    "tests sharing a fixture would run on different workers; check the pytest pin")


def pytest_runtest_logreport(report):
    from realbrowser import REPORT as BROWSER_REPORT

    if "browser" in report.keywords and not report.skipped:   # setup (JupyterLab, the notebook), call, teardown
        BROWSER_REPORT["seconds"][(report.nodeid, report.when)] = report.duration
        BROWSER_REPORT["tests"].add(report.nodeid)


def pytest_terminal_summary(terminalreporter):
    import realbrowser
    from realbrowser import REPORT as BROWSER_REPORT

    tr = terminalreporter
    if BROWSER_REPORT["skipped"]:
        tr.write_sep("=", "real-browser tests did not run", yellow=True)
        tr.write_line(f"{BROWSER_REPORT['skipped']} real-browser tests were skipped: {BROWSER_REPORT['reason']}.")
        tr.write_line(f"Enable them with: {realbrowser.ENABLE_COMMAND}")
    elif BROWSER_REPORT["seconds"]:
        sec = BROWSER_REPORT["seconds"]
        setup = sum(v for (_, when), v in sec.items() if when != "call")
        tr.write_sep("=", "real-browser tests", green=True)
        tr.write_line(f"JupyterLab + headless Chromium: {sum(sec.values()):.0f} s in all for {len(BROWSER_REPORT['tests'])} "
                      f"tests ({setup:.0f} s of it starting JupyterLab and Chromium and running the notebook)")
        if BROWSER_REPORT["screenshots"]:
            tr.write_line(f"screenshots: {BROWSER_REPORT['screenshots']}")
