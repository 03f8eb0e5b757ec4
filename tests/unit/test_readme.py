"""The README stays an entry page, and no page of the documentation points at something that is not there.

Checked: README.md is at most 150 lines and links every page in docs/; every relative link in README.md,
docs/*.md and the notebooks' markdown (notebooks/src) names an existing file, and an existing heading where it
names an anchor; every ``docs/<page>.md`` the code or the tests mention exists.
"""
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README_MAX_LINES = 150
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (but - and _), spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(md: Path) -> set[str]:
    """Every heading anchor of a markdown file, numbered as GitHub numbers repeated headings (-1, -2, ...)."""
    seen: dict[str, int] = {}
    out = set()
    for line in FENCE.sub("", md.read_text()).splitlines():
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        s = slug(m.group(1))
        out.add(f"{s}-{seen[s]}" if s in seen else s)
        seen[s] = seen.get(s, 0) + 1
    return out


def links(text: str) -> list[str]:
    """Targets of the markdown links and images in ``text``, outside code blocks and code spans."""
    return LINK.findall(INLINE_CODE.sub("", FENCE.sub("", text)))


def broken(source: Path, base: Path, text: str) -> list[str]:
    """``source``'s relative links (resolved from folder ``base``) whose file or anchor does not exist."""
    bad = []
    for target in links(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):          # http:, https:, mailto: ...
            continue
        path, _, anchor = target.partition("#")
        dest = (base / path).resolve() if path else source
        where = f"{source.relative_to(REPO)}: ({target})"
        if not dest.exists():
            bad.append(f"{where}: no file {dest}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{where}: no heading with anchor #{anchor} in {dest.relative_to(REPO)}")
    return bad


def test_readme_is_an_entry_page():
    n = len((REPO / "README.md").read_text().splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines (at most {README_MAX_LINES}): move detail into docs/"


def test_readme_links_every_docs_page():
    linked = {(REPO / t.partition("#")[0]).resolve() for t in links((REPO / "README.md").read_text())}
    missing = [p.name for p in sorted((REPO / "docs").glob("*.md")) if p.resolve() not in linked]
    assert not missing, f"README.md's documentation list does not link: {missing}"


@pytest.mark.parametrize("page", ["README.md"] + sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md")))
def test_relative_links_resolve(page):
    md = REPO / page
    assert not (bad := broken(md, md.parent, md.read_text())), "\n".join(bad)


def test_notebook_links_resolve():
    """The notebooks' markdown cells (their sources in notebooks/src) link relative to notebooks/."""
    bad = [b for src in sorted((REPO / "notebooks" / "src").glob("*.py"))
           for b in broken(src, REPO / "notebooks", src.read_text())]
    assert not bad, "\n".join(bad)


def test_docs_pages_the_code_cites_exist():
    """A docstring or comment that says "docs/<page>.md" names a page that is in the repository."""
    cited = {}
    for folder in ("lib", "notebooks/src", "tools", "benchmarks", "tests"):
        for f in (REPO / folder).rglob("*.py"):
            for page in re.findall(r"docs/([\w.-]+\.md)", f.read_text()):
                cited.setdefault(page, []).append(str(f.relative_to(REPO)))
    assert cited, "no docs/ page cited anywhere: the pattern no longer matches the code"
    missing = {p: files for p, files in cited.items() if not (REPO / "docs" / p).exists()}
    assert not missing, f"cited but not in docs/: {missing}"


def test_slug_follows_github():
    assert slug("Precision chosen by the machine") == "precision-chosen-by-the-machine"
    assert slug("Speed and memory (`make bench`)") == "speed-and-memory-make-bench"
    assert slug("12. Pitfalls of the original implementation, and what thinkdiff does instead") == \
        "12-pitfalls-of-the-original-implementation-and-what-thinkdiff-does-instead"
    assert slug("The verdicts depend on the CPU's precision") == "the-verdicts-depend-on-the-cpus-precision"
