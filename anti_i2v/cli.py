"""Command line: ``anti-i2v protect PATH... --out DIR --surrogate FAMILY --model DIR``.

Protects photos (files and folders) one by one at their own resolution and writes, per photo,
``<name>.protected.png`` and ``<name>.report.json`` (settings and figures) into ``--out``. It never writes over an
original, and never over a finished output unless ``--overwrite``: an interrupted folder run is resumed by running
the same command again (finished photos, those with both files, are skipped; a photo with only one of its two files
was interrupted between the writes and is redone). The output folder must be writable (checked before any work);
a photo whose files cannot be written is named and the run goes on with the others. Outputs are written with the
usual permissions (0666 less the umask). Exit status: 0 all done, 1 some photos failed, 2 bad usage.
With ``--ray`` the photos are spread over Ray workers (:mod:`anti_i2v.scale`), each calling :func:`protect_photo`.

``anti-i2v convert-dynamicrafter model.ckpt OUT_DIR`` converts DynamiCrafter's Lightning checkpoint (read with
``torch.load(weights_only=True)``) into the safetensors folder that ``--surrogate dynamicrafter --model OUT_DIR``
loads.

Ensembles: ``--surrogate cogvideox+svd --model COG_DIR --model SVD_DIR --ensemble-weights 1,0.5`` protects against
both models at once (:class:`anti_i2v.surrogates.ensemble.Ensemble`; each member with its family's default layers).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["main", "build_parser", "IMAGE_EXTENSIONS", "Job", "prepare_job", "protect_photo"]

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
    pr.add_argument("--surrogate", type=_surrogate_arg, default="auto", metavar="FAMILY[+FAMILY...]",
                    help=f"I2V model family to attack ({', '.join(_families())}; default: auto, read from --model's "
                         "model_index.json; cogvideox with --demo). Several joined by '+' (e.g. cogvideox+svd) "
                         "protect against an ensemble: one --model per family, in the same order")
    pr.add_argument("--model", metavar="DIR", action="append",
                    help="local diffusers-format folder of the surrogate's weights (repeat it for an ensemble)")
    pr.add_argument("--ensemble-weights", metavar="W[,W...]", default="",
                    help="with several families: the weight of each member's objective, e.g. '1,0.5' (default: 1 each)")
    pr.add_argument("--ensemble-balance", action="store_true",
                    help="with several families: scale each member's gradient to a peak of 1 before the weighted sum, "
                         "so each weight is the member's share of the step whatever its loss scale")
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
    pr.add_argument("--ira-blocks", help="IRA denoiser blocks, e.g. '27' or '20-27'; 'auto' (default): the model's recommended")
    pr.add_argument("--vae-layers", help="IRA VAE-encoder layers, e.g. '3,4'; 'auto' (default): the model's (the last two)")
    pr.add_argument("--irc-pairs", help="IRC pairs 'shallow:deep', e.g. '3:27'; 'auto' (default): the model's recommended")
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
    pr.add_argument("--low-vram", action="store_true",
                    help="fit a 24 GB card: fewer frames (the family's low-VRAM count unless --frames is given), "
                         "gradient checkpointing, blocks past the deepest used and the VAE decoder kept on the CPU; "
                         "the report states the frames and settings used")
    pr.add_argument("--fp8-weights", action="store_true",
                    help="with --low-vram: for the run, keep the weights of the denoiser blocks' linear layers that "
                         "the loop uses in fp8 (float8_e4m3fn, per-channel scale) on the device, computed in the "
                         "model's dtype; your model files are untouched (changes the gradient slightly)")
    pr.add_argument("--recursive", action="store_true", help="also protect images in subfolders")
    pr.add_argument("--overwrite", action="store_true", help="redo photos whose outputs already exist")
    pr.add_argument("--quiet", action="store_true", help="no progress bars")
    from .scale import add_arguments as add_scale_arguments

    add_scale_arguments(pr)
    cv = sub.add_parser(
        "convert-dynamicrafter", help="convert DynamiCrafter's model.ckpt into a folder --model reads",
        description="Read DynamiCrafter's Lightning checkpoint with torch.load(weights_only=True) (never unpickling "
                    "arbitrary objects) and write model.safetensors (real key names), prompt_embeds.safetensors "
                    "(the text embedding, computed once) and dynamicrafter.json into OUT_DIR.")
    cv.add_argument("checkpoint", metavar="CKPT", help="model.ckpt (or a .safetensors state dict)")
    cv.add_argument("out_dir", metavar="OUT_DIR", help="output folder (created)")
    cv.add_argument("--variant", choices=["auto", "256", "512", "1024"], default="auto",
                    help="published model (auto: 256 from its weights, 512/1024 from the checkpoint's path)")
    cv.add_argument("--config", metavar="JSON", help="a model configuration instead of a published variant")
    cv.add_argument("--prompt", default="", help="text of the cached prompt embedding (default: empty)")
    cv.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], help="store weights in this dtype")
    return p


def cmd_convert_dynamicrafter(args) -> int:
    import torch

    from .surrogates import SurrogateError
    from .surrogates.dynamicrafter import convert_checkpoint

    dtype = getattr(torch, args.dtype) if args.dtype else None
    try:
        out = convert_checkpoint(args.checkpoint, args.out_dir, variant=args.variant, config=args.config,
                                 prompt=args.prompt, dtype=dtype)
    except SurrogateError as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"{args.out_dir}: cannot write the converted model ({exc.strerror or exc})") from None
    print(f"converted {args.checkpoint} -> {out} (use: anti-i2v protect ... --model {out})", file=sys.stderr)
    return 0


def _families() -> list[str]:
    from .surrogates import FAMILIES

    return list(FAMILIES)


def _surrogate_arg(text: str) -> str:
    """``auto``, one family, or several joined by ``+`` (an ensemble)."""
    if text == "auto":
        return text
    parts = [p.strip() for p in text.split("+")]
    bad = [p for p in parts if p not in _families()]
    if bad:
        raise argparse.ArgumentTypeError(
            f"unknown family {bad[0]!r} in {text!r}: choose auto or one or more of {', '.join(_families())} "
            "joined by '+'")
    return "+".join(parts)


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
    from .losses import AUTO, IRALoss, IRCLoss, Objective, parse_layer_spec, parse_pair_spec, resolve_objective
    from .methods import get_method

    if args.method != "anti-i2v":
        given = [f for f in ("ira_blocks", "vae_layers", "irc_pairs") if getattr(args, f) is not None]
        if given:
            raise UsageError(f"--{given[0].replace('_', '-')} applies to --method anti-i2v only")
        return get_method(args.method).objective(surrogate)
    # an option left out (or given as "auto") takes the model's recommended layers: resolved by the library
    blocks = parse_layer_spec(args.ira_blocks if args.ira_blocks is not None else AUTO, name="--ira-blocks")
    vae = parse_layer_spec(args.vae_layers if args.vae_layers is not None else AUTO, name="--vae-layers")
    pairs = parse_pair_spec(args.irc_pairs if args.irc_pairs is not None else AUTO, name="--irc-pairs")
    terms = []
    if blocks or vae:
        terms.append(IRALoss(blocks=blocks, vae_layers=vae))
    terms.append(IRCLoss(pairs=pairs))
    try:
        return resolve_objective(Objective(tuple(terms), (), "anti-i2v"), surrogate)
    except ValueError:
        raise UsageError("the objective is empty: give --ira-blocks, --vae-layers or --irc-pairs") from None


def _check_ensemble_args(args, count: int) -> tuple[float, ...]:
    """The ensemble's weights; UsageError for options that cannot apply to an ensemble of ``count`` members."""
    from .surrogates.ensemble import parse_weights

    if args.ira_blocks is not None or args.vae_layers is not None or args.irc_pairs is not None:
        raise UsageError("--ira-blocks, --vae-layers and --irc-pairs name layers of one model: with an ensemble "
                         "each member uses its family's default layers (leave these options out)")
    try:
        return parse_weights(args.ensemble_weights, count, name="--ensemble-weights")
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _build_ensemble(args, surrogates, *, announce: bool = True):
    """An :class:`~anti_i2v.surrogates.ensemble.Ensemble` of the loaded surrogates: each member takes its family's
    default objective (or the chosen baseline) and its weight from ``--ensemble-weights``."""
    from .surrogates import SurrogateError
    from .surrogates.ensemble import Ensemble, Member

    weights = _check_ensemble_args(args, len(surrogates))
    members = []
    for s, w in zip(surrogates, weights):
        try:
            objective = _build_objective(args, s)
            s.validate_request(objective.request())
        except (ValueError, SurrogateError) as exc:
            raise UsageError(f"{s.family}: {exc}") from None
        if announce:
            for note in objective.notes:
                print(f"anti-i2v: note: {s.family}: {note}", file=sys.stderr)
        members.append(Member(s, objective, w))
    return Ensemble(members, balance=args.ensemble_balance)


