"""The Jupyter Book: it builds strictly, every chapter runs, and a real browser shows it.

The book is built once per test session (the ``built_book`` fixture), exactly as
``make book`` does -- ``jupyter-book build -W -n --keep-going book`` -- so a
warning, a broken cross-reference or a failing notebook cell fails the build.
It goes to ``book/_build`` (the notebook cache there makes a rebuild of an
unchanged book fast) unless ``MINICRATE_BOOK_OUT`` names another folder; the
HTML of any earlier build is removed first, so every page checked here comes
from this build.

All tests share the xdist group "book", so under ``pytest -n 2 --dist loadgroup``
they run on one worker and the book is built once.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
SCRIPTS = ROOT / "scripts"

pytestmark = [pytest.mark.book, pytest.mark.xdist_group("book")]


def _load_script(name):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


browser_check = _load_script("browser_check")
check_book_links = _load_script("check_book_links")


def _all_toc_files():
    yaml = pytest.importorskip("yaml")
    toc = yaml.safe_load((BOOK / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc.get("parts", []):
        files += [c["file"] for c in part["chapters"]]
    return files


def _toc_files():
    """The book's own pages (the exercise pages are generated at build time from exercises/)."""
    return [f for f in _all_toc_files() if not f.startswith("exercises/")]


def _exercise_pages():
    return [f for f in _all_toc_files() if f.startswith("exercises/")]


def _source(name):
    return BOOK / f"{name}.md"


def _has_code(text):
    return "```{code-cell}" in text


def _jupyter_book():
    exe = Path(sys.executable).with_name("jupyter-book")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("jupyter-book")
    if found:
        return [found]
    pytest.skip("jupyter-book is not installed (pip install -e '.[book]')")


