"""Picture for the README: ComfyUI's official Wan 2.1 I2V template before and after "Anti-I2V: protect this image".

Starts the real ComfyUI with this pack (``tests/comfy_harness.py``), opens its frontend in headless Chromium
(``tests/browser.py``), loads ``image_to_video_wan.json`` the way the template browser does (``/templates/...``,
served from the installed comfyui-workflow-templates package), screenshots the canvas, runs the pack's context-menu
action on the LoadImage node (the real menu entry, found in ``app.canvas.getNodeMenuOptions``), screenshots
again and writes both side by side as ``docs/protect_wan_template.jpg``. Model files are empty placeholders
(only their names appear in the widgets; nothing is loaded or run).

Usage:
    .venv/bin/python scripts/template_before_after.py [--out docs/protect_wan_template.jpg]
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = "image_to_video_wan"
PLACEHOLDERS = [
    "diffusion_models/wan2.1_i2v_480p_14B_fp16.safetensors",
    "text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors",
    "vae/wan_2.1_vae.safetensors",
    "clip_vision/clip_vision_h.safetensors",
]

_LOAD_JS = r"""
const [url, done] = arguments;
(async () => {
  const wf = await (await fetch(url)).json();
  await app.loadGraphData(wf, true, true, "image_to_video_wan");
  done(true);
})().catch((e) => done("ERROR " + e));
"""

_ACTION_JS = r"""
const load = app.graph.nodes.find((n) => n.type === "LoadImage");
const item = app.canvas.getNodeMenuOptions(load).filter(Boolean).find((o) => o.content === arguments[0]);
if (!item) return "ERROR no menu entry";
item.callback();
const p = app.graph.nodes.find((n) => n.type === "AntiI2V_ProtectImage");
p.color = "#335533"; p.bgcolor = "#223322";
app.graph.setDirtyCanvas(true, true);
return p.id;
"""

_FIT_JS = r"""
const done = arguments[arguments.length - 1];
if (!app.extensionManager.focusMode) app.extensionManager.toggleFocusMode();
const c = app.canvas;
const nodes = app.graph.nodes.filter((n) => n.type !== "MarkdownNote");
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
"""


def _shot(browser):
    from PIL import Image

    rect = browser.execute_async(_FIT_JS)
    time.sleep(0.5)
    png = Image.open(io.BytesIO(browser.screenshot())).convert("RGB")
    dpr = png.width / browser.execute("return window.innerWidth")
    left, top, w, h = (int(round(v * dpr)) for v in rect)
    return png.crop((left, top, left + w, top + h))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "protect_wan_template.jpg"))
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from PIL import Image, ImageDraw

    from tests.browser import Chromium
    from tests.comfy_harness import ComfyServer

    srv = ComfyServer()
    for rel in PLACEHOLDERS:
        p = srv.models_dir / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")
    srv.start()
    try:
        srv.post("/settings", json={"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False,
                                    "LiteGraph.Canvas.MinFontSizeForLOD": 0})
        with Chromium(width=1500, height=1050) as browser:
            browser.get(srv.url)
            browser.wait_for("return !!(window.app && app.graph && app.extensions.length > 5)", timeout=90)
            time.sleep(1.0)
            ok = browser.execute_async(_LOAD_JS, f"/templates/{TEMPLATE}.json")
            if ok is not True:
                raise RuntimeError(str(ok))
            before = _shot(browser)
            pid = browser.execute(_ACTION_JS, "Anti-I2V: protect this image")
            if isinstance(pid, str):
                raise RuntimeError(pid)
            after = _shot(browser)
    finally:
        srv.stop()
    w = 700
    parts = []
    for img, title in ((before, "ComfyUI's Wan 2.1 I2V template"),
                       (after, "after 'Anti-I2V: protect this image' on LoadImage")):
        img = img.copy()
        img.thumbnail((w, 10_000))
        canvas = Image.new("RGB", (w, img.height + 28), (24, 24, 24))
        canvas.paste(img, (0, 28))
        ImageDraw.Draw(canvas).text((8, 8), title, fill=(235, 235, 235))
        parts.append(canvas)
    out = Image.new("RGB", (2 * w + 10, max(p.height for p in parts)), (10, 10, 10))
    out.paste(parts[0], (0, 0))
    out.paste(parts[1], (w + 10, 0))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    out.save(args.out, quality=82)
    print(f"wrote {args.out} {out.size}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
