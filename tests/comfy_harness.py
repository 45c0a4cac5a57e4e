"""Start the real ComfyUI (unpacked by ``scripts/setup.sh`` into ``.cache/comfyui``) for integration tests.

The server runs as a subprocess on CPU with its own base directory, so tests never touch the unpacked
ComfyUI::

    <base>/custom_nodes/ComfyUI-Anti-I2V  -> this repository (symlink)
    <base>/custom_nodes/anti_i2v_testpack -> tests/comfy_testpack (symlink; test-only nodes)
    <base>/models/<kind>/...               models the tests place there (see :attr:`ComfyServer.models_dir`)
    <base>/input, output, temp, user       ComfyUI's folders
    <base>/comfyui.log                      the server's stdout and stderr

It offers what the tests need of the HTTP and websocket API: :meth:`ComfyServer.post_prompt`,
:meth:`ComfyServer.wait`, :meth:`ComfyServer.object_info`, :meth:`ComfyServer.interrupt` and
:meth:`ComfyServer.ws_events` (every websocket message received since start, recorded by a background thread).

Example:
    >>> with ComfyServer() as srv:                       # doctest: +SKIP
    ...     pid = srv.post_prompt({"1": {"class_type": "...", "inputs": {...}}})
    ...     entry = srv.wait(pid, timeout=60)
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterable

import requests

__all__ = ["ComfyServer", "ComfyError", "REPO_ROOT", "COMFY_DIR", "PACK_NAME", "comfy_available"]

REPO_ROOT = Path(__file__).resolve().parents[1]
COMFY_DIR = Path(os.environ.get("ANTI_I2V_COMFYUI", REPO_ROOT / ".cache" / "comfyui"))
PACK_NAME = "ComfyUI-Anti-I2V"
TESTPACK_NAME = "anti_i2v_testpack"
TESTPACK_DIR = Path(__file__).resolve().parent / "comfy_testpack"


class ComfyError(RuntimeError):
    """The server did not start, or did not answer as expected."""


def comfy_available() -> bool:
    """Whether a ComfyUI checkout to start exists (``scripts/setup.sh`` unpacks one)."""
    return (COMFY_DIR / "main.py").is_file()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """A real ComfyUI server in a subprocess, with an HTTP client and a websocket recorder.

    Args:
        base_dir: ComfyUI base directory (models, custom_nodes, input, output...); a new temporary folder
            when None (removed by :meth:`stop`).
        port: TCP port; a free one when None.
        python: interpreter that runs ComfyUI (default: the one running the tests).
        extra_args: more command-line arguments for ``main.py``.
        packs: extra ``{name: folder}`` custom-node packs to symlink (this repository and the test pack are
            always linked).
    """

    def __init__(
        self,
        base_dir: str | Path | None = None,
        *,
        port: int | None = None,
        python: str | None = None,
        extra_args: Iterable[str] = (),
        packs: dict[str, Path] | None = None,
    ) -> None:
        if not comfy_available():
            raise ComfyError(f"no ComfyUI found at {COMFY_DIR}: run `bash scripts/setup.sh` first")
        self._own_base = base_dir is None
        self.base_dir = Path(base_dir or tempfile.mkdtemp(prefix="anti_i2v_comfy_")).resolve()
        self.port = int(port or _free_port())
        self.python = python or sys.executable
        self.extra_args = list(extra_args)
        self.client_id = uuid.uuid4().hex
        self.url = f"http://127.0.0.1:{self.port}"
        self._packs = {PACK_NAME: REPO_ROOT, TESTPACK_NAME: TESTPACK_DIR, **(packs or {})}
        self._proc: subprocess.Popen | None = None
        self._log_file = None
        self._events: list[dict] = []
        self._events_lock = threading.Lock()
        self._ws = None
        self._ws_thread: threading.Thread | None = None
        self._ws_stop = threading.Event()
        #: the JSON answer of the last prompt the server refused (``post_prompt(..., check=False)``)
        self.last_refusal: dict | str | None = None
        #: family -> folder name under models/diffusers (set by the ``comfy_server`` fixture)
        self.tiny_models: dict[str, str] = {}
        self._layout()

    # ------------------------------------------------------------------ folders
    @property
    def models_dir(self) -> Path:
        """``<base>/models``: put models in ``models_dir / "diffusers" / <name>`` etc. before :meth:`start`."""
        return self.base_dir / "models"

    @property
    def input_dir(self) -> Path:
        return self.base_dir / "input"

    @property
    def output_dir(self) -> Path:
        return self.base_dir / "output"

    @property
    def temp_dir(self) -> Path:
        return self.base_dir / "temp"

    @property
    def log_path(self) -> Path:
        return self.base_dir / "comfyui.log"

    def _layout(self) -> None:
        for sub in ("custom_nodes", "models/diffusers", "models/diffusion_models", "models/vae",
                    "models/clip_vision", "models/text_encoders", "input", "output", "temp", "user"):
            (self.base_dir / sub).mkdir(parents=True, exist_ok=True)
        for name, src in self._packs.items():
            link = self.base_dir / "custom_nodes" / name
            if link.is_symlink() or link.exists():
                continue
            link.symlink_to(Path(src).resolve(), target_is_directory=True)

    def log(self, tail: int = 6000) -> str:
        """The last ``tail`` characters of the server log (for failure messages)."""
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    # ------------------------------------------------------------------ life cycle
    def start(self, timeout: float = 180.0) -> "ComfyServer":
        """Start ``main.py --cpu`` and wait until ``/object_info`` answers and the websocket is connected."""
        if self._proc is not None:
            return self
        cmd = [
            self.python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
            "--base-directory", str(self.base_dir), "--disable-api-nodes", "--disable-auto-launch",
            "--preview-method", "none", "--database-url", f"sqlite:///{self.base_dir / 'user' / 'comfyui.db'}",
            *self.extra_args,
        ]
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        env.setdefault("OMP_NUM_THREADS", "2")
        self._log_file = open(self.log_path, "ab")
        self._proc = subprocess.Popen(
            cmd, cwd=str(COMFY_DIR), stdout=self._log_file, stderr=subprocess.STDOUT, env=env,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                raise ComfyError(f"ComfyUI exited with code {self._proc.returncode} during start:\n{self.log()}")
            try:
                r = requests.get(self.url + "/object_info/SaveImage", timeout=5)
                if r.status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise ComfyError(f"ComfyUI did not answer within {timeout:.0f} s:\n{self.log()}")
            time.sleep(0.25)
        self._connect_ws(deadline)
        return self

    def _connect_ws(self, deadline: float) -> None:
        import websocket  # websocket-client

        url = f"ws://127.0.0.1:{self.port}/ws?clientId={self.client_id}"
        while True:
            try:
                self._ws = websocket.create_connection(url, timeout=10)
                break
            except Exception as exc:  # noqa: BLE001 - retry until the deadline
                if time.monotonic() > deadline:
                    raise ComfyError(f"cannot open the websocket {url}: {exc}") from exc
                time.sleep(0.25)
        self._ws.settimeout(0.5)
        self._ws_stop.clear()
        self._ws_thread = threading.Thread(target=self._ws_reader, name="comfy-ws", daemon=True)
        self._ws_thread.start()

    def _ws_reader(self) -> None:
        import websocket

        while not self._ws_stop.is_set():
            try:
                msg = self._ws.recv()
            except websocket.WebSocketTimeoutException:
                continue
            except Exception:  # noqa: BLE001 - the server went away
                return
            if isinstance(msg, (bytes, bytearray)):  # binary previews
                event = {"type": "binary", "size": len(msg)}
            else:
                try:
                    event = json.loads(msg)
                except ValueError:
                    event = {"type": "text", "data": msg}
            event["_t"] = time.monotonic()
            with self._events_lock:
                self._events.append(event)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL), close the websocket, remove a temporary base dir."""
        self._ws_stop.set()
        if self._ws is not None:
            try:
                self._ws.close()
            except Exception:  # noqa: BLE001
                pass
            self._ws = None
        if self._ws_thread is not None:
            self._ws_thread.join(timeout=5)
            self._ws_thread = None
        if self._proc is not None:
            if self._proc.poll() is None:
                try:
                    os.killpg(self._proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
                try:
                    self._proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(self._proc.pid, signal.SIGKILL)
                    self._proc.wait(timeout=10)
            self._proc = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self._own_base and os.environ.get("ANTI_I2V_KEEP_COMFY_BASE") != "1":
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> "ComfyServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # ------------------------------------------------------------------ HTTP
    def get(self, path: str, **kwargs) -> requests.Response:
        return requests.get(self.url + path, timeout=kwargs.pop("timeout", 30), **kwargs)

    def post(self, path: str, **kwargs) -> requests.Response:
        return requests.post(self.url + path, timeout=kwargs.pop("timeout", 30), **kwargs)

    def object_info(self, node: str | None = None) -> dict:
        """``GET /object_info`` (all nodes) or ``/object_info/<node>``."""
        r = self.get("/object_info" + (f"/{node}" if node else ""))
        r.raise_for_status()
        return r.json()

    def post_prompt(self, prompt: dict[str, Any], *, check: bool = True) -> str:
        """Queue an API-format prompt; returns its prompt id.

        Raises:
            ComfyError: the server refused the prompt (validation errors are in the message), unless
                ``check`` is False, in which case the JSON answer is stored in :attr:`last_refusal` and
                the empty string is returned.
        """
        r = self.post("/prompt", json={"prompt": prompt, "client_id": self.client_id})
        if r.status_code != 200:
            self.last_refusal = r.json() if r.headers.get("content-type", "").startswith("application/json") else r.text
            if check:
                raise ComfyError(f"POST /prompt answered {r.status_code}: {r.text[:4000]}")
            return ""
        return r.json()["prompt_id"]

    def history(self, prompt_id: str) -> dict | None:
        """The ``/history/<id>`` entry, or None while the prompt has not finished."""
        r = self.get(f"/history/{prompt_id}")
        r.raise_for_status()
        return r.json().get(prompt_id)

    TERMINAL_EVENTS = ("execution_success", "execution_error", "execution_interrupted")

    def wait(self, prompt_id: str, timeout: float = 120.0) -> dict:
        """Wait until ``prompt_id`` is in ``/history`` (success, error or interrupted); returns the entry.

        Also waits (briefly) for the prompt's terminal websocket message, which ComfyUI may deliver after the
        history entry appears, so tests can read the prompt's websocket events right after this returns.
        """
        deadline = time.monotonic() + timeout
        while True:
            entry = self.history(prompt_id)
            if entry is not None and entry.get("status", {}).get("completed") is not None:
                if self._ws is not None:
                    try:
                        self.wait_event(lambda e: e.get("type") in self.TERMINAL_EVENTS
                                        and isinstance(e.get("data"), dict)
                                        and e["data"].get("prompt_id") == prompt_id, timeout=15.0, since=0)
                    except ComfyError:
                        pass  # a prompt served entirely from cache may end without one; the caller decides
                return entry
            if not self.running:
                raise ComfyError(f"ComfyUI died while running {prompt_id}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise ComfyError(f"prompt {prompt_id} did not finish within {timeout:.0f} s:\n{self.log()}")
            time.sleep(0.2)

    def interrupt(self) -> None:
        """``POST /interrupt``: stop the running prompt (ComfyUI raises at its next interruption check)."""
        self.post("/interrupt").raise_for_status()

    def queue(self) -> dict:
        r = self.get("/queue")
        r.raise_for_status()
        return r.json()

    # ------------------------------------------------------------------ websocket
    def ws_events(self, prompt_id: str | None = None, types: str | Iterable[str] | None = None) -> list[dict]:
        """Websocket messages received so far (a copy), optionally for one prompt and some types.

        A message belongs to ``prompt_id`` when its ``data.prompt_id`` equals it; custom events without a
        prompt id (e.g. ``anti_i2v.progress``) are kept when they arrived between the prompt's
        ``execution_start`` and its end.
        """
        with self._events_lock:
            events = list(self._events)
        if isinstance(types, str):
            types = {types}
        elif types is not None:
            types = set(types)
        if prompt_id is not None:
            events = self._events_of(events, prompt_id)
        if types is not None:
            events = [e for e in events if e.get("type") in types]
        return events

    @staticmethod
    def _events_of(events: list[dict], prompt_id: str) -> list[dict]:
        out, inside = [], False
        for e in events:
            data = e.get("data") if isinstance(e.get("data"), dict) else {}
            pid = data.get("prompt_id")
            if pid == prompt_id:
                out.append(e)
                if e.get("type") == "execution_start":
                    inside = True
                elif e.get("type") in ("execution_success", "execution_error", "execution_interrupted"):
                    inside = False
                elif e.get("type") == "executing" and data.get("node") is None:
                    inside = False
            elif pid is None and inside:
                out.append(e)
            elif pid is not None and pid != prompt_id:
                inside = False
        return out

    def wait_event(self, predicate, timeout: float = 60.0, since: int = 0) -> dict:
        """Block until a recorded websocket message (from index ``since`` on) satisfies ``predicate``."""
        deadline = time.monotonic() + timeout
        seen = since
        while True:
            with self._events_lock:
                new = self._events[seen:]
                seen = len(self._events)
            for e in new:
                if predicate(e):
                    return e
            if not self.running:
                raise ComfyError(f"ComfyUI died while waiting for an event:\n{self.log()}")
            if time.monotonic() > deadline:
                raise ComfyError(f"no matching websocket event within {timeout:.0f} s")
            time.sleep(0.05)

    # ------------------------------------------------------------------ helpers for results
    @staticmethod
    def status_messages(entry: dict) -> list[tuple[str, dict]]:
        """The ``status.messages`` of a history entry as (type, data) pairs."""
        return [(m[0], m[1]) for m in entry.get("status", {}).get("messages", [])]

    @classmethod
    def error_of(cls, entry: dict) -> dict | None:
        """The ``execution_error`` data of a history entry (node_id, node_type, exception_message...), or None."""
        for kind, data in cls.status_messages(entry):
            if kind == "execution_error":
                return data
        return None

    def output_files(self, entry: dict, node_id: str, key: str = "images") -> list[Path]:
        """Paths of the files a node saved (``outputs[node_id][key]`` of a history entry)."""
        roots = {"output": self.output_dir, "temp": self.temp_dir, "input": self.input_dir}
        files = []
        for item in entry.get("outputs", {}).get(node_id, {}).get(key, []):
            files.append(roots[item.get("type", "output")] / item.get("subfolder", "") / item["filename"])
        return files
