#!/usr/bin/env python3
"""Static checks of the built book's HTML: links, anchors and loaded resources.

``check_links(html_dir)`` parses every built page and checks that

* every relative link (``<a href>``) points to a file that exists and, when it
  has a fragment (``page.html#equation-eq-rate``), to an element with that id;
  equation references (``{eq}``), figure and chapter references and citations
  are all such links, so this is where a broken cross-reference shows up;
* every resource a page loads (``img``/``script``/``iframe``/``source`` ``src``,
  ``link`` stylesheets, preloads and icons) is a file inside the build.

``external_resources(html_dir)`` lists resources a page would fetch from another
host (``http://``/``https://``/``//`` URLs in those attributes).  Plain links to
other sites (``<a href="https://...">``) are not requests and are allowed.

Standard library only.  Usage: ``python scripts/check_book_links.py book/_build/html``.
"""

from __future__ import annotations

import html.parser
import sys
import urllib.parse
from pathlib import Path

LOADING_LINK_RELS = {"stylesheet", "preload", "icon", "shortcut", "modulepreload", "prefetch"}
SKIP_DIRS = {"_static", "_sources", "_images", "reports", "_sphinx_design_static"}


class _Page(html.parser.HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()
        self.links: list[str] = []
        self.resources: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for key in ("id", "name"):
            if a.get(key) and (key == "id" or tag == "a"):
                self.ids.add(a[key])
        if tag == "a" and a.get("href") is not None:
            self.links.append(a["href"])
        if tag in ("img", "script", "iframe", "source", "audio", "video", "embed") and a.get("src"):
            self.resources.append(a["src"])
        if tag == "link" and a.get("href"):
            rels = set((a.get("rel") or "").lower().split())
            if rels & LOADING_LINK_RELS:
                self.resources.append(a["href"])


def _pages(html_dir: Path):
    for path in sorted(html_dir.rglob("*.html")):
        if not SKIP_DIRS.intersection(path.relative_to(html_dir).parts[:-1]):
            yield path


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def _is_external(url: str) -> bool:
    parsed = urllib.parse.urlsplit(url)
    return bool(parsed.scheme and parsed.scheme not in ("file",)) or url.startswith("//")


def check_links(html_dir) -> list[str]:
    """Broken internal links, missing anchors and missing resources (empty when all good)."""
    html_dir = Path(html_dir).resolve()
    parsed = {p: _parse(p) for p in _pages(html_dir)}
    problems = []
    for path, page in parsed.items():
        rel = path.relative_to(html_dir)
        for href in page.links:
            if _is_external(href) or href.startswith(("mailto:", "javascript:")):
                continue
            target, _, fragment = href.partition("#")
            target_path = (path.parent / urllib.parse.unquote(target)).resolve() if target else path
            if target_path.is_dir():
                target_path = target_path / "index.html"
            if not target_path.exists():
                problems.append(f"{rel}: link to missing file {href!r}")
                continue
            if fragment and target_path.suffix == ".html":
                ids = parsed[target_path].ids if target_path in parsed else _parse(target_path).ids
                if urllib.parse.unquote(fragment) not in ids:
                    problems.append(f"{rel}: link to missing anchor {href!r}")
        for src in page.resources:
            if _is_external(src) or src.startswith("data:"):
                continue
            target = urllib.parse.unquote(src.split("?", 1)[0].split("#", 1)[0])
            if not (path.parent / target).exists():
                problems.append(f"{rel}: loads missing file {src!r}")
    return problems


def external_resources(html_dir) -> list[str]:
    """Resources some page would fetch from another host (empty when all are local)."""
    html_dir = Path(html_dir).resolve()
    found = []
    for path in _pages(html_dir):
        for src in _parse(path).resources:
            if _is_external(src):
                found.append(f"{path.relative_to(html_dir)}: {src}")
    return found


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(__doc__)
        return 2
    external = [f"external resource: {r}" for r in external_resources(argv[0])]
    problems = check_links(argv[0]) + external
    for p in problems:
        print(p)
    print(f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
