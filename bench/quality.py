"""Quality benchmark: what each perturbation costs in image quality, and what it buys in disruption.

For every photo (scikit-image's astronaut 512x512, camera 512x512 grey -> RGB, coffee 400x600; full size, loaded
from the installed package) and every surrogate family (tiny random-weight models, CPU), each method is run at
every budget (``--budgets``, L-inf in 1/255 of the [0, 1] range):

* every perturbation space the pack offers (``anti_i2v.dsp.SPACES``: ``dsp`` the Dual-Space Perturbation, ``ab``
  its a*/b* colour part alone, ``dct`` its low-frequency DCT part alone, ``rgb`` plain per-pixel RGB L-inf PGD),
  each built as ``DSPConfig(space=name, eps=budget)`` with its other defaults, protected for ``--steps``
  steps of ``budget * --step-ratio`` with the surrogate's default objective, with the loop's default step rule
  (the gradient scaled to its peak) - except ``rgb``, which takes PGD's signed steps, as the baselines of the
  field define RGB L-inf PGD; ``rgb_normalized`` is RGB with the loop's step rule, so the tables show what the
  space adds and what the step rule adds;
* two controls with the same L-inf budget: uniform noise in [-eps, eps] and random-sign noise of +-eps;
* ``default``: the pack's default preset (``anti_i2v.protect.PRESETS["default"]``: its budget, space, step size
  and loop options), one point per photo and family, at ``--default-steps`` iterations (default: ``--steps``, so
  it is compared with the other spaces at equal iterations; ``--default-steps preset`` runs the preset's own
  count. On the astronaut / svd, 100 and 200 steps gave figures within 0.2 dB PSNR and 0.03 disruption).

Every result is snapped to 8 bits (as a saved PNG) and measured against the clean photo:

* imperceptibility: PSNR, SSIM, CIEDE2000 mean and 95th percentile (``anti_i2v.metrics``, checked against
  scikit-image's ``deltaE_ciede2000``; about 1 is a just-noticeable difference), mean |dL*|, and the share of pixels with any channel at the budget
  (``|delta| >= eps - 0.5/255``);
* efficacy, as ``bench/efficacy.py`` measures it: the drift of the video generated from the photo from the
  video generated from the clean photo (same seed and settings): mean video PSNR and SSIM, VAE-latent distance
  (``latent_mse`` and ``latent_relative`` = ||z - z_clean|| / ||z_clean||) under the surrogate's VAE; as saved,
  after a JPEG round trip (PIL, quality ``--jpeg-quality``; reference: the video of the JPEG'd clean photo) and
  after a Gaussian blur (PIL, ``--blur-radius``; reference: the video of the blurred clean photo).

**Disruption** (the one scalar of the plot and of the goal check) is ``latent_relative`` after JPEG: how far the
perturbation still moves the generated video once the photo has been re-encoded.

Goal check (printed PASS/FAIL per photo and family for ``default``): PSNR >= 35 dB, SSIM >= 0.93, CIEDE2000 mean
<= 2.5, mean |dL*| <= 0.5, and disruption after JPEG at least that of RGB PGD at equal CIEDE2000 (the RGB curve
over the budgets, anchored at the origin - no budget, no drift - linearly interpolated at the default's
CIEDE2000; above its last point the last point is used).

Output (``--out DIR``, default ``bench_out/quality/``): ``quality.json`` (settings, machine, every figure per
photo / family / method / budget, the goal check) and ``quality.png`` (disruption after JPEG against CIEDE2000
mean, one panel per family, one curve per method over the budgets, averaged over the photos: the trade-off a
user chooses from), and compact tables on stdout. Progress goes to stderr.

Tiny random-weight models are not real I2V models: the efficacy figures only show that the measurement works;
the imperceptibility figures are real (they depend on the photo and the budget, little on the model).

Speed: the photo x family tasks run in ``--jobs`` child processes (default 2) of ``--threads`` torch threads each
(default 1: the tiny models' operations are too small to share between threads, and two threads per process on a
busy 2-core machine ran six times slower than one).

Usage: python bench/quality.py [--photos astronaut,camera,coffee] [--families cogvideox,wan21,svd]
       [--budgets 2,4,8,12,16] [--steps 100] [--spaces dsp,ab,dct,rgb] [--out DIR] [--quick] [--jobs 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))

import efficacy as eff  # noqa: E402  (bench/efficacy.py: photos, 8-bit snapping, JPEG, noise, videos, drift)

NOTE = eff.NOTE + " The imperceptibility figures (PSNR, SSIM, CIEDE2000, |dL*|) are real."
DISRUPTION = ("latent_relative", "jpeg")  # (figure, condition) of the plot's and the goal's disruption scalar
DISRUPTION_TEXT = (
    "disruption = latent_relative after JPEG: ||z(video of the JPEG'd photo) - z(video of the JPEG'd clean photo)||"
    " / ||z(video of the JPEG'd clean photo)|| under the surrogate's VAE (larger = more disruption)"
)
NOISES = ("uniform_noise", "sign_noise")
DEFAULT_METHOD = "default"
GOAL = {  # figure: (comparison, limit)
    "psnr_db": (">=", 35.0),
    "ssim": (">=", 0.93),
    "ciede2000_mean": ("<=", 2.5),
    "mean_abs_dL": ("<=", 0.5),
}
FULL = {
    "photos": ",".join(eff.PHOTOS), "families": "cogvideox,wan21,svd", "budgets": "2,4,8,12,16", "steps": 100,
    "size": 0, "gen_steps": 2,
}
QUICK = {"photos": "astronaut", "families": "wan21", "budgets": "8,16", "steps": 2, "size": 64, "gen_steps": 1}
LEGACY_SPACES = {"dsp": {}, "ab": {"mix": 1.0}, "dct": {"mix": 0.0}}  # before anti_i2v.dsp had ``space``


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _r(x: float, digits: int = 5) -> float:
    """Round to significant digits (keeps inf / nan as they are)."""
    return float(f"{x:.{digits}g}") if math.isfinite(x) else float(x)


def _budget_key(eps: float) -> str:
    return f"{eps:g}"


# ------------------------------------------------------------------------------------------ methods


def offered_spaces() -> tuple[str, ...]:
    """The perturbation spaces this anti_i2v offers (``anti_i2v.dsp.SPACES``; older versions: dsp, ab, dct)."""
    from anti_i2v import dsp

    return tuple(getattr(dsp, "SPACES", tuple(LEGACY_SPACES)))


def space_config(space: str, eps: float):
    """``DSPConfig(space=space, eps=eps)`` with its other defaults (mix 1 / 0 for ab / dct on older versions)."""
    from anti_i2v import dsp

    if hasattr(dsp, "SPACES"):
        return dsp.DSPConfig(space=space, eps=eps)
    if space not in LEGACY_SPACES:
        raise ValueError(f"space {space!r} is not offered by this anti_i2v (no anti_i2v.dsp.SPACES)")
    return dsp.DSPConfig(eps=eps, **LEGACY_SPACES[space])


RGB_NORMALIZED = "rgb_normalized"


def methods_of(spaces: list[str]) -> list[str]:
    """The optimised methods for ``spaces``: each space, plus RGB with the pack's step rule when RGB is run."""
    return list(spaces) + ([RGB_NORMALIZED] if "rgb" in spaces else [])


