"""The main job, end to end: a real ComfyUI with this pack runs the shipped CogVideoX preset on a sample photo.

Steps:
1. lay out a ComfyUI base folder under ``<out>/comfyui`` with this pack installed (symlink);
2. write a CogVideoX-I2V surrogate with the REAL layer layout (42 transformer blocks, a 4-level VAE encoder) but
   tiny random weights into ``models/diffusers/CogVideoX-5b-I2V`` -- no real weights can be downloaded here, so
   the demo shows the machinery and the figures, not real protection (it says so in every output);
3. put the sample photo (scikit-image's public-domain astronaut portrait) into ComfyUI's input folder;
4. start the real ComfyUI server, convert ``workflows/protect_cogvideox_preview.json`` to an API prompt, point
   LoadImage at the photo (and shorten the loop with ``--steps``), post it over HTTP and follow its progress;
5. write the outputs and figures to ``<out>``: original.png, protected.png, perturbation_view.png,
   attack_preview.webp (clean | protected videos), loss_curve.png, report.json, metrics.json, summary.md.

Usage: python scripts/demo.py [--out demo_out] [--steps 40] [--keep-server-log]
With real weights, put the real diffusers folder at models/diffusers/CogVideoX-5b-I2V of your ComfyUI instead.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this script runs from a checkout; the pack itself never edits sys.path

from scripts.comfy_workflow import ui_to_api  # noqa: E402
from tests.comfy_harness import ComfyServer  # noqa: E402

PRESET = REPO / "workflows" / "protect_cogvideox_preview.json"
MODEL_NAME = "CogVideoX-5b-I2V"
BANNER = ("DEMO: the surrogate has CogVideoX-5B-I2V's layer layout but tiny RANDOM weights (no weights can be "
          "downloaded here). The figures show the pipeline working, not real protection.")


def write_model(models_dir: Path) -> Path:
    from anti_i2v.surrogates.cogvideox import CogVideoXSurrogate

    folder = models_dir / "diffusers" / MODEL_NAME
    if not (folder / "model_index.json").is_file():
        vae = {"block_out_channels": (8, 8, 8, 8), "down_block_types": ("CogVideoXDownBlock3D",) * 4,
               "up_block_types": ("CogVideoXUpBlock3D",) * 4}
        CogVideoXSurrogate.save_tiny(folder, seed=0, num_layers=42, vae_config=vae)
    return folder


def write_photo(input_dir: Path) -> Path:
    import numpy as np
    from PIL import Image
    from skimage import data

    path = input_dir / "astronaut.png"
    Image.fromarray(np.asarray(data.astronaut())).save(path)
    return path


def loss_curve(history: list[dict], path: Path) -> None:
    """A small PNG plot of the total loss and each term (each scaled to its own range)."""
    from PIL import Image, ImageDraw

    w, h, pad = 640, 360, 40
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    d.rectangle([pad, pad, w - pad, h - pad], outline="black")
    keys = [k for k in history[0] if k != "step"]
    colours = ["black", "tab:blue", "red", "green", "purple", "orange"]
    palette = {"tab:blue": (31, 119, 180)}
    n = len(history)
    for ci, key in enumerate(keys):
        vals = [row[key] for row in history]
        lo, hi = min(vals), max(vals)
        span = (hi - lo) or 1.0
        pts = [(pad + (w - 2 * pad) * (i / max(n - 1, 1)), h - pad - (h - 2 * pad) * ((v - lo) / span))
               for i, v in enumerate(vals)]
        col = palette.get(colours[ci % len(colours)], colours[ci % len(colours)])
        if len(pts) > 1:
            d.line(pts, fill=col, width=2)
        d.text((pad + 5, 5 + 12 * ci), f"{key}: {vals[0]:.4g} -> {vals[-1]:.4g}", fill=col)
    d.text((pad, h - pad + 8), f"iteration 1..{n} (each curve scaled to its own range)", fill="black")
    img.save(path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(REPO / "demo_out"), help="output folder (default: demo_out/)")
    ap.add_argument("--steps", type=int, default=40, help="protect iterations (the preset says 200)")
    ap.add_argument("--timeout", type=float, default=900.0)
    a = ap.parse_args()
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    print(BANNER, flush=True)

    base = out / "comfyui"
    server = ComfyServer(base)
    write_model(server.models_dir)
    photo = write_photo(server.input_dir)
    shutil.copy(photo, out / "original.png")
    t0 = time.perf_counter()
    with server.start():
        print(f"[demo] ComfyUI {server.url} ready in {time.perf_counter() - t0:.1f} s (base: {base})", flush=True)
        workflow = json.loads(PRESET.read_text())
        info = server.object_info()
        prompt = ui_to_api(workflow, info)
        for node in prompt.values():
            if node["class_type"] == "LoadImage":
                node["inputs"]["image"] = photo.name
            if node["class_type"] == "AntiI2V_ProtectLoop":
                node["inputs"]["steps"] = a.steps
            if node["class_type"] == "AntiI2V_LoadSurrogateI2V":
                node["inputs"]["dtype"] = "float32"  # CPU
        t1 = time.perf_counter()
        pid = server.post_prompt(prompt)
        last = 0
        deadline = time.monotonic() + a.timeout
        entry = None
        while time.monotonic() < deadline:
            entry = server.history(pid)
            for ev in server.ws_events(types="anti_i2v.progress"):
                step = ev["data"]["step"]
                if step > last and (step % 10 == 0 or step == ev["data"]["total"]):
                    print(f"[demo] protect step {step}/{ev['data']['total']} loss {ev['data']['loss']:.5g}", flush=True)
                    last = step
            if entry is not None and entry.get("status", {}).get("completed") is not None:
                break
            time.sleep(0.5)
        if entry is None or not entry.get("status", {}).get("completed"):
            print(server.log(), file=sys.stderr)
            raise SystemExit(f"the workflow did not finish: {json.dumps(entry and entry.get('status'))[:2000]}")
        run_s = time.perf_counter() - t1
        outputs = entry["outputs"]
        by_type = {prompt[nid]["class_type"]: nid for nid in prompt}
        texts = {nid: o.get("text") for nid, o in outputs.items() if o.get("text")}

        def first_file(nid: str) -> Path:
            item = outputs[nid]["images"][0]
            root = {"output": server.output_dir, "temp": server.temp_dir}[item.get("type", "output")]
            return root / item.get("subfolder", "") / item["filename"]

        shutil.copy(first_file(by_type["SaveImage"]), out / "protected.png")
        shutil.copy(first_file(by_type["PreviewImage"]), out / "perturbation_view.png")
        shutil.copy(first_file(by_type["AntiI2V_PreviewAttackVideo"]), out / "attack_preview.webp")
        report = metrics = None
        for nid, t in texts.items():
            try:
                obj = json.loads(t[0])
            except (ValueError, TypeError):
                continue
            if "loss_history" in obj:
                report = obj
            elif isinstance(obj, dict):
                metrics = obj
    if report is None:
        raise SystemExit("the ProtectLoop report did not reach the output (PreviewAny)")
    report["demo_note"] = BANNER
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "metrics.json").write_text(json.dumps({"demo_note": BANNER, **(metrics or {})}, indent=2))
    loss_curve(report["loss_history"], out / "loss_curve.png")

    from anti_i2v.cli import load_image
    from anti_i2v.metrics import image_quality

    orig, _ = load_image(out / "original.png")
    prot, _ = load_image(out / "protected.png")
    q = image_quality(prot, orig)
    hist = report["loss_history"]
    lines = [
        "# Anti-I2V demo (real ComfyUI, shipped preset `protect_cogvideox_preview`)", "", f"> {BANNER}", "",
        f"- photo: scikit-image astronaut, {orig.shape[-1]}x{orig.shape[-2]} (kept at full size)",
        f"- protect: {len(hist)} iterations in {run_s:.1f} s of workflow time (server start excluded)",
        f"- loss: {hist[0]['loss']:.5g} -> {hist[-1]['loss']:.5g}",
        "",
        "## Imperceptibility (saved PNG vs original)", "",
        "| figure | value | goal |", "|---|---|---|",
        f"| L-inf | {q['linf_255'][0]:.1f}/255 | the budget, eps {report['settings']['perturbation']['eps']:g} |",
        f"| PSNR | {q['psnr_db'][0]:.2f} dB | >= 35 dB |",
        f"| SSIM | {q['ssim'][0]:.4f} | >= 0.93 |",
        f"| CIEDE2000 mean / 95th percentile | {q['ciede2000_mean'][0]:.2f} / {q['ciede2000_p95'][0]:.2f} | "
        "mean <= 2.5 (about 1 is just noticeable) |",
        f"| mean abs dL* (lightness change) | {q['mean_abs_dl'][0]:.3f} | <= 0.5 |",
    ]
    if metrics:
        def fig(path: list[str]):
            v = metrics
            for k in path:
                v = v.get(k) if isinstance(v, dict) else None
            return "n/a" if v is None else (f"{v:.4g}" if isinstance(v, (int, float)) else str(v))

        lines += [
            "", f"## Verification videos (clean vs protected photo, same seed, {fig(['settings', 'steps'])} steps, "
            f"{fig(['settings', 'num_frames'])} frames)", "",
            "| figure | value |", "|---|---|",
            f"| video PSNR, clean vs protected (mean over frames) | {fig(['psnr', 'mean'])} dB |",
            f"| video SSIM (mean) | {fig(['ssim', 'mean'])} |",
            f"| latent distance (relative) | {fig(['latent_distance', 'relative'])} |",
            f"| face identity to the photo, clean video (mean; detection rate) | {fig(['identity', 'clean', 'mean'])}; "
            f"{fig(['identity', 'clean', 'detection_rate'])} |",
            f"| face identity to the photo, protected video (mean; detection rate) | "
            f"{fig(['identity', 'protected', 'mean'])}; {fig(['identity', 'protected', 'detection_rate'])} |",
            "", "(random-weight videos contain no faces, so identity is n/a here; with real weights it is the ISM "
            "figure of the paper.) All per-frame values are in metrics.json.",
        ]
    lines += ["", "Files: original.png, protected.png, perturbation_view.png, attack_preview.webp, loss_curve.png, "
              "report.json, metrics.json; ComfyUI base folder (server log, outputs): comfyui/"]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\n[demo] outputs written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
