"""The shipped workflow presets (``workflows/*.json``), help pages (``js/docs``) and frontend extension (``js/``).

Fast checks without a browser: each preset is a valid UI-format graph whose links agree with its nodes, uses
only core ComfyUI nodes, frontend notes or this pack's nodes, names only inputs the pack's nodes have, and has
a JPEG thumbnail; every pack node has a help page that covers all its inputs. The schema of the pack's nodes
is read from the real node classes (in a subprocess, with the unpacked ComfyUI on its path); those checks are
skipped when ComfyUI is not unpacked. ``tests/test_browser.py`` loads and runs the presets in the real frontend.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / "workflows"
DOCS = ROOT / "js" / "docs"
COMFY_DIR = ROOT / ".cache" / "comfyui"
PRESETS = ["protect_cogvideox_preview", "protect_wan21_native", "protect_svd_native", "protect_wan22_native",
           "protect_wan22_ti2v_native", "protect_ltxv_native", "protect_hunyuan_native", "protect_batch",
           "compare_defenses_cogvideox"]

#: core ComfyUI 0.3.75 node types the presets may use (checked against ComfyUI's sources below)
CORE_NODES = {
    "LoadImage", "SaveImage", "PreviewImage", "PreviewAny", "ImageBatch", "UNETLoader", "VAELoader",
    "CLIPLoader", "CLIPTextEncode", "CLIPVisionLoader", "CLIPVisionEncode", "ModelSamplingSD3",
    "WanImageToVideo", "KSampler", "VAEDecode", "SaveAnimatedWEBP", "ImageOnlyCheckpointLoader",
    "VideoLinearCFGGuidance", "SVD_img2vid_Conditioning", "CheckpointLoaderSimple", "LTXVConditioning",
    "LTXVImgToVideo", "KSamplerAdvanced", "Wan22ImageToVideoLatent", "DualCLIPLoader", "HunyuanImageToVideo",
    "TextEncodeHunyuanVideo_ImageToVideo",
}
#: frontend-only (virtual) nodes: never sent to the server
FRONTEND_NODES = {"MarkdownNote", "Note"}

_SCHEMA_SCRIPT = r'''
import importlib.util, json, sys
from pathlib import Path
root, comfy_dir = Path(sys.argv[1]), Path(sys.argv[2])
sys.path.insert(0, str(comfy_dir))
import comfy.cli_args
comfy.cli_args.args.cpu = True
spec = importlib.util.spec_from_file_location("anti_i2v_pack", root / "__init__.py",
                                              submodule_search_locations=[str(root)])
pack = importlib.util.module_from_spec(spec)
sys.modules["anti_i2v_pack"] = pack
spec.loader.exec_module(pack)
out = {}
for nid, cls in pack.NODE_CLASS_MAPPINGS.items():
    it = cls.INPUT_TYPES()
    out[nid] = {k: list(it.get(k, {})) for k in ("required", "optional")}
print("SCHEMA=" + json.dumps(out))
'''


def _load(name: str) -> dict:
    return json.loads((WORKFLOWS / f"{name}.json").read_text())


def _pack_node_ids() -> list[str]:
    """Keys of the literal NODE_CLASS_MAPPINGS in nodes/__init__.py (read without importing ComfyUI)."""
    tree = ast.parse((ROOT / "nodes" / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "NODE_CLASS_MAPPINGS" for t in node.targets):
            assert isinstance(node.value, ast.Dict), "NODE_CLASS_MAPPINGS must be a literal dict"
            return [k.value for k in node.value.keys]
    raise AssertionError("nodes/__init__.py defines no NODE_CLASS_MAPPINGS")


@pytest.fixture(scope="module")
def schema(tmp_path_factory) -> dict[str, dict[str, list[str]]]:
    """{node id: {"required": [...], "optional": [...]}} from the pack's node classes (INPUT_TYPES)."""
    if not (COMFY_DIR / "main.py").is_file():
        pytest.skip("ComfyUI is not unpacked in .cache/comfyui: run `bash scripts/setup.sh`")
    script = tmp_path_factory.mktemp("schema") / "dump_schema.py"
    script.write_text(_SCHEMA_SCRIPT)
    r = subprocess.run([sys.executable, str(script), str(ROOT), str(COMFY_DIR)], capture_output=True, text=True,
                       timeout=120)
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("SCHEMA=")), None)
    assert r.returncode == 0 and line, f"cannot read the node schema:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
    return json.loads(line[len("SCHEMA="):])


def test_every_preset_is_present_with_a_thumbnail():
    found = sorted(p.stem for p in WORKFLOWS.glob("*.json"))
    assert found == sorted(PRESETS)
    for name in PRESETS:
        jpg = WORKFLOWS / f"{name}.jpg"
        assert jpg.is_file(), f"{name}: no thumbnail {jpg.name}"
        data = jpg.read_bytes()
        assert data[:3] == b"\xff\xd8\xff" and data[-2:] == b"\xff\xd9", f"{jpg.name} is not a JPEG"
        assert 5_000 < len(data) < 1_000_000, f"{jpg.name}: unexpected size {len(data)} bytes"