@dataclass
class Job:
    """Everything one process needs to protect photos with one loaded surrogate (built by :func:`prepare_job`)."""

    args: argparse.Namespace
    surrogate: object
    objective: object
    dsp_cfg: object
    loop_cfg: object
    target: object
    inert: str | None
    steps: int


def _configs(args):
    """(DSPConfig, ProtectConfig, steps) from the preset and overrides; UsageError on a bad value. Loads nothing."""
    from .dsp import DSPConfig
    from .methods import get_method
    from .protect import PRESETS

    method = get_method(args.method)
    if args.preset in (None, "paper") and args.method != "anti-i2v":
        # the paper's defaults of the chosen defense (eps, steps, step, step rule, schedule, space)
        preset = {"eps": method.eps, "steps": method.steps, "step_size": method.step_size, "robust_jpeg": 0}
        args.preset = "paper"
    else:
        args.preset = args.preset if args.preset not in (None, "paper") else "default"
        preset = dict(PRESETS[args.preset])
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
    return dsp_cfg, loop_cfg, steps


def _check_args(args) -> Path:
    """Checks that need no model: the model/demo choice and --out. Returns --out as a Path."""
    if args.demo == bool(args.model):
        raise UsageError("give either --model DIR (real weights) or --demo (tiny random models)")
    if getattr(args, "fp8_weights", False) and not getattr(args, "low_vram", False):
        raise UsageError("--fp8-weights is part of the low-VRAM mode: add --low-vram")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {args.out}: exists and is not a folder")
    return out


