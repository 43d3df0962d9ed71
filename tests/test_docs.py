"""The documentation: the MkDocs site builds with ``--strict``, every relative link and
``#anchor`` of README.md and docs/*.md resolves, and mkdocs.yml's nav lists every
page. Offline and fast: no external link is fetched."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml
from markdown.extensions.toc import slugify as mkdocs_slugify

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
MKDOCS_YML = ROOT / "mkdocs.yml"

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
# [text](target) and ![alt](target), with an optional "title" after the target.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
EXTERNAL = ("http://", "https://", "mailto:")


def markdown_files(root: Path) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks."""
    lines, fence = [], None
    for number, line in enumerate(text.splitlines(), start=1):
        match = FENCE.match(line)
        if match and fence is None:
            fence = match.group(1)
        elif match and line.strip().startswith(fence or ""):
            fence = None
        elif fence is None:
            lines.append((number, line))
    return lines


def heading_text(raw: str) -> str:
    """A heading as it reads: code spans' content kept, link syntax dropped."""
    text = CODE_SPAN.sub(lambda match: match.group(2).strip(), raw)
    return re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)


def slug(text: str) -> str:
    """GitHub's anchor for a heading (MkDocs' toc gives the same for ours, which
    ``test_headings_slug_the_same_on_github_and_in_mkdocs`` checks): lowercase,
    punctuation removed except hyphens and underscores, each space a hyphen."""
    text = re.sub(r"[^\w\- ]", "", heading_text(text).strip().lower())
    return text.replace(" ", "-")


def headings(path: Path) -> list[str]:
    return [
        match.group(2)
        for _, line in prose_lines(path.read_text())
        if (match := HEADING.match(line))
    ]


def anchors(path: Path) -> set[str]:
    """Every heading's anchor; the second of two equal ones gets -1, and so on."""
    seen: Counter[str] = Counter()
    result = set()
    for text in headings(path):
        base = slug(text)
        result.add(base if seen[base] == 0 else f"{base}-{seen[base]}")
        seen[base] += 1
    return result


def links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every Markdown link and image outside code."""
    found = []
    for number, line in prose_lines(path.read_text()):
        prose = CODE_SPAN.sub("``", line)
        found += [(number, match.group(1)) for match in LINK.finditer(prose)]
    return found


def broken_links(files: list[Path], root: Path) -> list[str]:
    """Every relative link to a missing file or heading, every absolute one, every
    link from docs/ out of docs/ (not part of the site), every link from the README
    into docs/ that is not relative."""
    docs = (root / "docs").resolve()
    problems = []
    for path in files:
        where = path.relative_to(root)
        for number, target in links(path):
            at = f"{where}:{number}: {target}"
            if target.startswith(EXTERNAL):
                if path.name == "README.md" and re.search(r"/docs/[^/]+\.md", target):
                    problems.append(f"{at}: link into docs/ must be relative")
                continue
            if target.startswith("/"):
                problems.append(f"{at}: absolute link")
                continue
            file_part, _, anchor = target.partition("#")
            linked = (path.parent / file_part).resolve() if file_part else path
            if not linked.exists():
                problems.append(f"{at}: no such file")
                continue
            if path.resolve().is_relative_to(docs) and not linked.is_relative_to(docs):
                problems.append(f"{at}: leaves docs/ (name code paths in backticks)")
            if anchor and (linked.suffix != ".md" or anchor not in anchors(linked)):
                problems.append(f"{at}: no heading #{anchor} in {linked.name}")
    return problems


def mkdocs_build(config: Path, site_dir: Path) -> subprocess.CompletedProcess[str]:
    command = ["build", "--strict", "--site-dir", str(site_dir), "-f", str(config)]
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", *command],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )


def nav_pages(nav: list) -> list[str]:
    pages = []
    for entry in nav:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        pages += nav_pages(value) if isinstance(value, list) else [value]
    return pages


def test_the_site_builds_with_strict(tmp_path: Path) -> None:
    result = mkdocs_build(MKDOCS_YML, tmp_path / "site")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "site" / "index.html").exists()


def test_every_link_and_anchor_resolves() -> None:
    assert broken_links(markdown_files(ROOT), ROOT) == []


def test_the_readme_links_every_docs_page() -> None:
    linked = {
        (ROOT / target.partition("#")[0]).resolve()
        for _, target in links(ROOT / "README.md")
        if not target.startswith(EXTERNAL)
    }
    pages = {page.resolve() for page in DOCS.glob("*.md")} - {DOCS / "index.md"}
    assert pages <= linked, sorted(page.name for page in pages - linked)


def test_headings_slug_the_same_on_github_and_in_mkdocs() -> None:
    """The checker's anchors (GitHub's) are the site's too, so a README link to
    docs/page.md#heading works in both places."""
    for path in markdown_files(ROOT):
        for text in headings(path):
            assert slug(text) == mkdocs_slugify(heading_text(text), "-"), (path, text)


