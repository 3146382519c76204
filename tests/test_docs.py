"""The documentation's links hold: every relative link in the README, ``docs/`` and the other
Markdown pages of the repository names a file that exists, and every ``#anchor`` names a heading
of its page under GitHub's slug rules. The README stays short and gives the test command that
``.ci/run`` runs. No network: external links are not checked."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$")
# [text](target) and ![alt](target); the text may hold one level of brackets (badges, code).
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+[\"'(][^)]*)?\)")
REFERENCE_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
HTML_SRC = re.compile(r"<(?:img|a)\b[^>]*?\b(?:src|href)=[\"']([^\"']+)[\"']", re.IGNORECASE)
HTML_ID = re.compile(r"<[a-z]+\b[^>]*?\b(?:id|name)=[\"']([^\"']+)[\"']", re.IGNORECASE)
CODE_SPAN = re.compile(r"(`+).+?\1")


def markdown_files() -> list[Path]:
    """README, docs/**, and the other Markdown pages of the repository (not tools' caches)."""
    files = {README, *ROOT.glob("*.md"), *ROOT.glob("docs/**/*.md")}
    files |= {*ROOT.glob("deploy/*.md"), *ROOT.glob("bench/*.md")}
    return sorted(p for p in files if p.is_file())


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks, with inline code spans blanked out."""
    lines, fence = [], ""
    for line in text.splitlines():
        m = FENCE.match(line)
        if fence:
            if m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence):
                fence = ""
            continue
        if m:
            fence = m.group(1)
            continue
        lines.append(CODE_SPAN.sub("", line))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text (github-slugger): inline markup reduced to its
    text, lower case, every character but letters, digits, marks, ``_``, ``-`` and spaces
    dropped, each space a hyphen."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links and images: their text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = re.sub(r"(?<!\w)_+|_+(?!\w)", "", text)  # _emphasis_ (snake_case keeps its _)
    text = text.replace("`", "").lower()
    kept = []
    for ch in text:
        category = unicodedata.category(ch)
        if ch in "-_ " or category[0] in "LMN" or category == "Pc":
            kept.append(ch)
    return "".join(kept).replace(" ", "-")


def headings_of(text: str) -> list[str]:
    """The heading texts of a page, fenced code left out (setext headings included)."""
    out: list[str] = []
    fence = ""
    previous = ""
    for line in text.splitlines():
        m = FENCE.match(line)
        if fence:
            if m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence):
                fence = ""
            continue
        if m:
            fence = m.group(1)
            previous = ""
            continue
        h = HEADING.match(line)
        if h:
            out.append(h.group(2))
        elif re.match(r"^ {0,3}(=+|-+)\s*$", line) and previous.strip() and not previous.startswith("|"):
            out.append(previous.strip())
        previous = line
    return out


def anchors_of(path: Path, cache: dict[Path, set[str]] = {}) -> set[str]:  # noqa: B006
    """Every anchor a page has: heading slugs with GitHub's -1, -2 for repeats, and HTML ids."""
    if path not in cache:
        text = path.read_text(encoding="utf-8")
        seen: dict[str, int] = {}
        anchors: set[str] = set()
        for heading in headings_of(text):
            base = slug(heading)
            n = seen.get(base, 0)
            anchors.add(base if n == 0 else f"{base}-{n}")
            seen[base] = n + 1
        anchors |= set(HTML_ID.findall(text))
        cache[path] = anchors
    return cache[path]


def links_of(path: Path) -> list[tuple[int, str]]:
    """(line number, target) for each link, image and HTML src/href outside code."""
    out = []
    for number, line in enumerate(prose_lines(path.read_text(encoding="utf-8")), 1):
        for pattern in (INLINE_LINK, HTML_SRC):
            out += [(number, t) for t in pattern.findall(line)]
        m = REFERENCE_DEF.match(line)
        if m:
            out.append((number, m.group(1)))
    return out


def broken_links(path: Path) -> list[str]:
    problems = []
    for _number, target in links_of(path):
        if not target or re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):
            continue  # http(s), mailto: not checked (no network)
        where, _, anchor = target.partition("#")
        dest = (path.parent / unquote(where)).resolve() if where else path
        label = f"{path.relative_to(ROOT)}: {target}"
        if not dest.exists():
            problems.append(
                f"{label}: no file {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest}"
            )
            continue
        if anchor and dest.suffix == ".md" and unquote(anchor) not in anchors_of(dest):
            problems.append(f"{label}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    return problems


@pytest.mark.parametrize("page", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_and_anchors_resolve(page: Path) -> None:
    assert broken_links(page) == []


def test_readme_is_at_most_300_lines() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines: move sections into docs/"


def test_readme_test_command_is_what_ci_runs() -> None:
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.strip()]
    command = ci[-1]
    readme = README.read_text(encoding="utf-8")
    blocks = re.findall(r"^```bash\n(.*?)^```", readme, re.MULTILINE | re.DOTALL)
    assert any(command in block.splitlines() for block in blocks), (
        f"the README's test command is not the last line of .ci/run:\n{command}"
    )
    assert "pytest" in command


def test_slugs_follow_github(tmp_path: Path) -> None:
    assert slug("Upstream providers (gateway)") == "upstream-providers-gateway"
    assert slug("Several machines: PostgreSQL and S3") == "several-machines-postgresql-and-s3"
    assert slug("Webhooks, live progress, cancellation, idempotency") == (
        "webhooks-live-progress-cancellation-idempotency"
    )
    assert slug("`fluxserve serve` — the `--gpus` flag") == "fluxserve-serve--the---gpus-flag"
    assert slug("1024×1024 at 28 steps") == "10241024-at-28-steps"
    assert slug("snake_case stays") == "snake_case-stays"
    assert slug("**Bold** and _emphasis_") == "bold-and-emphasis"
    page = "# A\n\n## Notes\n\n```\n# not a heading\n```\n\n## Notes\n\nSetext\n------\n"
    path = tmp_path / "probe.md"
    path.write_text(page)
    assert anchors_of(path, {}) == {"a", "notes", "notes-1", "setext"}