def prepare_job(args, *, announce: bool = True) -> Job:
    """Load the surrogate, build the objective and read the target once (per process: the CLI or a Ray worker).

    ``announce`` prints the demo banner and the objective's notes to stderr. UsageError on a bad model or objective.
    """
    import torch

    from .surrogates import SurrogateError, load_surrogate, tiny_surrogate

    dsp_cfg, loop_cfg, steps = _configs(args)
    device = _resolve_device(args.device)
    dtype_name = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    dtype = getattr(torch, dtype_name)
    kw = {}
    if args.frames is not None:
        kw["num_frames"] = args.frames

    models = list(args.model or [])
    families = [] if args.surrogate == "auto" else args.surrogate.split("+")
    if not args.demo and families and len(families) != len(models):
        raise UsageError(f"--surrogate {args.surrogate} names {len(families)} families but {len(models)} --model "
                         "folder(s) were given: give one --model per family, in the same order")
    count = len(models) if not args.demo else max(len(families), 1)
    if count > 1 or args.ensemble_weights or args.ensemble_balance:
        _check_ensemble_args(args, count)  # before any model is loaded
    if args.demo:
        if announce:
            print(DEMO_BANNER, file=sys.stderr)
        surrogates = [tiny_surrogate(f, seed=0, **kw).to(device) for f in (families or ["cogvideox"])]
    else:
        from .surrogates.detect import detect_family

        surrogates = []
        for i, folder in enumerate(models):
            try:
                family = families[i] if families else "auto"
                if family == "auto":
                    if not Path(folder).is_dir():
                        raise SurrogateError(f"model folder {folder!r} does not exist or is not a folder")
                    family = detect_family(Path(folder))
                surrogates.append(load_surrogate(family, folder, dtype=dtype, device=device,
                                                 gradient_checkpointing=args.gradient_checkpointing, **kw))
            except (SurrogateError, OSError, ValueError) as exc:
                raise UsageError(f"--model {folder}: {exc}") from None
    if args.low_vram:
        from .lowvram import LowVram

        for s_ in surrogates:  # protect() applies it per photo (per member) and restores everything after
            s_.low_vram = LowVram(frames=args.frames, fp8=bool(getattr(args, "fp8_weights", False)))
    ensemble = None
    if len(surrogates) > 1 or args.ensemble_weights or args.ensemble_balance:
        ensemble = _build_ensemble(args, surrogates, announce=announce)
        objective = None
    else:
        (surrogate,) = surrogates
        try:
            objective = _build_objective(args, surrogate)
            surrogate.validate_request(objective.request())
        except (ValueError, SurrogateError) as exc:
            raise UsageError(str(exc)) from None
    from .protect import inert_reason

    inert = inert_reason(objective if ensemble is None else ensemble.members[0].objective, loop_cfg)
    if announce:
        for note in (objective.notes if objective is not None else ()):
            print(f"anti-i2v: note: {note}", file=sys.stderr)
        if inert:
            print(f"anti-i2v: note: {inert}", file=sys.stderr)
    target = None
    if args.target:
        try:
            target, _ = load_image(Path(args.target))
        except ValueError as exc:
            raise UsageError(f"--target: {exc}") from None
    return Job(args, ensemble or surrogate, objective, dsp_cfg, loop_cfg, target, inert, steps)


