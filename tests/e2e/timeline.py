"""Draw what a run did as an SVG timeline: the fires on top, each execution's steps below.

The overlap-policy tests draw the pictures of ``docs/overlap.md`` from their
own real runs (``make screenshots`` writes them to ``docs/img``).
"""

from __future__ import annotations

from html import escape
from typing import Any

WIDTH = 760
LEFT = 110
ROW = 22
COLOURS = {"first": "#4878a8", "second": "#5fa35f"}


def spans(marks: list[dict[str, Any]], alive: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """One span per (execution, step): its start, and its end; a step that never ended (it was
    terminated) ends at its last sign of life (``alive``, by execution id) and is ``cut``."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for m in marks:
        key = (m["execution_id"], m["step"])
        span = found.setdefault(key, {"execution_id": m["execution_id"], "n": m["n"], "step": m["step"],
                                      "start": None, "end": None, "cut": False})
        span[m["event"]] = m["t"]
    for span in found.values():
        if span["end"] is None and alive and span["execution_id"] in alive:
            span["end"], span["cut"] = alive[span["execution_id"]], True
    return sorted(found.values(), key=lambda s: (s["start"] or 0.0))


def svg(title: str, fires: list[dict[str, Any]], marks: list[dict[str, Any]], until: float,
        alive: dict[str, float] | None = None) -> str:
    """The picture: time runs right; a tick per fire (its ``n``); a row per execution."""
    steps = spans(marks, alive)
    origin = min([f["t"] for f in fires] + [s["start"] for s in steps if s["start"]])
    scale = (WIDTH - LEFT - 20) / max(until - origin, 1.0)
    executions: list[str] = []
    for s in steps:
        if s["execution_id"] not in executions:
            executions.append(s["execution_id"])
    height = 70 + ROW * len(executions) + 30

    def x(t: float) -> float:
        return LEFT + (t - origin) * scale

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
           'font-family="sans-serif" font-size="11">',
           f'<rect width="{WIDTH}" height="{height}" fill="white"/>',
           f'<text x="10" y="18" font-size="13" font-weight="bold">{escape(title)}</text>',
           '<text x="10" y="44">fires (n)</text>']
    for f in fires:
        out.append(f'<line x1="{x(f["t"]):.1f}" y1="34" x2="{x(f["t"]):.1f}" y2="48" stroke="#888"/>')
        out.append(f'<text x="{x(f["t"]):.1f}" y="60" text-anchor="middle" fill="#555">{f["n"]}</text>')
    for row, execution_id in enumerate(executions):
        y = 70 + ROW * row
        mine = [s for s in steps if s["execution_id"] == execution_id]
        out.append(f'<text x="10" y="{y + 14}">run of n={mine[0]["n"]}</text>')
        for s in mine:
            if s["start"] is None:
                continue
            end = s["end"] if s["end"] is not None else until
            colour = "#c0504d" if s["cut"] or s["end"] is None else COLOURS.get(s["step"], "#999")
            width = max(x(end) - x(s["start"]), 1)
            out.append(f'<rect x="{x(s["start"]):.1f}" y="{y + 3}" width="{width:.1f}" '
                       f'height="{ROW - 8}" fill="{colour}"><title>{escape(s["step"])}</title></rect>')
    legend_y = height - 12
    out.append(f'<rect x="10" y="{legend_y - 9}" width="10" height="10" fill="{COLOURS["first"]}"/>'
               f'<text x="24" y="{legend_y}">first step</text>'
               f'<rect x="100" y="{legend_y - 9}" width="10" height="10" fill="{COLOURS["second"]}"/>'
               f'<text x="114" y="{legend_y}">second step</text>'
               f'<rect x="210" y="{legend_y - 9}" width="10" height="10" fill="#c0504d"/>'
               f'<text x="224" y="{legend_y}">cut short (terminated)</text>')
    out.append("</svg>")
    return "\n".join(out)
