"""Reports of EMM and study directories: Markdown + HTML pages with matplotlib figures."""

from diffmem.report.render import render_report, to_html, to_markdown

__all__ = ["render_report", "to_html", "to_markdown"]
