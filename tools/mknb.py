"""Build a clean .ipynb from a plain-text cell script (one source of truth, reviewable as a diff).

Cell script format: cells separated by lines '# %% [markdown]', '# %%' or '# %% [parameters]'.
Usage: python tools/mknb.py notebooks/src/00_organism.py notebooks/00_organism.ipynb
"""
import re
import sys

import nbformat


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


if __name__ == "__main__":
    nbformat.write(build(open(sys.argv[1]).read()), sys.argv[2])