def method_setup(method: str, eps: float, steps: int, step_ratio: float, seed: int):
    """(DSPConfig, ProtectConfig) of one optimised method at budget ``eps``.

    Every space runs with the loop's default step rule, except ``rgb``: plain RGB L-inf PGD as the baselines of
    the field define it, with signed steps. ``rgb_normalized`` is RGB with the pack's step rule, to show how much
    of a difference comes from the space and how much from the step rule.
    """
    from anti_i2v.protect import ProtectConfig

    space = "rgb" if method == RGB_NORMALIZED else method
    rule = "sign" if method == "rgb" else ProtectConfig().optimizer
    loop = ProtectConfig(steps=steps, step_size=eps * step_ratio, seed=seed, optimizer=rule)
    return space_config(space, eps), loop


def default_method(steps: int | None, seed: int):
    """The pack's default preset as (DSPConfig, ProtectConfig, preset dict, ignored keys).

    Every key of ``PRESETS["default"]`` goes to the dataclass that has a field of that name (DSPConfig first), so
    the bench follows whatever the preset holds. ``steps`` (None: the preset's) replaces the preset's steps.
    """
    from anti_i2v.dsp import DSPConfig
    from anti_i2v.protect import PRESETS, ProtectConfig

    preset = dict(PRESETS["default"])
    dsp_fields = {f.name for f in dataclasses.fields(DSPConfig)}
    loop_fields = {f.name for f in dataclasses.fields(ProtectConfig)}
    dkw = {k: v for k, v in preset.items() if k in dsp_fields}
    lkw = {k: v for k, v in preset.items() if k in loop_fields and k not in dsp_fields}
    ignored = sorted(k for k in preset if k not in dsp_fields | loop_fields)
    lkw["seed"] = seed
    if steps is not None:
        lkw["steps"] = steps
    return DSPConfig(**dkw), ProtectConfig(**lkw), preset, ignored


