"""The pieces a report page is made of, and their two renderings (Markdown and HTML), so both always say the same."""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Heading:
    level: int  # 1 = the page title
    text: str


@dataclass(frozen=True)
class Paragraph:
    text: str  # **bold** and `code` marks are kept in Markdown; in HTML bold is rendered, backticks dropped


@dataclass(frozen=True)
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclass(frozen=True)
class Figure:
    path: Path  # relative to the report's directory
    caption: str


@dataclass(frozen=True)
class Code:
    text: str


Block = Heading | Paragraph | Table | Figure | Code


def _cell(text: str) -> str:
    """A Markdown table cell: a literal ``|`` (as in ``|D|``) would end the cell."""
    return text.replace("|", "\\|")


def to_markdown(blocks: list[Block]) -> str:
    out = []
    for b in blocks:
        if isinstance(b, Heading):
            out.append("#" * b.level + " " + b.text)
        elif isinstance(b, Paragraph):
            out.append(b.text)
        elif isinstance(b, Table):
            out.append("| " + " | ".join(map(_cell, b.header)) + " |\n|" + "---|" * len(b.header) + "\n" +
                       "\n".join("| " + " | ".join(map(_cell, r)) + " |" for r in b.rows))
        elif isinstance(b, Figure):
            out.append(f"![{b.caption}]({b.path.as_posix()})\n\n*{b.caption}*")
        elif isinstance(b, Code):
            out.append("```\n" + b.text + "\n```")
    return "\n\n".join(out) + "\n"


def _inline(text: str) -> str:
    parts = html.escape(text).split("**")
    return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts)).replace("`", "")


def to_html(blocks: list[Block], title: str) -> str:
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
           "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto;line-height:1.4}"
           "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}"
           "pre{background:#f4f4f4;padding:8px;overflow:auto}figure{margin:1em 0}img{max-width:100%}</style>"
           "</head><body>"]
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f"<h{b.level}>{html.escape(b.text)}</h{b.level}>")
        elif isinstance(b, Paragraph):
            out.append(f"<p>{_inline(b.text)}</p>")
        elif isinstance(b, Table):
            head = "".join(f"<th>{html.escape(h)}</th>" for h in b.header)
            body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in b.rows)
            out.append(f"<table><tr>{head}</tr>{body}</table>")
        elif isinstance(b, Figure):
            out.append(f"<figure><img src='{html.escape(b.path.as_posix())}' alt=''>"
                       f"<figcaption>{html.escape(b.caption)}</figcaption></figure>")
        elif isinstance(b, Code):
            out.append(f"<pre>{html.escape(b.text)}</pre>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"
