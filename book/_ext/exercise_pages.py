"""Sphinx extension: the exercise notebooks become pages of the book, as students get them.

Before the table of contents is read, every MyST notebook in ``exercises/`` is
stripped of its solutions by :func:`minicrate.grading.student.strip_notebook`
(the same code as ``python -m minicrate make-student``) and written to
``book/exercises/`` twice: as a MyST page the book renders without running it
(its checks would report "not implemented"), and as the ``.ipynb`` the page
offers for download.  Each page opens with links to its download, to the book
chapter it goes with, and back.  The folder is generated (and ignored by git):
the exercises themselves live in one place only.

A file is rewritten only when its content changes, so an unchanged exercise
keeps Sphinx's incremental rebuild.
"""

from __future__ import annotations

from pathlib import Path

import jupytext
import nbformat
import yaml

from minicrate.grading.student import is_exercise, strip_notebook

OUT = "exercises"


def _numbered_chapters(srcdir: Path) -> list:
    """The documents of the numbered parts of ``_toc.yml``, in order (chapter 1, 2, ...)."""
    toc = yaml.safe_load((srcdir / "_toc.yml").read_text(encoding="utf-8"))
    return [c["file"] for part in toc.get("parts", []) if part.get("numbered")
            for c in part["chapters"] if not c["file"].startswith(f"{OUT}/")]


def _write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")


def _header(stem: str, chapter: str | None) -> str:
    back = f"It goes with {{doc}}`../{chapter}`. " if chapter else ""
    return (f"{back}{{download}}`Download this notebook (.ipynb) <{stem}.ipynb>` and open it in "
            "Jupyter; run `python -m minicrate grade` on your copy to grade it "
            "({doc}`../instructors`). Every task is a function whose body raises "
            "`NotImplementedError` until you write it.")


def write_pages(app, config) -> None:
    srcdir = Path(app.srcdir).resolve()
    src, dest = srcdir.parent / "exercises", srcdir / OUT
    dest.mkdir(exist_ok=True)
    chapters = _numbered_chapters(srcdir)
    written = set()
    for path in sorted(src.glob("*.md")):
        if not is_exercise(str(path)):
            continue
        nb = strip_notebook(jupytext.read(path, fmt="md:myst"), str(path))
        number = int(path.stem[2:4]) if path.stem[2:4].isdigit() else 0
        chapter = chapters[number - 1] if 0 < number <= len(chapters) else None
        first = next(i for i, c in enumerate(nb.cells) if c.cell_type == "markdown")
        nb.cells.insert(first + 1, nbformat.v4.new_markdown_cell(_header(path.stem, chapter)))
        page = jupytext.writes(nb, fmt="md:myst")
        # myst-nb reads this front-matter key: render the page without running it.
        page = page.replace("\nkernelspec:", "\nmystnb:\n  execution_mode: \"off\"\nkernelspec:", 1)
        _write_if_changed(dest / path.name, page)
        download = nbformat.v4.new_notebook(cells=[c for i, c in enumerate(nb.cells) if i != first + 1],
                                           metadata=dict(nb.metadata))
        _write_if_changed(dest / f"{path.stem}.ipynb", jupytext.writes(download, fmt="ipynb"))
        written |= {path.name, f"{path.stem}.ipynb"}
    for stale in dest.iterdir():
        if stale.name not in written:
            stale.unlink()


def setup(app):
    # Before sphinx-external-toc (priority 900) reads _toc.yml, whose Exercises part lists these pages.
    app.connect("config-inited", write_pages, priority=100)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