@pytest.mark.parametrize("name", PRESETS)
def test_preset_is_a_consistent_ui_graph(name):
    wf = _load(name)
    # UI format (what the template browser loads), not the API format
    assert isinstance(wf.get("nodes"), list) and isinstance(wf.get("links"), list), "not a UI-format workflow"
    ids = [n["id"] for n in wf["nodes"]]
    assert len(ids) == len(set(ids)), "duplicate node ids"
    assert wf["last_node_id"] >= max(ids)
    nodes = {n["id"]: n for n in wf["nodes"]}
    links = {}
    for link in wf["links"]:
        lid, src, src_slot, dst, dst_slot, typ = link
        assert lid not in links, f"duplicate link id {lid}"
        links[lid] = link
        assert src in nodes and dst in nodes, f"link {lid} names a missing node"
        out = nodes[src]["outputs"][src_slot]
        inp = nodes[dst]["inputs"][dst_slot]
        assert lid in (out.get("links") or []), f"link {lid} missing from node {src} output {src_slot}"
        assert inp.get("link") == lid, f"link {lid} missing from node {dst} input {dst_slot}"
        assert typ in (out["type"], "*"), f"link {lid}: type {typ} but output is {out['type']}"
        assert inp["type"] in (typ, "*") or typ in inp["type"].split(","), f"link {lid}: {typ} into {inp['type']}"
    assert wf["last_link_id"] >= max(links, default=0)
    for n in wf["nodes"]:
        for inp in n.get("inputs") or []:
            if inp.get("link") is not None:
                assert inp["link"] in links, f"node {n['id']} input {inp['name']} has a dangling link"


@pytest.mark.parametrize("name", PRESETS)
def test_preset_uses_core_and_pack_nodes_only(name):
    types = {n["type"] for n in _load(name)["nodes"]}
    bad = sorted(t for t in types if not (t.startswith("AntiI2V_") or t in CORE_NODES or t in FRONTEND_NODES))
    assert not bad, f"{name} uses nodes from other packs: {bad}"
    assert any(t.startswith("AntiI2V_") for t in types)
    assert "AntiI2V_ProtectLoop" in types


def test_core_nodes_exist_in_comfyui():
    if not (COMFY_DIR / "main.py").is_file():
        pytest.skip("ComfyUI is not unpacked in .cache/comfyui: run `bash scripts/setup.sh`")
    used = set()
    for name in PRESETS:
        used |= {n["type"] for n in _load(name)["nodes"] if n["type"] in CORE_NODES}
    sources = [COMFY_DIR / "nodes.py", *sorted((COMFY_DIR / "comfy_extras").glob("*.py"))]
    text = "\n".join(p.read_text(errors="replace") for p in sources)
    for t in sorted(used):
        assert re.search(rf'["\']{re.escape(t)}["\']\s*:|node_id\s*=\s*["\']{re.escape(t)}["\']', text), \
            f"core node {t} is not defined by ComfyUI 0.3.75"


@pytest.mark.parametrize("name", PRESETS)
def test_pack_node_inputs_exist_in_schema(name, schema):
    for n in _load(name)["nodes"]:
        if not n["type"].startswith("AntiI2V_"):
            continue
        assert n["type"] in schema, f"{name}: unknown pack node {n['type']}"
        allowed = set(schema[n["type"]]["required"]) | set(schema[n["type"]]["optional"])
        names = [i["name"] for i in n.get("inputs") or []]
        unknown = sorted(set(names) - allowed)
        assert not unknown, f"{name}: node {n['id']} ({n['type']}) has inputs {unknown} not in its schema"
        # every required input is either a connected socket or a widget with a saved value
        widget_inputs = [i["name"] for i in n["inputs"] if i.get("widget")]
        missing = sorted(set(schema[n["type"]]["required"]) - set(names))
        assert not missing, f"{name}: node {n['id']} ({n['type']}) lacks required inputs {missing}"
        assert len(n.get("widgets_values") or []) == len(widget_inputs), \
            f"{name}: node {n['id']} ({n['type']}) saves {n.get('widgets_values')} for widgets {widget_inputs}"
        for i in n["inputs"]:
            if not i.get("widget") and i["name"] in schema[n["type"]]["required"]:
                assert i.get("link") is not None, f"{name}: required socket {n['type']}.{i['name']} is unconnected"


@pytest.mark.parametrize("name", PRESETS)
def test_layer_indices_and_weights_are_visible_widgets(name):
    for n in _load(name)["nodes"]:
        if n["type"] in ("AntiI2V_IRALoss", "AntiI2V_IRCLoss"):
            widgets = {i["name"] for i in n["inputs"] if i.get("widget")}
            need = {"blocks", "vae_layers", "weight"} if n["type"] == "AntiI2V_IRALoss" else {"pairs", "weight"}
            assert need <= widgets, f"{name}: {n['type']} hides {need - widgets}"
            for v in n["widgets_values"]:
                if isinstance(v, str):
                    assert v == "auto" or re.fullmatch(r"[0-9,:\- ]*", v), f"{name}: odd layer text {v!r}"


