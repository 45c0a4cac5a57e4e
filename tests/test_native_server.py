"""The chained native Wan 2.1 I2V graph on the real ComfyUI server (tiny ComfyUI-format models).

UNETLoader + VAELoader load the tiny files written by tests/comfy_models.py under the real preset names.
The test pack's ``AntiI2VTest_ZeroConditioning`` (width 4096) replaces CLIPLoader + CLIPTextEncode only,
because the umT5-XXL text encoder cannot be made tiny; everything else runs as shipped:

LoadImage -> AntiI2V_LoadSurrogateI2V(model, vae, positive) -> DSP -> IRA -> ProtectLoop -> WanImageToVideo
-> KSampler -> VAEDecode -> SaveAnimatedWEBP, beside the same video graph on the clean photo.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageSequence

from tests import comfy_models as cm

pytestmark = pytest.mark.comfy

SIZE, LENGTH = 64, 5


def _video_graph(prefix: str, image_ref: list, ids: dict) -> dict:
    """WanImageToVideo -> KSampler -> VAEDecode -> SaveAnimatedWEBP on ``image_ref`` (node ids from ``ids``)."""
    i2v, ks, dec, save = ids["i2v"], ids["ks"], ids["dec"], ids["save"]
    return {
        i2v: {"class_type": "WanImageToVideo", "inputs": {
            "positive": ["3", 0], "negative": ["3", 0], "vae": ["2", 0], "width": SIZE, "height": SIZE,
            "length": LENGTH, "batch_size": 1, "start_image": image_ref}},
        ks: {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "seed": 5, "steps": 2, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple",
            "positive": [i2v, 0], "negative": [i2v, 1], "latent_image": [i2v, 2], "denoise": 1.0}},
        dec: {"class_type": "VAEDecode", "inputs": {"samples": [ks, 0], "vae": ["2", 0]}},
        save: {"class_type": "SaveAnimatedWEBP", "inputs": {
            "images": [dec, 0], "filename_prefix": prefix, "fps": 6.0, "lossless": True, "quality": 100,
            "method": "default"}},
    }


def _frames(path) -> torch.Tensor:
    with Image.open(path) as im:
        frames = [torch.from_numpy(np.asarray(f.convert("RGB"), dtype=np.float32))
                  for f in ImageSequence.Iterator(im)]
    return torch.stack(frames)


def test_native_wan_graph_protects(comfy_server):  # noqa: F811
    srv = comfy_server
    info = srv.object_info()
    for node in ("AntiI2V_LoadSurrogateI2V", "AntiI2V_ProtectLoop", "AntiI2VTest_ZeroConditioning"):
        assert node in info, f"{node} is not registered; server log:\n{srv.log()}"
    cm.write_tiny_wan21_i2v(srv.models_dir / "diffusion_models")
    cm.write_tiny_wan_vae(srv.models_dir / "vae")
    g = torch.Generator().manual_seed(0)
    photo = torch.nn.functional.interpolate(torch.rand(1, 3, 8, 8, generator=g), size=(SIZE, SIZE), mode="bilinear")
    Image.fromarray((photo[0].permute(1, 2, 0).numpy() * 255).round().astype("uint8")).save(
        srv.input_dir / "native_photo.png")

    prompt = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": cm.WAN_I2V_FILE, "weight_dtype": "default"}},
        "2": {"class_type": "VAELoader", "inputs": {"vae_name": cm.WAN_VAE_FILE}},
        "3": {"class_type": "AntiI2VTest_ZeroConditioning", "inputs": {"width": 4096, "tokens": 16}},
        "4": {"class_type": "LoadImage", "inputs": {"image": "native_photo.png"}},
        "5": {"class_type": "AntiI2V_LoadSurrogateI2V", "inputs": {
            "family": "auto", "folder": "(none)", "dtype": "float32", "frames": 1,
            "gradient_checkpointing": False, "model": ["1", 0], "vae": ["2", 0], "positive": ["3", 0]}},
        "6": {"class_type": "AntiI2V_DSPPerturb", "inputs": {
            "eps": 16.0, "dct_block": 8, "dct_channels": "rgb", "mix": 0.5, "restore_luminance": False}},
        "7": {"class_type": "AntiI2V_IRALoss", "inputs": {"blocks": "1", "vae_layers": "", "weight": 1.0}},
        "8": {"class_type": "AntiI2V_ProtectLoop", "inputs": {
            "image": ["4", 0], "surrogate": ["5", 0], "perturbation": ["6", 0], "losses": ["7", 0],
            "steps": 2, "step_size": 4.0, "schedule": "constant", "optimizer": "sign", "seed": 0, "frames": 0}},
    }
    prompt.update(_video_graph("native_protected", ["8", 0], {"i2v": "9", "ks": "10", "dec": "11", "save": "12"}))
    prompt.update(_video_graph("native_clean", ["4", 0], {"i2v": "13", "ks": "14", "dec": "15", "save": "16"}))

    pid = srv.post_prompt(prompt)
    entry = srv.wait(pid, timeout=300)
    assert entry["status"]["status_str"] == "success", f"{entry['status']}\n{srv.log()}"
    outs = entry["outputs"]
    files = {}
    for node, name in (("12", "protected"), ("16", "clean")):
        images = outs[node]["images"]
        assert len(images) == 1
        files[name] = srv.output_dir / images[0].get("subfolder", "") / images[0]["filename"]
    clean, protected = _frames(files["clean"]), _frames(files["protected"])
    assert clean.shape == protected.shape and clean.shape[0] == LENGTH
    assert (clean - protected).abs().mean() > 0.5  # in 0-255 units: the protected photo changes the video
