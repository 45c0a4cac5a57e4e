"""Efficacy benchmark: does the protected photo move the generated video more than random noise does?

For each surrogate family (tiny random-weight models of the real diffusers classes, CPU):

1. take the astronaut portrait of scikit-image, resized to ``--size`` (square);
2. protect it with the surrogate's default objective (IRA + IRC, Anti-I2V Sec. 3) for ``--steps`` iterations
   under an L-inf budget of ``--eps``/255;
3. build two controls with the same L-inf budget: uniform random noise in [-eps, eps] per pixel (less energy
   than the protection: higher photo PSNR) and random-sign noise of exactly +-eps (more energy: lower PSNR), so
   the protection's energy sits between the two controls;
4. generate a video from the clean, the protected and the two noisy photos (the same seed and settings), and
   again from their JPEG copies (quality ``--jpeg-quality``, PIL);
5. measure the drift of each video from the clean one (per-frame PSNR and SSIM, mean over frames; VAE-latent
   distance under the surrogate's VAE). After JPEG the reference is the video of the JPEG'd clean photo, so
   the drift is what the perturbation still causes once compressed; ``jpeg_alone`` is the drift JPEG itself
   causes on the clean photo, for scale.

Lower PSNR / SSIM and a larger latent distance mean more drift. Every photo is rounded to 8 bits first, as a
saved PNG would be. The JSON names which of protection and noise drifted more for each figure.

Tiny random models are not real I2V models: their videos are noise and their features mean nothing, so the
figures only show that the measurement runs end to end; they say nothing about protection of real models.

Usage: python bench/efficacy.py [--steps N] [--families cogvideox,wan21,svd] [--out FILE]
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import sys
import time

import numpy as np
import torch

NOTE = (
    "Tiny random-weight models are NOT real image-to-video models: their videos are noise and their features are "
    "random, so these figures only show that protection, generation and measurement run end to end. They say "
    "nothing about how well the protection works against real CogVideoX / Wan 2.1 / SVD weights."
)


#: photos of the installed scikit-image wheel (loaded from the package, never committed): name -> full size (H, W)
PHOTOS = {"astronaut": (512, 512), "camera": (512, 512), "coffee": (400, 600)}


def load_photo(name: str, size: int | tuple[int, int] | None = None) -> torch.Tensor:
    """A scikit-image photo as (1, 3, H, W) in [0, 1]: full size when ``size`` is None, else resized (bicubic) to
    ``size`` (an int: square; or (height, width)). Grey photos (camera) are repeated to RGB."""
    from PIL import Image
    from skimage import data

    if name not in PHOTOS:
        raise ValueError(f"unknown photo {name!r}; choose from {', '.join(PHOTOS)}")
    arr = getattr(data, name)()
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if size is not None:
        h, w = (size, size) if isinstance(size, int) else size
        arr = np.array(Image.fromarray(arr).resize((int(w), int(h)), Image.BICUBIC))
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).float().div(255.0).unsqueeze(0)


def _astronaut(size: int) -> torch.Tensor:
    """The astronaut portrait (scikit-image wheel, public domain) as (1, 3, size, size) in [0, 1]."""
    return load_photo("astronaut", size)


def quantize(image: torch.Tensor) -> torch.Tensor:
    """Round to 8 bits, as saving a PNG would."""
    return (image.clamp(0, 1) * 255.0).round() / 255.0


def jpeg(image: torch.Tensor, quality: int) -> torch.Tensor:
    """A JPEG round trip (PIL, 4:2:0 as PIL's default) of a (1, 3, H, W) image in [0, 1]."""
    from PIL import Image

    rgb = (image[0].clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=int(quality))
    out = np.array(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    return torch.from_numpy(out).permute(2, 0, 1).float().div(255.0).unsqueeze(0)


def uniform_noise(image: torch.Tensor, eps: float, seed: int) -> torch.Tensor:
    """The control: ``image`` plus i.i.d. uniform noise in [-eps, eps]/255, clipped to [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    noise = (2.0 * torch.rand(image.shape, generator=g) - 1.0) * (eps / 255.0)
    return (image + noise).clamp(0, 1)


def sign_noise(image: torch.Tensor, eps: float, seed: int) -> torch.Tensor:
    """The second control: ``image`` plus +-eps/255 with random signs (the L-inf corner), clipped to [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 2, image.shape, generator=g).float() * 2.0 - 1.0
    return (image + signs * (eps / 255.0)).clamp(0, 1)


def _sig(x: float, digits: int = 5) -> float:
    """``x`` rounded to significant digits (latent distances of tiny models span many decades)."""
    return float(f"{x:.{digits}g}")


def _summary(drift: dict) -> dict:
    lat = drift["latent_distance"]
    out = {
        "psnr_db": _sig(drift["psnr"]["mean"], 6),
        "ssim": _sig(drift["ssim"]["mean"], 6),
        "latent_mse": _sig(lat["mean"]),
        "latent_relative": _sig(lat["relative"]),
    }
    if drift.get("identity"):
        ident = drift["identity"]["protected"]
        out["identity_to_photo"] = ident.get("mean")
        out["face_detection_rate"] = ident.get("detection_rate")
    return out


def video_of(surrogate, image: torch.Tensor, *, gen_steps: int, seed: int, frames: int | None = None) -> torch.Tensor:
    """The video ``surrogate`` generates from ``image`` (same seed and settings for every photo compared)."""
    from anti_i2v.verify import generate_video

    return generate_video(surrogate, image, steps=gen_steps, seed=seed, num_frames=frames)


def drift_of(surrogate, ref: torch.Tensor, vid: torch.Tensor, *, seed: int, source: torch.Tensor | None = None) -> dict:
    """Drift of video ``vid`` from ``ref``: mean video PSNR / SSIM and the latent distance under the surrogate's VAE
    (plus identity figures when ``source``, the clean photo, is given: real weights only)."""
    from anti_i2v.verify import compare_videos

    return _summary(compare_videos(ref, vid, source=source, encoder=surrogate, faces=source is not None, seed=seed))


def _winner(drifts: dict) -> dict:
    """Which photo (protected or one of the noise controls) drifted the video most, per figure."""
    names = [n for n in CONDITIONS if n in drifts]
    out = {}
    for fig, larger_is_more in (("psnr_db", False), ("ssim", False), ("latent_mse", True)):
        values = {n: drifts[n][fig] for n in names}
        best = (max if larger_is_more else min)(values.values())
        top = [n for n, v in values.items() if v == best]
        out[fig] = top[0] if len(top) == 1 else "tie: " + ", ".join(top)
    return out


CONDITIONS = ("protected", "uniform_noise", "sign_noise")


def run_family(family: str, args) -> dict:
    from anti_i2v.dsp import DSPConfig
    from anti_i2v.metrics import image_quality
    from anti_i2v.protect import ProtectConfig, protect
    from anti_i2v.surrogates import load_surrogate, tiny_surrogate

    t0 = time.perf_counter()
    if args.model:
        device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                              ("cpu" if args.device == "auto" else args.device))
        s = load_surrogate(family, args.model, dtype=getattr(torch, args.dtype), device=device)
    else:
        s = tiny_surrogate(family, seed=args.seed)
    photo = quantize(_astronaut(args.size))
    objective = s.default_objective()
    res = protect(
        photo, s, objective, DSPConfig(eps=args.eps, dct_block=min(16, args.size)),
        ProtectConfig(steps=args.steps, step_size=args.step_size, seed=args.seed, robust_jpeg=args.robust_jpeg),
    )
    protected = quantize(res.protected)
    photos = {
        "protected": protected,
        "uniform_noise": quantize(uniform_noise(photo, args.eps, args.seed + 1)),
        "sign_noise": quantize(sign_noise(photo, args.eps, args.seed + 2)),
    }

    def video(img):
        return video_of(s, img, gen_steps=args.gen_steps, seed=args.seed, frames=args.frames)

    def drift(ref, vid):
        src = photo if args.model else None  # identity (ISM) only means something with real weights
        return drift_of(s, ref, vid, seed=args.seed, source=src)

    q = args.jpeg_quality
    clean_v = video(photo)
    before = {name: drift(clean_v, video(img)) for name, img in photos.items()}
    clean_j = video(jpeg(photo, q))
    after = {name: drift(clean_j, video(jpeg(img, q))) for name, img in photos.items()}
    after["jpeg_alone"] = drift(clean_v, clean_j)
    hist = res.history
    return {
        "surrogate": s.describe(),
        "objective": objective.describe(),
        "video_shape": list(clean_v.shape),
        "photo": {name: {k: v[0] for k, v in image_quality(img, photo).items()} for name, img in photos.items()},
        "loss": {"first": hist[0]["loss"], "last": hist[-1]["loss"]} if hist else None,
        "protect_seconds": round(res.seconds, 2),
        "drift": {"no_jpeg": before, f"jpeg{q}": after},
        "most_drift": {"no_jpeg": _winner(before), f"jpeg{q}": _winner(after)},
        "seconds": round(time.perf_counter() - t0, 2),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=10, help="protect iterations (paper: 200)")
    ap.add_argument("--families", default="cogvideox,wan21,svd", help="comma-separated surrogate families")
    ap.add_argument("--out", help="also write the JSON to this file")
    ap.add_argument("--eps", type=float, default=16.0, help="L-inf budget in 1/255 of the [0, 1] range")
    ap.add_argument("--step-size", type=float, default=2.0, help="protect step size in 1/255")
    ap.add_argument("--size", type=int, default=64, help="side of the square test photo in pixels")
    ap.add_argument("--gen-steps", type=int, default=2, help="denoising steps of each verification video")
    ap.add_argument("--frames", type=int, default=None, help="frames per video (default: the surrogate's)")
    ap.add_argument("--jpeg-quality", type=int, default=75)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--robust-jpeg", type=int, default=0,
                    help="protect through a differentiable JPEG of this quality (0: off)")
    ap.add_argument("--model", help="a local diffusers folder of REAL weights (one family in --families, or 'auto')")
    ap.add_argument("--device", default="auto", help="with --model: cpu, cuda ... (default: auto)")
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"],
                    help="with --model: model dtype (default: bfloat16)")
    args = ap.parse_args(argv)

    from anti_i2v.metrics import json_safe
    from anti_i2v.surrogates import FAMILIES

    families = [f.strip() for f in args.families.split(",") if f.strip()]
    if args.model:
        if families == ["auto"] or args.families == ap.get_default("families"):
            from pathlib import Path

            from anti_i2v.surrogates.detect import detect_family

            families = [detect_family(Path(args.model))]
        if len(families) != 1:
            ap.error("--model loads one model: give one family in --families (or 'auto')")
    unknown = [f for f in families if f not in FAMILIES]
    if not families or unknown:
        ap.error(f"--families: unknown {unknown or 'empty list'}; choose from {', '.join(FAMILIES)}")
    if args.steps < 1:
        ap.error(f"--steps must be >= 1, got {args.steps}")
    if not 1 <= args.jpeg_quality <= 100:
        ap.error(f"--jpeg-quality must be in 1-100, got {args.jpeg_quality}")
    if args.size < 16:
        ap.error(f"--size must be >= 16 pixels, got {args.size}")

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    t0 = time.perf_counter()
    report = {
        "note": NOTE if not args.model else f"real weights from {args.model}",
        "settings": {k: v for k, v in vars(args).items() if k != "out"} | {"families": families},
        "controls": {
            "uniform_noise": "i.i.d. uniform noise in [-eps, eps] per pixel (same L-inf budget, less energy)",
            "sign_noise": "random signs times eps per pixel (same L-inf budget, the most energy it allows)",
        },
        "reading": (
            "drift of each video from the clean photo's video: lower psnr_db / ssim and higher latent_mse = more "
            "drift; after JPEG the reference is the JPEG'd clean photo's video; most_drift names the photo that "
            "moved the video most"
        ),
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "device": "cpu"},
        "families": {f: run_family(f, args) for f in families},
    }
    report["seconds"] = round(time.perf_counter() - t0, 2)
    report = json_safe(report)
    text = json.dumps(report, indent=2, allow_nan=False)
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
