"""Render a model card's blocks as Markdown, or as one self-contained HTML page (figures inline)."""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping

from medtune.model_card._content import ModelCard
from medtune.model_card._layout import Bullets, Figure, Heading, Table, Text, layout

_CSS = """
body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: left; font-variant-numeric: tabular-nums; }
th { background: #f2f2f2; }
.warning { background: #fff3cd; border: 1px solid #e0b000; padding: 0.6rem 1rem; font-weight: 600; }
figure { margin: 1rem 0; } figure img { max-width: 100%; } figcaption { color: #555; font-size: 0.9rem; }
"""


def render_markdown(card: ModelCard, figures: Mapping[str, str] | None = None) -> str:
    """Markdown; ``figures`` maps figure keys to relative paths (figures without one are left out)."""
    figures = figures or {}
    out: list[str] = []
    for block in layout(card, figures):
        if isinstance(block, Heading):
            out.append(f"{'#' * block.level} {block.text}")
        elif isinstance(block, Text):
            out.append(f"> **{block.text}**" if block.warning else block.text)
        elif isinstance(block, Bullets):
            out.append("\n".join(f"- {item}" for item in block.items))
        elif isinstance(block, Table):
            rows = [block.header, ["---"] * len(block.header), *block.rows]
            out.append("\n".join("| " + " | ".join(_cell(c) for c in row) + " |" for row in rows))
        elif isinstance(block, Figure):
            out.append(f"![{block.caption}]({figures[block.key]})\n\n*{block.caption}*")
    return "\n\n".join(out) + "\n"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_html(card: ModelCard, figures: Mapping[str, bytes] | None = None) -> str:
    """One HTML page with its style and PNG figures inline: it opens without any network access."""
    figures = figures or {}
    e = html.escape
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(card.title)} model card</title><style>{_CSS}</style></head><body>",
    ]
    for block in layout(card, figures):
        if isinstance(block, Heading):
            out.append(f"<h{block.level}>{e(block.text)}</h{block.level}>")
        elif isinstance(block, Text):
            out.append(f'<p class="warning">{e(block.text)}</p>' if block.warning else f"<p>{e(block.text)}</p>")
        elif isinstance(block, Bullets):
            out.append("<ul>" + "".join(f"<li>{e(item)}</li>" for item in block.items) + "</ul>")
        elif isinstance(block, Table):
            head = "".join(f"<th>{e(h)}</th>" for h in block.header)
            body = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in block.rows)
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif isinstance(block, Figure):
            data = base64.b64encode(figures[block.key]).decode("ascii")
            out.append(
                f'<figure><img alt="{e(block.caption)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{e(block.caption)}</figcaption></figure>"
            )
    out.append("</body></html>")
    return "\n".join(out) + "\n"
