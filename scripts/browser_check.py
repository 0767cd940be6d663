#!/usr/bin/env python3
"""Open the built book in headless Chromium and check what a reader would see.

For every page it checks that

* MathJax typeset the math: every Sphinx math element (``.math``) holds an
  ``mjx-container``, no ``mjx-merror`` (a TeX error) is shown, and no raw TeX
  (``$$``, ``\\(``, ``\\[``, ``\\begin{``, ...) is left in the visible text,
  navigation included;
* every image loaded (``img.complete`` and ``naturalWidth > 0``), sits in a figure with a
  numbered caption and has an alt text that is not a file name;
* no display equation runs under its equation number or out of its column, none is wider
  than its column at the desktop width (on a phone a long one may scroll sideways inside
  its column), and no output line is wider than its column, at both widths (:data:`WIDTHS`);
* no page cites "spec §" (a document the reader does not have);
* no request left the machine.

How it works, with the standard library only:

* The book is served from 127.0.0.1 by a small ``http.server`` that logs every
  request and inserts two things before ``</body>`` of each HTML page: a
  ``<script>`` that inspects the page, and a hidden ``<img>`` whose request
  the server *holds open* until that script has reported.  A pending image
  delays the page's load event, so the page cannot be considered loaded (and
  Chromium cannot dump it and exit) before the check has run.
* The script waits for MathJax's start-up promise (MathJax typesets on start-up)
  and for every other image to load or fail, then POSTs its findings as JSON
  to the server, which releases the held image.  If a page never reports,
  the server releases the image after a timeout and the page fails.
* Chromium runs headless with the flags that work offline on Debian's build (below),
  a fresh profile per page, and ``--dump-dom`` (which waits for the load event).  It is
  launched once per page, at the widest width; the page opens itself at each narrower
  width in an iframe of that width, which runs the same check and reports separately
  (an iframe added before the load event delays it, so the launch waits for all of them).
  Starting Chromium was half of each check's time.
* Chromium's proxy is set to a second local server that answers every request
  with 403 and records it.  Loopback addresses bypass the proxy, so the page
  reaches the book server directly, while *any* request to another host, made
  by the page or by the browser itself, lands in that record -- and goes no
  further.  Host resolution is also mapped to "not found" for every name but
  127.0.0.1, a second guard so that nothing can leave even if the proxy were
  bypassed.  A recorded request fails the check when it came from a page (it
  carries a page's Referer/Origin, or goes to a host some checked page
  names); requests from the browser's own services (the flags below switch
  them off for Debian's Chromium; other builds may differ) are reported as
  "browser background", refused, and do not fail the book.
* Independently, the page lists every resource it loaded
  (``performance.getEntriesByType("resource")``); a URL that is not on
  127.0.0.1 is a failure too.

Usage::

    python scripts/browser_check.py book/_build/html            # every top-level page
    python scripts/browser_check.py book/_build/html preface.html mssa.html

Exit status 0 when every page passes, 1 when one fails, 2 when Chromium is
missing.  ``--json FILE`` writes the full per-page report.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.server
import json
import os
import re
import shutil
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

# Flags that run Chromium headless without a sandbox or GPU, plus switches that keep its own
# housekeeping quiet.
BASE_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-extensions",
    "--disable-default-apps",
    "--mute-audio",
    "--disable-breakpad",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--no-pings",
    # Chromium's own housekeeping calls home even with the flags above: the
    # network-time query (clients2.google.com), the component/extension
    # updater (update.googleapis.com) and the account service
    # (accounts.google.com).  Switch the first off and point the other two at
    # the discard port of the loopback interface, where they fail at once.
    "--disable-features=NetworkTimeServiceQuerying,OptimizationHints,MediaRouter,Translate",
    "--component-updater=url-source=http://127.0.0.1:9,disable-background-downloads",
    "--gaia-url=http://127.0.0.1:9",
    "--lso-url=http://127.0.0.1:9",
    "--google-apis-url=http://127.0.0.1:9",
)

# Pages Sphinx generates that are not chapters (search needs a query, the
# index has no content to check).
SKIP_PAGES = {"genindex.html", "search.html", "py-modindex.html"}

HOLD = "/__browser_check_hold__/"
RESULT = "/__browser_check_result__/"
PNG_1x1 = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360f8cfc0000003010100c9fe92ef0000000049454e44ae426082"
)

# Runs in the page.  Written for Chromium; no external code.
CHECK_SCRIPT = r"""
<script>
(function () {
  var KEY = %(key)s;
  function visibleText(root) {
    var skip = {SCRIPT: 1, STYLE: 1, PRE: 1, CODE: 1, TEXTAREA: 1, NOSCRIPT: 1,
                "MJX-CONTAINER": 1, "MJX-ASSISTIVE-MML": 1, MATH: 1};
    var out = [];
    var walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT, {
      acceptNode: function (node) {
        for (var el = node.parentElement; el; el = el.parentElement) {
          if (skip[el.tagName]) return NodeFilter.FILTER_REJECT;
        }
        return NodeFilter.FILTER_ACCEPT;
      }
    });
    while (walker.nextNode()) out.push(walker.currentNode.nodeValue);
    return out.join(" ");
  }
  function pageImages() {
    return Array.prototype.slice.call(document.images).filter(function (img) {
      return (img.getAttribute("src") || "").indexOf("%(hold)s") < 0;
    });
  }
  function settled(img) {
    if (img.complete) return Promise.resolve();
    return new Promise(function (resolve) {
      img.addEventListener("load", resolve); img.addEventListener("error", resolve);
    });
  }
  function report(mathjaxError) {
    var math = Array.prototype.slice.call(document.querySelectorAll(".math"));
    var untypeset = math.filter(function (el) { return !el.querySelector("mjx-container"); })
                        .map(function (el) { return el.textContent.slice(0, 80); });
    var text = visibleText(document.body);
    var raw = [];
    var tokens = ["$$", "\\(", "\\)", "\\[", "\\]", "\\begin{", "\\frac", "\\mathbb", "\\nabla"];
    tokens.forEach(function (tok) {
      var i = text.indexOf(tok);
      var around = text.slice(Math.max(0, i - 40), i + 40).replace(/\s+/g, " ");
      if (i >= 0) raw.push(tok + " in: " + around);
    });
    var images = pageImages().map(function (img) {
      return {src: img.getAttribute("src"), complete: img.complete,
              naturalWidth: img.naturalWidth, naturalHeight: img.naturalHeight};
    });
    var resources = performance.getEntriesByType("resource").map(function (e) { return e.name; });
    var column = document.querySelector("article") || document.querySelector("main") || document.body;
    var colRight = column.getBoundingClientRect().right;
    var wide = [];
    document.querySelectorAll("div.math").forEach(function (el) {
      var c = el.querySelector("mjx-container"), m = c && c.firstElementChild;
      if (!m) return;
      var eq = el.querySelector(".eqno"), mb = m.getBoundingClientRect(), cb = c.getBoundingClientRect();
      var box = {left: Math.max(mb.left, cb.left), right: Math.min(mb.right, cb.right),
                 top: mb.top, bottom: mb.bottom};  // what is visible of the formula
      var what = el.textContent.replace(/\s+/g, " ").slice(0, 60);
      var desktop = window.innerWidth >= 1000;  // a phone may scroll a long equation sideways
      var under = false;
      if (eq) {
        var r = eq.getBoundingClientRect();
        under = r.left < box.right - 1 && r.right > box.left + 1 && r.top < box.bottom - 1 && r.bottom > box.top + 1;
      }
      if (el.getBoundingClientRect().right > colRight + 1) wide.push("equation outside its column: " + what);
      else if (under) wide.push("equation runs under its number: " + what);
      else if (desktop && c.scrollWidth > c.clientWidth + 1) wide.push("equation wider than its column: " + what);
    });
    document.querySelectorAll("div.cell_output pre, div.output pre").forEach(function (el) {
      if (el.scrollWidth > el.clientWidth + 2 || el.getBoundingClientRect().right > colRight + 1)
        wide.push("output wider than its column: " + el.textContent.trim().split("\n")[0].slice(0, 60));
    });
    var figures = [];
    Array.prototype.slice.call(column.querySelectorAll("img")).forEach(function (img) {
      var src = img.getAttribute("src") || "", alt = (img.getAttribute("alt") || "").trim();
      if (src.indexOf("%(hold)s") >= 0 || img.closest(".navbar-brand, .sidebar-primary-items__start")) return;
      var fig = img.closest("figure");
      if (!fig || !(fig.querySelector("figcaption") || {}).textContent)
        figures.push("image without a numbered caption: " + src);
      if (!alt || /\.(png|svg|jpe?g|gif)$/i.test(alt) || /^[0-9a-f]{16,}$/i.test(alt))
        figures.push("image without a real alt text (" + JSON.stringify(alt) + "): " + src);
    });
    var spec = text.indexOf("spec §") >= 0 ? text.slice(Math.max(0, text.indexOf("spec §") - 40),
                                                      text.indexOf("spec §") + 30) : null;
    var result = {
      url: location.href,
      mathjax: !!(window.MathJax && window.MathJax.startup),
      mathjax_error: mathjaxError || null,
      math_elements: math.length,
      mjx_containers: document.querySelectorAll("mjx-container").length,
      mjx_errors: document.querySelectorAll("mjx-merror").length,
      untypeset: untypeset,
      raw_tex: raw,
      images: images,
      resources: resources,
      eqno: document.querySelectorAll(".eqno").length,
      width: window.innerWidth,
      wide: wide,
      figures: figures,
      spec: spec
    };
    openNarrowerFrames();
    return fetch("%(result)s" + KEY, {method: "POST", body: JSON.stringify(result),
                                      headers: {"Content-Type": "application/json"}});
  }
  // The page loaded with ?also=390,... opens itself once per width in an iframe of that
  // width, which runs this same check.  The frames are added before this page reports, so
  // its load event (and Chromium's exit) waits for theirs: one browser launch per page.
  function openNarrowerFrames() {
    var also = new URLSearchParams(location.search).get("also");
    if (window !== window.top || !also) return;
    also.split(",").forEach(function (w) {
      var frame = document.createElement("iframe");
      frame.src = location.pathname + "?w=" + encodeURIComponent(w);
      frame.style.cssText = "position:absolute;left:0;top:0;height:4000px;border:0;z-index:9999;" +
                            "width:" + parseInt(w, 10) + "px";
      document.body.appendChild(frame);
    });
  }
  function run() {
    var ready = (window.MathJax && MathJax.startup && MathJax.startup.promise) ?
                MathJax.startup.promise : Promise.resolve();
    ready.then(function () { return null; }, function (err) { return String(err); })
      .then(function (err) {
        return Promise.all(pageImages().map(settled)).then(function () { return report(err); });
      });
  }
  // Deferred scripts (MathJax) have run by DOMContentLoaded.
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", run);
  else run();
})();
</script>
<img src="%(hold)s%(rawkey)s" alt="" width="1" height="1" style="position:absolute;left:-9999px">
"""


def find_chromium(explicit: str | None = None) -> str | None:
    """Path of a Chromium binary: ``explicit``, $CHROMIUM, or a known name on PATH."""
    for candidate in (explicit, os.environ.get("CHROMIUM"), *CHROMIUM_NAMES):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class BookHandler(http.server.SimpleHTTPRequestHandler):
    """Serves the book, records each request, injects the check, collects results.

    Class attributes (set per server by :func:`_start`): ``log`` (list of
    ``(path, status)``), ``root`` (the folder served), ``results`` (key ->
    the page's JSON report), ``events`` (key -> threading.Event set when that
    report arrived) and ``hold_s`` (how long a held image waits at most).
    """

    log: list
    root: str
    results: dict
    events: dict
    hold_s: float = 60.0
    lock = threading.Lock()

    def __init__(self, *args, **kwargs):
        super().__init__(*args, directory=self.root, **kwargs)

    def _event(self, key):
        with self.lock:
            return self.events.setdefault(key, threading.Event())

    def _send(self, code, body=b"", content_type="text/plain"):
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):  # noqa: N802 (http.server naming)
        if not self.path.startswith(RESULT):
            return self._send(404)
        key = urllib.parse.unquote(self.path[len(RESULT):])
        length = int(self.headers.get("Content-Length", 0))
        try:
            self.results[key] = json.loads(self.rfile.read(length))
        except ValueError:
            self.results[key] = None
        self._event(key).set()
        self._send(204)

    def do_GET(self):  # noqa: N802
        path = urllib.parse.unquote(self.path.split("?", 1)[0].split("#", 1)[0])
        if path.startswith(HOLD):
            self._event(path[len(HOLD):]).wait(self.hold_s)
            return self._send(200, PNG_1x1, "image/png")
        if path.endswith("/"):
            path += "index.html"
        if path.endswith(".html"):
            local = Path(self.translate_path(path))
            if local.is_file():
                body = local.read_bytes()
                query = self.path.split("?", 1)[1].split("#", 1)[0] if "?" in self.path else ""
                key = path.lstrip("/") + (f"?{query}" if query else "")
                injected = (CHECK_SCRIPT % {"key": json.dumps(urllib.parse.quote(key)),
                                            "rawkey": urllib.parse.quote(key),
                                            "hold": HOLD, "result": RESULT}).encode()
                pos = body.rfind(b"</body>")
                body = body[:pos] + injected + body[pos:] if pos >= 0 else body + injected
                return self._send(200, body, "text/html; charset=utf-8")
        super().do_GET()

    def send_response(self, code, message=None):
        self.log.append((self.path, int(code)))
        super().send_response(code, message)

    def log_message(self, format, *args):  # quiet
        pass


class BlackholeHandler(http.server.BaseHTTPRequestHandler):
    """The proxy Chromium must use for every non-loopback request: refuses and records."""

    log: list

    def _refuse(self):
        target = self.path.split("/")[2] if "://" in self.path else self.path
        self.log.append({"request": f"{self.command} {self.path}",
                         "host": target.rsplit(":", 1)[0].lower(),
                         "referer": self.headers.get("Referer") or self.headers.get("Origin")})
        self.send_response(403)
        self.send_header("Content-Length", "0")
        self.send_header("Connection", "close")
        self.end_headers()

    do_GET = do_POST = do_HEAD = do_PUT = do_CONNECT = do_OPTIONS = _refuse

    def log_message(self, format, *args):
        pass


def _start(handler_cls, **attrs):
    handler = type(handler_cls.__name__, (handler_cls,), {"log": [], **attrs})
    server = _Server(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, handler.log


def page_failures(result: dict | None, *, expect_math: bool) -> list[str]:
    """Human-readable problems in one page's in-browser report."""
    if result is None:
        return ["the in-page check never reported (the page did not finish loading, or a "
                "script error stopped it)"]
    problems = []
    if expect_math and not result["mathjax"]:
        problems.append("MathJax did not start")
    if result.get("mathjax_error"):
        problems.append(f"MathJax failed: {result['mathjax_error']}")
    if result["untypeset"]:
        problems.append(f"{len(result['untypeset'])} math element(s) not typeset, e.g. "
                        f"{result['untypeset'][0]!r}")
    if result["mjx_errors"]:
        problems.append(f"{result['mjx_errors']} MathJax error(s) (mjx-merror) shown")
    if result["raw_tex"]:
        problems.append("raw TeX left in the text: " + "; ".join(result["raw_tex"][:3]))
    for img in result["images"]:
        if not img["complete"] or img["naturalWidth"] <= 0:
            problems.append(f"image did not load: {img['src']}")
    problems += [f"at {result.get('width')} px: {w}" for w in result.get("wide", [])[:5]]
    problems += result.get("figures", [])[:5]
    if result.get("spec"):
        problems.append(f"cites a specification the reader does not have: ...{result['spec']}...")
    outside = [u for u in result["resources"] if not re.match(r"https?://127\.0\.0\.1[:/]", u)]
    if outside:
        problems.append("resources from outside the machine: " + ", ".join(outside[:5]))
    return problems


