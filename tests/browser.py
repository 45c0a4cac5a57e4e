"""A small WebDriver client (W3C WebDriver over HTTP) for headless Chromium through chromedriver.

Enough for the frontend tests: open a page, run JavaScript (sync and async), read the browser console,
take screenshots. No Selenium needed: chromedriver speaks the W3C WebDriver protocol
(https://www.w3.org/TR/webdriver2/) over plain HTTP and JSON.

Example:
    >>> with Chromium() as browser:                        # doctest: +SKIP
    ...     browser.get("http://127.0.0.1:8188/")
    ...     browser.execute("return document.title")
"""

from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

__all__ = ["Chromium", "WebDriverError", "find_chromium", "CHROMIUM_ARGS"]

#: Flags for a quiet, offline, reproducible headless Chromium (no GPU, no sandbox in containers, no
#: network except 127.0.0.1: every other host name fails to resolve).
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
)


class WebDriverError(RuntimeError):
    """chromedriver answered with an error, or could not be started."""


def find_chromium() -> tuple[str, str] | None:
    """Paths of (chromium, chromedriver), or None when either is missing.

    ``ANTI_I2V_CHROMIUM`` and ``ANTI_I2V_CHROMEDRIVER`` override the lookup on ``PATH``.
    """
    chromium = os.environ.get("ANTI_I2V_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    driver = os.environ.get("ANTI_I2V_CHROMEDRIVER") or shutil.which("chromedriver")
    if not chromium or not driver:
        return None
    return chromium, driver


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Chromium:
    """A headless Chromium session driven through chromedriver.

    Args:
        width, height: window size in CSS pixels.
        extra_args: more Chromium flags.
        timeout: seconds for starting chromedriver and for each WebDriver command.
    """

    def __init__(self, *, width: int = 1400, height: int = 900, extra_args: tuple[str, ...] = (),
                 timeout: float = 60.0) -> None:
        found = find_chromium()
        if found is None:
            raise WebDriverError("chromium and chromedriver are not installed: run `bash scripts/setup.sh --browser`")
        self.chromium, self.driver = found
        self.width, self.height = int(width), int(height)
        self.extra_args = tuple(extra_args)
        self.timeout = float(timeout)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.session_id: str | None = None
        self._proc: subprocess.Popen | None = None
        self._profile: str | None = None
        self._log_path: str | None = None

    # ------------------------------------------------------------------ life cycle
    def start(self) -> "Chromium":
        """Start chromedriver and open a browser session with a fresh profile."""
        self._profile = tempfile.mkdtemp(prefix="anti_i2v_chromium_")
        self._log_path = os.path.join(self._profile, "chromedriver.log")
        self._proc = subprocess.Popen(
            [self.driver, f"--port={self.port}", f"--log-path={self._log_path}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                if requests.get(self.url + "/status", timeout=2).json()["value"].get("ready"):
                    break
            except (requests.RequestException, ValueError, KeyError):
                pass
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.quit()
                raise WebDriverError(f"chromedriver did not start on port {self.port}")
            time.sleep(0.1)
        args = [*CHROMIUM_ARGS, f"--user-data-dir={self._profile}/profile",
                f"--window-size={self.width},{self.height}", *self.extra_args]
        caps = {
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "pageLoadStrategy": "normal",
                    "goog:chromeOptions": {"binary": self.chromium, "args": args},
                    "goog:loggingPrefs": {"browser": "ALL"},
                }
            }
        }
        try:
            value = self._command("POST", "/session", caps)
        except Exception:
            self.quit()
            raise
        self.session_id = value["sessionId"]
        self._command("POST", self._s("/timeouts"), {"script": int(self.timeout * 1000),
                                                     "pageLoad": int(self.timeout * 1000)})
        return self

    def quit(self) -> None:
        """End the session, stop chromedriver (and its browser) and remove the profile."""
        if self.session_id is not None:
            try:
                self._command("DELETE", self._s(""))
            except Exception:  # noqa: BLE001 - best effort on the way out
                pass
            self.session_id = None
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.terminate()
                try:
                    self._proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait(timeout=10)
            self._proc = None
        if self._profile is not None:
            shutil.rmtree(self._profile, ignore_errors=True)
            self._profile = None

    def __enter__(self) -> "Chromium":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.quit()

    # ------------------------------------------------------------------ protocol
    def _s(self, path: str) -> str:
        if self.session_id is None:
            raise WebDriverError("no browser session: call start() first")
        return f"/session/{self.session_id}{path}"

    def _command(self, method: str, path: str, payload: dict | None = None, timeout: float | None = None) -> Any:
        try:
            r = requests.request(method, self.url + path, json=payload if payload is not None else None,
                                 timeout=timeout or self.timeout + 10)
        except requests.RequestException as exc:
            raise WebDriverError(f"{method} {path}: {exc}") from exc
        try:
            body = r.json()
        except ValueError:
            raise WebDriverError(f"{method} {path}: HTTP {r.status_code}, not JSON: {r.text[:500]}") from None
        value = body.get("value") if isinstance(body, dict) else None
        if r.status_code != 200 or (isinstance(value, dict) and "error" in value):
            err = value if isinstance(value, dict) else {}
            raise WebDriverError(f"{method} {path}: {err.get('error', r.status_code)}: {err.get('message', '')[:2000]}")
        return value

    # ------------------------------------------------------------------ commands
    def get(self, url: str) -> None:
        """Navigate to ``url`` and wait for the page's load event."""
        self._command("POST", self._s("/url"), {"url": url})

    def execute(self, script: str, *args: Any) -> Any:
        """Run ``script`` as a function body in the page (``return`` gives the result, JSON-converted)."""
        return self._command("POST", self._s("/execute/sync"), {"script": script, "args": list(args)})

    def execute_async(self, script: str, *args: Any) -> Any:
        """Run an async ``script``: it calls ``arguments[arguments.length - 1](result)`` when done."""
        return self._command("POST", self._s("/execute/async"), {"script": script, "args": list(args)})

    def wait_for(self, script: str, *args: Any, timeout: float = 30.0, interval: float = 0.2) -> Any:
        """Poll ``script`` until it returns a truthy value; returns that value.

        Raises:
            TimeoutError: nothing truthy within ``timeout`` seconds (the message holds the last value).
        """
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            last = self.execute(script, *args)
            if last:
                return last
            time.sleep(interval)
        raise TimeoutError(f"condition not met within {timeout:.0f} s (last value {last!r}): {script[:200]}")

    def console(self) -> list[dict]:
        """Browser console entries since the last call ({level, message, source, timestamp}).

        Uses chromedriver's log endpoint (``goog:loggingPrefs`` browser=ALL); each entry is returned once.
        """
        return self._command("POST", self._s("/se/log"), {"type": "browser"}) or []

    def screenshot(self, path: str | Path | None = None) -> bytes:
        """A PNG of the viewport; also written to ``path`` when given."""
        png = base64.b64decode(self._command("GET", self._s("/screenshot")))
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_bytes(png)
        return png

    def set_window_size(self, width: int, height: int) -> None:
        self._command("POST", self._s("/window/rect"), {"width": int(width), "height": int(height)})
