"""A small report document: headings, paragraphs, tables, images and code, rendered to Markdown (images as
files next to it) and to self-contained HTML (images embedded as data URIs, no external references)."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}table{border-collapse:collapse;margin:1em 0;font-size:.92em}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right}th{background:#f2f2f2}td:first-child,
th:first-child{text-align:left}img{max-width:100%;border:1px solid #eee;margin:.5em 0}pre{background:#f6f6f6;
padding:.8em;overflow-x:auto;font-size:.85em}code{background:#f6f6f6;padding:0 .2em}blockquote{border-left:4px
solid #e0a800;margin:1em 0;padding:.3em 1em;background:#fff8e1}"""


def _inline_html(text: str) -> str:
    t = html.escape(text)
    t = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", t)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", t)


class Document:
    def __init__(self, title: str):
        self.title = title
        self.blocks: list[tuple] = []

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(("h", level, text))

    def paragraph(self, text: str) -> None:
        self.blocks.append(("p", text))

    def bullets(self, items: list[str]) -> None:
        if items:
            self.blocks.append(("ul", items))

    def note(self, text: str) -> None:
        self.blocks.append(("quote", text))

    def table(self, header: list[str], rows: list[list]) -> None:
        self.blocks.append(("table", header, [[str(c) for c in r] for r in rows]))

    def image(self, path: Path, alt: str) -> None:
        """An image file inside the report folder (Markdown links to it, HTML embeds it)."""
        self.blocks.append(("img", Path(path), alt))

    def code(self, text: str) -> None:
        self.blocks.append(("code", text))

    def markdown(self, root: Path) -> str:
        out = [f"# {self.title}", ""]
        for b in self.blocks:
            kind = b[0]
            if kind == "h":
                out += ["#" * b[1] + " " + b[2], ""]
            elif kind == "p":
                out += [b[1], ""]
            elif kind == "ul":
                out += [f"- {i}" for i in b[1]] + [""]
            elif kind == "quote":
                out += [f"> {b[1]}", ""]
            elif kind == "table":
                out += ["| " + " | ".join(b[1]) + " |", "|" + "---|" * len(b[1])]
                out += ["| " + " | ".join(r) + " |" for r in b[2]] + [""]
            elif kind == "img":
                out += [f"![{b[2]}]({b[1].relative_to(root).as_posix()})", ""]
            elif kind == "code":
                out += ["```", b[1], "```", ""]
        return "\n".join(out)

    def html(self) -> str:
        out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
               f"<title>{html.escape(self.title)}</title><style>{_CSS}</style></head><body>",
               f"<h1>{html.escape(self.title)}</h1>"]  # fmt: skip
        for b in self.blocks:
            kind = b[0]
            if kind == "h":
                out.append(f"<h{b[1]}>{_inline_html(b[2])}</h{b[1]}>")
            elif kind == "p":
                out.append(f"<p>{_inline_html(b[1])}</p>")
            elif kind == "ul":
                out.append("<ul>" + "".join(f"<li>{_inline_html(i)}</li>" for i in b[1]) + "</ul>")
            elif kind == "quote":
                out.append(f"<blockquote>{_inline_html(b[1])}</blockquote>")
            elif kind == "table":
                head = "".join(f"<th>{_inline_html(h)}</th>" for h in b[1])
                body = "".join("<tr>" + "".join(f"<td>{_inline_html(c)}</td>" for c in r) + "</tr>" for r in b[2])
                out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            elif kind == "img":
                data = base64.b64encode(b[1].read_bytes()).decode()
                out.append(f'<img alt="{html.escape(b[2])}" src="data:image/png;base64,{data}">')
            elif kind == "code":
                out.append(f"<pre>{html.escape(b[1])}</pre>")
        out.append("</body></html>")
        return "\n".join(out)
