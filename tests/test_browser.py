"""The presets and the frontend extension in the real ComfyUI frontend (headless Chromium), run on tiny models.

One ComfyUI server (``tests/comfy_harness.py``) for the module, with this pack, the test pack and tiny
random-weight models under the file names the presets use:

* ``models/diffusers/CogVideoX-5b-I2V``: a tiny diffusers CogVideoX-I2V (the adapter's ``save_tiny``);
* ``models/diffusion_models/wan2.1_i2v_480p_14B_fp16.safetensors`` and ``models/vae/wan_2.1_vae.safetensors``:
  tiny native Wan 2.1 files (``tests/comfy_models.py``), loaded by the preset's own UNETLoader / VAELoader;
* ``models/diffusion_models/wan2.2_i2v_{high,low}_noise_14B_fp16.safetensors``: two tiny Wan 2.2 A14B I2V experts
  (``tests/comfy_models.py``), loaded by the preset's own UNETLoaders; the two KSamplerAdvanced keep their chain
  (steps 0-2 high noise, 2-4 low noise);
* ``models/diffusion_models/wan2.2_ti2v_5B_fp16.safetensors`` and ``models/vae/wan2.2_vae.safetensors``: a tiny
  TI2V-5B and a random real-size Wan 2.2 VAE (ComfyUI fixes its width; its preset runs at 32x32);
* ``models/checkpoints/ltx-video-2b-v0.9.5.safetensors``: a tiny LTX-Video checkpoint in the real layout
  (``tests/comfy_models.py``), loaded by the preset's own CheckpointLoaderSimple;
* ``models/diffusion_models/hunyuan_video_image_to_video_720p_bf16.safetensors`` and
  ``models/vae/hunyuan_video_vae_bf16.safetensors``: a tiny HunyuanVideo I2V in the released key names and a
  random real-size HunyuanVideo VAE (ComfyUI fixes its width; its preset runs at 32x32);
* ``models/checkpoints/svd.safetensors``: a random-weight SVD checkpoint (``tests/comfy_models.py``: the
  smallest U-Net ComfyUI still detects as ``SVD_img2vid``, the SD temporal VAE and a ViT-H vision tower),
  loaded by the preset's own ImageOnlyCheckpointLoader.

For every preset the test fetches it the way the template browser does (``GET /workflow_templates`` and
``/api/workflow_templates/<pack>/<name>.json``), loads it with ``app.loadGraphData``, checks that every node
type is registered, that the pack's extension is registered and that none of the pack's files logged a console
error, takes a screenshot (no dialog or error toast may cover the canvas), converts it with
``app.graphToPrompt`` and runs that API prompt via ``/prompt``. It also reads the loss chart's state from the
ProtectLoop node in the page after the run: the chart must have received every progress event.

What the run changes in the converted prompt, on purpose (the graph itself runs as shipped):

* CLIPLoader + CLIPTextEncode become ``AntiI2VTest_ZeroConditioning`` (width 4096; with an all-ones attention
  mask in the LTX-Video preset, as T5 gives): the umT5-XXL / T5-XXL text encoders cannot be made tiny;
* in the HunyuanVideo preset, DualCLIPLoader + CLIPVisionLoader + CLIPVisionEncode +
  TextEncodeHunyuanVideo_ImageToVideo become one ``AntiI2VTest_ZeroConditioning`` (width 4096, a zero 768-wide
  pooled output): the LLaVA-LLaMA-3 8B encoder and its vision tower cannot be made tiny;
* sizes, frame counts and step counts go down to seconds on CPU (64x64 pixels, 2 steps, 5 attacked frames;
  ProtectLoop's ``loop_from_method`` is turned off so the comparison preset's loops also run 2 steps);
* for the CogVideoX presets, dtype float32 and layer indices the 2-block tiny models have (instead of 27 ...);
  the Wan and SVD presets keep their ``auto`` layers, which resolve on the loaded model (tiny Wan: 1 and 0:1;
  the SVD checkpoint keeps SVD's real 25-block U-Net and SD VAE: IRA 12 + VAE layers 14,15, IRC 2:22).
* the Wan preset's CLIPVisionLoader loads a random ViT-H (``clip_vision_h.safetensors``, Wan's img_emb needs
  its 1280-wide tokens); both CLIPVisionEncode nodes run, but the surrogate is built without it (the attack
  through the ViT-H, forward and backward, is run once, by the test of ComfyUI's template below).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from tests.browser import Chromium, find_chromium
from tests.comfy_harness import PACK_NAME, ComfyServer, comfy_available

REPO = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.browser, pytest.mark.comfy, pytest.mark.slow]

PRESETS = ["protect_cogvideox_preview", "protect_wan21_native", "protect_svd_native", "protect_wan22_native",
           "protect_wan22_ti2v_native", "protect_ltxv_native", "protect_hunyuan_native", "protect_batch",
           "compare_defenses_cogvideox"]
EXTENSION = "AntiI2V.LossChart"
ACTION = "Anti-I2V: protect this image"
TEMPLATE = "image_to_video_wan"  # ComfyUI's official Wan 2.1 I2V template (comfyui-workflow-templates)
TEMPLATE_PHOTO = "image_to_video_wan_start_image.png"  # the file name its LoadImage names
LOOP = "AntiI2V_ProtectLoop"

_LOAD_JS = r"""
const [url, name, done] = arguments;
(async () => {
  const wf = await (await fetch(url)).json();
  await app.loadGraphData(wf, true, true, name);
  const types = [...new Set(app.graph.nodes.map((n) => n.type))];
  const missing = types.filter((t) => !LiteGraph.registered_node_types[t]);
  const loops = app.graph.nodes.filter((n) => n.type === "AntiI2V_ProtectLoop").map((n) => n.id);
  const charts = loops.filter((id) => !!app.graph.getNodeById(id).antiI2VChart);
  done({types, missing, loops, charts, count: app.graph.nodes.length});
})().catch((e) => done({error: String(e && e.stack || e)}));
"""

_PROMPT_JS = r"""
const done = arguments[arguments.length - 1];
app.graphToPrompt().then((r) => done({output: r.output})).catch((e) => done({error: String(e)}));
"""

_OVERLAYS_JS = r"""
const visible = (e) => e.offsetParent !== null || getComputedStyle(e).position === "fixed" && e.getClientRects().length;
const dialogs = [...document.querySelectorAll(".p-dialog, .p-dialog-mask, [role=dialog], [role=alertdialog]")]
  .filter(visible).map((e) => e.textContent.trim().slice(0, 300));