# ------------------------------------------------------------------------------------------ measures


def blur(image: torch.Tensor, radius: float) -> torch.Tensor:
    """A Gaussian blur (PIL ``GaussianBlur(radius)``, on the 8-bit image) of a (1, 3, H, W) image in [0, 1]."""
    from PIL import Image, ImageFilter

    rgb = (image[0].clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()
    out = np.array(Image.fromarray(rgb).filter(ImageFilter.GaussianBlur(radius)))
    return torch.from_numpy(out).permute(2, 0, 1).float().div(255.0).unsqueeze(0)


def image_figures(adv: torch.Tensor, clean: torch.Tensor, eps: float) -> dict:
    """Imperceptibility of ``adv`` against ``clean`` (both (1, 3, H, W) in [0, 1], 8-bit snapped); ``eps`` in 1/255.

    The pack's own figures (:func:`anti_i2v.metrics.image_quality`, what every report and the demo print: PSNR,
    SSIM, CIEDE2000 mean and 95th percentile, mean |dL*|, L-inf), plus the share of pixels with any channel at
    ``|delta| >= eps - 0.5/255``.
    """
    from anti_i2v.metrics import image_quality

    q = image_quality(adv, clean)
    at_budget = ((adv.double() - clean.double()).abs() >= (eps - 0.5) / 255.0 - 1e-9).any(dim=1)
    return {
        "psnr_db": _r(q["psnr_db"][0], 6),
        "ssim": _r(q["ssim"][0], 6),
        "ciede2000_mean": _r(q["ciede2000_mean"][0]),
        "ciede2000_p95": _r(q["ciede2000_p95"][0]),
        "mean_abs_dL": _r(q["mean_abs_dl"][0]),
        "share_at_budget": _r(float(at_budget.double().mean())),
        "linf_255": _r(q["linf_255"][0]),
    }


def goal_check(quality: dict, disruption: float | None, rgb_curve: list[tuple[float, float]] | None) -> dict:
    """The default's goal check on one photo and family.

    Args:
        quality: the default's :func:`image_figures`.
        disruption: the default's disruption after JPEG.
        rgb_curve: RGB PGD's (CIEDE2000 mean, disruption after JPEG) over the budgets, or None when not run.
    """
    out: dict = {}
    for fig, (op, limit) in GOAL.items():
        v = quality[fig]
        ok = v >= limit if op == ">=" else v <= limit
        out[fig] = {"value": v, "goal": f"{op} {limit:g}", "pass": bool(ok)}
    if rgb_curve and disruption is not None:
        pts = sorted([(0.0, 0.0)] + [(float(x), float(y)) for x, y in rgb_curve])
        xs, ys = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
        x = quality["ciede2000_mean"]
        where = ("beyond RGB's largest budget: its last point" if x > xs[-1] else
                 "below RGB's smallest budget: between the origin and its first point" if x < xs[1] else
                 "interpolated between RGB's budgets")
        ref = float(np.interp(x, xs, ys))
        out["disruption_vs_rgb"] = {
            "value": _r(disruption), "rgb_at_equal_ciede2000": _r(ref), "where": where,
            "goal": ">= RGB PGD's disruption after JPEG at the default's CIEDE2000", "pass": bool(disruption >= ref),
        }
    else:
        out["disruption_vs_rgb"] = {"value": disruption, "pass": None, "where": "not checked: rgb was not run"}
    out["pass"] = all(v["pass"] for v in out.values() if isinstance(v, dict) and v["pass"] is not None)
    return out


# ------------------------------------------------------------------------------------------ the run


def _photos(names: list[str], size: int) -> dict[str, torch.Tensor]:
    out = {}
    for n in names:
        full = eff.PHOTOS[n]
        if size:
            s = size / max(full)
            out[n] = eff.quantize(eff.load_photo(n, (max(8, round(full[0] * s)), max(8, round(full[1] * s)))))
        else:
            out[n] = eff.quantize(eff.load_photo(n))
    return out


def run_task(family: str, pname: str, args) -> dict:
    """Every method at every budget on one photo against one family: ``{"results": ..., "transform_alone": ...}``."""
    from anti_i2v.protect import protect
    from anti_i2v.surrogates import tiny_surrogate

    photo = _photos([pname], args.size)[pname]
    d_cfg, d_loop, _, _ = default_method(args.default_steps, args.seed)
    q, rad = args.jpeg_quality, args.blur_radius
    conds = {"none": lambda x: x, "jpeg": lambda x: eff.jpeg(x, q), "blur": lambda x: blur(x, rad)}
    s = tiny_surrogate(family, seed=args.seed)
    objective = s.default_objective()

    def video(img):
        return eff.video_of(s, img, gen_steps=args.gen_steps, seed=args.seed, frames=args.frames)

    refs = {c: video(fn(photo)) for c, fn in conds.items()}
    alone = {c: eff.drift_of(s, refs["none"], refs[c], seed=args.seed) for c in ("jpeg", "blur")}

    def efficacy(img):
        return {c: eff.drift_of(s, refs[c], video(fn(img)), seed=args.seed) for c, fn in conds.items()}

    runs = [(m, e) for m in methods_of(args.spaces) for e in args.budgets] + [(DEFAULT_METHOD, d_cfg.eps)]
    res: dict = {}
    t_all = time.perf_counter()
    for i, (method, e) in enumerate(runs, 1):
        t0 = time.perf_counter()
        if method == DEFAULT_METHOD:
            cfg, loop = d_cfg, d_loop
        else:
            cfg, loop = method_setup(method, e, args.steps, args.step_ratio, args.seed)
        out = protect(photo, s, objective, cfg, loop)
        img = eff.quantize(out.protected)
        hist = out.history
        res.setdefault(method, {})[_budget_key(e)] = {
            "image": image_figures(img, photo, e),
            "efficacy": efficacy(img),
            "loss": {"first": _r(hist[0]["loss"]), "last": _r(hist[-1]["loss"])} if hist else None,
            "protect_seconds": round(out.seconds, 2),
        }
        el = time.perf_counter() - t_all
        _log(f"  {family} {pname} [{i}/{len(runs)}] {method} eps {e:g}, {loop.steps} steps: "
             f"{time.perf_counter() - t0:.1f} s (this photo and family: {el:.0f} s, about "
             f"{el / i * (len(runs) - i):.0f} s left)")
    noise_fn = {"uniform_noise": (eff.uniform_noise, 1), "sign_noise": (eff.sign_noise, 2)}
    for m, (fn, off) in noise_fn.items():
        for e in args.budgets:
            img = eff.quantize(fn(photo, e, args.seed + off))
            res.setdefault(m, {})[_budget_key(e)] = {"image": image_figures(img, photo, e), "efficacy": efficacy(img)}
    return {"results": res, "transform_alone": alone}


def _run_children(tasks: list[tuple[str, str]], args) -> dict:
    """Run the tasks in ``args.jobs`` child processes (``--_task``) and collect their results."""
    import subprocess
    import tempfile

    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="anti_i2v_quality_") as tmp:
        settings = Path(tmp) / "args.json"
        settings.write_text(json.dumps(vars(args)))
        pending, running = list(tasks), []
        while pending or running:
            while pending and len(running) < args.jobs:
                fam, pname = pending.pop(0)
                res = Path(tmp) / f"{fam}-{pname}.json"
                cmd = [sys.executable, str(Path(__file__).resolve()), "--_task", f"{fam},{pname}",
                       "--_task-args", str(settings), "--_task-out", str(res)]
                running.append(((fam, pname), res, subprocess.Popen(cmd)))
            time.sleep(0.2)
            for item in list(running):
                (fam, pname), res, proc = item
                if proc.poll() is None:
                    continue
                running.remove(item)
                if proc.returncode != 0:
                    for _, _, other in running:
                        other.kill()
                    raise RuntimeError(f"the {fam} / {pname} task failed (exit {proc.returncode}); see above")
                out[(fam, pname)] = json.loads(res.read_text())
                _log(f"done: {fam} {pname} ({len(out)}/{len(tasks)})")
    return out