def default_pages(html_dir: Path) -> list[str]:
    """Every chapter page, and the exercise pages under ``exercises/``."""
    pages = [p.name for p in html_dir.glob("*.html") if p.name not in SKIP_PAGES]
    pages += [f"exercises/{p.name}" for p in html_dir.glob("exercises/*.html")]
    return sorted(pages)


def _open(chromium, url, proxy_port, timeout_s, width=1280):
    """Load ``url`` in a fresh headless Chromium until its load event; returns the DOM."""
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        cmd = [
            chromium,
            *BASE_FLAGS,
            f"--user-data-dir={profile}",
            f"--proxy-server=http://127.0.0.1:{proxy_port}",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            f"--window-size={width},4000",
            "--dump-dom",
            url,
        ]
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s).stdout
        except subprocess.TimeoutExpired:
            return ""


WIDTHS = (1280, 390)
"""Window widths every page is checked at: a desktop and a phone."""


def run_checks(html_dir, pages=None, *, chromium=None, hold_s=60.0, timeout_s=120, jobs=2,
               widths=WIDTHS):
    """Check ``pages`` (file names under ``html_dir``) at every width; returns a report dict.

    The report has ``pages`` (name -> {"result", "problems", "seconds"}),
    ``outbound`` (requests the proxy saw), ``not_found`` (paths the book server
    answered 404 for) and ``ok``.
    """
    html_dir = Path(html_dir).resolve()
    chromium = find_chromium(chromium)
    if chromium is None:
        raise FileNotFoundError(
            "no Chromium found (looked for $CHROMIUM, " + ", ".join(CHROMIUM_NAMES) + "); "
            "install Debian's 'chromium' (scripts/ensure-chromium does so as root)"
        )
    pages = list(pages) if pages else default_pages(html_dir)
    results, events = {}, {}
    book, book_log = _start(BookHandler, root=str(html_dir), results=results, events=events,
                            hold_s=hold_s)
    proxy, proxy_log = _start(BlackholeHandler)
    port, proxy_port = book.server_address[1], proxy.server_address[1]
    report = {"pages": {}, "outbound": [], "browser_background": [], "not_found": [],
              "chromium": chromium}

    def check_page(name):
        t0 = time.perf_counter()
        source = (html_dir / name).read_text(encoding="utf-8")
        problems, result = [], None
        first, *narrower = widths  # one launch: the narrower widths load in iframes
        query = f"w={first}" + (f"&also={','.join(map(str, narrower))}" if narrower else "")
        _open(chromium, f"http://127.0.0.1:{port}/{name}?{query}", proxy_port, timeout_s, first)
        for key in [f"{name}?{query}"] + [f"{name}?w={w}" for w in narrower]:
            result = results.get(key)
            problems += [p for p in page_failures(result, expect_math='class="math' in source)
                         if p not in problems]
        result = results.get(f"{name}?{query}")
        return name, {"result": result, "problems": problems,
                      "seconds": round(time.perf_counter() - t0, 2)}

    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            for name, page in pool.map(check_page, pages):
                report["pages"][name] = page
    finally:
        for event in list(events.values()):
            event.set()
        book.shutdown()
        proxy.shutdown()
        book.server_close()
        proxy.server_close()
    named_hosts = set()
    for name in pages:
        source = (html_dir / name).read_text(encoding="utf-8")
        found = re.findall(r'(?:src|href)="(?:https?:)?//([^/":]+)', source)
        named_hosts |= {h.lower() for h in found}
    for entry in proxy_log:
        from_page = "127.0.0.1" in (entry["referer"] or "") or entry["host"] in named_hosts
        report["outbound" if from_page else "browser_background"].append(entry["request"])
    report["not_found"] = sorted(
        {path for path, code in book_log if code == 404 and "favicon" not in path}
    )
    report["ok"] = (
        all(not p["problems"] for p in report["pages"].values())
        and not report["outbound"]
        and not report["not_found"]
    )
    return report


