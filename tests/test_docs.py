"""The Markdown files hold together: every relative link resolves, and every table or figure a results
README quotes (`tables/...`, `figures/...`) exists. Reads files only; no torch, no data."""

from __future__ import annotations

import glob
import re
import subprocess
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parent.parent

FENCE = re.compile(r"^\s*(```|~~~)")
CODE_SPAN = re.compile(r"``.+?``|`[^`\n]*`")
# [text](target) and ![alt](target), with an optional "title"; and reference definitions [id]: target
INLINE_LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$", re.MULTILINE)
EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto:, any other scheme
URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://\S+")
# a quoted table or figure: an optional folder prefix, then tables/ or figures/, then a file name
# with an extension ('*' allowed, as in tables/versus_*.md)
RESULT_FILE = re.compile(r"(?<![\w./-])((?:[\w.-]+/)*(?:tables|figures)/[\w.*-]*\w\.\w+)")


def markdown_files(root: Path = ROOT) -> list[Path]:
    """The repository's Markdown files: git's tracked ones and the new ones it does not ignore (so a
    page added but not yet committed is checked too); every *.md outside hidden folders without git."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z", "--", "*.md"],
            cwd=root, capture_output=True, check=True, text=True,
        ).stdout
        names = sorted({n for n in out.split("\0") if n})
        return [root / n for n in names if (root / n).is_file()]
    except (OSError, subprocess.CalledProcessError):
        return sorted(p for p in root.rglob("*.md")
                      if not any(part.startswith(".") for part in p.relative_to(root).parts))


def prose(text: str) -> str:
    """The text outside fenced code blocks, with inline code spans blanked (a link in code is not a link)."""
    kept, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            kept.append(CODE_SPAN.sub("code", line))
    return "\n".join(kept)


def link_targets(text: str) -> list[str]:
    body = prose(text)
    return INLINE_LINK.findall(body) + REFERENCE_LINK.findall(body)


def broken_links(path: Path, root: Path = ROOT) -> list[str]:
    """Relative links in one Markdown file whose file or folder does not exist (anchors stripped;
    external links and same-page anchors skipped; a leading '/' is the repository root)."""
    broken = []
    for target in link_targets(path.read_text(encoding="utf-8")):
        if EXTERNAL.match(target) or target.startswith("#"):
            continue
        local = unquote(target.split("#", 1)[0].split("?", 1)[0])
        if not local:
            continue
        resolved = root / local.lstrip("/") if local.startswith("/") else path.parent / local
        if not resolved.exists():
            broken.append(target)
    return broken


def quoted_result_files(text: str) -> list[str]:
    """Every `tables/...` or `figures/...` file a results README names, in prose or in code."""
    return sorted(set(RESULT_FILE.findall(URL.sub(" ", text))))


def missing_result_files(readme: Path, root: Path = ROOT) -> list[str]:
    """Quoted tables and figures that exist neither beside the README nor from the repository root."""
    missing = []
    for name in quoted_result_files(readme.read_text(encoding="utf-8")):
        bases = (readme.parent, root)
        if "*" in name:
            found = any(glob.glob(str(base / name)) for base in bases)
        else:
            found = any((base / name).exists() for base in bases)
        if not found:
            missing.append(name)
    return missing


MARKDOWN = markdown_files()
RESULTS_READMES = sorted((ROOT / "results").glob("*/README.md"))


def _id(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_the_markdown_files_are_found() -> None:
    names = {_id(p) for p in MARKDOWN}
    assert "README.md" in names
    assert RESULTS_READMES, "no results/*/README.md found"


@pytest.mark.parametrize("path", MARKDOWN, ids=_id)
def test_relative_links_resolve(path: Path) -> None:
    broken = broken_links(path)
    assert not broken, f"{_id(path)} links to what does not exist: {', '.join(broken)}"


@pytest.mark.parametrize("readme", RESULTS_READMES, ids=_id)
def test_quoted_tables_and_figures_exist(readme: Path) -> None:
    missing = missing_result_files(readme)
    assert not missing, (f"{_id(readme)} quotes tables or figures that exist neither in "
                         f"{_id(readme.parent)}/ nor from the repository root: {', '.join(missing)}")


def test_the_checks_catch_what_is_missing(tmp_path: Path) -> None:
    """The checkers themselves: a broken link and a missing table are found, good ones are not."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "here.md").write_text("x")
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables" / "accuracy.md").write_text("x")
    page = tmp_path / "README.md"
    page.write_text(
        "[ok](docs/here.md#part) ![fig](docs/here.md) [web](https://example.org/x.md) [top](#top)\n"
        "[mail](mailto:a@b.c) [gone](docs/gone.md#x) [root](/docs/here.md) `[code](not/a/link.md)`\n"
        "```\n[fenced](also/not/a/link.md)\n```\n[ref]: docs/missing.md\n"
        "Quoted: `tables/accuracy.md`, `tables/fit.md`, figures/curve.png, https://x.org/figures/a.png\n"
    )
    assert broken_links(page, root=tmp_path) == ["docs/gone.md#x", "docs/missing.md"]
    assert missing_result_files(page, root=tmp_path) == ["figures/curve.png", "tables/fit.md"]
