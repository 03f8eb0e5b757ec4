"""Build the clean notebooks from their cell scripts in notebooks/src/ (the reviewable source of each notebook).

Cell script format: cells separated by lines '# %% [markdown]', '# %%' or '# %% [parameters]'; markdown lines
start with '# '. Usage:
    python tools/mknb.py            # rebuild every notebooks/NN_name.ipynb from notebooks/src/NN_name.py
    python tools/mknb.py --check    # exit 1 if a committed notebook differs from its source
"""
import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
SRC, OUT = ROOT / "notebooks" / "src", ROOT / "notebooks"


def build(src: str):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    parts = re.split(r"^# %%(.*)$", src, flags=re.M)
    for header, body in zip(parts[1::2], parts[2::2]):
        body = body.strip("\n")
        header = header.strip()
        if header == "[markdown]":
            text = "\n".join(line[2:] if line.startswith("# ") else line.lstrip("#") for line in body.splitlines())
            nb.cells.append(nbformat.v4.new_markdown_cell(text))
        else:
            cell = nbformat.v4.new_code_cell(body)
            if header == "[parameters]":
                cell.metadata["tags"] = ["parameters"]
            nb.cells.append(cell)
    for i, c in enumerate(nb.cells):
        c["id"] = f"c{i:02d}"
    return nb


def stale() -> list[str]:
    """Notebooks whose committed .ipynb is not what their source builds."""
    out = []
    for src in sorted(SRC.glob("*.py")):
        want = nbformat.writes(build(src.read_text()))
        nb = OUT / f"{src.stem}.ipynb"
        if not nb.exists() or nb.read_text() != want:
            out.append(nb.name)
    return out


if __name__ == "__main__":
    if "--check" in sys.argv:
        bad = stale()
        if bad:
            sys.exit(f"notebooks differ from notebooks/src (run python tools/mknb.py): {', '.join(bad)}")
        print("every notebook matches its source")
    else:
        for src in sorted(SRC.glob("*.py")):
            (OUT / f"{src.stem}.ipynb").write_text(nbformat.writes(build(src.read_text())))
            print("built", OUT / f"{src.stem}.ipynb")
