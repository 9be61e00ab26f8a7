"""Headless Chromium for the review-page tests, driven over the DevTools protocol on a pipe (no extra package).

Chromium is the distribution's (`apt-get install chromium`; .ci/run installs it when missing), found as
``$RR_CHROMIUM`` or ``chromium`` / ``chromium-browser`` / ``google-chrome`` on PATH; the browser tests skip,
saying so, only where none is found. ``--remote-debugging-pipe`` makes the browser read protocol
messages on fd 3 and write them on fd 4 (NUL-separated JSON), so no port is opened.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio", "--remote-debugging-pipe"]


def find_chromium() -> str | None:
    """Path of a Chromium-family browser, or None."""
    env = os.environ.get("RR_CHROMIUM")
    if env:
        return env if Path(env).is_file() else None
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


class Chromium:
    """One headless browser with one page; `call` sends a command to the page (or the browser)."""

    def __init__(self, exe: str, width: int = 1200, height: int = 1600) -> None:
        self.profile = Path(tempfile.mkdtemp(prefix="rr-chromium-"))
        self.downloads = self.profile / "downloads"
        self.downloads.mkdir()
        to_child_r, self._w = os.pipe()
        self._r, from_child_w = os.pipe()
        hi_r = fcntl.fcntl(to_child_r, fcntl.F_DUPFD, 10)
        hi_w = fcntl.fcntl(from_child_w, fcntl.F_DUPFD, 10)
        os.close(to_child_r)
        os.close(from_child_w)

        def wire() -> None:  # in the child: the pipe ends at fds 3 and 4
            os.dup2(hi_r, 3)
            os.dup2(hi_w, 4)

        self.proc = subprocess.Popen(
            [exe, *FLAGS, f"--user-data-dir={self.profile}", f"--window-size={width},{height}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=wire, pass_fds=(3, 4),
        )
        os.close(hi_r)
        os.close(hi_w)
        self._buf = b""
        self._next = 0
        self.events: list[dict[str, Any]] = []
        self.session: str | None = None
        target = self.call("Target.createTarget", url="about:blank", browser=True)["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True, browser=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
        self.call("Browser.setDownloadBehavior", behavior="allow", downloadPath=str(self.downloads),
                  eventsEnabled=True, browser=True)

    # ------------------------------------------------------------------ protocol
    def _read(self, timeout: float) -> dict[str, Any] | None:
        end = time.monotonic() + timeout
        while b"\0" not in self._buf:
            left = end - time.monotonic()
            if left <= 0 or not select.select([self._r], [], [], left)[0]:
                return None
            chunk = os.read(self._r, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, timeout: float = 30.0, browser: bool = False, **params: Any) -> dict[str, Any]:
        """Send one command and return its result (events that arrive meanwhile are kept in `events`)."""
        self._next += 1
        msg: dict[str, Any] = {"id": self._next, "method": method, "params": params}
        if self.session and not browser:
            msg["sessionId"] = self.session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        end = time.monotonic() + timeout
        while True:
            reply = self._read(max(0.0, end - time.monotonic()))
            if reply is None:
                raise TimeoutError(f"{method}: no reply in {timeout} s")
            if reply.get("id") == self._next:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)

    def wait_event(self, method: str, timeout: float = 30.0, since: int = 0) -> dict[str, Any]:
        """The first event named ``method`` (at index >= ``since`` of `events`), waiting for it if needed."""
        end = time.monotonic() + timeout
        while True:
            for ev in self.events[since:]:
                if ev["method"] == method:
                    return ev
            msg = self._read(max(0.0, end - time.monotonic()))
            if msg is None:
                raise TimeoutError(f"no {method} event in {timeout} s")
            if "method" in msg:
                self.events.append(msg)

    # ------------------------------------------------------------------ page helpers
    def open(self, url: str, timeout: float = 60.0) -> None:
        """Navigate and wait for the load event; `events` restarts, so errors are this page's."""
        self.events.clear()
        self.call("Page.navigate", url=url)
        self.wait_event("Page.loadEventFired", timeout)

    def js(self, expression: str) -> Any:
        """Evaluate ``expression`` in the page and return its value (a thrown error fails the test)."""
        res = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in res:
            raise AssertionError(f"page script failed: {res['exceptionDetails']}")
        return res["result"].get("value")

    def errors(self) -> list[str]:
        """Console errors and uncaught exceptions since the last `open`."""
        out = []
        for ev in self.events:
            p = ev.get("params", {})
            if ev["method"] == "Runtime.exceptionThrown":
                out.append(json.dumps(p.get("exceptionDetails", {}))[:500])
            elif ev["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append(json.dumps(p.get("args", []))[:500])
            elif ev["method"] == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                out.append(p["entry"].get("text", "")[:500])
        return out

    def screenshot(self, path: Path) -> Path:
        """A full-page PNG."""
        import base64

        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def wait_download(self, name: str, since: int, timeout: float = 30.0) -> Path:
        """The file ``name`` of a download begun after event index ``since``, once complete."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if any(ev["method"] == "Browser.downloadProgress" and ev["params"].get("state") == "completed"
                   for ev in self.events[since:]):
                return self.downloads / name
            msg = self._read(0.2)
            if msg is not None and "method" in msg:
                self.events.append(msg)
        raise TimeoutError(f"download {name} did not complete in {timeout} s")

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, TimeoutError, OSError):
            self.call("Browser.close", timeout=5, browser=True)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._r, self._w):
            with contextlib.suppress(OSError):
                os.close(fd)
        shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture(scope="session")
def chromium() -> Iterator[Chromium]:
    """A headless Chromium shared by the page tests (skips, saying why, where none is installed)."""
    exe = find_chromium()
    if exe is None:
        pytest.skip("no Chromium found (install the distribution's package: apt-get install chromium, "
                    "or set RR_CHROMIUM); the review page's browser tests need one")
    browser = Chromium(exe)
    try:
        yield browser
    finally:
        browser.close()


# ---------------------------------------------------------------------------------------------- a dedup run
THRESHOLD = 0.9
JACCARD = 0.5
PLANTED = "plantedword"
#: group sizes of the planted near-duplicate groups (the first is the largest)
GROUPS = (4, 3, 2, 2, 2)


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype(np.float32)


def make_review_run(root: Path, singletons: int = 20, seed: int = 0) -> dict[str, Any]:
    """A corpus with planted groups, its embeddings, and a hybrid dedup run of it in ``root/out``.

    Group g's first document is its representative (keep="first"); member 1 of group 0 differs from it
    by one word, `PLANTED`. Document ``near-a`` / ``near-b`` have cosine 0.85 (just below 0.9).
    """
    from reformer_retrieval.corpus import write_embeddings
    from reformer_retrieval.dedup import dedup_embeddings

    rng = np.random.default_rng(seed)
    vocab = [f"w{i}" for i in range(3000)]
    dim = 48
    ids, texts, vecs, labels = [], [], [], []

    def doc(doc_id: str, text: str, vec: np.ndarray, label: str) -> None:
        ids.append(doc_id)
        texts.append(text)
        vecs.append(_unit(vec))
        labels.append(label)

    for g, size in enumerate(GROUPS):
        words = list(rng.choice(vocab, 150))
        base = rng.standard_normal(dim)
        doc(f"g{g}-0", " ".join(words), base, f"g{g}")
        for m in range(1, size):
            variant = list(words)
            if g == 0 and m == 1:
                variant[60] = PLANTED
            else:
                for pos in rng.choice(len(variant), 3, replace=False):
                    variant[pos] = str(rng.choice(vocab))
            doc(f"g{g}-{m}", " ".join(variant), base + 0.08 * rng.standard_normal(dim), f"g{g}")
    a = rng.standard_normal(dim)
    ortho = rng.standard_normal(dim)
    ortho -= (ortho @ _unit(a)) * _unit(a)
    doc("near-a", " ".join(rng.choice(vocab, 120)), a, "near-a")
    doc("near-b", " ".join(rng.choice(vocab, 120)), 0.85 * _unit(a) + np.sqrt(1 - 0.85**2) * _unit(ortho), "near-b")
    for i in range(singletons):
        doc(f"s{i}", " ".join(rng.choice(vocab, 100)), rng.standard_normal(dim), f"s{i}")
    root.mkdir(parents=True, exist_ok=True)
    corpus = root / "corpus.parquet"
    pq.write_table(pa.table({"id": ids, "text": texts, "cluster": labels}), corpus)
    out = root / "out"
    out.mkdir(parents=True, exist_ok=True)
    emb = write_embeddings(out / "embeddings.parquet", ids, np.stack(vecs), np.full(len(ids), 150),
                           np.zeros(len(ids), bool), "testmodel0001")
    dedup_embeddings(emb, out, corpus=corpus, method="hybrid", threshold=THRESHOLD, minhash_threshold=JACCARD,
                     keep="first")
    return {"root": root, "out": out, "corpus": corpus, "ids": ids, "texts": texts, "groups": GROUPS,
            "planted": PLANTED, "threshold": THRESHOLD, "jaccard": JACCARD}


@pytest.fixture(scope="session")
def review_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """`make_review_run` once per session."""
    return make_review_run(tmp_path_factory.mktemp("review"))
