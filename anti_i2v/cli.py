"""Command line: ``anti-i2v protect PATH... --out DIR --surrogate FAMILY --model DIR``.

Protects photos (files and folders) one by one at their own resolution and writes, per photo,
``<name>.protected.png`` and ``<name>.report.json`` (settings and figures) into ``--out``. It never writes over an
original, and never over a finished output unless ``--overwrite``: an interrupted folder run is resumed by running
the same command again (finished photos, those with both files, are skipped; a photo with only one of its two files
was interrupted between the writes and is redone). The output folder must be writable (checked before any work);
a photo whose files cannot be written is named and the run goes on with the others. Outputs are written with the
usual permissions (0666 less the umask). Exit status: 0 all done, 1 some photos failed, 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["main", "build_parser", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
OUTPUT_SUFFIX = ".protected.png"
REPORT_SUFFIX = ".report.json"
DEMO_BANNER = (
    "=" * 78 + "\n"
    "DEMO MODE: tiny built-in RANDOM-WEIGHT models. The output protects NOTHING real;\n"
    "it only shows the pipeline end to end. Use --model DIR with real weights to protect photos.\n" + "=" * 78
)


class UsageError(Exception):
    """Bad command-line input (exit status 2)."""


def build_parser() -> argparse.ArgumentParser:
    from .dsp import SPACES
    from .methods import METHOD_NAMES

    p = argparse.ArgumentParser(prog="anti-i2v", description="Protect photos against image-to-video models (Anti-I2V).")
    sub = p.add_subparsers(dest="command", required=True)
    pr = sub.add_parser("protect", help="protect photos (files or folders)",
                        description="Protect photos against image-to-video diffusion models.")
    pr.add_argument("paths", nargs="+", metavar="PATH", help="image files and/or folders of images")
    pr.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    pr.add_argument("--surrogate", choices=["auto", "cogvideox", "wan21", "svd"], default="auto",
                    help="I2V model family to attack (default: auto, read from --model's model_index.json; "
                         "cogvideox with --demo)")
    pr.add_argument("--model", metavar="DIR", help="local diffusers-format folder of the surrogate's weights")
    pr.add_argument("--demo", action="store_true", help="use tiny built-in random models (protects nothing real)")
    pr.add_argument("--preset", choices=["low", "default", "high"], default=None,
                    help="strength preset (default: 'default' for anti-i2v; the other methods use their paper's "
                         "eps/steps/step unless a preset is given)")
    pr.add_argument("--eps", type=float, help="L-inf budget in 1/255 of the [0,1] range (overrides the preset)")
    pr.add_argument("--steps", type=int, help="iterations (overrides the preset)")
    pr.add_argument("--step-size", type=float, help="step per iteration in 1/255 (overrides the preset)")
    pr.add_argument("--seed", type=int, default=0, help="random seed (same seed, same result)")
    pr.add_argument("--method", choices=list(METHOD_NAMES), default="anti-i2v",
                    help="defense: anti-i2v (IRA+IRC over the DSP, default) or a baseline as its paper defines it "
                         "(advdm, mist, sds, photoguard, vgmshield, i2vguard; README 'Defenses')")
    pr.add_argument("--ira-blocks", help="IRA denoiser blocks, e.g. '27' or '20-27' (default: the model's)")
    pr.add_argument("--vae-layers", help="IRA VAE-encoder layers, e.g. '3,4' (default: the last two)")
    pr.add_argument("--irc-pairs", help="IRC pairs 'shallow:deep', e.g. '3:27' (default: the model's)")
    pr.add_argument("--target", metavar="IMAGE", help="unrelated target image for IRA (default: a fixed pattern)")
    pr.add_argument("--frames", type=int, help="video frames the surrogate sees (fewer: faster)")
    pr.add_argument("--space", choices=list(SPACES), default=None,
                    help="perturbation space: dsp (colour + low-frequency DCT), ab, dct, or rgb (plain PGD); "
                         "default: the method's paper's (dsp for anti-i2v, rgb for the baselines)")
    pr.add_argument("--dct-block", type=int, default=None, help="side k of the low-frequency DCT block (default 16)")
    pr.add_argument("--chroma-downsample", type=int, default=None,
                    help="colour field resolution divisor (default 2, JPEG's chroma resolution)")
    pr.add_argument("--restore-luminance", action=argparse.BooleanOptionalAction, default=None,
                    help="finish by restoring the original L* (default: on)")
    pr.add_argument("--robust-jpeg", type=int, default=None, metavar="Q",
                    help="optimise through a differentiable JPEG of quality Q (1-100) so the protection survives "
                         "re-encoding; 0 turns it off (default: the preset's)")
    pr.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="model dtype (default: bf16 on GPU)")
    pr.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: auto)")
    pr.add_argument("--gradient-checkpointing", action="store_true", help="less memory, more time")
    pr.add_argument("--recursive", action="store_true", help="also protect images in subfolders")
    pr.add_argument("--overwrite", action="store_true", help="redo photos whose outputs already exist")
    pr.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def _collect(paths: list[str], recursive: bool) -> list[tuple[Path, Path]]:
    """(image path, path relative to the output folder without suffix) for every input image."""
    found: list[tuple[Path, Path]] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            it = p.rglob("*") if recursive else p.iterdir()
            for f in sorted(it):
                if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS and not f.name.endswith(OUTPUT_SUFFIX):
                    found.append((f, f.relative_to(p).with_suffix("")))
        elif p.is_file():
            if p.suffix.lower() not in IMAGE_EXTENSIONS:
                raise UsageError(f"{raw}: not an image file (allowed: {', '.join(IMAGE_EXTENSIONS)})")
            found.append((p, Path(p.stem)))
        else:
            raise UsageError(f"{raw}: no such file or folder")
    if not found:
        raise UsageError("no images found in the given paths")
    names = [str(rel) for _, rel in found]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise UsageError(f"two inputs would write the same output name: {sorted(dup)[0]} (rename one)")
    return found


def load_image(path: Path):
    """Read an image as a (1, 3, H, W) float tensor in [0, 1] (EXIF orientation applied, alpha dropped)."""
    import numpy as np
    import torch
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            notes = []
            if im.mode in ("RGBA", "LA", "P") and ("A" in im.getbands() or "transparency" in im.info):
                notes.append("alpha channel dropped (RGBA converted to RGB)")
            arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    except Exception as exc:  # PIL raises many types for bad files
        raise ValueError(f"{path}: cannot read the image ({exc})") from None
    return torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0).contiguous(), notes


def _to_uint8(x):
    import numpy as np

    return (x[0].permute(1, 2, 0).clamp(0, 1).numpy() * 255.0 + 0.5).astype(np.uint8)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the output a plain file's permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _check_writable(out: Path, shown: str) -> None:
    """Create ``out`` if missing and prove a file can be written there; UsageError (one line) if not."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".anti-i2v-write-test.", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UsageError(f"--out {shown}: cannot write to this folder ({exc.strerror or exc})") from None