const toasts = [...document.querySelectorAll(".p-toast-message-error, .p-toast-message-warn")]
  .filter(visible).map((e) => e.textContent.trim().slice(0, 300));
return {dialogs, toasts};
"""


def _pack_errors(entries: list[dict]) -> list[str]:
    """Console errors that come from this pack's files (URL or stack under /extensions/<pack>/).

    Benign and not the pack's: 404s of user.css / favicon / userdata, and blocked look-ups of external hosts
    (the frontend asks api.comfy.org about custom node packs; this test browser reaches only 127.0.0.1).
    """
    out = []
    for e in entries:
        msg = e.get("message", "")
        if (e.get("level") == "SEVERE" and f"/extensions/{PACK_NAME}/" in msg) or "Error loading extension" in msg:
            out.append(msg[:500])
    return out


def _tiny(prompt: dict, *, shipped_layers: bool = False) -> dict:
    """The converted preset with the test-only substitutions listed in the module docstring.

    ``shipped_layers``: keep the preset's layer indices and dtype (its models have the real block layout).
    """
    out = {}
    ltxv = any(n["class_type"] == "LTXVImgToVideo" for n in prompt.values())
    hunyuan = any(n["class_type"] == "HunyuanImageToVideo" for n in prompt.values())
    for nid, node in prompt.items():
        node = json.loads(json.dumps(node))
        ct, inp = node["class_type"], node["inputs"]
        if ct in ("CLIPLoader", "DualCLIPLoader"):
            continue
        if ct in ("CLIPVisionLoader", "CLIPVisionEncode") and hunyuan:  # LLaVA's vision tower: text encoder only
            continue
        if ct == "TextEncodeHunyuanVideo_ImageToVideo":  # LLaVA tokens + CLIP-L's pooled output
            node = {"class_type": "AntiI2VTest_ZeroConditioning", "inputs": {"width": 4096, "tokens": 8, "pooled": 768}}
        if ct == "CLIPTextEncode":  # T5 for LTX-Video gives an attention mask, which its model requires
            node = {"class_type": "AntiI2VTest_ZeroConditioning",
                    "inputs": {"width": 4096, "tokens": 8, **({"attention_mask": True} if ltxv else {})}}
        elif ct == "AntiI2V_LoadSurrogateI2V":
            inp["frames"] = 5
            if not shipped_layers:  # (SVD needs its CLIP vision: its image embedding is the context)
                inp["dtype"] = "float32"
                # the ViT-H's forward + backward would dominate the run; the template test attacks through it
                inp.pop("clip_vision", None)
        elif ct == "AntiI2V_IRALoss" and not shipped_layers and inp["blocks"] != "auto":
            inp.update(blocks="1", vae_layers="1")
        elif ct == "AntiI2V_IRCLoss" and not shipped_layers and inp["pairs"] != "auto":
            inp.update(pairs="0:1")
        elif ct == LOOP:
            inp.update(steps=2)
            if inp.get("loop_from_method"):
                inp["loop_from_method"] = False  # the papers' loops run 100-1000 steps; 2 here like every loop
        elif ct == "AntiI2V_PreviewAttackVideo":
            inp.update(steps=2)
        elif ct == "WanImageToVideo":
            inp.update(width=64, height=64, length=5)
        elif ct == "LTXVImgToVideo":
            inp.update(width=64, height=64, length=9)
        elif ct == "HunyuanImageToVideo":  # the real-size HunyuanVideo VAE
            inp.update(width=32, height=32, length=5)
        elif ct == "Wan22ImageToVideoLatent":  # the real-size Wan 2.2 VAE decodes in seconds at 32x32
            inp.update(width=32, height=32, length=5)
        elif ct == "SVD_img2vid_Conditioning":
            inp.update(width=64, height=64, video_frames=2)
        elif ct == "KSampler":
            inp.update(steps=2)
        elif ct == "KSamplerAdvanced":  # the Wan 2.2 chain: first expert steps 0-2, second 2-4
            inp.update(steps=4, **({"end_at_step": 2} if inp["start_at_step"] == 0 else {"start_at_step": 2}))
        out[nid] = node
    for nid, node in out.items():  # nothing may still point at a removed node
        for k, v in node["inputs"].items():
            if isinstance(v, list) and len(v) == 2 and isinstance(v[0], str):
                assert v[0] in out, f"node {nid} input {k} points at removed node {v[0]}"
    return out


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """(server, browser, screenshot folder): ComfyUI with tiny models and headless Chromium on its frontend."""
    if not comfy_available():
        pytest.skip("ComfyUI is not unpacked in .cache/comfyui: run `bash scripts/setup.sh`")
    if find_chromium() is None:
        pytest.skip("chromium / chromedriver not installed: run `bash scripts/setup.sh --browser`")
    from anti_i2v.surrogates import surrogate_class
    from PIL import Image
    from skimage import data as skdata

    from tests import comfy_models

    base = tmp_path_factory.mktemp("browser_comfy")
    server = ComfyServer(base / "comfy")
    surrogate_class("cogvideox").save_tiny(server.models_dir / "diffusers" / "CogVideoX-5b-I2V", seed=0)
    comfy_models.write_tiny_wan21_i2v(server.models_dir / "diffusion_models")
    comfy_models.write_tiny_wan_vae(server.models_dir / "vae")
    comfy_models.install_svd_checkpoint(server.models_dir)  # 1.9 GB, written once into .cache/anti_i2v_tests
    comfy_models.write_tiny_ltxv_checkpoint(server.models_dir / "checkpoints")
    comfy_models.write_tiny_hunyuan_video(server.models_dir / "diffusion_models")
    comfy_models.install_hunyuan_vae(server.models_dir)  # 0.5 GB, written once into .cache/anti_i2v_tests
    comfy_models.write_tiny_wan22_ti2v(server.models_dir / "diffusion_models")
    comfy_models.install_wan22_vae(server.models_dir)  # 1.4 GB, written once into .cache/anti_i2v_tests
    comfy_models.write_tiny_wan22_i2v(server.models_dir / "diffusion_models", seed=0)
    comfy_models.write_tiny_wan22_i2v(server.models_dir / "diffusion_models", seed=5, name=comfy_models.WAN22_LOW_FILE)
    comfy_models.install_clip_vision_h(server.models_dir)  # its ViT-H tower, for ComfyUI's Wan 2.1 I2V template
    # the template's photo, non-square (80 x 48) so that CLIPVisionEncode's crop matters
    Image.fromarray(skdata.astronaut()[40:340, 6:506]).resize((80, 48)).save(server.input_dir / TEMPLATE_PHOTO)
    Image.fromarray(skdata.astronaut()).resize((64, 64)).save(server.input_dir / "example.png")
    shots = Path(os.environ.get("ANTI_I2V_SCREENSHOTS") or base / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    server.start()
    browser = None
    try:
        r = server.post("/settings", json={"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False})
        r.raise_for_status()
        browser = Chromium(width=1400, height=900).start()
        browser.get(server.url)
        browser.wait_for("return !!(window.app && app.graph && app.extensions && "
                         "app.extensions.some((e) => e.name === arguments[0]))", EXTENSION, timeout=90)
        browser.first_console = browser.console()
        yield server, browser, shots
    finally:
        if browser is not None:
            browser.quit()
        server.stop()


def test_extension_loads_without_errors(stack):
    server, browser, _ = stack
    names = browser.execute("return app.extensions.map((e) => e.name)")
    assert EXTENSION in names
    scripts = server.get("/extensions").json()
    assert f"/extensions/{PACK_NAME}/anti_i2v_loss_chart.js" in scripts
    assert not _pack_errors(browser.first_console), _pack_errors(browser.first_console)
    # the help page of a node is served where the frontend's node help panel fetches it
    r = server.get(f"/extensions/{PACK_NAME}/docs/{LOOP}.md")
    assert r.status_code == 200 and r.text.startswith("# ")


def test_templates_are_listed(stack):
    server, _, _ = stack
    listed = server.get("/workflow_templates").json()
    assert sorted(listed.get(PACK_NAME, [])) == sorted(PRESETS)
    for name in PRESETS:
        r = server.get(f"/api/workflow_templates/{PACK_NAME}/{name}.jpg")
        assert r.status_code == 200 and r.content[:3] == b"\xff\xd8\xff", f"{name}: thumbnail not served"


@pytest.mark.parametrize("name", PRESETS)
def test_preset_loads_converts_and_runs(stack, name):
    server, browser, shots = stack
    browser.console()  # drop earlier entries
    info = browser.execute_async(_LOAD_JS, f"/api/workflow_templates/{PACK_NAME}/{name}.json", name)
    assert "error" not in info, info.get("error")
    assert not info["missing"], f"{name}: node types not registered in the frontend: {info['missing']}"
    assert info["loops"], f"{name}: no {LOOP} node"
    assert info["charts"] == info["loops"], f"{name}: the loss chart is missing on {LOOP} nodes"
    time.sleep(0.5)
    shot = shots / f"{name}.png"
    browser.screenshot(shot)
    overlays = browser.execute(_OVERLAYS_JS)
    assert not overlays["dialogs"] and not overlays["toasts"], f"{name}: canvas covered: {overlays} ({shot})"
    assert not _pack_errors(browser.console()), f"{name}: console errors from the pack"

    conv = browser.execute_async(_PROMPT_JS)
    assert "error" not in conv, conv.get("error")
    prompt = conv["output"]
    real = {n["type"] for n in json.loads(json.dumps(browser.execute(
        "return app.graph.nodes.filter((n) => !n.isVirtualNode).map((n) => ({type: n.type}))")))}
    assert {v["class_type"] for v in prompt.values()} == real, f"{name}: graphToPrompt lost or added nodes"
    # API prompts list every required input: spot-check the pack's widgets came through with their values
    loop = next(v for v in prompt.values() if v["class_type"] == LOOP)
    from anti_i2v.protect import ProtectConfig

    # Anti-I2V presets ship the library's default step rule; the defense comparison keeps each paper's own
    expected = ProtectConfig().optimizer if name != "compare_defenses_cogvideox" else "sign"
    assert loop["inputs"]["steps"] == 200 and loop["inputs"]["optimizer"] == expected
    # the Python converter the demo uses gives the frontend's prompt for the shipped preset
    from scripts.comfy_workflow import ui_to_api

    shipped = json.loads((REPO / "workflows" / f"{name}.json").read_text())
    shipped_loop = next(n for n in shipped["nodes"] if n["type"] == LOOP)
    assert loop["inputs"]["steps"] == 200 and loop["inputs"]["optimizer"] == shipped_loop["widgets_values"][3]
    info = server.object_info()
    mine = ui_to_api(shipped, info)

    def declared(ctype):  # the frontend also sends display-only widgets (PreviewAny's "preview"); the server ignores them
        spec = info[ctype]["input"]
        return set(spec.get("required", {})) | set(spec.get("optional", {}))

    theirs = {k: {"class_type": v["class_type"],
                  "inputs": {i: x for i, x in v["inputs"].items() if i in declared(v["class_type"])}}
              for k, v in prompt.items()}
    assert mine == json.loads(json.dumps(theirs)), f"{name}: scripts/comfy_workflow.ui_to_api differs from graphToPrompt"

    if "wan21" in name:  # the clean comparison branch's CLIPVisionEncode is not mistaken for the trap
        loop_key = next(k for k, v in prompt.items() if v["class_type"] == LOOP)
        assert _runtime_module().clip_vision_warnings(prompt, loop_key) == []
    prompt_id = server.post_prompt(_tiny(prompt, shipped_layers="svd" in name))
    entry = server.wait(prompt_id, timeout=480)  # seconds on an idle machine; generous for a busy one
    err = server.error_of(entry)
    assert err is None, f"{name}: {err and (err.get('node_type'), err.get('exception_message'))}"
    assert entry["status"]["status_str"] == "success"
    saved = [p for nid, out in entry["outputs"].items() for p in server.output_files(entry, nid)]
    assert saved and all(p.is_file() and p.stat().st_size > 0 for p in saved), f"{name}: no output files"
    if "wan2" in name or "svd" in name or "ltxv" in name or "hunyuan" in name:  # clean and protected videos
        webps = [p for p in saved if p.suffix == ".webp"]
        assert len(webps) == 2, f"{name}: expected 2 videos, got {webps}"

    # the loss chart in the page received every progress event of the run (2 steps per loop)
    loop_id = int(next(k for k, v in prompt.items() if v["class_type"] == LOOP))
    state = browser.wait_for(
        "const n = app.graph.getNodeById(arguments[0]); const s = n && n.antiI2VChart && n.antiI2VChart.state();"
        "return s && s.step === 2 && s.total === 2 ? s : null", loop_id, timeout=20)
    assert state["events"] == 2 and state["points"] == 2 and state["drawn"] >= 1
    assert isinstance(state["lastLoss"], (int, float)) and state["terms"], state
    browser.screenshot(shots / f"{name}_after_run.png")
    assert not _pack_errors(browser.console()), f"{name}: console errors from the pack after the run"


_TEMPLATE_JS = r"""
const [url, label, done] = arguments;
(async () => {
  const wf = await (await fetch(url)).json();
  await app.loadGraphData(wf, true, true, "image_to_video_wan");
  const load = app.graph.nodes.find((n) => n.type === "LoadImage");
  const before = (load.outputs[0].links ?? []).length;
  const items = app.canvas.getNodeMenuOptions(load).filter(Boolean);
  const item = items.find((o) => o.content === label);
  if (!item) { done({error: "no menu entry; entries: " + items.map((o) => o.content).join(" | ")}); return; }
  item.callback();
  app.graph.setDirtyCanvas(true, true);
  const p = app.graph.nodes.filter((n) => n.type === "AntiI2V_ProtectImage");
  done({template: wf, before, after: (load.outputs[0].links ?? []).length, added: p.map((n) => n.id),
        widgets: Object.fromEntries(p[0].widgets.map((w) => [w.name, w.value]))});
})().catch((e) => done({error: String(e && e.stack || e)}));
"""


def _runtime_module():
    """nodes/runtime.py by path (absolute imports only; the ``nodes`` package itself imports ComfyUI)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("anti_i2v_nodes_runtime", REPO / "nodes" / "runtime.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_official_wan_template_protected_by_the_menu_action_runs(stack):
    """ComfyUI's own Wan 2.1 I2V template, loaded as shipped, protected with the one-click action, runs.

    Substitutions in the converted prompt, and nothing else: CLIPLoader + CLIPTextEncode become the test
    conditioning node (umT5-XXL cannot be made tiny); sizes, length, steps go down (80 x 48, 5 frames, 1 protect
    step, 2 sampler steps); a PreviewAny shows the protect node's report. The models load through the template's
    own UNETLoader, VAELoader and CLIPVisionLoader (a random ViT-H: Wan's img_emb needs its 1280-wide tokens).
    """
    import comfyui_workflow_templates as templates

    server, browser, shots = stack
    browser.console()
    info = browser.execute_async(_TEMPLATE_JS, f"/templates/{TEMPLATE}.json", ACTION)
    assert "error" not in info, info.get("error")
    shipped = json.loads(Path(templates.get_asset_path(TEMPLATE, f"{TEMPLATE}.json")).read_text())
    assert info["template"] == shipped  # the template as the installed package ships it
    assert info["before"] == 2 and info["after"] == 1 and len(info["added"]) == 1
    assert info["widgets"]["frames"] == 33 and info["widgets"]["clip_vision_crop"] == "none"  # from the graph
    browser.screenshot(shots / f"{TEMPLATE}_protected.png")
    assert not _pack_errors(browser.console()), "console errors from the pack"
    conv = browser.execute_async(_PROMPT_JS)
    assert "error" not in conv, conv.get("error")
    prompt = conv["output"]

    pid = str(info["added"][0])
    by_type = {v["class_type"]: k for k, v in prompt.items()}
    load, i2v, cve = by_type["LoadImage"], by_type["WanImageToVideo"], by_type["CLIPVisionEncode"]
    node = prompt[pid]["inputs"]
    # BOTH consumers of the photo now read the protected image: the sampler's CLIP-vision input included
    assert prompt[i2v]["inputs"]["start_image"] == [pid, 0]
    assert prompt[cve]["inputs"]["image"] == [pid, 0], "CLIPVisionEncode still reads the unprotected photo"
    readers = [k for k, v in prompt.items() for x in v["inputs"].values() if x == [load, 0]]
    assert readers == [pid]
    # the graph's own models were connected
    assert node["model"] == [by_type["ModelSamplingSD3"], 0] and node["vae"] == [by_type["VAELoader"], 0]
    assert node["clip_vision"] == [by_type["CLIPVisionLoader"], 0]
    assert node["positive"] == prompt[i2v]["inputs"]["positive"]
    # the warning for the trap the action avoids: CLIPVisionEncode left on the clean photo
    runtime = _runtime_module()
    assert runtime.clip_vision_warnings(prompt, pid) == []
    half = json.loads(json.dumps(prompt))
    half[cve]["inputs"]["image"] = [load, 0]
    (warning,) = runtime.clip_vision_warnings(half, pid)
    assert f"CLIPVisionEncode (node {cve}) encodes the UNPROTECTED photo" in warning and f"node {i2v}" in warning

    run = {}
    for nid, n in prompt.items():
        n = json.loads(json.dumps(n))
        if n["class_type"] == "CLIPLoader":
            continue
        if n["class_type"] == "CLIPTextEncode":
            n = {"class_type": "AntiI2VTest_ZeroConditioning", "inputs": {"width": 4096, "tokens": 8}}
        elif n["class_type"] == "WanImageToVideo":
            n["inputs"].update(width=80, height=48, length=5)
        elif n["class_type"] == "KSampler":
            n["inputs"].update(steps=2)
        elif n["class_type"] == "AntiI2V_ProtectImage":
            n["inputs"].update(frames=5, steps=1)  # the video's length, as the action set it (33 -> 5 here)
        run[nid] = n
    run["9001"] = {"class_type": "PreviewAny", "inputs": {"source": [pid, 1]}}
    prompt_id = server.post_prompt(run)
    entry = server.wait(prompt_id, timeout=420)
    err = server.error_of(entry)
    assert err is None, f"{err and (err.get('node_type'), err.get('exception_message'))}\n{server.log()[-3000:]}"
    saved = [p for nid in entry["outputs"] for p in server.output_files(entry, nid)]
    assert any(p.suffix == ".mp4" and p.stat().st_size > 0 for p in saved), saved
    report = json.loads(entry["outputs"]["9001"]["text"][0])
    st = report["settings"]
    assert report["warnings"] == [] and st["frames_attacked"] == 5
    assert st["surrogate"]["clip_vision"] is True and st["surrogate"]["clip_vision_crop"] == "none"
    ira, irc = st["losses"]
    assert ira["auto"] == ["blocks", "vae_layers"] and ira["blocks"] == [1]  # the tiny model has 2 blocks
    assert irc["pairs"] == [[0, 1]] and irc["auto"] == ["pairs"]
    assert any(n.startswith("IRA 'auto' on wan21-native: blocks 1") for n in st["notes"])
    assert 0 < report["linf_255"][0] <= 8 + 1e-3  # the default strength's budget
