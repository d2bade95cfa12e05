"""Text for a terminal: what the CLI prints, made safe and lined up.

Trigger names, contexts and error texts come from users' code and data. A
control character or a bidirectional override in them could rewrite what the
terminal shows (move the cursor, reverse a line), so :func:`printable`
replaces them. Columns are measured in terminal cells, not characters: a CJK
character takes two cells and a combining accent none.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

# Bidirectional embeddings, overrides and isolates (Unicode category Cf).
_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c")


def printable(text: str) -> str:
    """``text`` with control characters shown as ``\\xNN`` / ``\\uNNNN`` and bidi controls removed.

    A tab or newline becomes a space, so one value stays on one line.
    """
    out: list[str] = []
    for ch in text:
        if ch in "\t\n\r":
            out.append(" ")
        elif ch in _BIDI:
            continue
        elif unicodedata.category(ch) == "Cc":
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)


def cell_width(text: str) -> int:
    """How many terminal cells ``text`` takes: wide (East Asian W/F) characters two, combining none."""
    width = 0
    for ch in text:
        if unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Me", "Cf"):
            continue
        width += 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
    return width


def clip(text: str, cells: int) -> str:
    """``text`` cut to at most ``cells`` cells, ending in ``...`` when it was cut."""
    if cell_width(text) <= cells:
        return text
    kept: list[str] = []
    used = 0
    for ch in text:
        w = cell_width(ch)
        if used + w > cells - 3:
            break
        kept.append(ch)
        used += w
    return "".join(kept) + "..."


def pad(text: str, cells: int) -> str:
    return text + " " * max(0, cells - cell_width(text))


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain table: upper-case headers, columns two spaces apart, lined up in cells."""
    cleaned = [[printable(cell) for cell in row] for row in rows]
    widths = [
        max([cell_width(h), *(cell_width(r[i]) for r in cleaned)]) for i, h in enumerate(headers)
    ]
    lines = ["  ".join(pad(h.upper(), w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(pad(c, w) for c, w in zip(row, widths, strict=True)) for row in cleaned]
    return "\n".join(line.rstrip() for line in lines)
