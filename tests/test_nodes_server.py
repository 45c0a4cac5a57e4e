"""The Anti-I2V nodes inside the real ComfyUI 0.3.75 server (started once per session by ``comfy_server``).

Everything goes through ComfyUI's public API (POST /prompt, /history, /interrupt, /object_info, websocket),
with API-format prompts that list every required input. The surrogate is the tiny random-weight CogVideoX-I2V
written by the adapter's ``save_tiny`` into ``models/diffusers/tiny-cogvideox`` (4 blocks, VAE-encoder
layers 0-3, native size 32x48).
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from PIL import Image

from tests.comfy_harness import ComfyServer

pytestmark = pytest.mark.comfy

NODE_IDS = [
    "AntiI2V_LoadSurrogateI2V",
    "AntiI2V_DSPPerturb",
    "AntiI2V_IRALoss",
    "AntiI2V_IRCLoss",
    "AntiI2V_BaselineLoss",
    "AntiI2V_ProtectLoop",
    "AntiI2V_PreviewAttackVideo",
    "AntiI2V_LayerPCA",
    "AntiI2V_EnsembleSurrogate",
    "AntiI2V_ProtectImage",
    "AntiI2V_DefenseMethod",
]
EPS = 16.0
PHOTO = "anti_i2v_photo.png"
PHOTO_HW = (40, 56)


# ---------------------------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def srv(comfy_server: ComfyServer) -> ComfyServer:
    """The server with test pictures in its input folder and a non-I2V model folder."""
    if "cogvideox" not in getattr(comfy_server, "tiny_models", {}):
        pytest.fail("the CogVideoX adapter (anti_i2v/surrogates/cogvideox.py) is needed by these tests")
    h, w = PHOTO_HW
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([(xx * 255 // w), (yy * 255 // h), ((xx + yy) * 3) % 256], -1).astype(np.uint8)
    Image.fromarray(rgb).save(comfy_server.input_dir / PHOTO)
    Image.fromarray(np.full((1, 1, 3), 128, np.uint8)).save(comfy_server.input_dir / "one_pixel.png")
    not_i2v = comfy_server.models_dir / "diffusers" / "not-i2v-sd15"
    not_i2v.mkdir(parents=True, exist_ok=True)
    (not_i2v / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    return comfy_server


def graph(*, steps: int = 3, seed: int = 0, blocks: str = "3", image: str = PHOTO, folder: str = "tiny-cogvideox",
          preview: bool = False, extra: dict | None = None, image_link: list | None = None,
          target_link: list | None = None, pairs: str | None = "1:3", vae_layers: str = "3",
          surrogate_inputs: dict | None = None, mask_link: list | None = None) -> dict:
    """LoadImage -> LoadSurrogateI2V -> DSPPerturb -> IRALoss -> IRCLoss -> ProtectLoop -> SaveImage (+ Preview).

    ``pairs=None`` leaves IRCLoss out (ProtectLoop takes the IRA chain directly).
    """
    ira = {"blocks": blocks, "vae_layers": vae_layers, "weight": 1.0}
    if target_link is not None:
        ira["target_image"] = target_link
    g = {
        "1": {"class_type": "LoadImage", "inputs": {"image": image}},
        "2": {"class_type": "AntiI2V_LoadSurrogateI2V",
              "inputs": {"family": "auto", "folder": folder, "dtype": "float32", "frames": 9,
                         "gradient_checkpointing": False, **(surrogate_inputs or {})}},
        "3": {"class_type": "AntiI2V_DSPPerturb",
              "inputs": {"eps": EPS, "dct_block": 8, "dct_channels": "rgb", "mix": 0.5, "restore_luminance": False}},
        "4": {"class_type": "AntiI2V_IRALoss", "inputs": ira},
        "5": {"class_type": "AntiI2V_IRCLoss", "inputs": {"pairs": pairs, "weight": 1.0, "losses": ["4", 0]}},
        "6": {"class_type": "AntiI2V_ProtectLoop",
              "inputs": {"image": image_link or ["1", 0], "surrogate": ["2", 0], "perturbation": ["3", 0],
                         "losses": ["5", 0], "steps": steps, "step_size": 2.0, "schedule": "constant",
                         "optimizer": "sign", "seed": seed, "frames": 0}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": f"anti_i2v_{seed}"}},
        "9": {"class_type": "PreviewAny", "inputs": {"source": ["6", 2]}},
    }
    if mask_link is not None:
        g["6"]["inputs"]["mask"] = mask_link
    if pairs is None:
        del g["5"]
        g["6"]["inputs"]["losses"] = ["4", 0]
    if preview:
        g["8"] = {"class_type": "AntiI2V_PreviewAttackVideo",
                  "inputs": {"surrogate": ["2", 0], "clean_image": ["1", 0], "protected_image": ["6", 0],
                             "steps": 2, "seed": 0, "frames": 0}}
        g["10"] = {"class_type": "PreviewAny", "inputs": {"source": ["8", 2]}}
    g["12"] = {"class_type": "SaveImage", "inputs": {"images": ["6", 1], "filename_prefix": f"anti_i2v_view_{seed}"}}
    g.update(extra or {})
    return g


def run(srv: ComfyServer, prompt: dict, timeout: float = 120.0) -> dict:
    return srv.wait(srv.post_prompt(prompt), timeout=timeout)


def assert_success(srv: ComfyServer, entry: dict) -> None:
    status = entry["status"]
    assert status["status_str"] == "success", f"prompt failed: {ComfyServer.error_of(entry)}\n{srv.log()}"


def node_error(entry: dict) -> dict:
    err = ComfyServer.error_of(entry)
    assert err is not None, f"expected an execution_error, got status {entry['status']}"
    assert entry["status"]["status_str"] == "error"
    return err


def text_output(entry: dict, node: str) -> str:
    return entry["outputs"][node]["text"][0]


# ---------------------------------------------------------------------------------------------- schema
def test_every_node_is_documented(srv):
    info = srv.object_info()
    ours = sorted(k for k in info if k.startswith("AntiI2V_"))
    assert ours == sorted(NODE_IDS), f"nodes on the server {ours} != the documented list {sorted(NODE_IDS)}"
    for node in NODE_IDS:
        assert node in info, f"{node} missing from /object_info; server log:\n{srv.log()}"
        spec = info[node]
        assert spec["category"] == "Anti-I2V"
        assert len(spec["description"]) > 40, f"{node} has no real description"
        for group in ("required", "optional"):
            for name, (_, opts) in spec["input"].get(group, {}).items():
                assert opts.get("tooltip"), f"{node}.{name} has no tooltip"
    assert info["AntiI2V_PreviewAttackVideo"]["output_node"] is True
    folders = info["AntiI2V_LoadSurrogateI2V"]["input"]["required"]["folder"][1]["options"]
    assert "tiny-cogvideox" in folders and "(none)" in folders
    assert info["AntiI2V_ProtectLoop"]["output"] == ["IMAGE", "IMAGE", "STRING"]
    assert info["AntiI2V_IRALoss"]["output"] == ["ANTI_I2V_LOSS"]


# ---------------------------------------------------------------------------------------------- success path
def test_protect_chain_saves_protected_image_within_budget(srv):
    pid = srv.post_prompt(graph(steps=3, seed=1, preview=True))
    entry = srv.wait(pid, timeout=150)
    assert_success(srv, entry)

    # the saved image: the input's size, within the budget (the loop snaps to the 8-bit grid, so SaveImage's
    # truncation adds nothing)
    (saved,) = srv.output_files(entry, "7")
    out = np.asarray(Image.open(saved).convert("RGB")).astype(int)
    src = np.asarray(Image.open(srv.input_dir / PHOTO).convert("RGB")).astype(int)
    assert out.shape == src.shape == (*PHOTO_HW, 3)
    linf = np.abs(out - src).max()
    assert linf <= EPS, f"L-inf {linf}/255 exceeds the budget {EPS}/255"
    assert linf >= 1, "the protected image equals the input: nothing was optimised"
    # perturbation_view = |delta| / budget (white = the full budget), same size
    (view_file,) = srv.output_files(entry, "12")
    view = np.asarray(Image.open(view_file).convert("RGB")).astype(float)
    assert view.shape == out.shape and view.max() > 0
    assert np.abs(view * EPS / 255 - np.abs(out - src)).max() <= 2.5

    report = json.loads(text_output(entry, "9"))
    assert report["steps_done"] == 3 and report["cancelled"] is False
    assert max(report["linf_255"]) <= EPS + 1e-3
    assert report["settings"]["image_size"] == list(PHOTO_HW)
    assert [r["step"] for r in report["loss_history"]] == [1, 2, 3]
    assert set(report["loss_history"][0]) >= {"loss", "ira", "irc"}
    # issue 7 through ComfyUI: one z_t shared by both passes, the colour figures in the node's report
    assert "shared by target and adversarial pass" in report["settings"]["noisy_latent"]
    q = report["quality"]
    assert {"ciede2000_mean", "ciede2000_p95", "mean_abs_dl"} <= set(q) and q["ciede2000_mean"][0] > 0
    assert report["settings"]["notes"] == []

    # the preview: clean | protected side by side as an animated WebP on the node, metrics as JSON
    ui = entry["outputs"]["8"]
    (webp,) = srv.output_files(entry, "8")
    assert webp.suffix == ".webp" and webp.is_file()
    with Image.open(webp) as im:
        assert getattr(im, "n_frames", 1) > 1 and ui.get("animated") == [True]
        assert im.size == (2 * 48, 32), f"expected two 48x32 videos side by side, got {im.size}"
    metrics = json.loads(text_output(entry, "10"))
    assert metrics["settings"]["num_frames"] == 9

    # websocket: the pack's progress event every iteration and ComfyUI's own progress for the node
    events = srv.ws_events(pid)
    ours = [e["data"] for e in events if e["type"] == "anti_i2v.progress"]
    assert [d["step"] for d in ours] == [1, 2, 3], ours
    assert all(d["node"] == "6" and d["total"] == 3 and np.isfinite(d["loss"]) for d in ours)
    assert set(ours[0]["terms"]) == {"ira", "irc"}
    bars = [e["data"] for e in events if e["type"] == "progress" and e["data"].get("node") == "6"]
    assert bars and bars[-1]["value"] == bars[-1]["max"] == 3


def test_mask_keeps_unmasked_pixels_exact(srv):
    h, w = PHOTO_HW
    extra = {
        "20": {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": w, "height": h}},
        "21": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": w // 2, "height": h}},
        "22": {"class_type": "MaskComposite",
               "inputs": {"destination": ["20", 0], "source": ["21", 0], "x": w // 2, "y": 0, "operation": "add"}},
    }
    entry = run(srv, graph(steps=3, seed=31, extra=extra, mask_link=["22", 0]))
    assert_success(srv, entry)
    (saved,) = srv.output_files(entry, "7")
    out = np.asarray(Image.open(saved).convert("RGB")).astype(int)
    src = np.asarray(Image.open(srv.input_dir / PHOTO).convert("RGB")).astype(int)
    assert np.array_equal(out[:, : w // 2], src[:, : w // 2]), "pixels outside the mask changed"
    assert np.abs(out[:, w // 2:] - src[:, w // 2:]).max() >= 2, "nothing was protected inside the mask"


def test_rgba_input_is_protected_as_rgb(srv):
    extra = {"11": {"class_type": "AntiI2VTest_AddAlpha", "inputs": {"image": ["1", 0]}}}
    entry = run(srv, graph(steps=1, seed=7, extra=extra, image_link=["11", 0]))
    assert_success(srv, entry)
    (saved,) = srv.output_files(entry, "7")
    assert Image.open(saved).mode == "RGB"
    assert "alpha channel" in srv.log(20000)


@pytest.mark.parametrize("family, pairs, size", [("wan21", "1:3", (32, 48)), ("svd", None, (64, 64)),
                                                  ("opensora", "1:3", (32, 48)),
                                                  ("dynamicrafter", "1:9", (64, 64))])
def test_other_diffusers_families_load_with_auto(srv, family, pairs, size):
    """The other adapters' tiny folders (Open-Sora: its two checkpoint subfolders; DynamiCrafter: converted from a
    tiny model.ckpt): family detected and listed by the loader node, one protect step."""
    folder = srv.tiny_models.get(family)
    assert folder, f"no tiny {family} folder: its adapter is missing"
    spec = srv.object_info("AntiI2V_LoadSurrogateI2V")["AntiI2V_LoadSurrogateI2V"]["input"]["required"]
    assert family in spec["family"][1]["options"] and folder in spec["folder"][1]["options"]
    frames = {"frames": 4} if family == "dynamicrafter" else None  # the tiny model's frame count: fewer passes
    entry = run(srv, graph(steps=1, seed=20, folder=folder, blocks="1", vae_layers="0", pairs=pairs,
                           surrogate_inputs=frames))
    assert_success(srv, entry)
    report = json.loads(text_output(entry, "9"))
    assert report["settings"]["surrogate"]["family"] == family
    assert report["settings"]["working_size"] == list(size)
    (saved,) = srv.output_files(entry, "7")
    assert Image.open(saved).size == (PHOTO_HW[1], PHOTO_HW[0])


# ---------------------------------------------------------------------------------------------- native models
WRITE_WAN = (
    "import sys; from tests.comfy_models import write_tiny_wan21_i2v, write_tiny_wan_t2v, write_tiny_wan_vae; "
    "m = sys.argv[1]; write_tiny_wan21_i2v(m + '/diffusion_models'); write_tiny_wan_t2v(m + '/diffusion_models'); "
    "write_tiny_wan_vae(m + '/vae')"
)


def test_native_comfy_model_and_non_i2v_model(srv):
    """The user's ComfyUI models (UNETLoader + VAELoader) as the surrogate; a text-to-video MODEL is refused.

    The text encoder (umT5-XXL) cannot be made tiny: AntiI2VTest_ZeroConditioning (width 4096) stands in for
    CLIPLoader + CLIPTextEncode. The tiny files are written in a subprocess so ComfyUI never enters this process.
    """
    import subprocess
    import sys

    from tests.comfy_harness import REPO_ROOT

    done = subprocess.run([sys.executable, "-c", WRITE_WAN, str(srv.models_dir)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    from tests.comfy_models import WAN_I2V_FILE, WAN_T2V_FILE, WAN_VAE_FILE

    def native_graph(unet: str, seed: int) -> dict:
        extra = {
            "21": {"class_type": "UNETLoader", "inputs": {"unet_name": unet, "weight_dtype": "default"}},
            "22": {"class_type": "VAELoader", "inputs": {"vae_name": WAN_VAE_FILE}},
            "23": {"class_type": "AntiI2VTest_ZeroConditioning", "inputs": {"width": 4096, "tokens": 8}},
        }
        links = {"model": ["21", 0], "vae": ["22", 0], "positive": ["23", 0], "folder": "(none)"}
        return graph(steps=1, seed=seed, blocks="1", vae_layers="", pairs="0:1", extra=extra,
                     surrogate_inputs=links)

    entry = run(srv, native_graph(WAN_I2V_FILE, 30), timeout=120)
    assert_success(srv, entry)
    report = json.loads(text_output(entry, "9"))
    assert report["settings"]["surrogate"]["family"].startswith("wan21") and report["steps_done"] == 1
    (saved,) = srv.output_files(entry, "7")
    assert Image.open(saved).size == (PHOTO_HW[1], PHOTO_HW[0])

    entry = run(srv, native_graph(WAN_T2V_FILE, 31), timeout=120)
    err = node_error(entry)
    assert err["node_type"] == "AntiI2V_LoadSurrogateI2V"
    assert err["exception_message"].startswith("AntiI2V_LoadSurrogateI2V: ")
    assert "text-to-video" in err["exception_message"], err["exception_message"]


# ---------------------------------------------------------------------------------------------- low VRAM
def test_low_vram_and_fp8_weights_on_the_loader(srv):
    """The loader's ``low_vram`` (+ ``fp8_weights``) on a diffusers folder reaches the protect run (the report
    states the frames, checkpointing and the fp8 conversion); ``fp8_weights`` alone is refused by name."""
    entry = run(srv, graph(steps=1, seed=40, blocks="1", vae_layers="", pairs="0:1",
                           surrogate_inputs={"low_vram": True, "fp8_weights": True}))
    assert_success(srv, entry)
    report = json.loads(text_output(entry, "9"))
    lv = report["settings"]["low_vram"]
    assert lv["frames"] == 9 and lv["gradient_checkpointing"] is True  # CogVideoX's low-VRAM frame count
    assert lv["fp8"]["applied"] is True and lv["fp8"]["dtype"] == "float8_e4m3fn" and lv["fp8"]["layers"] > 0
    assert report["steps_done"] == 1 and 0 < max(report["linf_255"]) <= EPS + 1e-4

    entry = run(srv, graph(steps=1, seed=41, surrogate_inputs={"fp8_weights": True}))
    err = node_error(entry)
    assert err["node_type"] == "AntiI2V_LoadSurrogateI2V"
    assert "fp8_weights is part of the low-VRAM mode: turn low_vram on too" in err["exception_message"]


# ---------------------------------------------------------------------------------------------- cancel
def test_interrupt_stops_within_an_iteration_and_server_continues(srv):
    pid = srv.post_prompt(graph(steps=5000, seed=2))

    def started(e):
        return e.get("type") == "anti_i2v.progress" and e["data"]["step"] >= 2 and e["data"]["total"] == 5000

    srv.wait_event(started, timeout=60)
    t_int = time.monotonic()
    srv.interrupt()
    entry = srv.wait(pid, timeout=60)  # the count of iterations after the interrupt is the criterion, not time
    kinds = [k for k, _ in ComfyServer.status_messages(entry)]
    assert "execution_interrupted" in kinds, entry["status"]
    steps = [e for e in srv.ws_events(types="anti_i2v.progress") if e["data"]["total"] == 5000]
    after = [e for e in steps if e["_t"] > t_int]
    # the iteration running at the interrupt finishes and reports; at most one more was already in flight
    assert len(after) <= 2, [e["data"]["step"] for e in after]
    assert steps[-1]["data"]["step"] < 5000

    # the server runs the next prompt to success
    entry = run(srv, graph(steps=1, seed=3))
    assert_success(srv, entry)


# ---------------------------------------------------------------------------------------------- bad inputs
BAD_CASES = {
    "one_pixel": (dict(image="one_pixel.png"), "AntiI2V_ProtectLoop", ["1x1"]),
    "block_out_of_range": (dict(blocks="99"), "AntiI2V_ProtectLoop", ["99", "0-3"]),
    "nan_image": (dict(extra={"11": {"class_type": "AntiI2VTest_PoisonImage", "inputs": {"image": ["1", 0]}}},
                       image_link=["11", 0]), "AntiI2V_ProtectLoop", ["NaN"]),
    "target_batch": (dict(extra={"11": {"class_type": "RepeatImageBatch", "inputs": {"image": ["1", 0], "amount": 2}}},
                          target_link=["11", 0]), "AntiI2V_ProtectLoop", ["target_image", "batch of 2", "1"]),
    "not_i2v_folder": (dict(folder="not-i2v-sd15"), "AntiI2V_LoadSurrogateI2V",
                       ["not an image-to-video model", "StableDiffusionPipeline"]),
    "bad_index_text": (dict(blocks="3-x"), "AntiI2V_IRALoss", ["blocks", "3-x"]),
    # refused before any range is expanded (expanding 0-9999999 took 6 s and 2 GB of server memory)
    "huge_range": (dict(blocks="0-99999999999"), "AntiI2V_IRALoss", ["blocks", "99999999999", "0-4096"]),
    "mask_size": (dict(extra={"11": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 8, "height": 8}}},
                       mask_link=["11", 0]), "AntiI2V_ProtectLoop", ["mask is 8x8", "image's size"]),
}


def test_bad_inputs_give_clear_node_errors_and_server_keeps_serving(srv):
    for i, (name, (kwargs, node_type, words)) in enumerate(BAD_CASES.items()):
        entry = run(srv, graph(steps=2, seed=100 + i, **kwargs), timeout=60)
        err = node_error(entry)
        msg = err["exception_message"]
        assert err["node_type"] == node_type, (name, err["node_type"], msg)
        assert msg.startswith(node_type), (name, msg)
        for w in words:
            assert w in msg, f"{name}: {w!r} not in {msg!r}"
        ws = [e for e in srv.ws_events(entry_id(entry), "execution_error")]
        assert ws and ws[-1]["data"]["exception_message"] == msg
    entry = run(srv, graph(steps=1, seed=4))
    assert_success(srv, entry)


def test_objective_that_cannot_move_the_photo_is_reported_by_the_node(srv):
    """Every loss weight 0: the prompt succeeds, the photo comes back unchanged and the report says why."""
    g = graph(steps=3, seed=7)
    g["4"]["inputs"]["weight"] = 0.0
    g["5"]["inputs"]["weight"] = 0.0
    entry = run(srv, g)
    assert_success(srv, entry)
    report = json.loads(text_output(entry, "9"))
    assert report["steps_done"] == 0
    assert any("every loss weight is 0" in n for n in report["settings"]["notes"]), report["settings"]["notes"]
    (saved,) = srv.output_files(entry, "7")
    out = np.asarray(Image.open(saved).convert("RGB"))
    src = np.asarray(Image.open(srv.input_dir / PHOTO).convert("RGB"))
    assert np.array_equal(out, src)


def test_auto_layers_resolve_per_family_and_appear_in_the_report(srv):
    """The loss nodes' default 'auto' resolves to each loaded family's recommended layers; the report names them."""
    from anti_i2v.losses import IRALoss, IRCLoss
    from anti_i2v.surrogates import tiny_surrogate

    info = srv.object_info()
    assert info["AntiI2V_IRALoss"]["input"]["required"]["blocks"][1]["default"] == "auto"
    assert info["AntiI2V_IRCLoss"]["input"]["required"]["pairs"][1]["default"] == "auto"
    for i, (family, folder) in enumerate(sorted(srv.tiny_models.items())):
        g = graph(steps=1, seed=40 + i, folder=folder, blocks="auto", vae_layers="auto", pairs="auto")
        g["6"]["inputs"]["frames"] = 5  # the loop's frames override the loader's 9 (4k+1 for CogVideoX)
        if i == 0:  # the half-rewired template: CLIPVisionEncode left on the clean photo, WanImageToVideo protected
            g["50"] = {"class_type": "CLIPVisionEncode", "inputs": {"clip_vision": ["51", 0], "image": ["1", 0],
                                                                     "crop": "none"}}
            g["51"] = {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": "clip_vision_h.safetensors"}}
            g["52"] = {"class_type": "WanImageToVideo", "inputs": {
                "positive": ["53", 0], "negative": ["53", 0], "vae": ["54", 0], "clip_vision_output": ["50", 0],
                "start_image": ["6", 0], "width": 64, "height": 64, "length": 5, "batch_size": 1}}
            # (not connected to an output: ComfyUI neither validates nor runs them, but they are in the prompt)
            g["53"] = {"class_type": "AntiI2VTest_ZeroConditioning", "inputs": {"width": 4096, "tokens": 4}}
            g["54"] = {"class_type": "VAELoader", "inputs": {"vae_name": "wan_2.1_vae.safetensors"}}
        entry = run(srv, g)
        assert_success(srv, entry)
        report = json.loads(text_output(entry, "9"))
        st = report["settings"]
        if i == 0:
            (warning,) = report["warnings"]
            assert warning.startswith("CLIPVisionEncode (node 50) encodes the UNPROTECTED photo (from node 1)")
            assert "WanImageToVideo (node 52)" in warning
        else:
            assert report["warnings"] == []
        expected = tiny_surrogate(family, seed=0).default_objective()  # the same tiny architecture
        ira = next(t for t in expected.terms if isinstance(t, IRALoss))
        assert st["losses"][0]["blocks"] == list(ira.blocks) and st["losses"][0]["vae_layers"] == list(ira.vae_layers)
        assert st["losses"][0]["auto"] == ["blocks", "vae_layers"]
        irc = [t.pairs for t in expected.terms if isinstance(t, IRCLoss)]
        assert [t["pairs"] for t in st["losses"][1:]] == [[list(p) for p in pairs] for pairs in irc]
        assert any(n.startswith(f"IRA 'auto' on {st['surrogate']['family']}: blocks") for n in st["notes"]), st["notes"]
        assert st["frames_attacked"] == 5, family


def entry_id(entry: dict) -> str:
    return entry["prompt"][1]


# ---------------------------------------------------------------------------------------------- folder paths
def _folder_error(srv: ComfyServer, folder: str, seed: int) -> str:
    """The LoadSurrogateI2V error for a posted ``folder`` value, with the value itself replaced by <folder>."""
    entry = run(srv, graph(steps=1, seed=seed, folder=folder), timeout=60)
    err = node_error(entry)
    assert err["node_type"] == "AntiI2V_LoadSurrogateI2V", (folder, err)
    msg = err["exception_message"].strip()  # ComfyUI appends a newline
    assert repr(folder) in msg, (folder, msg)
    return msg.replace(repr(folder), "<folder>")


def test_folder_outside_models_diffusers_is_refused_alike_whether_it_exists_or_not(srv):
    """ComfyUI does not check posted combo values, so the node must: absolute paths, '..' chains and symlinks
    out of models/diffusers are refused, with one message that does not tell whether the target exists."""
    import shutil

    outside = srv.base_dir / "outside_models"
    copy = outside / "copy-cogvideox"  # a loadable model outside models/diffusers
    if not copy.is_dir():
        shutil.copytree(srv.models_dir / "diffusers" / srv.tiny_models["cogvideox"], copy)
    missing = outside / "missing-model"
    diffusers = srv.models_dir / "diffusers"
    links = {"escape-link": copy, "dangling-link": missing, "etc-link": "/etc"}
    for name, target in links.items():
        if not (diffusers / name).is_symlink():
            (diffusers / name).symlink_to(target, target_is_directory=True)
    rel = "../../" + outside.name
    pairs = {  # (existing target, nonexistent target)
        "absolute model copy": (str(copy), str(missing)),
        "absolute system folder": ("/etc", "/no-such-folder-anti-i2v"),
        "absolute root": ("/", "/no-such-root-anti-i2v/"),
        "dotdot chain": (f"{rel}/{copy.name}", f"{rel}/{missing.name}"),
        "dotdot to etc": ("../../../../../../../../etc", "../../../../../../../../no-such-etc"),
        "dotdot inside a name": (f"tiny-cogvideox/../{srv.tiny_models['cogvideox']}", "tiny-cogvideox/../nope"),
        "symlink out of diffusers": ("escape-link", "no-such-link"),
        "symlink to a system folder": ("etc-link", "dangling-link"),
    }
    messages = set()
    seed = 200
    for case, (exists, absent) in pairs.items():
        m_exists = _folder_error(srv, exists, seed)
        m_absent = _folder_error(srv, absent, seed + 1)
        seed += 2
        assert m_exists == m_absent, f"{case}: the error tells whether the path exists:\n{m_exists}\n{m_absent}"
        messages.add(m_exists)
    assert messages == {"AntiI2V_LoadSurrogateI2V: folder <folder> is not one of the model folders in ComfyUI's "
                        "models/diffusers; pick one from the list"}, messages
    # the combo lists no folder that would be refused
    options = srv.object_info("AntiI2V_LoadSurrogateI2V")["AntiI2V_LoadSurrogateI2V"]["input"]["required"][
        "folder"][1]["options"]
    assert srv.tiny_models["cogvideox"] in options
    assert not set(links) & set(options), options

    # a symlink that stays inside models/diffusers is a folder like any other; the server keeps serving
    inside = diffusers / "inside-link"
    if not inside.is_symlink():
        inside.symlink_to(diffusers / srv.tiny_models["cogvideox"], target_is_directory=True)
    entry = run(srv, graph(steps=1, seed=seed, folder="inside-link"))
    assert_success(srv, entry)