@pytest.mark.parametrize(
    ("heading", "expected"),
    [
        ("The knobs", "the-knobs"),
        ("Secure aggregation (SecAgg+)", "secure-aggregation-secagg"),
        (
            "The same on one machine: `scripts/local_federation.py`",
            "the-same-on-one-machine-scriptslocal_federationpy",
        ),
        ('What "reproducible" means here', "what-reproducible-means-here"),
        ("The `reproducible` switch", "the-reproducible-switch"),
    ],
)
def test_slug(heading: str, expected: str) -> None:
    assert slug(heading) == expected


def test_the_checker_reports_a_missing_file_and_a_missing_heading(
    tmp_path: Path,
) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "page.md").write_text(
        "# Page\n\n## Real heading\n\n## Twice\n\n## Twice\n\n"
        "[top](page.md#page) [self](#twice-1) [out](../code.py)\n\n"
        "```bash\n# not a heading\n[not a link](nowhere.md)\n```\n"
    )
    (tmp_path / "code.py").write_text("")
    (tmp_path / "README.md").write_text(
        "# Top\n\n"
        "[fine](docs/page.md#real-heading) ![fine](docs/page.md) "
        "[web](https://example.org/x#y) `[code](missing.md)`\n"
        "[gone](docs/missing.md) and [no heading](docs/page.md#not-there)\n"
        "[absolute](/docs/page.md) "
        "[github](https://github.com/o/r/blob/main/docs/page.md#real-heading)\n"
    )
    problems = broken_links(markdown_files(tmp_path), tmp_path)
    assert problems == [
        "README.md:4: docs/missing.md: no such file",
        "README.md:4: docs/page.md#not-there: no heading #not-there in page.md",
        "README.md:5: /docs/page.md: absolute link",
        "README.md:5: https://github.com/o/r/blob/main/docs/page.md#real-heading: "
        "link into docs/ must be relative",
        "docs/page.md:9: ../code.py: leaves docs/ (name code paths in backticks)",
    ]
    assert anchors(tmp_path / "docs" / "page.md") == {
        "page",
        "real-heading",
        "twice",
        "twice-1",
    }


def test_strict_mkdocs_fails_on_a_broken_link_and_a_missing_anchor(
    tmp_path: Path,
) -> None:
    """A two-page project with this repository's settings (validation included)."""
    config = yaml.safe_load(MKDOCS_YML.read_text())
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text(
        "# Home\n\n[other](other.md) [gone](missing.md)\n"
        "[bad](other.md#no-such-heading)\n"
    )
    (docs / "other.md").write_text("# Other\n\n## Real\n")
    config.update(docs_dir=str(docs), nav=[{"Home": "index.md"}, {"Other": "other.md"}])
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump(config))

    result = mkdocs_build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert result.returncode != 0
    assert "missing.md" in result.stderr
    assert "no-such-heading" in result.stderr

    (docs / "index.md").write_text("# Home\n\n[other](other.md#real)\n")
    assert mkdocs_build(tmp_path / "mkdocs.yml", tmp_path / "site").returncode == 0


def test_nav_lists_every_page_and_only_pages_that_exist() -> None:
    config = yaml.safe_load(MKDOCS_YML.read_text())
    assert config["docs_dir"] == "docs"
    listed = nav_pages(config["nav"])
    assert len(listed) == len(set(listed)), listed
    assert sorted(listed) == sorted(page.name for page in DOCS.glob("*.md"))
