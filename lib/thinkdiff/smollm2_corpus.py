"""The harvest corpus of the ``smollm2-135m`` pair: labelled teacher traces mixed with general text, all offline.

* **Teacher traces**: ``nlworld``'s natural-English R1-style traces on *training* problems (a random stream of
  its own, distinct from the distillation's), every token labelled with its move category and every
  operation's closing "." with the "last operation" flag (``organism.tokenize_spans``).
* **General text**: the CHAMP dataset (Mao et al. 2024, "CHAMP: A Competition-level Dataset for Fine-Grained
  Analyses of LLMs' Mathematical Reasoning Capabilities"; MIT licence), shipped in the ``champ-dataset`` wheel:
  270 competition problem statements and the language models' answers to them (GPT-3.5, GPT-4, PaLM 2, Llama 2
  ... conversations), read from the wheel's JSON file without importing the package. Its tokens carry no
  planted labels (-1): a model's "Therefore" there is real reasoning nobody labelled, so ground truth skips them.
"""
from __future__ import annotations

import functools
import importlib.util
import json
import random
from pathlib import Path

from . import nlworld, organism, world

CHAMP_PACKAGE, CHAMP_FILE = "champ_dataset", "dataset_files/v0.json"
CHAMP_LICENSE = "MIT"


def champ_path() -> Path:
    spec = importlib.util.find_spec(CHAMP_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("the SmolLM2 pair's harvest corpus needs the champ-dataset wheel (its general text): "
                                  "pip install champ-dataset==1.0.0")
    path = Path(spec.submodule_search_locations[0]) / CHAMP_FILE
    if not path.exists():
        raise FileNotFoundError(f"champ-dataset is installed but {path} is missing; reinstall champ-dataset==1.0.0")
    return path


@functools.lru_cache(maxsize=1)
def champ_texts() -> tuple[str, ...]:
    """Every CHAMP problem statement and every model answer in its conversations (non-empty), in file order."""
    data = json.loads(champ_path().read_text())
    out = []
    for pid in sorted(data["problems"]):
        prob = data["problems"][pid]
        out.append(prob["_text"].strip())
        for conv_id in sorted(prob.get("conversations", {})):
            for msg in prob["conversations"][conv_id].get("messages", []):
                if str(msg.get("role", "")).startswith("Model.") and msg.get("text"):
                    out.append(msg["text"].strip())
    return tuple(t for t in out if t)


def general_document(tokenizer, text: str, max_tokens: int) -> organism.Document:
    """A general-text document cut to ``max_tokens`` tokens; its tokens are unlabelled (-1)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_tokens]
    n = len(ids)
    return organism.Document(tokenizer.decode(ids), list(ids), [-1] * n, [False] * n, "base", [-1] * n)


def harvest_documents(tokenizer, n_docs: int, teacher_fraction: float = 0.5, seed: int = 1,
                      max_tokens: int = 256, n_train_problems: int = nlworld.N_TRAIN_PROBLEMS) -> list[organism.Document]:
    """``n_docs`` documents, ``teacher_fraction`` of them labelled teacher traces on training problems, the rest
    CHAMP text (drawn without replacement while it lasts), shuffled with ``seed``."""
    if n_docs <= 0:
        raise ValueError(f"n_docs must be positive, got {n_docs}")
    if not 0.0 <= teacher_fraction <= 1.0:
        raise ValueError(f"teacher_fraction must be in [0, 1], got {teacher_fraction}")
    rng = random.Random(f"smollm2-harvest-{seed}")
    problems = nlworld.problems(n_train_problems, "train")
    n_teacher = round(n_docs * teacher_fraction)
    general = list(champ_texts())
    rng.shuffle(general)
    docs = []
    for i in range(n_docs):
        if i < n_teacher:
            problem = rng.choice(problems)
            doc = organism.tokenize_spans(tokenizer, nlworld.teacher_document(problem, rng, world.TeacherConfig()))
            doc.group = f"computation:{problem.computation}"   # one computation, one side of the store's split
            docs.append(doc)
        else:
            docs.append(general_document(tokenizer, general[(i - n_teacher) % len(general)], max_tokens))
    rng.shuffle(docs)
    return docs
