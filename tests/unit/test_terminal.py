"""What the CLI prints: escaped control characters, columns lined up in terminal cells."""

from __future__ import annotations

from cloaca_celery.terminal import cell_width, clip, printable, table


def test_printable_escapes_controls_and_drops_bidi_overrides() -> None:
    assert printable("a\x1b[31mb") == "a\\x1b[31mb"
    assert printable("one\ntwo\tthree") == "one two three"
    assert printable("\u202egnp.exe") == "gnp.exe"
    assert printable("caf\u00e9 \u6ce8\u6587") == "caf\u00e9 \u6ce8\u6587"


def test_wide_and_combining_characters_are_measured_in_cells() -> None:
    assert cell_width("abc") == 3
    assert cell_width("\u6ce8\u6587") == 4  # two CJK characters, two cells each
    assert cell_width("e\u0301") == 1  # e + combining acute accent


def test_table_lines_up_wide_names() -> None:
    rows = [["\u6ce8\u6587\u76e3\u8996", "orders"], ["plain", "x"]]
    lines = table(["name", "workflow"], rows).splitlines()
    # Column two starts at the same cell in every line: 8 cells of CJK, then two spaces.
    second = ["WORKFLOW", "orders", "x"]
    offsets = [cell_width(line[: line.rindex(value)]) for line, value in zip(lines, second, strict=True)]
    assert offsets == [10, 10, 10], lines


def test_clip_cuts_by_cells_and_says_so() -> None:
    assert clip("short", 10) == "short"
    assert clip("a" * 20, 10) == "a" * 7 + "..."
    assert cell_width(clip("\u6ce8" * 10, 9)) <= 9