def run(args) -> dict:
    d_cfg, d_loop, preset, ignored = default_method(args.default_steps, args.seed)
    tasks = [(f, p) for f in args.families for p in args.photos]
    if args.jobs > 1 and len(tasks) > 1:
        # the slowest first (svd's tiny model is the slowest, cogvideox's the fastest): the last running task is then
        # a short one (on 2 cores: ~3 min less than in the given order)
        cost = {"svd": 0, "wan21": 1, "cogvideox": 2}
        done = _run_children(sorted(tasks, key=lambda t: cost.get(t[0], 1)), args)
    else:
        done = {}
        for f, p in tasks:
            done[(f, p)] = run_task(f, p, args)
            _log(f"done: {f} {p} ({len(done)}/{len(tasks)})")
    return {
        "results": {p: {f: done[(f, p)]["results"] for f in args.families} for p in args.photos},
        "transform_alone": {p: {f: done[(f, p)]["transform_alone"] for f in args.families} for p in args.photos},
        "default": {"preset": preset, "ignored_preset_keys": ignored, "perturbation": d_cfg.to_dict(),
                    "loop": dataclasses.asdict(d_loop)},
    }


def _child(task: str, args_file: str, out_file: str) -> None:
    """Entry of a ``--_task`` child process: one family and photo, results as JSON (non-finite floats allowed)."""
    args = argparse.Namespace(**json.loads(Path(args_file).read_text()))
    torch.set_num_threads(args.threads)
    family, pname = task.split(",")
    Path(out_file).write_text(json.dumps(run_task(family, pname, args)))


