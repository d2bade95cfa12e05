"""Reading the code blocks of README.md and docs/*.md the way a reader copies them.

Two kinds of ```python block:

* an **example**, run in one namespace with the page's other examples
  (``tests/docs/test_pages.py``);
* a **project file**, whose first line names where it goes: ``# proj.py``
  (the whole file) or ``# proj/settings.py: add at the end``. A page's files
  are assembled into a folder and run with the commands of its ```bash
  blocks by the tests that build the page's project
  (``tests/e2e/test_docs_projects.py``).

``<!-- test-check ... -->`` comments hold assertions run after the example
before them. There is no hidden setup: what a reader sees is what runs.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

_PIECE = re.compile(
    r"```(?P<lang>python|bash)\n(?P<code>.*?)```|<!--\s*test-(?P<kind>\w+)\n(?P<hidden>.*?)-->", re.S
)
_FILE = re.compile(r"^# (?P<path>[\w./-]+\.py)(?P<append>: add at the end)?\n")


@dataclass(frozen=True)
class Piece:
    kind: str  # "example", "file", "bash" or "check"
    code: str
    line: int
    path: str | None = None
    append: bool = False


def pieces(page: Path) -> list[Piece]:
    text = page.read_text()
    found: list[Piece] = []
    for match in _PIECE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        if match.group("kind") is not None:
            kind = match.group("kind")
            if kind != "check":
                raise AssertionError(
                    f"{page.name} line {line}: <!-- test-{kind} --> is not allowed; a page's reader "
                    "must see everything its examples need (only test-check is allowed)"
                )
            found.append(Piece("check", textwrap.dedent(match.group("hidden")), line))
            continue
        code = match.group("code")
        if match.group("lang") == "bash":
            found.append(Piece("bash", code, line))
            continue
        header = _FILE.match(code)
        if header is None:
            found.append(Piece("example", code, line))
        else:
            found.append(Piece("file", code, line, header.group("path"), bool(header.group("append"))))
    return found


def project_files(page: Path) -> dict[str, list[Piece]]:
    """The page's project files, by path, in page order (a whole file, then additions)."""
    files: dict[str, list[Piece]] = {}
    for piece in pieces(page):
        if piece.kind == "file":
            assert piece.path is not None
            files.setdefault(piece.path, []).append(piece)
    return files


def commands(page: Path) -> list[str]:
    """Every command line of the page's ```bash blocks, comments and continuations joined."""
    lines: list[str] = []
    for piece in pieces(page):
        if piece.kind != "bash":
            continue
        for raw in piece.code.splitlines():
            line = raw.split("  #")[0].strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def write_project(page: Path, folder: Path, rename: dict[str, str] | None = None) -> list[Path]:
    """Write the page's project files into ``folder`` as a reader would; return the paths written.

    A whole file replaces what is there; an addition is appended to the file
    (which must exist: ``startproject`` or an earlier block made it).
    ``rename`` replaces whole words (a project's own names) in paths and code.
    """
    written: list[Path] = []
    for path, parts in project_files(page).items():
        target = folder / _renamed(path, rename)
        for part in parts:
            code = _renamed(part.code, rename)
            if part.append:
                assert target.exists(), f"{page.name} line {part.line}: {path} must exist to be added to"
                with target.open("a") as handle:
                    handle.write("\n\n" + code)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(code)
        written.append(target)
    return written


def _renamed(text: str, rename: dict[str, str] | None) -> str:
    for old, new in (rename or {}).items():
        text = re.sub(rf"\b{re.escape(old)}\b", new, text)
    return text