def output_paths(out: Path, rel: Path) -> tuple[Path, Path]:
    """The protected PNG and the report of the photo whose relative name (no suffix) is ``rel``."""
    return out / rel.with_name(rel.name + OUTPUT_SUFFIX), out / rel.with_name(rel.name + REPORT_SUFFIX)


def is_complete(out: Path, rel: Path) -> bool:
    """Both output files of the photo exist (a finished photo: a rerun skips it)."""
    png, rep = output_paths(out, rel)
    return png.exists() and rep.exists()


def protect_photo(job: Job, path: Path, rel: Path, out: Path, originals: set, *, show: bool = False) -> dict:
    """Protect one photo and write its two outputs atomically: the per-photo step of every run (in-process or Ray).

    Returns a record ``{"input", "output", "status", "reason", "seconds", "figures"}`` with status ``done``,
    ``skipped`` (complete from an earlier run, unless ``--overwrite``) or ``failed`` (``reason`` says why: bad
    image, an output that would overwrite an input, a write error). The seed is the run's seed for every photo,
    so a photo's output does not depend on which process protects it or what it protected before.
    KeyboardInterrupt propagates.
    """
    import torch

    from .methods import get_method
    from .protect import protect
    from .surrogates import SurrogateError

    args = job.args
    png, rep = output_paths(out, rel)
    record = {"input": str(path), "output": str(png), "status": "failed", "reason": None, "seconds": 0.0,
              "figures": None}
    if png.resolve() in originals or rep.resolve() in originals:
        record["reason"] = "its output would overwrite an input file; choose another --out"
        return record
    if not args.overwrite and png.exists() and rep.exists():
        record["status"] = "skipped"  # finished in an earlier run: resume
        return record
    if not args.overwrite and (png.exists() or rep.exists()):
        orphan = png if png.exists() else rep
        print(f"anti-i2v: note: {path}: redoing it ({orphan} exists without its pair: "
              "an earlier run stopped between the two writes)", file=sys.stderr)
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        tqdm, show = None, False
    t0 = time.perf_counter()
    try:
        image, notes = load_image(path)
        bar = tqdm(total=job.steps, desc=path.name[:30], unit="it", leave=False, disable=not show, position=1) \
            if tqdm is not None else None

        def cb(p, bar=bar):
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{p.loss:.4g}")

        result = protect(image, job.surrogate, job.objective, job.dsp_cfg, job.loop_cfg, target=job.target,
                         callback=cb)
        if bar is not None:
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
            "space": job.dsp_cfg.space,
            "method_defaults": get_method(args.method).describe(),
            "notes": notes + ([job.inert] if job.inert else []),
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
            record["reason"] = f"cannot write {writing} ({exc.strerror or exc})"
            return record
        record.update(status="done", figures={k: v[0] for k, v in figures.items()})
    except (ValueError, SurrogateError) as exc:
        record["reason"] = str(exc)
    finally:
        record["seconds"] = round(time.perf_counter() - t0, 3)
    return record


def cmd_protect(args) -> int:
    from .scale import check_arguments

    check_arguments(args)
    out = _check_args(args)
    images = _collect(args.paths, args.recursive)
    _configs(args)  # bad settings are usage errors before anything is loaded
    _resolve_device(args.device)
    _check_writable(out, args.out)  # before loading models or optimising anything
    if getattr(args, "ray", None):
        from .scale import run_on_ray

        return run_on_ray(args, images, out)
    originals = {p.resolve() for p, _ in images}
    job = prepare_job(args)

    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        tqdm = None
    show = not args.quiet and tqdm is not None
    done = skipped = 0
    failed: list[str] = []
    outer = tqdm(images, desc="photos", unit="photo", disable=not show, position=0)
    for path, rel in outer:
        try:
            rec = protect_photo(job, path, rel, out, originals, show=show)
        except KeyboardInterrupt:
            print(f"\ninterrupted: {done} protected this run; run the same command again to resume", file=sys.stderr)
            return 130
        if rec["status"] == "skipped":
            skipped += 1
        elif rec["status"] == "failed":
            failed.append(f"{path}: {rec['reason']}")
        else:
            done += 1
            outer.set_postfix(psnr=f"{rec['figures']['psnr_db']:.1f}dB")
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
        if args.command == "convert-dynamicrafter":
            return cmd_convert_dynamicrafter(args)
    except UsageError as exc:
        print(f"anti-i2v: error: {exc}", file=sys.stderr)
        return 2
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