def disruption_of(entry: dict) -> float:
    fig, cond = DISRUPTION
    return float(entry["efficacy"][cond][fig])


def summarise(report: dict) -> dict:
    """Means over photos (per family) and over photos and families; the goal check per photo and family."""
    results = report["results"]
    photos = list(results)
    families = list(results[photos[0]])
    methods = list(results[photos[0]][families[0]])
    per_family: dict = {}
    for fam in families:
        for m in methods:
            for b in results[photos[0]][fam][m]:
                entries = [results[p][fam][m][b] for p in photos]
                per_family.setdefault(fam, {}).setdefault(m, {})[b] = {
                    "ciede2000_mean": _r(float(np.mean([x["image"]["ciede2000_mean"] for x in entries]))),
                    **{f"{fig}_{c}": _r(float(np.mean([x["efficacy"][c][fig] for x in entries])))
                       for c in ("none", "jpeg", "blur") for fig in ("latent_relative", "psnr_db")},
                }
    overall: dict = {}
    for m in methods:
        for b in results[photos[0]][families[0]][m]:
            entries = [results[p][f][m][b]["image"] for p in photos for f in families]
            overall.setdefault(m, {})[b] = {k: _r(float(np.mean([x[k] for x in entries]))) for k in entries[0]}
    goal: dict = {}
    for p in photos:
        for fam in families:
            res = results[p][fam]
            (_, d), = res[DEFAULT_METHOD].items()
            curve = ([(v["image"]["ciede2000_mean"], disruption_of(v)) for v in res["rgb"].values()]
                     if "rgb" in res else None)
            goal.setdefault(p, {})[fam] = goal_check(d["image"], disruption_of(d), curve)
    return {
        "mean_over_photos": per_family,
        "image_mean_over_photos_and_families": overall,
        "goal": goal,
        "goal_all_pass": all(g["pass"] for fp in goal.values() for g in fp.values()),
    }


