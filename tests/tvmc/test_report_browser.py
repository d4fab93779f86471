"""The HTML run report opened in a real headless Chromium, driven over its DevTools protocol (a pipe on
file descriptors 3 and 4, ``--remote-debugging-pipe``): the page loads without console errors or
uncaught exceptions, every chart image has decoded, every table has a header whose cells say something.

Without a Chromium on PATH the tests skip, unless ``ENERGON_REQUIRE_BROWSER=1`` (CI sets it), when they
fail."""

import fcntl
import json
import os
import select
import shutil
import signal
import time

import pytest

from energon_tvm.tvmc import run_package
from energon_tvm.tvmc.report_html import html_report

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
#: the network is closed here, and a browser left to itself tries to reach it
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--disable-extensions", "--mute-audio", "--remote-debugging-pipe")
TIMEOUT = 60.0

#: runs in the page once it has loaded: what a reader would see broken
CHECKS_JS = """(async () => {
  const imgs = [...document.images];
  const decoded = await Promise.all(imgs.map(i => i.decode().then(() => null, e => String(e))));
  return {
    images: imgs.map((i, n) => ({alt: i.alt, complete: i.complete, width: i.naturalWidth,
                                 height: i.naturalHeight, error: decoded[n]})),
    tables: [...document.querySelectorAll("table")].map(t => ({
      headers: [...t.querySelectorAll("thead th")].map(h => h.textContent.trim()),
      rows: t.querySelectorAll("tbody tr").length})),
    figures: [...document.querySelectorAll("figure")].map(f => ({
      images: f.querySelectorAll("img").length,
      caption: (f.querySelector("figcaption") || {textContent: ""}).textContent.trim()})),
    title: document.title,
  };
})()"""


def find_browser() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    reason = f"no headless browser on PATH (looked for {', '.join(BROWSERS)}; Debian: apt-get install chromium)"
    if os.environ.get("ENERGON_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason}, and ENERGON_REQUIRE_BROWSER=1 requires one")
    pytest.skip(reason)


class DevTools:
    """One Chromium process and its DevTools pipe: commands out on the child's fd 3, replies and events
    back on its fd 4, each message JSON ended by a NUL byte."""

    def __init__(self, browser: str, profile_dir, log_path):
        to_child, self._out = os.pipe()
        self._in, from_child = os.pipe()
        # the child's 3 and 4 are written by dup2; sources above them so no dup2 clobbers the other's source
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (to_child, from_child)]
        os.close(to_child)
        os.close(from_child)
        log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            self.pid = os.posix_spawn(
                browser, [browser, *FLAGS, f"--user-data-dir={profile_dir}", "about:blank"], dict(os.environ),
                file_actions=[(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                              (os.POSIX_SPAWN_DUP2, log, 1), (os.POSIX_SPAWN_DUP2, log, 2),
                              (os.POSIX_SPAWN_DUP2, high[0], 3), (os.POSIX_SPAWN_DUP2, high[1], 4)],
                setpgroup=0)  # its own process group: the browser's helpers end with it
        finally:
            for fd in (*high, log):
                os.close(fd)
        self.log_path = log_path
        self._next_id = 0
        self._buffer = b""
        self.events: list[dict] = []

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._in], [], [], left)[0]:
                raise TimeoutError(f"no DevTools reply in {TIMEOUT:.0f} s; browser log:\n{self.log_tail()}")
            chunk = os.read(self._in, 1 << 16)
            if not chunk:
                raise ConnectionError(f"the browser closed its DevTools pipe; browser log:\n{self.log_tail()}")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        """The result of one command (events that arrive meanwhile are kept in ``events``)."""
        self._next_id += 1
        msg = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._out, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + TIMEOUT
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"DevTools {method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def wait_for(self, method: str, session: str, since: int = 0) -> dict:
        """The first ``method`` event of ``session`` from ``events[since]`` on, waiting for it if need be."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            for e in self.events[since:]:
                if e.get("method") == method and e.get("sessionId") == session:
                    return e
            self.events.append(self._read_message(deadline))

    def log_tail(self, lines: int = 20) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (OSError, RuntimeError, TimeoutError, ConnectionError):
            pass
        deadline = time.monotonic() + 10
        while os.waitpid(self.pid, os.WNOHANG)[0] == 0:
            if time.monotonic() > deadline:  # it did not close: end it and its helpers (its process group)
                os.killpg(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
                break
            time.sleep(0.05)
        os.close(self._in)
        os.close(self._out)


def open_page(browser: str, path, tmp_path) -> dict:
    """Load ``path`` in a fresh headless ``browser``; what ``CHECKS_JS`` found, plus ``errors``: the
    console's error messages, uncaught exceptions and error log entries while the page loaded."""
    tools = DevTools(browser, tmp_path / "profile", tmp_path / "browser.log")
    try:
        target = tools.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = tools.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            tools.send(f"{domain}.enable", session=session)
        url = path.resolve().as_uri()
        since = len(tools.events)
        tools.send("Page.navigate", {"url": url}, session=session)
        tools.wait_for("Page.loadEventFired", session, since)
        deadline = time.monotonic() + TIMEOUT
        state = "[location.href, document.readyState]"
        while tools.send("Runtime.evaluate", {"expression": state, "returnByValue": True},
                         session=session)["result"]["value"] != [url, "complete"]:  # not about:blank's load
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not finish loading in {TIMEOUT:.0f} s")
            time.sleep(0.05)
        value = tools.send("Runtime.evaluate", {"expression": CHECKS_JS, "awaitPromise": True,
                                                "returnByValue": True}, session=session)
        if "exceptionDetails" in value:
            raise AssertionError(f"the page checks failed to run: {value['exceptionDetails']}")
        found = value["result"]["value"]
        tools.send("Runtime.evaluate", {"expression": "0"}, session=session)  # flush events queued so far
        errors = []
        for e in tools.events:
            p = e.get("params", {})
            if e.get("method") == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                errors.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in p["args"]))
            elif e.get("method") == "Runtime.exceptionThrown":
                d = p["exceptionDetails"]
                errors.append(f"exception: {d.get('exception', {}).get('description', d.get('text'))}")
            elif e.get("method") == "Log.entryAdded" and p["entry"]["level"] == "error":
                errors.append(f"log ({p['entry']['source']}): {p['entry']['text']}")
        found["errors"] = errors
        return found
    finally:
        tools.close()


