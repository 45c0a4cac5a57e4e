"""Pytest plugin with the session-scoped ``comfy_server`` fixture (the real ComfyUI, see ``comfy_harness``).

Registered from ``tests/conftest.py`` with ``pytest_plugins = ["tests.conftest_comfy"]`` (or on the command
line: ``pytest -p tests.conftest_comfy``). Before the server starts, the fixture writes one tiny random-weight
diffusers model per surrogate family into ``<base>/models/diffusers/tiny-<family>/`` with the adapters'
``save_tiny``; ``comfy_server.tiny_models`` maps each family to its folder name (a family whose adapter
module is missing is absent). Tests that need other models (e.g. ComfyUI-format Wan weights) write them under
``comfy_server.models_dir`` themselves: ComfyUI rescans model folders when their mtime changes.

Environment:
    ANTI_I2V_COMFY_PORT: fixed port (default: a free one).
    ANTI_I2V_KEEP_COMFY_BASE=1: keep the temporary base directory (log, outputs) after the session.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.comfy_harness import ComfyError, ComfyServer, comfy_available

__all__ = ["comfy_server", "write_tiny_diffusers"]

TINY_PREFIX = "tiny-"


def write_tiny_diffusers(models_dir: Path, families=None, *, seed: int = 0) -> dict[str, Path]:
    """Write tiny diffusers-format models with the adapters' ``save_tiny``; returns {family: folder}.

    Each folder also gets ``anti_i2v.json`` with the tiny model's working size (the loader would otherwise use
    the real family's native size, e.g. 480x832 for Wan, which the tiny rotary tables do not cover).
    """
    from anti_i2v.surrogates import FAMILIES, save_tiny

    out: dict[str, Path] = {}
    for family in families or FAMILIES:
        folder = Path(models_dir) / "diffusers" / f"{TINY_PREFIX}{family}"
        if not (folder / ".complete").is_file():
            save_tiny(family, folder, seed=seed)  # also records the tiny working size in anti_i2v.json
            (folder / ".complete").write_text("ok")
        out[family] = folder
    return out


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory):
    """A running ComfyUI with this pack and the test pack loaded; tiny models in ``models/diffusers``.

    The attribute ``tiny_models`` maps each family with an adapter to its folder name under
    ``models/diffusers``.
    """
    if not comfy_available():
        msg = "ComfyUI is not unpacked in .cache/comfyui: run `bash scripts/setup.sh`"
        if os.environ.get("CI") or os.environ.get("ANTI_I2V_REQUIRE_COMFY"):
            pytest.fail(msg)  # the README's test command must never skip the server tests
        pytest.skip(msg)
    base = tmp_path_factory.mktemp("comfy_base")
    port = int(os.environ["ANTI_I2V_COMFY_PORT"]) if os.environ.get("ANTI_I2V_COMFY_PORT") else None
    server = ComfyServer(base, port=port)
    folders = write_tiny_diffusers(server.models_dir)
    server.tiny_models = {fam: path.name for fam, path in folders.items()}
    try:
        server.start()
    except ComfyError:
        server.stop()
        raise
    yield server
    server.stop()