# ------------------------------------------------------------------------------------------ output


def _fmt(v: float, width: int, spec: str) -> str:
    return f"{v:{width}{spec}}" if isinstance(v, (int, float)) and math.isfinite(v) else f"{str(v):>{width}}"


def tables(report: dict) -> str:
    s = report["summary"]
    lines = [f"Imperceptibility (8-bit outputs vs the clean photo; mean over {len(report['results'])} photo(s) and "
             f"{len(report['settings']['families'])} famil(y/ies)):",
             f"{'method':<14}{'eps':>5}{'PSNR dB':>9}{'SSIM':>8}{'dE00':>7}{'dE00 p95':>9}{'|dL*|':>7}{'at eps':>8}"]
    for m, budgets in s["image_mean_over_photos_and_families"].items():
        for b, v in budgets.items():
            lines.append(f"{m:<14}{b:>5}{_fmt(v['psnr_db'], 9, '.2f')}{_fmt(v['ssim'], 8, '.4f')}"
                         f"{_fmt(v['ciede2000_mean'], 7, '.2f')}{_fmt(v['ciede2000_p95'], 9, '.2f')}"
                         f"{_fmt(v['mean_abs_dL'], 7, '.3f')}{_fmt(v['share_at_budget'], 8, '.3f')}")
    fams = list(s["mean_over_photos"])
    lines += ["", "Efficacy: latent_relative of the video vs the clean photo's video, as saved / after JPEG q"
              f"{report['settings']['jpeg_quality']} / after blur r{report['settings']['blur_radius']:g} "
              "(mean over photos; tiny random weights: shows the measurement works, not real protection):",
              f"{'method':<14}{'eps':>5}" + "".join(f"{f + ' none/jpeg/blur':>34}" for f in fams)]
    first = s["mean_over_photos"][fams[0]]
    for m, budgets in first.items():
        for b in budgets:
            row = f"{m:<14}{b:>5}"
            for f in fams:
                v = s["mean_over_photos"][f][m][b]
                row += "    " + " / ".join(_fmt(v[f"latent_relative_{c}"], 8, '.3g') for c in ("none", "jpeg", "blur"))
            lines.append(row)
    d = report["default"]
    lines += ["", f"Goal check of the default (space {d['perturbation'].get('space', 'dsp')}, eps "
              f"{d['perturbation']['eps']:g}, {d['loop']['steps']} steps): PSNR >= 35 dB, SSIM >= 0.93, "
              "CIEDE2000 mean <= 2.5, mean |dL*| <= 0.5, disruption after JPEG >= RGB PGD's at equal CIEDE2000"]
    for p, fams_ in s["goal"].items():
        for f, g in fams_.items():
            def mark(k, g=g):
                return "n/a" if g[k]["pass"] is None else ("ok" if g[k]["pass"] else "FAIL")
            dv = g["disruption_vs_rgb"]
            disr = ("disruption vs RGB n/a (rgb not run)" if dv["pass"] is None else
                    f"disruption {dv['value']:.3g} vs RGB {dv['rgb_at_equal_ciede2000']:.3g} "
                    f"{mark('disruption_vs_rgb')}")
            lines.append(
                f"{'PASS' if g['pass'] else 'FAIL'} {p}/{f}: PSNR {g['psnr_db']['value']:.2f} {mark('psnr_db')}, "
                f"SSIM {g['ssim']['value']:.4f} {mark('ssim')}, dE00 {g['ciede2000_mean']['value']:.2f} "
                f"{mark('ciede2000_mean')}, |dL*| {g['mean_abs_dL']['value']:.3f} {mark('mean_abs_dL')}, {disr}")
    lines.append(f"Goal overall: {'PASS' if s['goal_all_pass'] else 'FAIL'}")
    return "\n".join(lines)


