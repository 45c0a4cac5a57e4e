"""Build the workflow presets in ``workflows/`` and their thumbnails with the real ComfyUI frontend.

Each preset is written here as an API-format graph (what ``/prompt`` runs) plus a layout. The script starts
the real ComfyUI (``tests/comfy_harness.py``) with this pack, opens its frontend in headless Chromium
(``tests/browser.py``) and, per preset:

1. ``--workflows``: loads the API graph with ``app.loadApiJson`` (the frontend adds every widget, including
   ``control_after_generate`` values), places the nodes, adds a Markdown note and groups, and saves
   ``app.graph.serialize()`` as ``workflows/<name>.json`` (the UI format ComfyUI's template browser lists);
2. loads ``workflows/<name>.json`` with ``app.loadGraphData``, fits it to the view and saves a screenshot of
   the canvas as ``workflows/<name>.jpg`` (the template's thumbnail).

The images are renders of our own graphs. Model files the presets name are stood in by empty placeholder
files (only their names appear in the combo widgets; nothing is loaded).

Usage:
    .venv/bin/python scripts/make_thumbnails.py [--workflows] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / "workflows"

WAN_UNET = "wan2.1_i2v_480p_14B_fp16.safetensors"
WAN_VAE = "wan_2.1_vae.safetensors"
WAN_TEXT = "umt5_xxl_fp8_e4m3fn_scaled.safetensors"
WAN_CLIP_VISION = "clip_vision_h.safetensors"
SVD_CKPT = "svd.safetensors"
COGVIDEOX_FOLDER = "CogVideoX-5b-I2V"
LTXV_CKPT = "ltx-video-2b-v0.9.5.safetensors"
WAN22_HIGH = "wan2.2_i2v_high_noise_14B_fp16.safetensors"
WAN22_LOW = "wan2.2_i2v_low_noise_14B_fp16.safetensors"
WAN22_5B = "wan2.2_ti2v_5B_fp16.safetensors"
WAN22_VAE = "wan2.2_vae.safetensors"
LTXV_TEXT = "t5xxl_fp16.safetensors"
HUNYUAN_I2V = "hunyuan_video_image_to_video_720p_bf16.safetensors"
HUNYUAN_VAE = "hunyuan_video_vae_bf16.safetensors"
HUNYUAN_CLIP_L = "clip_l.safetensors"
HUNYUAN_LLAVA = "llava_llama3_fp8_scaled.safetensors"
HUNYUAN_VISION = "llava_llama3_vision.safetensors"

#: placeholder model files (relative to models/) so the combo widgets list the names the presets use
PLACEHOLDERS = [
    f"diffusion_models/{WAN_UNET}",
    f"vae/{WAN_VAE}",
    f"text_encoders/{WAN_TEXT}",
    f"clip_vision/{WAN_CLIP_VISION}",
    f"checkpoints/{SVD_CKPT}",
    f"checkpoints/{LTXV_CKPT}",
    f"diffusion_models/{WAN22_HIGH}",
    f"diffusion_models/{WAN22_LOW}",
    f"diffusion_models/{WAN22_5B}",
    f"vae/{WAN22_VAE}",
    f"text_encoders/{LTXV_TEXT}",
    f"diffusion_models/{HUNYUAN_I2V}",
    f"vae/{HUNYUAN_VAE}",
    f"text_encoders/{HUNYUAN_CLIP_L}",
    f"text_encoders/{HUNYUAN_LLAVA}",
    f"clip_vision/{HUNYUAN_VISION}",
    f"diffusers/{COGVIDEOX_FOLDER}/model_index.json",
]


def _n(class_type: str, title: str | None = None, **inputs) -> dict:
    node = {"class_type": class_type, "inputs": inputs}
    if title:
        node["_meta"] = {"title": title}
    return node


def _dsp() -> dict:
    from anti_i2v.dsp import DSPConfig

    d = DSPConfig()  # the library's defaults: the imperceptible preset the quality benchmark chose
    return _n("AntiI2V_DSPPerturb", eps=d.eps, dct_block=d.dct_block, dct_channels=d.dct_channels, mix=d.mix,
              restore_luminance=d.restore_luminance, space=d.space, chroma_downsample=d.chroma_downsample)


def _loop(image, surrogate, dsp, losses, *, steps=200) -> dict:
    return _n("AntiI2V_ProtectLoop", image=image, surrogate=surrogate, perturbation=dsp, losses=losses,
              steps=steps, step_size=1.0, schedule="constant", optimizer="normalized", seed=0, frames=0,
              robust_jpeg=0)


def _video_branch(prefix: str, ids: dict, *, model, cond, latent_of, vae, sampler: dict, fps: float) -> dict:
    """KSampler -> VAEDecode -> SaveAnimatedWEBP for one branch (clean or protected)."""
    k, d, s = ids["k"], ids["d"], ids["s"]
    return {
        k: _n("KSampler", model=model, seed=42, positive=[cond, 0], negative=[cond, 1],
              latent_image=[latent_of, 2], denoise=1.0, **sampler),
        d: _n("VAEDecode", samples=[k, 0], vae=vae),
        s: _n("SaveAnimatedWEBP", f"Save {prefix} video", images=[d, 0], filename_prefix=f"anti_i2v/{prefix}",
              fps=fps, lossless=False, quality=90, method="default"),
    }


def preset_cogvideox() -> tuple[dict, dict, str]:
    g = {
        "1": _n("LoadImage", "Photo to protect", image="example.png"),
        "2": _n("AntiI2V_LoadSurrogateI2V", family="cogvideox", folder=COGVIDEOX_FOLDER, dtype="bfloat16",
                frames=9, gradient_checkpointing=False),
        "3": _dsp(),
        "4": _n("AntiI2V_IRALoss", blocks="27", vae_layers="3,4", weight=1.0),
        "5": _n("AntiI2V_IRCLoss", pairs="3:27", weight=1.0, losses=["4", 0]),
        "6": _loop(["1", 0], ["2", 0], ["3", 0], ["5", 0]),
        "7": _n("SaveImage", "Save protected photo", images=["6", 0], filename_prefix="anti_i2v/protected"),
        "8": _n("PreviewImage", "Perturbation (amplified)", images=["6", 1]),
        "9": _n("PreviewAny", "Report", source=["6", 2]),
        "10": _n("AntiI2V_PreviewAttackVideo", surrogate=["2", 0], clean_image=["1", 0], protected_image=["6", 0],
                 steps=4, seed=0, frames=0),
        "11": _n("PreviewAny", "Attack metrics", source=["10", 2]),
    }
    layout = {"1": (20, 80), "2": (20, 440), "3": (400, 80), "4": (400, 380), "5": (400, 620),
              "6": (780, 80), "7": (1200, 80), "8": (1200, 420), "9": (1560, 80),
              "10": (780, 620), "11": (1200, 760)}
    note = (
        "## Protect a photo against CogVideoX-5B-I2V (Anti-I2V)\n\n"
        "1. Put the diffusers folder **CogVideoX-5b-I2V** (THUDM/CogVideoX-5b-I2V) in `models/diffusers`.\n"
        "2. Load your photo. **Protect Image** optimises an invisible Dual-Space Perturbation "
        "(`eps` = 8/255; 16 is the paper's and stronger, but visible up close) with the paper's losses: IRA on block 27 + the last VAE-encoder layers, IRC 3 -> 27.\n"
        "3. **Preview Attack Video** generates a short video from the clean and the protected photo.\n\n"
        "The loss chart on Protect Image updates live. Open each node's help (?) for tips on layers and eps."
    )
    return g, layout, note


def preset_wan21() -> tuple[dict, dict, str]:
    sampler = {"steps": 20, "cfg": 6.0, "sampler_name": "uni_pc", "scheduler": "simple"}
    g = {
        "1": _n("LoadImage", "Photo to protect", image="example.png"),
        "2": _n("UNETLoader", unet_name=WAN_UNET, weight_dtype="default"),
        "3": _n("ModelSamplingSD3", model=["2", 0], shift=8.0),
        "4": _n("VAELoader", vae_name=WAN_VAE),
        "5": _n("CLIPLoader", clip_name=WAN_TEXT, type="wan", device="default"),
        "6": _n("CLIPTextEncode", "Positive prompt", clip=["5", 0],
                text="a person looks at the camera and talks, natural head and hand motion"),
        "7": _n("CLIPTextEncode", "Negative prompt", clip=["5", 0],
                text="blurry, static, low quality, deformed, watermark, subtitles"),
        "22": _n("CLIPVisionLoader", clip_name=WAN_CLIP_VISION),
        "8": _n("AntiI2V_LoadSurrogateI2V", family="wan21", folder="(none)", dtype="bfloat16", frames=9,
                gradient_checkpointing=False, model=["3", 0], vae=["4", 0], clip_vision=["22", 0],
                positive=["6", 0], clip_vision_crop="none"),
        "9": _dsp(),
        "10": _n("AntiI2V_IRALoss", blocks="auto", vae_layers="auto", weight=1.0),
        "11": _n("AntiI2V_IRCLoss", pairs="auto", weight=1.0, losses=["10", 0]),
        "12": _loop(["1", 0], ["8", 0], ["9", 0], ["11", 0]),
        "13": _n("SaveImage", "Save protected photo", images=["12", 0], filename_prefix="anti_i2v/protected"),
        # protected photo -> Wan 2.1 I2V: BOTH the start image and the CLIP-vision image are the protected photo
        "23": _n("CLIPVisionEncode", "CLIP vision (protected photo)", clip_vision=["22", 0], image=["12", 0],
                 crop="none"),
        "14": _n("WanImageToVideo", "Wan I2V (protected)", positive=["6", 0], negative=["7", 0], vae=["4", 0],
                 clip_vision_output=["23", 0], width=832, height=480, length=33, batch_size=1,
                 start_image=["12", 0]),
        **_video_branch("wan_protected", {"k": "15", "d": "16", "s": "17"}, model=["3", 0], cond="14",
                        latent_of="14", vae=["4", 0], sampler=sampler, fps=16.0),
        # clean photo -> Wan 2.1 I2V (the comparison, same seed)
        "24": _n("CLIPVisionEncode", "CLIP vision (clean photo)", clip_vision=["22", 0], image=["1", 0],
                 crop="none"),
        "18": _n("WanImageToVideo", "Wan I2V (clean)", positive=["6", 0], negative=["7", 0], vae=["4", 0],
                 clip_vision_output=["24", 0], width=832, height=480, length=33, batch_size=1,
                 start_image=["1", 0]),
        **_video_branch("wan_clean", {"k": "19", "d": "20", "s": "21"}, model=["3", 0], cond="18",
                        latent_of="18", vae=["4", 0], sampler=sampler, fps=16.0),
    }
    layout = {"2": (20, 80), "3": (20, 220), "4": (20, 340), "5": (20, 460), "6": (400, 460), "7": (400, 720),
              "22": (20, 580), "1": (20, 700), "8": (400, 80), "9": (820, 80), "10": (820, 380), "11": (820, 620),
              "12": (1200, 80), "13": (1620, 80), "23": (1620, 760), "14": (1620, 420), "15": (1960, 420),
              "16": (2320, 420), "17": (2560, 420), "24": (1620, 1440), "18": (1620, 1100), "19": (1960, 1100),
              "20": (2320, 1100), "21": (2560, 1100)}
    note = (
        "## Protect a photo against your Wan 2.1 I2V model (Anti-I2V)\n\n"
        "The surrogate is **your own** Wan 2.1 I2V model (UNETLoader, VAELoader, CLIP vision, text prompt), so the "
        "protection is optimised against exactly the model you sample with. Layers are `auto`: on Wan 2.1 14B "
        "IRA block 26 + the last VAE-encoder layers, IRC 3 -> 26 (the paper's 3 / 27 of 42); the report names them.\n\n"
        "**The protected photo must feed CLIPVisionEncode too**, not only WanImageToVideo: its image tokens "
        "reach the sampler (ComfyUI's template wires LoadImage to both). The surrogate encodes with the same "
        "crop (`none`, as the template). It attacks `frames` = 9 of the 33-frame video (faster); set 33 to "
        "attack all; the report states it. To protect an existing graph instead, right-click its LoadImage: "
        "**Anti-I2V: protect this image**.\n\n"
        "Bottom row: video from the **clean** photo, row above: from the **protected** photo, same seed."
    )
    return g, layout, note


def preset_svd() -> tuple[dict, dict, str]:
    sampler = {"steps": 20, "cfg": 2.5, "sampler_name": "euler", "scheduler": "karras"}
    g = {
        "1": _n("LoadImage", "Photo to protect", image="example.png"),
        "2": _n("ImageOnlyCheckpointLoader", ckpt_name=SVD_CKPT),
        "3": _n("VideoLinearCFGGuidance", model=["2", 0], min_cfg=1.0),
        "4": _n("AntiI2V_LoadSurrogateI2V", family="svd", folder="(none)", dtype="bfloat16", frames=9,
                gradient_checkpointing=False, model=["2", 0], vae=["2", 2], clip_vision=["2", 1]),
        "5": _dsp(),
        "6": _n("AntiI2V_IRALoss", blocks="auto", vae_layers="auto", weight=1.0),
        "7": _n("AntiI2V_IRCLoss", pairs="auto", weight=1.0, losses=["6", 0]),
        "8": _loop(["1", 0], ["4", 0], ["5", 0], ["7", 0]),
        "9": _n("SaveImage", "Save protected photo", images=["8", 0], filename_prefix="anti_i2v/protected"),
        "10": _n("SVD_img2vid_Conditioning", "SVD conditioning (protected)", clip_vision=["2", 1],
                 init_image=["8", 0], vae=["2", 2], width=1024, height=576, video_frames=14,
                 motion_bucket_id=127, fps=6, augmentation_level=0.0),
        **_video_branch("svd_protected", {"k": "11", "d": "12", "s": "13"}, model=["3", 0], cond="10",
                        latent_of="10", vae=["2", 2], sampler=sampler, fps=6.0),
        "14": _n("SVD_img2vid_Conditioning", "SVD conditioning (clean)", clip_vision=["2", 1],
                 init_image=["1", 0], vae=["2", 2], width=1024, height=576, video_frames=14,
                 motion_bucket_id=127, fps=6, augmentation_level=0.0),
        **_video_branch("svd_clean", {"k": "15", "d": "16", "s": "17"}, model=["3", 0], cond="14",
                        latent_of="14", vae=["2", 2], sampler=sampler, fps=6.0),
    }
    layout = {"2": (20, 80), "3": (20, 260), "1": (20, 400), "4": (400, 80), "5": (820, 80), "6": (820, 380),
              "7": (820, 620), "8": (1200, 80), "9": (1620, 80), "10": (1620, 420), "11": (1960, 420),
              "12": (2320, 420), "13": (2560, 420), "14": (1620, 1000), "15": (1960, 1000), "16": (2320, 1000),
              "17": (2560, 1000)}
    note = (
        "## Protect a photo against Stable Video Diffusion (Anti-I2V)\n\n"
        "The surrogate is your SVD checkpoint (`svd.safetensors` in `models/checkpoints`): its U-Net, VAE and "
        "CLIP vision encoder. Layers are `auto`: SVD's U-Net has 25 blocks (input 0-11, middle 12, output 13-24); "
        "IRA reads the middle block and the last VAE-encoder layers, IRC pulls an up block onto the down block "
        "whose skip connection feeds it (2 -> 22: IRC pairs must have the same feature shape). The report names "
        "the resolved layers.\n\n"
        "Bottom row: video from the **clean** photo; row above: from the **protected** photo, same seed."
    )
    return g, layout, note


def _wan22_branch(prefix: str, ids: dict, *, high, low, cond, vae) -> dict:
    """The two experts as ComfyUI's Wan 2.2 14B I2V graphs chain them: KSamplerAdvanced with the high-noise model
    for steps 0-10 of 20 (noise left in), then with the low-noise model for 10-20; VAEDecode; video save."""
    common = {"noise_seed": 42, "steps": 20, "cfg": 3.5, "sampler_name": "euler", "scheduler": "simple",
              "positive": [cond, 0], "negative": [cond, 1]}
    k1, k2, d, s = ids["k1"], ids["k2"], ids["d"], ids["s"]
    return {
        k1: _n("KSamplerAdvanced", "High-noise expert (steps 0-10)", model=high, add_noise="enable",
               latent_image=[cond, 2], start_at_step=0, end_at_step=10, return_with_leftover_noise="enable",
               **common),
        k2: _n("KSamplerAdvanced", "Low-noise expert (steps 10-20)", model=low, add_noise="disable",
               latent_image=[k1, 0], start_at_step=10, end_at_step=10000, return_with_leftover_noise="disable",
               **common),
        d: _n("VAEDecode", samples=[k2, 0], vae=vae),
        s: _n("SaveAnimatedWEBP", f"Save {prefix} video", images=[d, 0], filename_prefix=f"anti_i2v/{prefix}",
              fps=16.0, lossless=False, quality=90, method="default"),
    }


def preset_wan22() -> tuple[dict, dict, str]:
    i2v = {"width": 832, "height": 480, "length": 81, "batch_size": 1}
    g = {
        "1": _n("LoadImage", "Photo to protect", image="example.png"),
        "2": _n("UNETLoader", "High-noise expert", unet_name=WAN22_HIGH, weight_dtype="default"),
        "3": _n("ModelSamplingSD3", model=["2", 0], shift=8.0),
        "22": _n("UNETLoader", "Low-noise expert", unet_name=WAN22_LOW, weight_dtype="default"),
        "23": _n("ModelSamplingSD3", model=["22", 0], shift=8.0),
        "4": _n("VAELoader", vae_name=WAN_VAE),
        "5": _n("CLIPLoader", clip_name=WAN_TEXT, type="wan", device="default"),
        "6": _n("CLIPTextEncode", "Positive prompt", clip=["5", 0],
                text="a person looks at the camera and talks, natural head and hand motion"),
        "7": _n("CLIPTextEncode", "Negative prompt", clip=["5", 0],
                text="blurry, static, low quality, deformed, watermark, subtitles"),
        "8": _n("AntiI2V_LoadSurrogateI2V", family="auto", folder="(none)", dtype="bfloat16", frames=9,
                gradient_checkpointing=False, model=["3", 0], model_2=["23", 0], vae=["4", 0], positive=["6", 0]),
        "9": _dsp(),
        "10": _n("AntiI2V_IRALoss", blocks="26", vae_layers="14,15", weight=1.0),
        "11": _n("AntiI2V_IRCLoss", pairs="3:26", weight=1.0, losses=["10", 0]),
        "12": _loop(["1", 0], ["8", 0], ["9", 0], ["11", 0]),
        "13": _n("SaveImage", "Save protected photo", images=["12", 0], filename_prefix="anti_i2v/protected"),
        "14": _n("WanImageToVideo", "Wan I2V (protected)", positive=["6", 0], negative=["7", 0], vae=["4", 0],
                 start_image=["12", 0], **i2v),
        **_wan22_branch("wan22_protected", {"k1": "15", "k2": "24", "d": "16", "s": "17"}, high=["3", 0],
                        low=["23", 0], cond="14", vae=["4", 0]),
        "18": _n("WanImageToVideo", "Wan I2V (clean)", positive=["6", 0], negative=["7", 0], vae=["4", 0],
                 start_image=["1", 0], **i2v),
        **_wan22_branch("wan22_clean", {"k1": "19", "k2": "25", "d": "20", "s": "21"}, high=["3", 0],
                        low=["23", 0], cond="18", vae=["4", 0]),
    }
    layout = {"2": (20, 80), "3": (20, 220), "22": (20, 340), "23": (20, 480), "4": (20, 600), "5": (20, 720),
              "1": (20, 860), "6": (400, 560), "7": (400, 820), "8": (400, 80), "9": (820, 80), "10": (820, 380),
              "11": (820, 620), "12": (1200, 80), "13": (1620, 80), "14": (1620, 420), "15": (1960, 420),
              "24": (2320, 420), "16": (2680, 420), "17": (2920, 420), "18": (1620, 1100), "19": (1960, 1100),
              "25": (2320, 1100), "20": (2680, 1100), "21": (2920, 1100)}
    note = (
        "## Protect a photo against your Wan 2.2 A14B I2V models (Anti-I2V)\n\n"
        "Wan 2.2 A14B samples with two experts: the **high-noise** model for the first steps, the **low-noise** "
        "model for the rest. Connect both to the surrogate (`model` = high noise, `model_2` = low noise): each "
        "protection step attacks the expert its noise level belongs to (high noise above sigma 0.9, Wan 2.2's "
        "switch), so one run protects against both. Blocks 3 / 26 of the 40 match the paper's 3 / 27 of 42.\n\n"
        "The bottom row generates the video from the **clean** photo, the row above from the **protected** photo, "
        "with the same two-sampler chain (steps 0-10 high noise, 10-20 low noise)."
    )
    return g, layout, note


def preset_wan22_ti2v() -> tuple[dict, dict, str]:
    sampler = {"steps": 20, "cfg": 5.0, "sampler_name": "uni_pc", "scheduler": "simple", "seed": 42, "denoise": 1.0}
    i2v = {"width": 1280, "height": 704, "length": 121, "batch_size": 1}

    def branch(prefix: str, image: list, ids: tuple[str, str, str, str]) -> dict:
        lat, k, d, s = ids
        return {
            lat: _n("Wan22ImageToVideoLatent", f"Wan 2.2 TI2V latent ({prefix})", vae=["4", 0], start_image=image,
                    **i2v),
            k: _n("KSampler", model=["3", 0], positive=["6", 0], negative=["7", 0], latent_image=[lat, 0],
                  **sampler),
            d: _n("VAEDecode", samples=[k, 0], vae=["4", 0]),
            s: _n("SaveAnimatedWEBP", f"Save wan22_ti2v_{prefix} video", images=[d, 0],
                  filename_prefix=f"anti_i2v/wan22_ti2v_{prefix}", fps=24.0, lossless=False, quality=90,
                  method="default"),
        }

    g = {
        "1": _n("LoadImage", "Photo to protect", image="example.png"),
        "2": _n("UNETLoader", unet_name=WAN22_5B, weight_dtype="default"),
        "3": _n("ModelSamplingSD3", model=["2", 0], shift=8.0),
        "4": _n("VAELoader", vae_name=WAN22_VAE),
        "5": _n("CLIPLoader", clip_name=WAN_TEXT, type="wan", device="default"),
        "6": _n("CLIPTextEncode", "Positive prompt", clip=["5", 0],
                text="a person looks at the camera and talks, natural head and hand motion"),
        "7": _n("CLIPTextEncode", "Negative prompt", clip=["5", 0],
                text="blurry, static, low quality, deformed, watermark, subtitles"),
        "8": _n("AntiI2V_LoadSurrogateI2V", family="auto", folder="(none)", dtype="bfloat16", frames=9,
                gradient_checkpointing=False, model=["3", 0], vae=["4", 0], positive=["6", 0]),
        "9": _dsp(),
        "10": _n("AntiI2V_IRALoss", blocks="19", vae_layers="7,8", weight=1.0),
        "11": _n("AntiI2V_IRCLoss", pairs="2:19", weight=1.0, losses=["10", 0]),
        "12": _loop(["1", 0], ["8", 0], ["9", 0], ["11", 0]),
        "13": _n("SaveImage", "Save protected photo", images=["12", 0], filename_prefix="anti_i2v/protected"),
        **branch("protected", ["12", 0], ("14", "15", "16", "17")),
        **branch("clean", ["1", 0], ("18", "19", "20", "21")),
    }
    layout = {"2": (20, 80), "3": (20, 220), "4": (20, 340), "5": (20, 460), "6": (400, 460), "7": (400, 720),
              "1": (20, 640), "8": (400, 80), "9": (820, 80), "10": (820, 380), "11": (820, 620),
              "12": (1200, 80), "13": (1620, 80), "14": (1620, 420), "15": (1960, 420), "16": (2320, 420),
              "17": (2560, 420), "18": (1620, 1000), "19": (1960, 1000), "20": (2320, 1000), "21": (2560, 1000)}
    note = (
        "## Protect a photo against your Wan 2.2 TI2V-5B model (Anti-I2V)\n\n"
        "The surrogate is **your own** Wan 2.2 TI2V-5B (`wan2.2_ti2v_5B_fp16.safetensors`, `wan2.2_vae.safetensors`). "
        "Like **Wan22ImageToVideoLatent**, it writes the photo's latent into the first latent frame and gives that "
        "frame timestep 0. Blocks 2 / 19 of the 30 match the paper's 3 / 27 of 42; VAE layers 7,8 are the last two "
        "encoder layers.\n\n"
        "Bottom row: video from the **clean** photo; row above: from the **protected** photo."
    )
    return g, layout, note


def preset_ltxv() -> tuple[dict, dict, str]:
    sampler = {"steps": 30, "cfg": 3.0, "sampler_name": "euler", "scheduler": "simple"}
    i2v = {"width": 768, "height": 512, "length": 97, "batch_size": 1, "strength": 1.0}
    g = {
        "1": _n("LoadImage", "Photo to protect", image="example.png"),
        "2": _n("CheckpointLoaderSimple", ckpt_name=LTXV_CKPT),
        "3": _n("CLIPLoader", clip_name=LTXV_TEXT, type="ltxv", device="default"),
        "4": _n("CLIPTextEncode", "Positive prompt", clip=["3", 0],
                text="a person looks at the camera and talks, natural head and hand motion"),
        "5": _n("CLIPTextEncode", "Negative prompt", clip=["3", 0],
                text="blurry, static, low quality, deformed, watermark, subtitles"),
        "6": _n("LTXVConditioning", positive=["4", 0], negative=["5", 0], frame_rate=25.0),
        "7": _n("AntiI2V_LoadSurrogateI2V", family="auto", folder="(none)", dtype="bfloat16", frames=9,
                gradient_checkpointing=False, model=["2", 0], vae=["2", 2], positive=["6", 0]),
        "8": _dsp(),
        "9": _n("AntiI2V_IRALoss", blocks="18", vae_layers="9,10", weight=1.0),
        "10": _n("AntiI2V_IRCLoss", pairs="2:18", weight=1.0, losses=["9", 0]),
        "11": _loop(["1", 0], ["7", 0], ["8", 0], ["10", 0]),
        "12": _n("SaveImage", "Save protected photo", images=["11", 0], filename_prefix="anti_i2v/protected"),
        # protected photo -> LTX-Video
        "13": _n("LTXVImgToVideo", "LTX-Video I2V (protected)", positive=["6", 0], negative=["6", 1], vae=["2", 2],
                 image=["11", 0], **i2v),
        **_video_branch("ltxv_protected", {"k": "14", "d": "15", "s": "16"}, model=["2", 0], cond="13",
                        latent_of="13", vae=["2", 2], sampler=sampler, fps=25.0),
        # clean photo -> LTX-Video (the comparison)
        "17": _n("LTXVImgToVideo", "LTX-Video I2V (clean)", positive=["6", 0], negative=["6", 1], vae=["2", 2],
                 image=["1", 0], **i2v),
        **_video_branch("ltxv_clean", {"k": "18", "d": "19", "s": "20"}, model=["2", 0], cond="17",
                        latent_of="17", vae=["2", 2], sampler=sampler, fps=25.0),
    }
    layout = {"2": (20, 80), "3": (20, 260), "4": (400, 460), "5": (400, 720), "6": (20, 400), "1": (20, 640),
              "7": (400, 80), "8": (820, 80), "9": (820, 380), "10": (820, 620), "11": (1200, 80),
              "12": (1620, 80), "13": (1620, 420), "14": (1960, 420), "15": (2320, 420), "16": (2560, 420),
              "17": (1620, 1000), "18": (1960, 1000), "19": (2320, 1000), "20": (2560, 1000)}
    note = (
        "## Protect a photo against your LTX-Video model (Anti-I2V)\n\n"
        "The surrogate is **your own** LTX-Video checkpoint (`ltx-video-2b-v0.9.5.safetensors` in "
        "`models/checkpoints`, T5-XXL in `models/text_encoders`). Like **LTXVImgToVideo**, it writes the photo's "
        "latent into the first latent frame and gives those tokens timestep 0. Blocks 2 / 18 of the 28 of LTX-Video "
        "2B match the paper's 3 / 27 of 42; VAE layers 9,10 are the last two encoder layers of the 0.9.5 VAE "
        "(use **Layer PCA Maps** to list and pick layers of other versions).\n\n"
        "Bottom row: video from the **clean** photo; row above: from the **protected** photo."
    )
    return g, layout, note


def preset_hunyuan() -> tuple[dict, dict, str]:
    sampler = {"seed": 42, "steps": 20, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}
    i2v = {"width": 848, "height": 480, "length": 53, "batch_size": 1, "guidance_type": "v1 (concat)"}
    prompt = "a person looks at the camera and talks, natural head and hand motion"

    def branch(prefix: str, image: list, ids: tuple[str, ...]) -> dict:
        """The photo through the text encoder (CLIP vision -> LLaVA) and HunyuanImageToVideo, then sampling."""
        cve, te, lat, k, d, sv = ids
        return {
            cve: _n("CLIPVisionEncode", f"CLIP vision ({prefix} photo)", clip_vision=["6", 0], image=image,
                    crop="none"),
            te: _n("TextEncodeHunyuanVideo_ImageToVideo", f"Text + image prompt ({prefix})", clip=["5", 0],
                   clip_vision_output=[cve, 0], prompt=prompt, image_interleave=2),
            lat: _n("HunyuanImageToVideo", f"HunyuanVideo I2V ({prefix})", positive=[te, 0], vae=["4", 0],
                    start_image=image, **i2v),
            # cfg 1: HunyuanVideo is guidance-distilled (its guidance embedding, 6 by default); negative unused
            k: _n("KSampler", model=["2", 0], positive=[lat, 0], negative=[lat, 0], latent_image=[lat, 1], **sampler),
            d: _n("VAEDecode", samples=[k, 0], vae=["4", 0]),
            sv: _n("SaveAnimatedWEBP", f"Save hunyuan_{prefix} video", images=[d, 0],
                   filename_prefix=f"anti_i2v/hunyuan_{prefix}", fps=24.0, lossless=False, quality=90,
                   method="default"),
        }

    g = {
        "1": _n("LoadImage", "Photo to protect", image="example.png"),
        "2": _n("UNETLoader", unet_name=HUNYUAN_I2V, weight_dtype="default"),
        "4": _n("VAELoader", vae_name=HUNYUAN_VAE),
        "5": _n("DualCLIPLoader", clip_name1=HUNYUAN_CLIP_L, clip_name2=HUNYUAN_LLAVA, type="hunyuan_video",
                device="default"),
        "6": _n("CLIPVisionLoader", clip_name=HUNYUAN_VISION),
        "8": _n("AntiI2V_LoadSurrogateI2V", family="auto", folder="(none)", dtype="bfloat16", frames=9,
                gradient_checkpointing=False, model=["2", 0], vae=["4", 0], positive=["21", 0]),
        "9": _dsp(),
        "10": _n("AntiI2V_IRALoss", blocks="39", vae_layers="14,15", weight=1.0),
        "11": _n("AntiI2V_IRCLoss", pairs="4:39", weight=1.0, losses=["10", 0]),
        "12": _loop(["1", 0], ["8", 0], ["9", 0], ["11", 0]),
        "13": _n("SaveImage", "Save protected photo", images=["12", 0], filename_prefix="anti_i2v/protected"),
        **branch("protected", ["12", 0], ("14", "15", "16", "17", "18", "19")),
        **branch("clean", ["1", 0], ("20", "21", "22", "23", "24", "25")),
    }
    layout = {"2": (20, 80), "4": (20, 220), "5": (20, 340), "6": (20, 520), "1": (20, 660),
              "8": (400, 80), "9": (820, 80), "10": (820, 380), "11": (820, 620), "12": (1200, 80),
              "13": (1620, 80), "14": (1620, 420), "15": (1960, 420), "16": (2380, 420), "17": (2720, 420),
              "18": (3080, 420), "19": (3320, 420), "20": (1620, 1100), "21": (1960, 1100), "22": (2380, 1100),
              "23": (2720, 1100), "24": (3080, 1100), "25": (3320, 1100)}
    note = (
        "## Protect a photo against your HunyuanVideo I2V model (Anti-I2V)\n\n"
        "The surrogate is **your own** HunyuanVideo I2V (`hunyuan_video_image_to_video_720p_bf16.safetensors`, "
        "`hunyuan_video_vae_bf16.safetensors`). Like **HunyuanImageToVideo** (`v1 (concat)`), it concatenates "
        "the photo's latent and a mask to the noisy latent. Block indices run over the 20 double blocks then the "
        "40 single blocks (39 = single block 19); 4 / 39 of the 60 match the paper's 3 / 27 of 42; VAE layers "
        "14,15 are the last two encoder layers.\n\n"
        "**Not attacked:** the photo also reaches the model through the text encoder (CLIP vision -> LLaVA). The "
        "surrogate's `positive` is the clean photo's (bottom row's text encode); the 8B encoder is not in the loop.\n\n"
        "Bottom row: video from the **clean** photo; row above: from the **protected** photo, same seed."
    )
    return g, layout, note


def preset_batch() -> tuple[dict, dict, str]:
    g = {
        "1": _n("LoadImage", "Photo 1", image="example.png"),
        "2": _n("LoadImage", "Photo 2", image="example.png"),
        "3": _n("LoadImage", "Photo 3", image="example.png"),
        "4": _n("ImageBatch", image1=["1", 0], image2=["2", 0]),
        "5": _n("ImageBatch", image1=["4", 0], image2=["3", 0]),
        "6": _n("AntiI2V_LoadSurrogateI2V", family="cogvideox", folder=COGVIDEOX_FOLDER, dtype="bfloat16",
                frames=9, gradient_checkpointing=False),
        "7": _dsp(),
        "8": _n("AntiI2V_IRALoss", blocks="27", vae_layers="3,4", weight=1.0),
        "9": _n("AntiI2V_IRCLoss", pairs="3:27", weight=1.0, losses=["8", 0]),
        "10": _loop(["5", 0], ["6", 0], ["7", 0], ["9", 0]),
        "11": _n("SaveImage", "Save protected photos", images=["10", 0], filename_prefix="anti_i2v/batch"),
        "12": _n("PreviewAny", "Report", source=["10", 2]),
    }
    layout = {"1": (20, 80), "2": (20, 440), "3": (20, 800), "4": (380, 300), "5": (380, 560),
              "6": (700, 80), "7": (700, 420), "8": (700, 720), "9": (700, 960), "10": (1100, 80),
              "11": (1520, 80), "12": (1520, 460)}
    note = (
        "## Protect several photos at once (Anti-I2V)\n\n"
        "Every photo of the batch gets its own perturbation (the loop optimises them together). **ImageBatch** "
        "resizes the second image to the first one's size: for photos of different sizes run them one by one. "
        "Add more LoadImage + ImageBatch pairs for more photos."
    )
    return g, layout, note


COMPARED = ("anti-i2v", "mist", "sds")


def preset_compare() -> tuple[dict, dict, str]:
    """Three defenses on one photo, each with its paper's defaults, previews and figures side by side."""
    g = {
        "1": _n("LoadImage", "Photo to protect", image="example.png"),
        "2": _n("AntiI2V_LoadSurrogateI2V", family="cogvideox", folder=COGVIDEOX_FOLDER, dtype="bfloat16",
                frames=9, gradient_checkpointing=False),
    }
    layout = {"1": (20, 80), "2": (20, 440)}
    for k, method in enumerate(COMPARED):
        d, p, s, r, v, m = (str(10 * (k + 1) + j) for j in range(6))
        x = 420 + 560 * k
        g[d] = _n("AntiI2V_DefenseMethod", f"Defense: {method}", surrogate=["2", 0], method=method, space="paper",
                  eps=0.0)
        g[p] = _n("AntiI2V_ProtectLoop", f"Protect ({method})", image=["1", 0], surrogate=["2", 0],
                  perturbation=[d, 0], losses=[d, 1], steps=200, step_size=1.0, schedule="constant",
                  optimizer="sign", seed=0, frames=0, robust_jpeg=0, loop_from_method=True, random_start=False)
        g[s] = _n("SaveImage", f"Save ({method})", images=[p, 0], filename_prefix=f"anti_i2v/compare_{method}")
        g[r] = _n("PreviewAny", f"Report ({method})", source=[p, 2])
        g[v] = _n("AntiI2V_PreviewAttackVideo", f"Attack video ({method})", surrogate=["2", 0],
                  clean_image=["1", 0], protected_image=[p, 0], steps=4, seed=0, frames=0)
        g[m] = _n("PreviewAny", f"Figures ({method})", source=[v, 2])
        layout.update({d: (x, 80), p: (x, 330), s: (x, 820), r: (x, 1160), v: (x, 1420), m: (x, 1900)})
    note = (
        "## Compare defenses on one photo (Anti-I2V, Mist, SDS)\n\n"
        "Each column runs one defense **as its paper defines it** (Defense Method node: its objective, perturbation "
        "space and budget; Protect Image's `loop_from_method` uses its steps, step size and step rule) on the same "
        "photo and surrogate, with fixed seeds. Each **Preview Attack Video** shows the video from the clean and "
        "the protected photo side by side, with the figures (video drift, identity similarity) below.\n\n"
        "Change a column's method to advdm, photoguard, vgmshield or i2vguard, or its space to run it in the DSP. "
        "README, 'Defenses', lists every paper's defaults."
    )
    return g, layout, note


