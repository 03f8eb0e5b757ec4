"""Local stand-ins for the hub datasets, in their real formats: what offline tests feed the real-pair code path."""
from __future__ import annotations

import json
from pathlib import Path


def openthoughts_row(i: int) -> dict:
    """An OpenThoughts-114k row (default config) whose trace uses markers of all four categories early."""
    a, b = i % 7 + 2, i % 5 + 3
    trace = (f"<|begin_of_thought|>\n\nWe add {a} and {b}. Wait, let me check: {b} + {a} = {a + b}. Therefore the "
             f"sum is {a + b}. Alternatively, count up from {a}. But {a + b} is more than {a}. However, it is "
             f"small.\n\n<|end_of_thought|>\n\n<|begin_of_solution|>\n\nThe answer is {a + b}.\n\n<|end_of_solution|>")
    return {"system": "Your role as an assistant involves thoroughly exploring questions ...",
            "conversations": [{"from": "user", "value": f"What is {a} + {b}?"},
                              {"from": "assistant", "value": trace}]}


GENERAL = [{"text": f"Market report {i}. Prices rose in the morning, but they fell later. However, traders "
                    f"stayed calm, and the harbour reopened on day {i}."} for i in range(40)]


def math500_row(i: int) -> dict:
    """A MATH-500 row (problem, answer, unique_id)."""
    return {"problem": f"What is ${i + 2} \\times 3$?", "answer": str(3 * (i + 2)), "unique_id": f"test/standin/{i}.json"}


def write_corpus(folder: Path, n: int = 40) -> dict:
    """OpenThoughts, general-text and MATH-500 stand-in files in ``folder``; returns their paths by role."""
    folder = Path(folder)
    files = {"openthoughts_files": folder / "openthoughts.jsonl", "general_files": folder / "general.jsonl",
             "math_files": folder / "math500.jsonl"}
    files["openthoughts_files"].write_text("".join(json.dumps(openthoughts_row(i)) + "\n" for i in range(n)))
    files["general_files"].write_text("".join(json.dumps(r) + "\n" for r in GENERAL[:n]))
    files["math_files"].write_text("".join(json.dumps(math500_row(i)) + "\n" for i in range(n)))
    return files


def tiny_qwen_pair(hidden: int = 64, layers: int = 4, **kw):
    """The tiny random stand-in of qwen-1.5b (its published architectures from configs/pairs/qwen-1.5b.toml scaled
    down; ``qwen.tiny_qwen_pair``), built once and cached."""
    from thinkdiff import pairs, qwen

    real = pairs.get("qwen-1.5b")
    return qwen.tiny_qwen_pair(real.name, real.options["base_arch"], real.options["distilled_arch"], hidden=hidden,
                               layers=layers, **kw)