def plot(report: dict, path: Path) -> str | None:
    """Disruption after JPEG against CIEDE2000 mean, one panel per family. Returns None or why it was skipped."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install matplotlib): no plot"
    per_family = report["summary"]["mean_over_photos"]
    fams = list(per_family)
    fig, axes = plt.subplots(1, len(fams), figsize=(max(7.0, 5.6 * len(fams)), 5.0), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    key = f"{DISRUPTION[0]}_{DISRUPTION[1]}"
    for ax, fam in zip(axes[0], fams):
        positive = True
        for i, (m, budgets) in enumerate(per_family[fam].items()):
            pts = sorted((float(b), v["ciede2000_mean"], v[key]) for b, v in budgets.items())
            xs, ys = [p[1] for p in pts], [p[2] for p in pts]
            positive &= all(y > 0 for y in ys)
            if m == DEFAULT_METHOD:
                ax.plot(xs, ys, "*", ms=16, color="black", label=f"default (eps {pts[0][0]:g})", zorder=5)
                continue
            style = "--" if m in NOISES else "-"
            ax.plot(xs, ys, style, marker="o", ms=4, color=colors[i % len(colors)], label=m)
            for b, x, y in pts:
                ax.annotate(f"{b:g}", (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7,
                            color=colors[i % len(colors)])
        ax.axvline(GOAL["ciede2000_mean"][1], color="grey", lw=0.8, ls=":")
        ax.text(GOAL["ciede2000_mean"][1], 0.98, " goal: dE00 <= 2.5", fontsize=7, va="top", color="grey",
                transform=ax.get_xaxis_transform())
        if positive:
            ax.set_yscale("log")
        ax.set_title(f"{fam} (tiny random weights)", fontsize=10)
        ax.set_xlabel("CIEDE2000 mean (photo vs clean)")
        ax.set_ylabel(f"disruption after JPEG q{report['settings']['jpeg_quality']}\n(latent relative distance)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    n = len(report["results"])
    fig.suptitle(f"Quality / disruption trade-off, mean over {n} photo(s), {report['settings']['steps']} steps\n"
                 "labels: budget eps in 1/255; dashed: noise controls; star: the pack's default", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


# ------------------------------------------------------------------------------------------ main


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", help=f"comma-separated photos (default: {FULL['photos']})")
    ap.add_argument("--families", help=f"comma-separated surrogate families (default: {FULL['families']})")
    ap.add_argument("--budgets", help=f"comma-separated L-inf budgets in 1/255 (default: {FULL['budgets']})")
    ap.add_argument("--steps", type=int, help=f"protect iterations of each space (default: {FULL['steps']})")
    ap.add_argument("--spaces", help="comma-separated perturbation spaces (default: all of anti_i2v.dsp.SPACES)")
    ap.add_argument("--default-steps", default=None,
                    help="iterations of the default preset: a number, or 'preset' for the preset's own "
                         "(default: --steps, for comparisons at equal iterations)")
    ap.add_argument("--step-ratio", type=float, default=None,
                    help="step size of each space = budget * this (default: the default preset's step_size / eps)")
    ap.add_argument("--size", type=int, help="resize photos so the longer side is this many pixels (0: full size)")
    ap.add_argument("--gen-steps", type=int, help=f"denoising steps of each video (default: {FULL['gen_steps']})")
    ap.add_argument("--frames", type=int, default=None, help="frames per video (default: the surrogate's)")
    ap.add_argument("--jpeg-quality", type=int, default=75)
    ap.add_argument("--blur-radius", type=float, default=1.0, help="Gaussian blur radius in pixels (PIL)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench_out/quality", help="output folder (quality.json, quality.png)")
    ap.add_argument("--no-plot", action="store_true", help="skip quality.png")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                    help="photo x family tasks run in parallel child processes (default: min(2, CPUs))")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads per process (default 1: the tiny models' ops are too small to share, "
                         "and two threads on a busy 2-core machine run several times slower)")
    ap.add_argument("--_task", help=argparse.SUPPRESS)
    ap.add_argument("--_task-args", help=argparse.SUPPRESS)
    ap.add_argument("--_task-out", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run: " + ", ".join(f"{k} {v}" for k, v in QUICK.items()) + " (flags still win)")
    args = ap.parse_args(argv)
    if args._task:
        _child(args._task, args._task_args, args._task_out)
        return {}

    from anti_i2v.metrics import json_safe
    from anti_i2v.surrogates import FAMILIES

    base = QUICK if args.quick else FULL
    for k, v in base.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.photos, args.families, args.spaces = _csv(args.photos), _csv(args.families), _csv(args.spaces or "")
    offered = offered_spaces()
    args.spaces = args.spaces or list(offered)
    bad = [p for p in args.photos if p not in eff.PHOTOS]
    if not args.photos or bad:
        ap.error(f"--photos: unknown {bad or 'empty list'}; choose from {', '.join(eff.PHOTOS)}")
    bad = [f for f in args.families if f not in FAMILIES]
    if not args.families or bad:
        ap.error(f"--families: unknown {bad or 'empty list'}; choose from {', '.join(FAMILIES)}")
    bad = [s for s in args.spaces if s not in offered]
    if bad:
        ap.error(f"--spaces: {bad} not offered by this anti_i2v; choose from {', '.join(offered)}")
    try:
        args.budgets = sorted({float(b) for b in _csv(args.budgets)})
    except ValueError:
        ap.error(f"--budgets must be numbers, got {args.budgets!r}")
    if not args.budgets or not all(0 < b <= 255 for b in args.budgets):
        ap.error("--budgets must be in (0, 255] (units of 1/255)")
    if args.steps < 1 or args.gen_steps < 1:
        ap.error("--steps and --gen-steps must be >= 1")
    if args.default_steps is None:
        args.default_steps = args.steps
    elif args.default_steps == "preset":
        args.default_steps = None
    else:
        try:
            args.default_steps = int(args.default_steps)
        except ValueError:
            ap.error(f"--default-steps must be a number or 'preset', got {args.default_steps!r}")
    if args.step_ratio is None:
        d_cfg, d_loop, _, _ = default_method(None, args.seed)
        args.step_ratio = d_loop.step_size / d_cfg.eps
    if not 1 <= args.jpeg_quality <= 100:
        ap.error(f"--jpeg-quality must be in 1-100, got {args.jpeg_quality}")
    if args.size < 0 or 0 < args.size < 16:
        ap.error("--size must be 0 (full size) or >= 16")
    if args.jobs < 1 or args.threads < 1:
        ap.error("--jobs and --threads must be >= 1")

    torch.set_num_threads(args.threads)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "no_plot") and not k.startswith("_")}
    report: dict = {
        "note": NOTE,
        "disruption": DISRUPTION_TEXT,
        "settings": settings,
        "methods": {
            **{m: f"DSPConfig(space={method_setup(m, 1.0, 1, 1.0, 0)[0].space!r}, eps=budget), other defaults; "
                  f"{args.steps} {method_setup(m, 1.0, 1, 1.0, 0)[1].optimizer} steps of budget * {args.step_ratio:g}"
               for m in methods_of(args.spaces)},
            "uniform_noise": "i.i.d. uniform noise in [-eps, eps] per pixel (control)",
            "sign_noise": "+-eps per pixel with random signs (control: the L-inf corner)",
            DEFAULT_METHOD: "the pack's PRESETS['default'] (see 'default' below): one point per photo and family",
        },
        "goal": {**{k: f"{op} {v:g}" for k, (op, v) in GOAL.items()},
                 "disruption_vs_rgb": "default's disruption after JPEG >= RGB PGD's, interpolated at equal "
                                      "CIEDE2000 over the budgets (curve anchored at the origin)"},
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "device": "cpu",
                    "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "platform": platform.platform()},
    }
    report.update(run(args))
    report["summary"] = summarise(report)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    png = out_dir / "quality.png"
    skipped = "--no-plot" if args.no_plot else plot(report, png)
    report["plot"] = None if skipped else str(png)
    if skipped:
        report["plot_skipped"] = skipped
    report = json_safe(report)
    (out_dir / "quality.json").write_text(json.dumps(report, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    print(tables(report))
    print(f"\n{NOTE}\n{DISRUPTION_TEXT}\nwrote {out_dir / 'quality.json'}"
          + (f" and {png}" if not skipped else f" ({skipped})") + f" in {report['seconds']:.0f} s")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