def test_every_pack_node_has_a_help_page(schema):
    ids = _pack_node_ids()
    assert set(ids) == set(schema), "nodes/__init__.py and the loaded mapping disagree"
    pages = {p.stem for p in DOCS.glob("*.md")}
    assert set(ids) <= pages, f"nodes without js/docs/<NodeId>.md: {sorted(set(ids) - pages)}"
    assert pages <= set(ids), f"help pages for unknown nodes: {sorted(pages - set(ids))}"
    for nid in ids:
        text = (DOCS / f"{nid}.md").read_text()
        assert text.startswith("# "), f"{nid}.md has no title"
        for inp in schema[nid]["required"] + schema[nid]["optional"]:
            assert f"`{inp}`" in text, f"{nid}.md does not explain input `{inp}`"
        assert "## Output" in text, f"{nid}.md does not describe its outputs"


def test_frontend_extension_is_safe_and_wired():
    files = sorted((ROOT / "js").rglob("*.js"))
    assert files, "no frontend extension in js/"
    src = "\n".join(p.read_text() for p in files)
    assert "innerHTML" not in src and "insertAdjacentHTML" not in src and "eval(" not in src
    assert 'from "../../scripts/app.js"' in src and 'from "../../scripts/api.js"' in src
    assert 'api.addEventListener(EVENT' in src and '"anti_i2v.progress"' in src
    assert '"AntiI2V_ProtectLoop"' in src and "app.registerExtension" in src


@pytest.mark.parametrize("name", ["protect_wan21_native", "protect_svd_native", "protect_hunyuan_native"])
def test_comparison_videos_share_a_fixed_seed(name):
    """Clean and protected videos come from the same sampler settings and a fixed seed, so they are comparable."""
    samplers = [n for n in _load(name)["nodes"] if n["type"] == "KSampler"]
    assert len(samplers) == 2
    a, b = (n["widgets_values"] for n in samplers)
    assert a == b and a[1] == "fixed", (a, b)  # [seed, control_after_generate, steps, cfg, ...]


def test_wan_preset_feeds_the_protected_photo_to_clip_vision():
    """Both CLIPVisionEncode and WanImageToVideo of the protected branch read the protect node's output."""
    wf = _load("protect_wan21_native")
    nodes = {n["id"]: n for n in wf["nodes"]}
    src = {(l[3], l[4]): l[1] for l in wf["links"]}  # (target node, target slot) -> source node
    loop = next(i for i, n in nodes.items() if n["type"] == "AntiI2V_ProtectLoop")

    def reads(node, name):
        slot = next(i for i, x in enumerate(node["inputs"]) if x["name"] == name)
        return src.get((node["id"], slot))

    wan = [n for n in nodes.values() if n["type"] == "WanImageToVideo"]
    protected = [n for n in wan if reads(n, "start_image") == loop]
    assert len(protected) == 1
    cve = nodes[reads(protected[0], "clip_vision_output")]
    assert cve["type"] == "CLIPVisionEncode" and reads(cve, "image") == loop
    assert cve["widgets_values"] == ["none"]  # ComfyUI's Wan 2.1 I2V template's crop


def test_hunyuan_preset_branches_encode_their_own_photo():
    """HunyuanVideo I2V: each branch's CLIPVisionEncode, text encode and HunyuanImageToVideo read that branch's
    photo (the protect node's output or the clean photo); the surrogate gets the clean branch's text encode (the
    text encoder's image tokens of the clean photo, which the surrogate cannot attack) and v1 (concat)."""
    wf = _load("protect_hunyuan_native")
    nodes = {n["id"]: n for n in wf["nodes"]}
    src = {(l[3], l[4]): l[1] for l in wf["links"]}

    def reads(node, name):
        slot = next(i for i, x in enumerate(node["inputs"]) if x["name"] == name)
        return src.get((node["id"], slot))

    loop = next(i for i, n in nodes.items() if n["type"] == "AntiI2V_ProtectLoop")
    photo = next(i for i, n in nodes.items() if n["type"] == "LoadImage")
    i2v = [n for n in nodes.values() if n["type"] == "HunyuanImageToVideo"]
    assert sorted(reads(n, "start_image") for n in i2v) == sorted([loop, photo])
    for n in i2v:
        assert "v1 (concat)" in n["widgets_values"]
        te = nodes[reads(n, "positive")]
        assert te["type"] == "TextEncodeHunyuanVideo_ImageToVideo"
        assert reads(nodes[reads(te, "clip_vision_output")], "image") == reads(n, "start_image")
    surrogate = next(n for n in nodes.values() if n["type"] == "AntiI2V_LoadSurrogateI2V")
    clean_te = nodes[reads(surrogate, "positive")]
    assert reads(nodes[reads(clean_te, "clip_vision_output")], "image") == photo