def summarise(report) -> str:
    lines = []
    for name, page in report["pages"].items():
        r = page["result"] or {}
        status = "ok  " if not page["problems"] else "FAIL"
        lines.append(
            f"{status} {name}: {r.get('mjx_containers', 0)} typeset formulas "
            f"({r.get('eqno', 0)} numbered), {len(r.get('images', []))} images, "
            f"{len(r.get('resources', []))} resources, {page['seconds']:.1f} s"
        )
        lines += [f"       - {p}" for p in page["problems"]]
    lines.append(f"requests from the pages to other hosts (refused): {len(report['outbound'])}")
    lines += [f"       - {r}" for r in report["outbound"][:10]]
    background = report.get("browser_background", [])
    lines.append("browser background requests (refused locally, not from the book): "
                 f"{len(background)}")
    lines += [f"       - {r}" for r in background[:10]]
    lines.append(f"paths the book server could not find: {len(report['not_found'])}")
    lines += [f"       - {r}" for r in report["not_found"][:10]]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("html_dir", type=Path, help="the built book, e.g. book/_build/html")
    ap.add_argument("pages", nargs="*", help="page file names (default: every top-level page)")
    ap.add_argument("--chromium", help="Chromium binary (default: $CHROMIUM or chromium on PATH)")
    ap.add_argument("--hold-s", type=float, default=60.0,
                    help="longest wait for a page's report before its load is released")
    ap.add_argument("--jobs", type=int, default=2, help="pages checked at once")
    ap.add_argument("--json", type=Path, help="write the full report here")
    args = ap.parse_args(argv)
    if not (args.html_dir / "index.html").is_file():
        print(f"browser_check: {args.html_dir} has no index.html; build the book first "
              "(make book)", file=sys.stderr)
        return 2
    try:
        report = run_checks(args.html_dir, args.pages, chromium=args.chromium,
                            hold_s=args.hold_s, jobs=args.jobs)
    except FileNotFoundError as err:
        print(f"browser_check: {err}", file=sys.stderr)
        return 2
    print(summarise(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
