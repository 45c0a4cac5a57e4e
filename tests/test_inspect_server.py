"""AntiI2V_LayerPCA inside the real ComfyUI server (``comfy_server``, tests/conftest_comfy.py), over HTTP.

LoadImage -> AntiI2V_LoadSurrogateI2V (tiny-cogvideox: 4 blocks, native size 32 x 48) -> AntiI2V_LayerPCA
-> SaveImage, with the block listing shown by PreviewAny.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.comfy_harness import ComfyServer

pytestmark = pytest.mark.comfy

NODE = "AntiI2V_LayerPCA"
PHOTO = "anti_i2v_pca_photo.png"
WORK_HW = (32, 48)  # the tiny CogVideoX's native size (learned positional embeddings)


@pytest.fixture(scope="module")
def srv(comfy_server: ComfyServer) -> ComfyServer:
    if "cogvideox" not in getattr(comfy_server, "tiny_models", {}):
        pytest.fail("the CogVideoX adapter (anti_i2v/surrogates/cogvideox.py) is needed by these tests")
    yy, xx = np.mgrid[0:45, 0:61]
    rgb = np.stack([xx * 255 // 61, yy * 255 // 45, ((xx // 8 + yy // 8) % 2) * 255], -1).astype(np.uint8)
    Image.fromarray(rgb).save(comfy_server.input_dir / PHOTO)
    return comfy_server


def _graph(blocks: str, seed: int, prefix: str, folder: str = "tiny-cogvideox") -> dict:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": PHOTO}},
        "2": {"class_type": "AntiI2V_LoadSurrogateI2V",
              "inputs": {"family": "auto", "folder": folder, "dtype": "float32", "frames": 9,
                         "gradient_checkpointing": False}},
        "3": {"class_type": NODE, "inputs": {"surrogate": ["2", 0], "image": ["1", 0], "blocks": blocks,
                                             "seed": seed}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": prefix}},
        "5": {"class_type": "PreviewAny", "inputs": {"source": ["3", 1]}},
    }


def _run(srv: ComfyServer, prompt: dict) -> dict:
    return srv.wait(srv.post_prompt(prompt), timeout=120)


def test_schema_has_tooltips_and_is_an_output_node(srv):
    spec = srv.object_info()[NODE]
    assert spec["display_name"] == "Layer PCA Maps (Anti-I2V)"
    assert spec["category"] == "Anti-I2V" and len(spec["description"]) > 40
    assert spec["output_node"] is True
    assert spec["output"] == ["IMAGE", "STRING"]
    required = spec["input"]["required"]
    assert list(required) == ["surrogate", "image", "blocks", "seed"]
    assert required["surrogate"][0] == "ANTI_I2V_SURROGATE" and required["blocks"][1]["default"] == "0-3"
    for name, (_, opts) in required.items():
        assert opts.get("tooltip"), f"{NODE}.{name} has no tooltip"
    assert all(spec.get("output_tooltips") or [None]), "outputs without tooltips"


def test_maps_are_saved_previewed_and_named(srv):
    entry = _run(srv, _graph("0-3", seed=0, prefix="anti_i2v_pca_a"))
    assert entry["status"]["status_str"] == "success", f"{ComfyServer.error_of(entry)}\n{srv.log()}"
    saved = srv.output_files(entry, "4")
    assert len(saved) == 4, saved
    arrays = []
    for path in saved:
        with Image.open(path) as im:
            assert im.size == (WORK_HW[1], WORK_HW[0]) and im.mode == "RGB"
            arrays.append(np.asarray(im).astype(int))
    for a in arrays:
        assert a.min() == 0 and a.max() == 255  # min-max normalised components (8-bit)
    assert any(not np.array_equal(arrays[0], a) for a in arrays[1:]), "all blocks gave the same map"
    # the node's own preview (ui): the same four maps in the temp folder
    previews = srv.output_files(entry, "3")
    assert len(previews) == 4 and all(p.is_file() and p.parent == srv.temp_dir for p in previews)
    names = entry["outputs"]["5"]["text"][0].splitlines()
    assert names == [f"{i}: transformer_blocks.{i}" for i in range(4)]

    # same seed, same maps (pixel-identical); the blocks text differs so ComfyUI runs the node again
    again = _run(srv, _graph("0,1,2,3", seed=0, prefix="anti_i2v_pca_b"))  # re-executed, not cached
    cached = [d.get("nodes", []) for kind, d in ComfyServer.status_messages(again) if kind == "execution_cached"]
    assert cached and all("3" not in nodes for nodes in cached), cached
    for a, path in zip(arrays, srv.output_files(again, "4")):
        with Image.open(path) as im:
            assert np.array_equal(a, np.asarray(im).astype(int))


def test_out_of_range_block_names_the_valid_range(srv):
    entry = _run(srv, _graph("2,4", seed=0, prefix="anti_i2v_pca_bad"))
    err = ComfyServer.error_of(entry)
    assert err is not None and entry["status"]["status_str"] == "error"
    msg = err["exception_message"]
    assert err["node_type"] == NODE and msg.startswith(f"{NODE}: "), msg
    assert "index 4 is out of range" in msg and "0-3" in msg, msg


def test_open_sora_layers_are_mapped(srv):
    """Open-Sora 1.2 (tiny, this pack's STDiT3): one map per STDiT3 layer, named by the temporal block it ends in."""
    assert "opensora" in srv.tiny_models, "no tiny opensora folder: its adapter is missing"
    entry = _run(srv, _graph("0-3", seed=0, prefix="anti_i2v_pca_os", folder=srv.tiny_models["opensora"]))
    assert entry["status"]["status_str"] == "success", f"{ComfyServer.error_of(entry)}\n{srv.log()}"
    saved = srv.output_files(entry, "4")
    assert len(saved) == 4
    for path in saved:
        with Image.open(path) as im:
            assert im.size == (48, 32) and np.asarray(im).max() == 255  # tiny working size 32 x 48
    names = entry["outputs"]["5"]["text"][0].splitlines()
    assert names == [f"{i}: transformer.temporal_blocks.{i} (layer {i})" for i in range(4)]
