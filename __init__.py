"""ComfyUI-Anti-I2V: protect photos against image-to-video diffusion models (Anti-I2V, CVPR 2026).

ComfyUI imports this file as the pack. The nodes are imported only when ComfyUI itself is importable, so
pytest and scripts can import the library (``anti_i2v``) without ComfyUI.
"""

from __future__ import annotations

import importlib.util
import os
import sys

WEB_DIRECTORY = "./js"
NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}

try:
    import comfy  # noqa: F401 - only present inside ComfyUI
except ImportError:
    comfy = None

if comfy is not None:
    if importlib.util.find_spec("anti_i2v") is None:
        # a pack cloned into custom_nodes without `pip install`: make its library importable by name
        sys.path.append(os.path.dirname(os.path.abspath(__file__)))
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: F811

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
