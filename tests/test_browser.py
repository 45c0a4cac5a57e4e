"""The presets and the frontend extension in the real ComfyUI frontend (headless Chromium), run on tiny models.

One ComfyUI server (``tests/comfy_harness.py``) for the module, with this pack, the test pack and tiny
random-weight models under the file names the presets use:

* ``models/diffusers/CogVideoX-5b-I2V``: a tiny diffusers CogVideoX-I2V (the adapter's ``save_tiny``);
* ``models/diffusion_models/wan2.1_i2v_480p_14B_bf16.safetensors`` and ``models/vae/wan_2.1_vae.safetensors``:
  tiny native Wan 2.1 files (``tests/comfy_models.py``), loaded by the preset's own UNETLoader / VAELoader;
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

* CLIPLoader + CLIPTextEncode become ``AntiI2VTest_ZeroConditioning`` (width 4096): the umT5-XXL text encoder
  cannot be made tiny;
* sizes, frame counts and step counts go down to seconds on CPU (64x64 pixels, 2 steps, 5 attacked frames;
  Protect Image's ``loop_from_method`` is turned off so the comparison preset's loops also run 2 steps);
* for the CogVideoX and Wan presets, dtype float32 and layer indices the 2-block tiny models have (instead of
  the real models' 27 / 26 ...). The SVD checkpoint keeps SVD's real 25-block U-Net and SD VAE, so the SVD
  preset runs with its shipped layers (IRA on block 12 and VAE layers 14,15, IRC 1:24) and dtype.
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

PRESETS = ["protect_cogvideox_preview", "protect_wan21_native", "protect_svd_native", "protect_batch",
           "compare_defenses_cogvideox"]
EXTENSION = "AntiI2V.LossChart"
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
    for nid, node in prompt.items():
        node = json.loads(json.dumps(node))
        ct, inp = node["class_type"], node["inputs"]
        if ct == "CLIPLoader":
            continue
        if ct == "CLIPTextEncode":
            node = {"class_type": "AntiI2VTest_ZeroConditioning", "inputs": {"width": 4096, "tokens": 8}}
        elif ct == "AntiI2V_LoadSurrogateI2V":
            inp["frames"] = 5
            if not shipped_layers:
                inp["dtype"] = "float32"
        elif ct == "AntiI2V_IRALoss" and not shipped_layers:
            inp.update(blocks="1", vae_layers="1")
        elif ct == "AntiI2V_IRCLoss" and not shipped_layers:
            inp.update(pairs="0:1")
        elif ct == LOOP:
            inp.update(steps=2)
            if inp.get("loop_from_method"):
                inp["loop_from_method"] = False  # the papers' loops run 100-1000 steps; 2 here like every loop
        elif ct == "AntiI2V_PreviewAttackVideo":
            inp.update(steps=2)
        elif ct == "WanImageToVideo":
            inp.update(width=64, height=64, length=5)
        elif ct == "SVD_img2vid_Conditioning":
            inp.update(width=64, height=64, video_frames=2)
        elif ct == "KSampler":
            inp.update(steps=2)
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
    assert loop["inputs"]["steps"] == 200 and loop["inputs"]["optimizer"] == "sign"
    # the Python converter the demo uses gives the frontend's prompt for the shipped preset
    from scripts.comfy_workflow import ui_to_api

    shipped = json.loads((REPO / "workflows" / f"{name}.json").read_text())
    info = server.object_info()
    mine = ui_to_api(shipped, info)

    def declared(ctype):  # the frontend also sends display-only widgets (PreviewAny's "preview"); the server ignores them
        spec = info[ctype]["input"]
        return set(spec.get("required", {})) | set(spec.get("optional", {}))

    theirs = {k: {"class_type": v["class_type"],
                  "inputs": {i: x for i, x in v["inputs"].items() if i in declared(v["class_type"])}}
              for k, v in prompt.items()}
    assert mine == json.loads(json.dumps(theirs)), f"{name}: scripts/comfy_workflow.ui_to_api differs from graphToPrompt"

    prompt_id = server.post_prompt(_tiny(prompt, shipped_layers="svd" in name))
    entry = server.wait(prompt_id, timeout=240)
    err = server.error_of(entry)
    assert err is None, f"{name}: {err and (err.get('node_type'), err.get('exception_message'))}"
    assert entry["status"]["status_str"] == "success"
    saved = [p for nid, out in entry["outputs"].items() for p in server.output_files(entry, nid)]
    assert saved and all(p.is_file() and p.stat().st_size > 0 for p in saved), f"{name}: no output files"
    if "wan21" in name or "svd" in name:  # clean and protected videos both rendered
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