PRESETS = {
    "protect_cogvideox_preview": preset_cogvideox,
    "protect_wan21_native": preset_wan21,
    "protect_svd_native": preset_svd,
    "protect_wan22_native": preset_wan22,
    "protect_wan22_ti2v_native": preset_wan22_ti2v,
    "protect_ltxv_native": preset_ltxv,
    "protect_hunyuan_native": preset_hunyuan,
    "protect_batch": preset_batch,
    "compare_defenses_cogvideox": preset_compare,
}

#: groups per preset: (title, node ids, colour)
GROUPS = {
    "protect_wan21_native": [("Protected photo -> Wan 2.1 video", ["23", "14", "15", "16", "17"], "#3f5159"),
                             ("Clean photo -> Wan 2.1 video (comparison)", ["24", "18", "19", "20", "21"],
                              "#593930")],
    "compare_defenses_cogvideox": [(f"{m}", [str(10 * (k + 1) + j) for j in range(6)], c)
                                   for k, (m, c) in enumerate(zip(COMPARED, ("#3f5159", "#593930", "#335533")))],
    "protect_svd_native": [("Protected photo -> SVD video", ["10", "11", "12", "13"], "#3f5159"),
                           ("Clean photo -> SVD video (comparison)", ["14", "15", "16", "17"], "#593930")],
    "protect_wan22_native": [("Protected photo -> Wan 2.2 video", ["14", "15", "24", "16", "17"], "#3f5159"),
                             ("Clean photo -> Wan 2.2 video (comparison)", ["18", "19", "25", "20", "21"],
                              "#593930")],
    "protect_wan22_ti2v_native": [("Protected photo -> Wan 2.2 TI2V video", ["14", "15", "16", "17"], "#3f5159"),
                                  ("Clean photo -> Wan 2.2 TI2V video (comparison)", ["18", "19", "20", "21"],
                                   "#593930")],
    "protect_hunyuan_native": [("Protected photo -> HunyuanVideo", ["14", "15", "16", "17", "18", "19"], "#3f5159"),
                               ("Clean photo -> HunyuanVideo (comparison)", ["20", "21", "22", "23", "24", "25"],
                                "#593930")],
    "protect_ltxv_native": [("Protected photo -> LTX-Video", ["13", "14", "15", "16"], "#3f5159"),
                            ("Clean photo -> LTX-Video (comparison)", ["17", "18", "19", "20"], "#593930")],
}