@pytest.fixture(scope="session")
def built_book():
    """Build the book once per test run; returns (returncode, log text, html dir, seconds).

    Under pytest-xdist each worker has its own session, so a file lock and a
    stamp naming the run (``PYTEST_XDIST_TESTRUNUID``) make the workers share
    one build instead of building the book once each.
    """
    pytest.importorskip("jupyter_book",
                        reason="jupyter-book is not installed (pip install -e '.[book]')")
    out = Path(os.environ.get("MINICRATE_BOOK_OUT", BOOK)).resolve()
    html = out / "_build" / "html"
    (out / "_build").mkdir(parents=True, exist_ok=True)
    run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    stamp, log_file = out / "_build" / "build.json", out / "_build" / "build.log"
    with open(out / "_build" / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if run_id and stamp.exists():
            done = json.loads(stamp.read_text())
            if done.get("run") == run_id:
                return done["returncode"], log_file.read_text(), html, done["seconds"]
        shutil.rmtree(html, ignore_errors=True)  # keep _build/.jupyter_cache, drop stale pages
        cmd = _jupyter_book() + ["build", "-W", "-n", "--keep-going", str(BOOK)]
        if out != BOOK.resolve():
            cmd += ["--path-output", str(out)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800)
        seconds = time.perf_counter() - t0
        log = proc.stdout + proc.stderr
        log_file.write_text(log)
        done = {"run": run_id, "returncode": proc.returncode, "seconds": seconds}
        stamp.write_text(json.dumps(done))
    return proc.returncode, log, html, seconds


# Kernel-internal noise, not the book: under load ipykernel sometimes logs a ZMQ error while a
# finished notebook's kernel shuts down ("Socket operation on non-socket"); the notebook's own
# outputs are complete and any failure of a cell is caught by "Executing notebook failed".
KERNEL_NOISE = ("ERROR:tornado.general:Uncaught exception in ZMQStream callback",)


def _warnings(log):
    return [line for line in log.splitlines()
            if ("WARNING:" in line or "ERROR:" in line) and not line.strip().startswith(KERNEL_NOISE)]


# --------------------------------------------------------------------------- sources


def test_chapters_are_text_notebooks_without_outputs():
    committed_ipynb = [p for p in BOOK.rglob("*.ipynb") if not {"_build", "exercises"} & set(p.parts)]
    assert not committed_ipynb, f"notebooks must be MyST text, not .ipynb: {committed_ipynb}"
    for name in _toc_files():
        path = _source(name)
        assert path.exists(), f"_toc.yml lists {name}, but {path} does not exist"
        text = path.read_text()
        if _has_code(text):
            header = text.split("---", 2)[1] if text.startswith("---") else ""
            assert "jupytext" in header and "kernelspec" in header, (
                f"{path.name} has code cells but no jupytext/kernelspec header, so it would not "
                "be executed as a notebook"
            )


def test_headings_have_no_math():
    """Titles show up as plain text in the navigation of *every* page, including pages
    without math, where MathJax is not loaded: a TeX title would be shown raw there.
    The exercise notebooks become pages too."""
    sources = [_source(name) for name in _toc_files()]
    sources += sorted((ROOT / "exercises").glob("ch*.md"))
    for path in sources:
        name = path.stem
        text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
        for line in text.splitlines():
            if line.startswith("#"):
                assert "$" not in line and "\\" not in line, (
                    f"{name}.md: heading {line!r} has TeX; use Unicode (∇Rᶜ, N×N) instead"
                )


def test_book_imports_minicrate_and_never_redefines_it():
    """Chapters show library code with literalinclude; they must not re-implement it."""
    import minicrate

    public = {n for n in dir(minicrate)
              if callable(getattr(minicrate, n)) and not n.startswith("_")}
    for name in _toc_files():
        text = _source(name).read_text()
        if not _has_code(text):
            continue
        defined = set(re.findall(r"^\s*def (\w+)\(", text, re.M))
        assert not defined & public, (
            f"{name}.md defines {sorted(defined & public)}, which minicrate already provides: "
            "import it instead of copying it"
        )
    chapters_with_code = [n for n in _toc_files() if _has_code(_source(n).read_text())]
    assert all("minicrate" in _source(n).read_text() for n in chapters_with_code)


# --------------------------------------------------------------------------- build


def test_book_builds_in_strict_mode(built_book):
    returncode, log, html, seconds = built_book
    print(f"book build: {seconds:.0f} s")
    assert "Executing notebook failed" not in log, "a chapter failed to run:\n" + log[-6000:]
    assert returncode == 0 and not _warnings(log), (
        f"jupyter-book build -W -n --keep-going failed (exit {returncode}); warnings:\n"
        + "\n".join(_warnings(log)[:40]) + "\n--- end of log ---\n" + log[-3000:]
    )
    reports = sorted((html / "reports").glob("*.log")) if (html / "reports").exists() else []
    assert not reports, f"execution error reports: {[p.name for p in reports]}"


def test_every_chapter_was_executed_without_errors(built_book):
    _, _, html, _ = built_book
    for name in _toc_files():
        page = html / f"{name}.html"
        assert page.exists(), f"no page for {name}"
        text = page.read_text()
        if _has_code(_source(name).read_text()):
            assert "cell_output" in text, f"{name}: code cells have no outputs, so it did not run"
        assert "Traceback (most recent call last)" not in text, f"{name}: a traceback in the output"
        assert 'class="output traceback' not in text, f"{name}: an error output"


def test_every_exercise_is_a_page_of_the_book_as_students_get_it(built_book):
    """Each notebook in exercises/ is in the table of contents, rendered without its solutions,
    with its .ipynb to download and a link to its chapter."""
    _, _, html, _ = built_book
    notebooks = sorted(p.stem for p in (ROOT / "exercises").glob("ch*.md"))
    assert [f"exercises/{n}" for n in notebooks] == _exercise_pages(), "the toc's Exercises part"
    for name in notebooks:
        page = (html / "exercises" / f"{name}.html").read_text()
        assert "NotImplementedError" in page and "BEGIN SOLUTION" not in page, name
        download = re.search(r'href="([^"]+\.ipynb)"', page)
        assert download and (html / "exercises" / download.group(1)).is_file(), f"{name}: no download"
        assert re.search(r'href="\.\./[a-z_-]+\.html"', page), f"{name}: no link to its chapter"


def test_figures_are_computed_images_that_exist(built_book):
    _, _, html, _ = built_book
    n_images = 0
    for name in _toc_files():
        text = (html / f"{name}.html").read_text()
        for src in re.findall(r'<img[^>]+src="([^"]+)"', text):
            path = html / src
            assert path.exists(), f"{name}: image {src} missing"
            head = path.read_bytes()[:8]
            is_image = head.startswith(b"\x89PNG") or src.endswith(".svg")
            assert is_image, f"{name}: {src} is not an image"
            assert path.stat().st_size > 1000, f"{name}: {src} is suspiciously small"
            n_images += 1
    assert n_images >= 8, f"only {n_images} figures in the whole book"


def test_internal_links_and_equation_references_resolve(built_book):
    _, _, html, _ = built_book
    problems = check_book_links.check_links(html)
    assert not problems, "\n".join(problems[:40])
    # Every {eq} reference in the sources became a link to a numbered equation.
    ids = set()
    for page in html.glob("*.html"):
        ids |= set(re.findall(r'id="(equation-[^"]+)"', page.read_text()))
    refs = set()
    for name in _toc_files():
        refs |= set(re.findall(r"\{eq\}`([^`<>]+)`", _source(name).read_text()))
    assert refs, "the book cross-references no equations"
    missing = sorted(r for r in refs if f"equation-{r}" not in ids)
    assert not missing, f"equation references without a numbered target: {missing}"


def test_pages_load_nothing_from_other_hosts(built_book):
    _, _, html, _ = built_book
    mathjax = html / "_static" / "mathjax" / "tex-chtml.js"
    assert mathjax.is_file(), "MathJax is not served locally"
    # Sphinx may append a cache-busting "?v=<hash>" to the script's URL.
    page = (html / "coding-rate.html").read_text()
    local = re.search(r'src="_static/mathjax/tex-chtml\.js(\?v=[0-9a-f]+)?"', page)
    assert local, "the page does not load the local MathJax"
    external = check_book_links.external_resources(html)
    assert not external, "pages would load resources from other hosts:\n" + "\n".join(external[:20])


# --------------------------------------------------------------------------- browser


def _need_chromium():
    exe = browser_check.find_chromium()
    if exe is None:
        pytest.skip("headless Chromium is not installed: run scripts/ensure-chromium as root, "
                    "or apt-get install chromium (the browser test needs it)")
    return exe


@pytest.mark.browser
def test_browser_shows_every_chapter_with_math_images_and_no_outside_requests(built_book):
    _need_chromium()
    returncode, _, html, _ = built_book
    if not (html / "index.html").exists():
        pytest.fail("the book did not build, so there is nothing to open")
    pages = [f"{name}.html" for name in _toc_files() + _exercise_pages()]
    report = browser_check.run_checks(html, pages)
    summary = browser_check.summarise(report)
    print(summary)
    assert report["ok"], summary
    typeset = {n: p["result"]["mjx_containers"] for n, p in report["pages"].items()}
    assert sum(typeset.values()) > 100, f"suspiciously little math was typeset: {typeset}"
    numbered = sum(p["result"]["eqno"] for p in report["pages"].values())
    assert numbered > 5, "no numbered equations were rendered"


@pytest.mark.browser
def test_browser_check_catches_raw_math_missing_images_and_outside_requests(tmp_path):
    """The browser check itself: a deliberately broken page must fail it."""
    _need_chromium()
    (tmp_path / "index.html").write_text(
        "<html><body><article><p>fine page</p><figure><img src='dot.png' alt='A dot.'>"
        "<figcaption>Fig. 1 A dot.</figcaption></figure></article></body></html>"
    )
    # a 1x1 PNG
    (tmp_path / "dot.png").write_bytes(bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360f8cfc0000003010100c9fe92ef0000000049454e44ae426082"
    ))
    (tmp_path / "bad.html").write_text(
        "<html><body><p>raw display math $$x^2$$ and \\(y\\)</p>"
        "<span class='math'>\\(z\\)</span>"
        "<img src='missing.png'><img src='http://example.org/pixel.png'>"
        "<p>as spec §2.2 says</p><div class='cell_output'><pre>" + "x" * 400 + "</pre></div>"
        "<style>pre { white-space: pre; overflow-x: auto; }</style>"
        "</body></html>"
    )
    # fits a desktop, not a phone: the narrow width (checked in an iframe of the same launch) catches it
    (tmp_path / "narrow.html").write_text(
        "<html><body><article><div class='cell_output'><pre>" + "x" * 80 + "</pre></div></article>"
        "<style>pre { white-space: pre; overflow-x: auto; font: 12px monospace; }</style></body></html>"
    )
    report = browser_check.run_checks(tmp_path, ["index.html", "bad.html", "narrow.html"], hold_s=20)
    good, bad = report["pages"]["index.html"], report["pages"]["bad.html"]
    assert good["problems"] == [], good["problems"]
    assert report["pages"]["narrow.html"]["problems"] == ["at 390 px: output wider than its column: " + "x" * 60]
    text = " | ".join(bad["problems"])
    assert "raw TeX" in text and "not typeset" in text, text
    assert "missing.png" in text and "example.org" in text, text
    assert any("example.org" in r for r in report["outbound"]), report["outbound"]
    assert "/missing.png" in report["not_found"]
    assert "without a numbered caption" in text and "without a real alt text" in text, text
    assert "spec §2.2" in text and "output wider than its column" in text, text
    assert not report["ok"]
