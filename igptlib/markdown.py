"""Text from records made safe for Markdown (and so for the HTML rendered from it), and tables of it.

A record is data, never markup: a `hardware` value of `<script>...</script>` or a record folder named
`<img onerror=...>` must reach a reader as those characters. Every value goes through `escape`
(Markdown's active characters get a backslash, then HTML's <, > and & become entities), and the
pieces of Markdown built here (`code`, `table`, `image`) are `Markdown` strings, which `escape`
passes through unchanged.
"""
from __future__ import annotations

import html
import math
import re
from pathlib import PurePosixPath
from urllib.parse import quote

# Characters that start Markdown syntax inside a line: emphasis, code, links and images, tables,
# headings, block quotes (">" becomes an entity), and the backslash itself.
ACTIVE = re.compile(r"([\\`*_\[\]|#~])")


class Markdown(str):
    """Text that is already safe Markdown: escaped values and the syntax built around them."""


def escape(value) -> Markdown:
    """Any value as literal text in Markdown and HTML, on one line (a table cell cannot hold two)."""
    if isinstance(value, Markdown):
        return value
    text = " ".join(str(value).split())
    return Markdown(html.escape(ACTIVE.sub(r"\\\1", text), quote=False))


def code(value) -> Markdown:
    """A name or command shown as code; its characters stay literal."""
    return Markdown(f"<code>{escape(value)}</code>")


def number(value, digits: int = 4) -> Markdown:
    """A measured number rounded for a table; "–" where it was not measured, "not a number" for NaN."""
    if value is None:
        return Markdown("–")
    if isinstance(value, float) and not math.isfinite(value):
        return Markdown("not a number" if math.isnan(value) else "infinite")
    return Markdown(f"{value:.{digits}f}")


def join(parts, separator: str = ", ") -> Markdown:
    """Values joined into one piece of text, each escaped (the separator is the caller's own text)."""
    return Markdown(separator.join(escape(part) for part in parts))


def table(header: list, rows: list[list], empty: str = "None measured yet.") -> Markdown:
    """A Markdown table, every cell escaped; `empty` where there are no rows."""
    if not rows:
        return Markdown(escape(empty))
    lines = ["| " + " | ".join(escape(cell) for cell in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(escape(cell) for cell in row) + " |" for row in rows]
    return Markdown("\n".join(lines))


def bullets(items: list) -> Markdown:
    """A bulleted list, each item escaped."""
    return Markdown("\n".join(f"- {escape(item)}" for item in items))


def link(target: str, text) -> Markdown:
    """A link to a relative path (each path segment percent-encoded, so a name cannot end the URL)."""
    return Markdown(f"[{escape(text)}]({quote(str(PurePosixPath(target)))})")


def image(target: str, caption) -> Markdown:
    """An image by relative path, with its caption above it in bold."""
    return Markdown(f"**{escape(caption)}**\n\n![{escape(caption)}]({quote(str(PurePosixPath(target)))})")


def fenced(lines: list[str], language: str = "") -> Markdown:
    """Lines shown verbatim in a code block, its fence longer than any run of backticks in them, so
    that no line can close it (inside it, Markdown and HTML show as they are)."""
    longest = max((len(run) for line in lines for run in re.findall(r"`+", str(line))), default=0)
    fence = "`" * max(3, longest + 1)
    return Markdown("\n".join([fence + language, *(str(line) for line in lines), fence]))


def show(*parts) -> None:
    """Display Markdown parts in a notebook, one paragraph each (their values already escaped)."""
    from IPython.display import Markdown as Shown, display

    display(Shown("\n\n".join(escape(part) for part in parts)))
