"""A page in headless Chromium, driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``:
JSON messages separated by NUL bytes on file descriptors 3 and 4, so no websocket client is needed).

``Page.open`` loads a URL, waits until a JavaScript expression is truthy and returns its value, and
records every console error, uncaught exception and failed load (``Page.errors``): what a user would
see as a blank or broken page.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import tempfile
import time
from typing import Any

__all__ = ["Page"]


class Page:
    """One headless Chromium with one tab. Use as a context manager."""

    def __init__(self, chromium: str, *, offline: bool = True) -> None:
        self._profile = tempfile.TemporaryDirectory(ignore_cleanup_errors=True)
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        args = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
                "--disable-background-networking", "--disable-component-update", "--disable-dev-shm-usage",
                f"--user-data-dir={self._profile.name}", "--remote-debugging-pipe", "--window-size=1400,1000"]
        if offline:  # every name but the local server's fails to resolve: a CDN fetch is an error
            args.append("--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1")

        def _fds() -> None:  # the pipe's ends as fds 3 and 4 (copied high first: neither may clobber the other)
            read_end, write_end = os.dup(to_browser_r), os.dup(from_browser_w)
            os.dup2(read_end, 3)
            os.dup2(write_end, 4)

        # close_fds=False: subprocess closes fds above 2 after preexec_fn runs, which would close 3 and 4 again
        self._process = subprocess.Popen(args + ["about:blank"], preexec_fn=_fds, close_fds=False, start_new_session=True,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self._events: list[dict[str, Any]] = []
        self.errors: list[str] = []
        target = self._call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self._session = self._call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Network", "Page"):
            self.call(f"{domain}.enable")

    def __enter__(self) -> Page:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            os.killpg(self._process.pid, signal.SIGKILL)  # the browser and its renderer, GPU and utility processes
        except ProcessLookupError:
            pass
        self._process.wait(10)
        for fd in (self._to_browser, self._from_browser):
            os.close(fd)
        self._profile.cleanup()

    # -- the protocol ---------------------------------------------------------------------------------
    def _read(self, timeout: float) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_browser], [], [], left)[0]:
                return None
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium exited")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def _call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None,
              timeout: float = 30.0) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reply = self._read(deadline - time.monotonic())
            if reply is None:
                break
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self._event(reply)
        raise TimeoutError(f"{method}: no answer within {timeout:.0f} s")

    def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return self._call(method, params, self._session)

    def _event(self, message: dict[str, Any]) -> None:
        method, params = message.get("method"), message.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            self.errors.append("console.error: " + " ".join(str(arg.get("value", arg.get("description", ""))) for arg in params.get("args", [])))
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            self.errors.append("exception: " + str(details.get("exception", {}).get("description") or details.get("text")))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            self.errors.append(f"{entry.get('source')}: {entry.get('text')} {entry.get('url', '')}".strip())
        elif method == "Network.loadingFailed" and not params.get("canceled"):
            self.errors.append(f"load failed: {params.get('errorText')} ({params.get('type')})")

    # -- what a test uses -----------------------------------------------------------------------------
    def headers(self, headers: dict[str, str]) -> None:
        """Send these headers with every request of the page (e.g. the dashboard's Basic auth)."""
        self.call("Network.setExtraHTTPHeaders", {"headers": headers})

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        return result.get("result", {}).get("value")

    def open(self, url: str, until: str, timeout: float = 60.0) -> Any:
        """Load ``url``; return the value of ``until`` (JavaScript) once it is truthy, else fail after ``timeout``."""
        self.call("Page.navigate", {"url": url})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(until)
            if value:
                time.sleep(0.5)  # let the page settle: late console errors are caught too
                self.evaluate("0")
                return value
            time.sleep(0.25)
        raise AssertionError(f"{url}: {until!r} still false after {timeout:.0f} s; errors: {self.errors}; "
                             f"text: {str(self.evaluate('document.body && document.body.innerText'))[:1000]}")