_BUILD_JS = r"""
const [api, layout, note, groups, done] = arguments;
(async () => {
  await app.loadApiJson(api, "preset");
  for (const [id, [x, y]] of Object.entries(layout)) {
    const node = app.graph.getNodeById(Number(id));
    if (node) node.pos = [x, y];
  }
  for (const node of app.graph.nodes) {
    for (const w of node.widgets ?? []) {
      if (w.name === "control_after_generate") w.value = "fixed";
    }
  }
  const md = LiteGraph.createNode("MarkdownNote");
  md.pos = [20, -420];
  md.size = [760, 360];
  app.graph.add(md);
  md.widgets[0].value = note;
  for (const [title, ids, color] of groups) {
    const nodes = ids.map((i) => app.graph.getNodeById(Number(i))).filter(Boolean);
    const x0 = Math.min(...nodes.map((n) => n.pos[0])) - 20;
    const y0 = Math.min(...nodes.map((n) => n.pos[1])) - 80;
    const x1 = Math.max(...nodes.map((n) => n.pos[0] + n.size[0])) + 20;
    const y1 = Math.max(...nodes.map((n) => n.pos[1] + n.size[1])) + 20;
    const g = new LGraphGroup(title);
    g.color = color;
    g.pos = [x0, y0];
    g.size = [x1 - x0, y1 - y0];
    app.graph.add(g);
  }
  app.graph.setDirtyCanvas(true, true);
  done(JSON.stringify(app.graph.serialize()));
})().catch((e) => done("ERROR " + e));
"""

