"""Sphinx extension: re-run every chapter when the minicrate library changes.

The chapters are executed through jupyter-cache (``execute_notebooks: cache``),
which keys a notebook's cached outputs on its *own* code cells only, and
Sphinx re-reads a page only when its source changed.  Both would keep showing
results computed with an older minicrate after the library changed.  This
extension hashes the library's Python sources; when the digest differs from
the one recorded by the last successful build, it empties the notebook cache
and marks every page as outdated, so each chapter runs again against the
current code.  An unchanged library keeps the fast cached rebuild.
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
from pathlib import Path

STAMP = ".minicrate-digest"


def library_digest() -> str:
    """SHA-256 over the relative paths and contents of minicrate's .py files."""
    spec = importlib.util.find_spec("minicrate")
    if spec is None or not spec.submodule_search_locations:
        return "minicrate-not-importable"
    root = Path(list(spec.submodule_search_locations)[0])
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(b"\0")
        h.update(path.read_bytes())
        h.update(b"\0")
    return h.hexdigest()


def _build_root(app) -> Path:
    return Path(app.outdir).parent  # <path-output>/_build


def _builder_inited(app):
    stamp = _build_root(app) / STAMP
    digest = library_digest()
    app.env.minicrate_digest = digest
    previous = stamp.read_text().strip() if stamp.exists() else None
    app.env.minicrate_library_changed = previous != digest
    if previous is not None and previous != digest:
        configured = getattr(getattr(app.env, "mystnb_config", None), "execution_cache_path", "")
        cache = Path(configured or _build_root(app) / ".jupyter_cache")
        shutil.rmtree(cache, ignore_errors=True)
        app.env.minicrate_library_changed = True


def _outdated(app, env, added, changed, removed):
    if getattr(env, "minicrate_library_changed", False):
        return sorted(set(env.found_docs) - set(added) - set(changed))
    return []


def _finished(app, exception):
    if exception is None and getattr(app.env, "minicrate_digest", None):
        (_build_root(app) / STAMP).write_text(app.env.minicrate_digest + "\n")


def setup(app):
    app.connect("builder-inited", _builder_inited, priority=400)
    app.connect("env-get-outdated", _outdated)
    app.connect("build-finished", _finished)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
