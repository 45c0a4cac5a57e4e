"""The Ensemble Surrogate node inside the real ComfyUI 0.3.75 server (the session's ``comfy_server``).

Two tiny diffusers surrogates (CogVideoX and SVD, written by ``conftest_comfy``) are loaded by Load I2V Surrogate,
combined by AntiI2V_EnsembleSurrogate and protected against by AntiI2V_ProtectLoop over HTTP: the report lists
both members with their weights, objectives and loss histories; a member without losses of its own takes the
protect node's, and an index that does not exist in that member's model is refused with the member named.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tests.comfy_harness import ComfyServer

pytestmark = pytest.mark.comfy

PHOTO = "anti_i2v_ensemble_photo.png"


@pytest.fixture(scope="module")
def srv(comfy_server: ComfyServer) -> ComfyServer:
    missing = {"cogvideox", "svd"} - set(getattr(comfy_server, "tiny_models", {}))
    if missing:
        pytest.fail(f"the tiny {sorted(missing)} models are needed by these tests")
    rgb = (np.random.default_rng(0).random((40, 56, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(comfy_server.input_dir / PHOTO)
    return comfy_server


def _graph(srv, *, protect_blocks: str, cog_own: bool, svd_own: bool = True, steps: int = 2) -> dict:
    tiny = srv.tiny_models
    load = {"family": "auto", "dtype": "float32", "frames": 5, "gradient_checkpointing": False}
    g = {
        "1": {"class_type": "LoadImage", "inputs": {"image": PHOTO}},
        "2": {"class_type": "AntiI2V_LoadSurrogateI2V", "inputs": {**load, "folder": tiny["cogvideox"]}},
        "3": {"class_type": "AntiI2V_LoadSurrogateI2V", "inputs": {**load, "folder": tiny["svd"]}},
        "4": {"class_type": "AntiI2V_IRALoss", "inputs": {"blocks": "4", "vae_layers": "3", "weight": 1.0}},
        "5": {"class_type": "AntiI2V_IRCLoss", "inputs": {"pairs": "1:7", "weight": 1.0, "losses": ["4", 0]}},
        "6": {"class_type": "AntiI2V_EnsembleSurrogate",
              "inputs": {"surrogate_1": ["2", 0], "weight_1": 1.0, "surrogate_2": ["3", 0], "weight_2": 0.5,
                         "losses_2": ["5", 0], "balance": True}},
        "7": {"class_type": "AntiI2V_IRALoss", "inputs": {"blocks": protect_blocks, "vae_layers": "", "weight": 1.0}},
        "8": {"class_type": "AntiI2V_DSPPerturb",
              "inputs": {"eps": 8.0, "dct_block": 8, "dct_channels": "ab", "mix": 0.5, "restore_luminance": True}},
        "9": {"class_type": "AntiI2V_ProtectLoop",
              "inputs": {"image": ["1", 0], "surrogate": ["6", 0], "perturbation": ["8", 0], "losses": ["7", 0],
                         "steps": steps, "step_size": 1.0, "schedule": "constant", "optimizer": "normalized",
                         "seed": 0, "frames": 0}},
        "10": {"class_type": "PreviewAny", "inputs": {"source": ["9", 2]}},
        "11": {"class_type": "SaveImage", "inputs": {"images": ["9", 0], "filename_prefix": "anti_i2v_ensemble"}},
    }
    if not svd_own:
        del g["6"]["inputs"]["losses_2"]
    if cog_own:
        g["12"] = {"class_type": "AntiI2V_IRALoss", "inputs": {"blocks": "2", "vae_layers": "", "weight": 1.0}}
        g["6"]["inputs"]["losses_1"] = ["12", 0]
    return g


def test_ensemble_node_protects_against_both_members(srv):
    assert "AntiI2V_EnsembleSurrogate" in srv.object_info()
    entry = srv.wait(srv.post_prompt(_graph(srv, protect_blocks="3", cog_own=False)), timeout=240)
    assert entry["status"]["status_str"] == "success", f"{ComfyServer.error_of(entry)}\n{srv.log()}"
    report = json.loads(entry["outputs"]["10"]["text"][0])
    members = report["ensemble"]["members"]
    assert [(m["family"], m["weight"]) for m in members] == [("cogvideox", 1.0), ("svd", 0.5)]
    # cogvideox has no losses_1: it takes the protect node's IRA on block 3; svd keeps its own chain
    assert members[0]["objective"] == [{"name": "ira", "weight": 1.0, "blocks": [3], "vae_layers": []}]
    assert [t["name"] for t in members[1]["objective"]] == ["ira", "irc"]
    assert members[1]["objective"][1]["pairs"] == [[1, 7]]
    assert all(len(m["loss_history"]) == 2 for m in members) and report["steps_done"] == 2
    assert members[0]["working_size"] != members[1]["working_size"]
    assert max(report["linf_255"]) <= 8 + 1e-3
    assert report["settings"]["surrogate"]["balance"] is True


def test_member_without_its_own_losses_is_named_when_an_index_does_not_fit(srv):
    entry = srv.wait(srv.post_prompt(_graph(srv, protect_blocks="8", cog_own=False, steps=1)), timeout=120)
    err = ComfyServer.error_of(entry)
    assert err is not None and entry["status"]["status_str"] == "error"
    msg = err["exception_message"]
    assert "AntiI2V_ProtectLoop" in msg and "'cogvideox'" in msg and "valid indices are 0-3" in msg, msg
    # cogvideox with a chain of its own, svd without: the protect node's block 8 reaches svd only (9 blocks): it runs
    entry = srv.wait(srv.post_prompt(_graph(srv, protect_blocks="8", cog_own=True, svd_own=False, steps=1)),
                     timeout=240)
    assert entry["status"]["status_str"] == "success", f"{ComfyServer.error_of(entry)}\n{srv.log()}"
    members = json.loads(entry["outputs"]["10"]["text"][0])["ensemble"]["members"]
    assert [m["objective"][0]["blocks"] for m in members] == [[2], [8]]


def test_single_surrogate_nodes_refuse_an_ensemble_by_name(srv):
    g = _graph(srv, protect_blocks="3", cog_own=False)
    g = {k: g[k] for k in ("1", "2", "3", "4", "5", "6")}
    g["20"] = {"class_type": "AntiI2V_PreviewAttackVideo",
               "inputs": {"surrogate": ["6", 0], "clean_image": ["1", 0], "protected_image": ["1", 0], "steps": 1,
                          "seed": 0, "frames": 0}}
    entry = srv.wait(srv.post_prompt(g), timeout=120)
    err = ComfyServer.error_of(entry)
    assert err is not None and "takes one surrogate, not an Ensemble Surrogate" in err["exception_message"]