def problems(found: dict) -> list[str]:
    """What a reader would find broken in the page ``open_page`` saw."""
    out = list(found["errors"])
    for i, img in enumerate(found["images"]):
        if not (img["complete"] and img["width"] > 0 and img["height"] > 0) or img["error"]:
            out.append(f"image {i} ({img['alt']!r}) did not decode: {img}")
    for i, table in enumerate(found["tables"]):
        if not table["headers"] or not all(table["headers"]):
            out.append(f"table {i} has an empty header cell: {table['headers']}")
    for i, fig in enumerate(found["figures"]):
        if not fig["caption"]:
            out.append(f"figure {i} has no caption")
    return out


@pytest.fixture(scope="session")
def browser():
    """The browser's path; looked for before any package is built, so that a skip costs nothing."""
    return find_browser()


@pytest.fixture(scope="module")
def report(browser, package, model_files, tmp_path_factory):
    result = run_package(package, inputs=model_files / "inputs.npz", trace=True)
    path = tmp_path_factory.mktemp("report") / "report.html"
    path.write_text(html_report(result, {"y": {"cosine": 0.999, "max_abs_error": 0.01}}), encoding="utf-8")
    return path, result


def test_report_renders_in_a_browser(browser, report, tmp_path):
    path, result = report
    found = open_page(browser, path, tmp_path)
    assert problems(found) == []
    # four charts for a run with filter rounds (cycles, energy, DRAM, kept ratio), each decoded at full size
    assert len(found["images"]) == 4 and all(img["width"] > 300 for img in found["images"])
    # summary, accuracy, the two call tables, sites
    assert len(found["tables"]) == 6
    # the thresholds of every round per layer x head, with the run's kept ratio per round
    thresholds = next(t for t in found["tables"] if "kept (this run) r1" in t["headers"])
    assert thresholds["rows"] == 2  # the two sites of the fixture model, one row each without calibration
    figures = next(t for t in found["tables"] if "x bound (cycles / bound)" in t["headers"])
    assert figures["rows"] == len(result.calls) + 1  # a row per call and the totals
    assert found["title"].startswith("Energon run: ")


def test_the_browser_check_sees_a_broken_page(browser, tmp_path):
    """The same checks on a page that is broken in each way they look for report each breakage."""
    page = tmp_path / "broken.html"
    page.write_text("""<!DOCTYPE html><html><head><meta charset="utf-8"><title>broken</title></head><body>
<figure><img alt="truncated" src="data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAA"></figure>
<table><thead><tr><th></th><th>value</th></tr></thead><tbody><tr><td>a</td><td>1</td></tr></tbody></table>
<script>console.error("drawn wrong"); undefinedFunction();</script>
</body></html>""", encoding="utf-8")
    found = problems(open_page(browser, page, tmp_path))
    assert any("drawn wrong" in p for p in found), found
    assert any("undefinedFunction" in p for p in found), found
    assert any(p.startswith("image 0 ('truncated') did not decode") for p in found), found
    assert any(p.startswith("table 0 has an empty header cell") for p in found), found
    assert any(p == "figure 0 has no caption" for p in found), found
