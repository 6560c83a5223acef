"""A small W3C WebDriver client for Debian's ``chromedriver``, and a local HTTP server for a built site.

Why not selenium: the browser test needs five WebDriver commands (open a page, run a script, resize
the window, take a screenshot, read the console), which are plain JSON over HTTP; speaking them
directly keeps the test's only requirements the two Debian packages ``chromium`` and
``chromium-driver`` (scripts/setup_browser.sh), with no Python package whose own pins can break the
install.  The site is served over ``http://127.0.0.1`` (not ``file://``), as a reader gets it: a
missing file is a 404 the console reports, and Material's search worker runs.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import http.server
import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
]


class BrowserMissing(RuntimeError):
    """chromium or chromedriver is not installed (the test fails on it, never skips)."""


def executables() -> tuple[str, str]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    missing = [n for n, p in (("chromium", chromium), ("chromedriver", driver)) if p is None]
    if missing:
        raise BrowserMissing(
            f"{' and '.join(missing)} not installed: run `bash scripts/setup_browser.sh` "
            "(Debian packages `chromium` and `chromium-driver`)"
        )
    return chromium, driver  # type: ignore[return-value]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def serve(directory: Path) -> Iterator[str]:
    """Serve ``directory`` on a free localhost port; yields the base URL (with a trailing slash)."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


class WebDriverError(RuntimeError):
    pass


class Browser:
    """One chromedriver process and one headless Chromium session."""

    def __init__(self, profile: Path, width: int = 1280, height: int = 900) -> None:
        chromium, driver = executables()
        self.port = _free_port()
        self.proc = subprocess.Popen(
            [driver, f"--port={self.port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.base = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if self._call("GET", "/status")["ready"]:
                    break
            except (OSError, WebDriverError):
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.proc.kill()
                raise WebDriverError("chromedriver did not start")
            time.sleep(0.1)
        caps = {
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": chromium,
                        "args": [
                            *CHROMIUM_ARGS,
                            f"--user-data-dir={profile}",
                            f"--window-size={width},{height}",
                        ],
                    },
                    "goog:loggingPrefs": {"browser": "ALL"},
                    "pageLoadStrategy": "normal",
                }
            }
        }
        try:
            self.session = self._call("POST", "/session", caps)["sessionId"]
        except Exception:
            self.proc.kill()
            raise

    def _call(self, method: str, path: str, body: dict | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.base + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=120) as resp:
                payload = json.loads(resp.read())
        except urllib.error.HTTPError as e:
            payload = json.loads(e.read() or b"{}")
            raise WebDriverError(f"{method} {path}: {payload.get('value', payload)}") from None
        return payload.get("value")

    def cmd(self, method: str, path: str, body: dict | None = None) -> Any:
        return self._call(method, f"/session/{self.session}{path}", body)

    def get(self, url: str) -> None:
        self.cmd("POST", "/url", {"url": url})

    def run(self, script: str, *args: Any) -> Any:
        """Run ``script`` as a function body (``return ...``) in the page."""
        return self.cmd("POST", "/execute/sync", {"script": script, "args": list(args)})

    def resize(self, width: int, height: int) -> None:
        self.cmd("POST", "/window/rect", {"width": width, "height": height})

    def viewport_width(self) -> int:
        return int(self.run("return document.documentElement.clientWidth"))

    def set_viewport(self, width: int, height: int) -> None:
        """A CSS viewport of exactly ``width`` × ``height`` (device metrics override, DPR 1)."""
        self.cdp(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600},
        )

    def cdp(self, command: str, params: dict | None = None) -> Any:
        return self.cmd("POST", "/goog/cdp/execute", {"cmd": command, "params": params or {}})

    def screenshot(self, path: Path, full_page: bool = True) -> Path:
        """A PNG of the page (the whole scroll height when ``full_page``)."""
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            params["captureBeyondViewport"] = True
            w, h = self.run(
                "return [document.documentElement.clientWidth,"
                " Math.min(document.documentElement.scrollHeight, 16000)]"
            )
            params["clip"] = {"x": 0, "y": 0, "width": w, "height": h, "scale": 1}
        data = self.cdp("Page.captureScreenshot", params)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def console(self) -> list[dict]:
        """Browser console entries since the last call (level, message)."""
        return self.cmd("POST", "/se/log", {"type": "browser"}) or []

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.cmd("DELETE", "")
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
