"""Every defense in a real ComfyUI graph (the real server over HTTP, tests/conftest_comfy.py), on each of the five
tiny families: LoadSurrogateI2V -> Defense Method (paper defaults) -> Protect Image (loop_from_method, 1 step) for all
seven methods in one prompt per family, and a hand-composed objective from the Baseline Loss node in RGB space."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from anti_i2v.methods import METHOD_NAMES, get_method
from tests.comfy_harness import ComfyServer

pytestmark = pytest.mark.comfy

PHOTO = "anti_i2v_methods_photo.png"
FRAMES = {"cogvideox": 1, "wan21": 1, "svd": 2, "dynamicrafter": 2, "opensora": 5}  # the fewest each family takes


@pytest.fixture(scope="module")
def srv(comfy_server: ComfyServer) -> ComfyServer:
    rgb = np.random.default_rng(0).integers(0, 256, size=(36, 44, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(comfy_server.input_dir / PHOTO)
    return comfy_server


def _graph(family: str) -> dict:
    g = {
        "1": {"class_type": "LoadImage", "inputs": {"image": PHOTO}},
        "2": {"class_type": "AntiI2V_LoadSurrogateI2V",
              "inputs": {"family": "auto", "folder": f"tiny-{family}", "dtype": "float32", "frames": FRAMES[family],
                         "gradient_checkpointing": False}},
    }
    for i, name in enumerate(METHOD_NAMES):
        m = get_method(name)
        d, p, r = f"{10 + i}", f"{20 + i}", f"{30 + i}"
        g[d] = {"class_type": "AntiI2V_DefenseMethod",
                "inputs": {"surrogate": ["2", 0], "method": name, "space": "paper", "eps": 0.0}}
        g[p] = {"class_type": "AntiI2V_ProtectLoop",
                "inputs": {"image": ["1", 0], "surrogate": ["2", 0], "perturbation": [d, 0], "losses": [d, 1],
                           "steps": 1, "step_size": m.step_size, "schedule": "constant", "optimizer": m.optimizer,
                           "seed": 0, "frames": 0, "random_start": m.random_start}}
        g[r] = {"class_type": "PreviewAny", "inputs": {"source": [p, 2]}}
    return g


@pytest.mark.parametrize("family", ["cogvideox", "wan21", "svd", "dynamicrafter", "opensora"])
def test_every_defense_in_a_graph(srv, family):
    g = _graph(family)  # one step each (the papers' loops run 100-1000 steps; loop_from_method is tested below)
    entry = srv.wait(srv.post_prompt(g), timeout=600)
    assert entry["status"]["status_str"] == "success", f"{ComfyServer.error_of(entry)}\n{srv.log()}"
    for i, name in enumerate(METHOD_NAMES):
        rep = json.loads(entry["outputs"][f"{30 + i}"]["text"][0])
        m = get_method(name)
        assert rep["settings"]["method"] == name and rep["settings"]["space"] == m.space
        assert rep["settings"]["perturbation"]["eps"] == pytest.approx(m.eps)
        assert rep["steps_done"] == 1 and max(rep["linf_255"]) <= m.eps + 1e-4
        assert rep["settings"]["loop"]["random_start"] is m.random_start
    notes = json.loads(entry["outputs"]["36"]["text"][0])["settings"]["notes"]  # I2VGuard's report
    temporal_left_out = any("temporal attack left out" in n for n in notes)
    assert temporal_left_out == (family in ("cogvideox", "wan21"))  # full 3D attention: no temporal maps there
    assert not any("cannot generate" in n for n in notes)  # the clean generation is generated on every family


def test_paper_loop_and_composed_objective(srv):
    g = {
        "1": {"class_type": "LoadImage", "inputs": {"image": PHOTO}},
        "2": {"class_type": "AntiI2V_LoadSurrogateI2V",
              "inputs": {"family": "auto", "folder": "tiny-cogvideox", "dtype": "float32", "frames": 1,
                         "gradient_checkpointing": False}},
        "3": {"class_type": "AntiI2V_DSPPerturb",
              "inputs": {"eps": 8.0, "dct_block": 8, "dct_channels": "ab", "mix": 0.5, "restore_luminance": True,
                         "space": "rgb"}},
        "4": {"class_type": "AntiI2V_BaselineLoss", "inputs": {"method": "sds-", "weight": 1.0}},
        "5": {"class_type": "AntiI2V_BaselineLoss",
              "inputs": {"method": "vgmshield_undirected", "weight": 2.0, "losses": ["4", 0]}},
        "6": {"class_type": "AntiI2V_ProtectLoop",
              "inputs": {"image": ["1", 0], "surrogate": ["2", 0], "perturbation": ["3", 0], "losses": ["5", 0],
                         "steps": 2, "step_size": 1.0, "schedule": "constant", "optimizer": "sign", "seed": 0,
                         "frames": 0, "random_start": True}},
        "7": {"class_type": "PreviewAny", "inputs": {"source": ["6", 2]}},
        # loop_from_method without a Defense Method node: a clear error
        "8": {"class_type": "AntiI2V_ProtectLoop",
              "inputs": {"image": ["1", 0], "surrogate": ["2", 0], "perturbation": ["3", 0], "losses": ["5", 0],
                         "steps": 1, "step_size": 1.0, "schedule": "constant", "optimizer": "sign", "seed": 0,
                         "frames": 0, "loop_from_method": True}},
        "9": {"class_type": "PreviewAny", "inputs": {"source": ["8", 2]}},
    }
    ok = dict(g)
    del ok["8"], ok["9"]
    entry = srv.wait(srv.post_prompt(ok), timeout=300)
    assert entry["status"]["status_str"] == "success", f"{ComfyServer.error_of(entry)}\n{srv.log()}"
    rep = json.loads(entry["outputs"]["7"]["text"][0])
    assert rep["settings"]["method"] == "custom" and rep["settings"]["space"] == "rgb"
    assert [t["name"] for t in rep["settings"]["losses"]] == ["sds", "vgmshield"]
    assert rep["settings"]["loop"]["random_start"] is True and rep["steps_done"] == 2
    bad = srv.wait(srv.post_prompt({k: g[k] for k in ("1", "2", "3", "4", "5", "8", "9")}), timeout=120)
    err = ComfyServer.error_of(bad)
    assert err is not None and "Defense Method" in err["exception_message"]