_SHOW_JS = r"""
const [wf, done] = arguments;
(async () => {
  await app.loadGraphData(wf, true, true, "preview");
  if (!app.extensionManager.focusMode) app.extensionManager.toggleFocusMode();
  const c = app.canvas;
  const nodes = app.graph.nodes;
  let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
  for (const n of nodes) {
    x0 = Math.min(x0, n.pos[0]); y0 = Math.min(y0, n.pos[1] - 30);
    x1 = Math.max(x1, n.pos[0] + n.size[0]); y1 = Math.max(y1, n.pos[1] + n.size[1]);
  }
  const r = app.canvasEl.getBoundingClientRect();
  const scale = Math.min(r.width / (x1 - x0 + 60), r.height / (y1 - y0 + 60), 1.0);
  c.ds.scale = scale;
  c.ds.offset = [-x0 + 30 / scale, -y0 + 30 / scale];
  c.setDirty(true, true);
  requestAnimationFrame(() => requestAnimationFrame(() => done([r.left, r.top, r.width, r.height])));
})().catch((e) => done("ERROR " + e));
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workflows", action="store_true", help="rebuild workflows/*.json from the API graphs")
    ap.add_argument("--only", nargs="*", default=None, help="preset names (default: all)")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from PIL import Image

    from tests.browser import Chromium
    from tests.comfy_harness import ComfyServer

    names = args.only or list(PRESETS)
    srv = ComfyServer()
    for rel in PLACEHOLDERS:
        p = srv.models_dir / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"{}" if p.suffix == ".json" else b"")
    srv.start()
    try:
        srv.post("/settings", json={"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False,
                                        "LiteGraph.Canvas.MinFontSizeForLOD": 0})
        with Chromium(width=1600, height=1000) as browser:
            browser.get(srv.url)
            browser.wait_for("return !!(window.app && app.graph && app.extensions.length > 5)", timeout=90)
            time.sleep(1.0)
            for name in names:
                wf_path = WORKFLOWS / f"{name}.json"
                if args.workflows:
                    api, layout, note = PRESETS[name]()
                    out = browser.execute_async(_BUILD_JS, api, layout, note, GROUPS.get(name, []))
                    if out.startswith("ERROR"):
                        raise RuntimeError(f"{name}: {out}")
                    wf = json.loads(out)
                    wf_path.parent.mkdir(parents=True, exist_ok=True)
                    wf_path.write_text(json.dumps(wf, indent=2) + "\n")
                    print(f"wrote {wf_path.relative_to(ROOT)} ({len(wf['nodes'])} nodes)")
                wf = json.loads(wf_path.read_text())
                rect = browser.execute_async(_SHOW_JS, wf)
                if isinstance(rect, str):
                    raise RuntimeError(f"{name}: {rect}")
                time.sleep(0.5)
                png = Image.open(io.BytesIO(browser.screenshot())).convert("RGB")
                dpr = png.width / browser.execute("return window.innerWidth")
                left, top, w, h = (int(round(v * dpr)) for v in rect)
                img = png.crop((left, top, left + w, top + h))
                img.thumbnail((800, 500))
                img.save(WORKFLOWS / f"{name}.jpg", quality=85)
                print(f"wrote workflows/{name}.jpg {img.size}")
    finally:
        srv.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