def _resolve_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise UsageError(f"--device {name!r}: {exc}") from None


def _build_objective(args, surrogate):
    from .losses import IRALoss, IRCLoss, Objective, parse_indices, parse_pairs
    from .methods import get_method

    if args.method != "anti-i2v":
        given = [f for f in ("ira_blocks", "vae_layers", "irc_pairs") if getattr(args, f) is not None]
        if given:
            raise UsageError(f"--{given[0].replace('_', '-')} applies to --method anti-i2v only")
        return get_method(args.method).objective(surrogate)
    if args.ira_blocks is None and args.vae_layers is None and args.irc_pairs is None:
        return Objective(surrogate.default_objective().terms, surrogate.default_objective().notes, "anti-i2v")
    default = surrogate.default_objective()
    d_ira = next((t for t in default.terms if isinstance(t, IRALoss)), None)
    blocks = parse_indices(args.ira_blocks, name="--ira-blocks") if args.ira_blocks is not None else d_ira.blocks
    vae = parse_indices(args.vae_layers, name="--vae-layers") if args.vae_layers is not None else d_ira.vae_layers
    terms = []
    if blocks or vae:
        terms.append(IRALoss(blocks=blocks, vae_layers=vae))
    if args.irc_pairs is not None:
        terms.append(IRCLoss(pairs=parse_pairs(args.irc_pairs, name="--irc-pairs")))
    else:
        terms += [t for t in default.terms if isinstance(t, IRCLoss)]
    if not terms:
        raise UsageError("the objective is empty: give --ira-blocks, --vae-layers or --irc-pairs")
    return Objective(tuple(terms), (), "anti-i2v")


def cmd_protect(args) -> int:
    import torch

    from .dsp import DSPConfig
    from .protect import PRESETS, protect
    from .surrogates import SurrogateError, load_surrogate, tiny_surrogate

    if args.demo == bool(args.model):
        raise UsageError("give either --model DIR (real weights) or --demo (tiny random models)")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {args.out}: exists and is not a folder")
    images = _collect(args.paths, args.recursive)
    originals = {p.resolve() for p, _ in images}
    from .methods import get_method

    method = get_method(args.method)
    if args.preset is None and args.method != "anti-i2v":
        # the paper's defaults of the chosen defense (eps, steps, step, step rule, schedule, space)
        preset = {"eps": method.eps, "steps": method.steps, "step_size": method.step_size, "robust_jpeg": 0}
    else:
        preset = dict(PRESETS[args.preset or "default"])
    args.preset = args.preset or ("default" if args.method == "anti-i2v" else "paper")
    eps = args.eps if args.eps is not None else preset["eps"]
    steps = args.steps if args.steps is not None else preset["steps"]
    step_size = args.step_size if args.step_size is not None else preset["step_size"]
    try:
        given = {"space": args.space if args.space is not None else method.space, "dct_block": args.dct_block,
                 "chroma_downsample": args.chroma_downsample, "restore_luminance": args.restore_luminance}
        dsp_cfg = DSPConfig(eps=eps, **{k: v for k, v in given.items() if v is not None})
        jpeg_q = args.robust_jpeg if args.robust_jpeg is not None else preset.get("robust_jpeg", 0)
        loop_cfg = method.config(steps=steps, step_size=step_size, seed=args.seed, robust_jpeg=jpeg_q)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    device = _resolve_device(args.device)
    _check_writable(out, args.out)  # before loading models or optimising anything
    dtype_name = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    dtype = getattr(torch, dtype_name)
    kw = {}
    if args.frames is not None:
        kw["num_frames"] = args.frames

    if args.demo:
        print(DEMO_BANNER, file=sys.stderr)
        family = "cogvideox" if args.surrogate == "auto" else args.surrogate
        surrogate = tiny_surrogate(family, seed=0, **kw).to(device)
    else:
        from .surrogates.detect import detect_family

        try:
            family = args.surrogate
            if family == "auto":
                if not Path(args.model).is_dir():
                    raise SurrogateError(f"model folder {args.model!r} does not exist or is not a folder")
                family = detect_family(Path(args.model))
            surrogate = load_surrogate(family, args.model, dtype=dtype, device=device,
                                       gradient_checkpointing=args.gradient_checkpointing, **kw)
        except (SurrogateError, OSError, ValueError) as exc:
            raise UsageError(f"--model {args.model}: {exc}") from None
    try:
        objective = _build_objective(args, surrogate)
        surrogate.validate_request(objective.request())
    except (ValueError, SurrogateError) as exc:
        raise UsageError(str(exc)) from None
    for note in objective.notes:
        print(f"anti-i2v: note: {note}", file=sys.stderr)
    from .protect import inert_reason

    inert = inert_reason(objective, loop_cfg)
    if inert:
        print(f"anti-i2v: note: {inert}", file=sys.stderr)
    target = None
    if args.target:
        try:
            target, _ = load_image(Path(args.target))
        except ValueError as exc:
            raise UsageError(f"--target: {exc}") from None

    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        tqdm = None
    show = not args.quiet and tqdm is not None
    done = skipped = 0
    failed: list[str] = []
    outer = tqdm(images, desc="photos", unit="photo", disable=not show, position=0)
    for path, rel in outer:
        png = out / rel.with_name(rel.name + OUTPUT_SUFFIX)
        rep = out / rel.with_name(rel.name + REPORT_SUFFIX)
        if png.resolve() in originals or rep.resolve() in originals:
            failed.append(f"{path}: its output would overwrite an input file; choose another --out")
            continue
        if not args.overwrite and png.exists() and rep.exists():
            skipped += 1  # finished in an earlier run: resume
            continue
        if not args.overwrite and (png.exists() or rep.exists()):
            orphan = png if png.exists() else rep
            print(f"anti-i2v: note: {path}: redoing it ({orphan} exists without its pair: "
                  "an earlier run stopped between the two writes)", file=sys.stderr)
        try:
            image, notes = load_image(path)
            bar = tqdm(total=steps, desc=path.name[:30], unit="it", leave=False, disable=not show, position=1)

            def cb(p, bar=bar):
                bar.update(1)
                bar.set_postfix(loss=f"{p.loss:.4g}")

            t0 = time.perf_counter()
            result = protect(image, surrogate, objective, dsp_cfg, loop_cfg, target=target, callback=cb)
            bar.close()
            q8 = _to_uint8(result.protected)
            from PIL import Image

            from .metrics import image_quality

            protected8 = torch.from_numpy(q8).permute(2, 0, 1).unsqueeze(0).float() / 255.0
            figures = image_quality(protected8, image)
            report = result.report()
            report.update({
                "input": str(path),
                "output": str(png),
                "demo": bool(args.demo),
                "preset": args.preset,
                "method": args.method,
                "space": dsp_cfg.space,
                "method_defaults": method.describe(),
                "notes": notes + ([inert] if inert else []),
                "seconds_total": round(time.perf_counter() - t0, 3),
                "saved_png": figures,  # figures of the 8-bit PNG actually written
                "complete": True,
            })
            writing = png
            try:
                _atomic_write(png, lambda t: Image.fromarray(q8).save(t, format="PNG"))
                writing = rep
                _atomic_write(rep, lambda t: t.write_text(json.dumps(report, indent=2)))
            except OSError as exc:  # e.g. a subfolder that cannot be created: name the photo, go on with the others
                failed.append(f"{path}: cannot write {writing} ({exc.strerror or exc})")
                continue
            done += 1
            outer.set_postfix(psnr=f"{figures['psnr_db'][0]:.1f}dB")
        except (ValueError, SurrogateError) as exc:
            failed.append(f"{path}: {exc}")
        except KeyboardInterrupt:
            print(f"\ninterrupted: {done} protected this run; run the same command again to resume", file=sys.stderr)
            return 130
    outer.close()
    print(f"protected {done}, skipped {skipped} already done, failed {len(failed)} -> {out}", file=sys.stderr)
    for msg in failed:
        print(f"error: {msg}", file=sys.stderr)
    if args.demo:
        print("(demo mode: tiny random models, nothing real is protected)", file=sys.stderr)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "protect":
            return cmd_protect(args)
    except UsageError as exc:
        print(f"anti-i2v: error: {exc}", file=sys.stderr)
        return 2
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
