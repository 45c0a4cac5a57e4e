"""Transfer benchmark: protect against one I2V family, verify on every family; and the ensemble's row.

For every family in ``--families`` (tiny random-weight models of the real diffusers classes on CPU by default):

1. the astronaut portrait of scikit-image at ``--size`` (square, 8-bit) is protected against that family alone
   (its default objective: IRA + IRC on the family's own layers, Anti-I2V Sec. 3) for ``--steps`` iterations under
   an L-inf budget of ``--eps``/255;
2. it is also protected once against the **ensemble** of all the families (``anti_i2v.surrogates.ensemble``: the
   weighted sum of their objectives, ``--ensemble-weights``, members one after another in each iteration), and
   once more with ``balance=True`` (``ensemble-balanced``: each member's gradient scaled to a peak of 1 before the
   weighted sum, so that a family whose loss lives on a small scale still gets its share of the step);
   with ``--held-out``, also against the ensemble of all families but one, for each family (the row that says
   whether an ensemble carries over to a model it did not see);
3. two controls without optimisation at the same budget: uniform noise in [-eps, eps] and random signs of +-eps
   (bench/efficacy.py's controls);
4. every protected photo (and control) is handed to every family's ``generate`` (its diffusers I2V pipeline) with
   the same seed and settings as the clean photo, and the drift of the video from the clean photo's video is
   measured with ``anti_i2v.verify.compare_videos`` (bench/efficacy.py's ``drift_of``): mean video PSNR and SSIM,
   and the VAE-latent distance under the verifying family's VAE (``latent_relative`` = ||z - z_clean|| /
   ||z_clean||).

The matrix: rows = what the photo was protected against, columns = the family that verifies. The diagonal is the
white-box case (protected and verified on one model); off-diagonal cells are transfer. **Disruption** (the
matrix's scalar) is ``latent_relative``; ``over_noise`` divides it by the uniform-noise control's in that column
(> 1: the protection moved that model's video more than noise of the same budget).

Tiny random-weight models are NOT real image-to-video models: their videos are noise and their features random.
On them the matrix shows the machinery (protection on one family, verification on the others, the ensemble's
row), not how well a protection transfers between real CogVideoX, Wan and SVD weights.

Output (``--out DIR``, default ``bench_out/transfer/``): ``transfer.json`` (settings, machine, every figure) and
``transfer.md`` (the disruption and PSNR matrices as Markdown tables); the disruption matrix on stdout. Progress
goes to stderr.

Usage: python bench/transfer.py [--families cogvideox,wan21,svd] [--steps 10] [--size 64] [--eps 16]
       [--ensemble-weights 1,1,1] [--held-out] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))

import efficacy as eff  # noqa: E402  (bench/efficacy.py: photo, 8-bit snapping, noise controls, videos, drift)

NOTE = (
    "Tiny random-weight models are NOT real image-to-video models: their videos are noise and their features are "
    "random, so this matrix only shows the machinery (protect on one family, verify on every other, the "
    "ensemble's row). It says nothing about how well a protection transfers between real CogVideoX / Wan 2.1 / SVD "
    "weights."
)
DISRUPTION = "latent_relative"
CONTROLS = ("uniform_noise", "sign_noise")


def _log(msg: str) -> None:
    print(f"[transfer] {msg}", file=sys.stderr, flush=True)


def protect_rows(surrogates: dict, photo: torch.Tensor, args) -> tuple[dict, dict]:
    """{row: protected photo} and {row: what the protection did}, for each family, the ensemble(s) and controls."""
    from anti_i2v.dsp import DSPConfig
    from anti_i2v.protect import ProtectConfig, protect
    from anti_i2v.surrogates.ensemble import Ensemble, Member

    families = list(surrogates)
    dsp = DSPConfig(eps=args.eps, dct_block=min(16, args.size))
    loop = ProtectConfig(steps=args.steps, step_size=args.step_size, seed=args.seed)
    weights = dict(zip(families, args.weights))
    objectives = {f: s.default_objective() for f, s in surrogates.items()}

    targets: dict[str, object] = {f: s for f, s in surrogates.items()}
    if len(families) > 1:
        targets["ensemble"] = Ensemble([Member(surrogates[f], objectives[f], weights[f]) for f in families])
        if not args.no_balanced:
            targets["ensemble-balanced"] = Ensemble(
                [Member(surrogates[f], objectives[f], weights[f]) for f in families], balance=True)
        if args.held_out and len(families) > 2:
            for out in families:
                rest = [f for f in families if f != out]
                targets[f"ensemble-{out}"] = Ensemble([Member(surrogates[f], objectives[f], weights[f]) for f in rest])
    photos, info = {}, {}
    for row, target in targets.items():
        _log(f"protect against {row}")
        single = not isinstance(target, Ensemble)
        res = protect(photo, target, objectives[row] if single else None, dsp, loop)
        photos[row] = eff.quantize(res.protected)
        hist = res.history
        info[row] = {
            "members": [row] if single else [m["label"] for m in res.members],
            "weights": None if single else [m["weight"] for m in res.members],
            "objective": res.settings["losses"],
            "working_size": res.settings["working_size"],
            "loss": {"first": hist[0]["loss"], "last": hist[-1]["loss"]} if hist else None,
            "linf_255": res.linf[0],
            "psnr_db": res.psnr[0],
            "protect_seconds": round(res.seconds, 2),
        }
    photos["uniform_noise"] = eff.quantize(eff.uniform_noise(photo, args.eps, args.seed + 1))
    photos["sign_noise"] = eff.quantize(eff.sign_noise(photo, args.eps, args.seed + 2))
    return photos, info


def verify_matrix(surrogates: dict, photo: torch.Tensor, photos: dict, args) -> dict:
    """{row: {verifying family: drift figures}} (the drift of each photo's video from the clean photo's)."""
    matrix: dict[str, dict] = {row: {} for row in photos}
    for fam, s in surrogates.items():
        _log(f"verify on {fam}")
        clean_v = eff.video_of(s, photo, gen_steps=args.gen_steps, seed=args.seed, frames=args.frames)
        for row, img in photos.items():
            vid = eff.video_of(s, img, gen_steps=args.gen_steps, seed=args.seed, frames=args.frames)
            matrix[row][fam] = eff.drift_of(s, clean_v, vid, seed=args.seed)
    for row in matrix:
        for fam, d in matrix[row].items():
            noise = matrix["uniform_noise"][fam][DISRUPTION]
            d["over_noise"] = eff._sig(d[DISRUPTION] / noise) if noise > 0 else None
            d["white_box"] = row == fam
    return matrix


def _cell(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return f"{value:.{digits}g}"


def markdown(report: dict) -> str:
    """The disruption, over-noise and PSNR matrices as Markdown tables (diagonal cells in bold)."""
    cols = report["columns"]
    lines = [f"Rows: protected against; columns: verified on. {report['note']}", ""]
    for title, key in (("Disruption (latent_relative; larger = more drift)", DISRUPTION),
                       ("Disruption over uniform noise of the same budget (> 1: more than noise)", "over_noise"),
                       ("Video PSNR vs the clean photo's video (dB; lower = more drift)", "psnr_db")):
        lines += [f"**{title}**", "", "| protected against | " + " | ".join(cols) + " |",
                  "|---|" + "---:|" * len(cols)]
        for row in report["rows"]:
            cells = []
            for c in cols:
                d = report["matrix"][row][c]
                text = _cell(d[key])
                cells.append(f"**{text}**" if d["white_box"] else text)
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
        lines.append("")
    lines.append(f"{report['seconds']:.0f} s on {report['machine']['device']} "
                 f"(torch {report['machine']['torch']}, torch threads: {report['machine']['threads']}).")
    return "\n".join(lines) + "\n"


def text_matrix(report: dict) -> str:
    """The disruption matrix as a fixed-width table (white-box cells marked with *)."""
    cols = report["columns"]
    width = max(len(r) for r in report["rows"]) + 2
    out = ["disruption = latent_relative of the verifying family's video (rows: protected against; "
           "columns: verified on; * white-box)", " " * width + "".join(f"{c:>14}" for c in cols)]
    for row in report["rows"]:
        cells = []
        for c in cols:
            d = report["matrix"][row][c]
            cells.append(f"{_cell(d[DISRUPTION]) + ('*' if d['white_box'] else ' '):>14}")
        out.append(f"{row:<{width}}" + "".join(cells))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", default="cogvideox,wan21,svd",
                    help="comma-separated surrogate families (any registered in anti_i2v.surrogates.FAMILIES)")
    ap.add_argument("--steps", type=int, default=10, help="protect iterations (paper: 200)")
    ap.add_argument("--eps", type=float, default=16.0, help="L-inf budget in 1/255 of the [0, 1] range")
    ap.add_argument("--step-size", type=float, default=2.0, help="protect step size in 1/255")
    ap.add_argument("--size", type=int, default=64, help="side of the square test photo in pixels")
    ap.add_argument("--gen-steps", type=int, default=2, help="denoising steps of each verification video")
    ap.add_argument("--frames", type=int, default=None, help="frames per video (default: each family's)")
    ap.add_argument("--ensemble-weights", default="", help="one weight per family, e.g. '1,1,0.5' (default: 1 each)")
    ap.add_argument("--no-balanced", action="store_true",
                    help="leave out the 'ensemble-balanced' row (each member's gradient scaled to a peak of 1)")
    ap.add_argument("--held-out", action="store_true",
                    help="also protect against each ensemble of all families but one (3 families or more)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: the tiny models' operations are too small to share; on a busy "
                         "2-core machine two threads made the run 3.5x slower)")
    ap.add_argument("--out", default="bench_out/transfer", help="output folder (transfer.json, transfer.md)")
    args = ap.parse_args(argv)

    from anti_i2v.metrics import json_safe
    from anti_i2v.surrogates import FAMILIES, tiny_surrogate
    from anti_i2v.surrogates.ensemble import parse_weights

    families = [f.strip() for f in args.families.split(",") if f.strip()]
    unknown = [f for f in families if f not in FAMILIES]
    if not families or unknown:
        ap.error(f"--families: unknown {unknown or 'empty list'}; choose from {', '.join(FAMILIES)}")
    if len(set(families)) != len(families):
        ap.error(f"--families: a family is listed twice in {args.families!r}")
    if args.steps < 1:
        ap.error(f"--steps must be >= 1, got {args.steps}")
    if args.size < 16:
        ap.error(f"--size must be >= 16 pixels, got {args.size}")
    if args.gen_steps < 1:
        ap.error(f"--gen-steps must be >= 1, got {args.gen_steps}")
    if not args.eps > 0:
        ap.error(f"--eps must be > 0, got {args.eps}")
    try:
        args.weights = parse_weights(args.ensemble_weights, len(families), name="--ensemble-weights")
    except ValueError as exc:
        ap.error(str(exc))

    torch.set_num_threads(max(1, args.threads))
    t0 = time.perf_counter()
    photo = eff.quantize(eff.load_photo("astronaut", args.size))
    surrogates = {f: tiny_surrogate(f, seed=args.seed) for f in families}
    photos, info = protect_rows(surrogates, photo, args)
    matrix = verify_matrix(surrogates, photo, photos, args)
    report = {
        "note": NOTE,
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "weights")}
        | {"families": families, "ensemble_weights": list(args.weights), "photo": "astronaut"},
        "reading": (
            "rows: what the photo was protected against (a family, the ensemble of all families, "
            "'ensemble-balanced' = the same with each member's gradient scaled to a peak of 1, 'ensemble-X' = all "
            "but X, or a noise control); columns: the family whose generated video is measured; each cell is "
            "the drift of that video from the clean photo's video with the same seed: latent_relative (larger = "
            "more drift), over_noise (latent_relative / the uniform-noise control's in that column), psnr_db, ssim "
            "(lower = more drift); white_box marks protected and verified on the same family"
        ),
        "rows": list(photos),
        "columns": families,
        "matrix": matrix,
        "protection": info,
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "device": "cpu",
                    "threads": torch.get_num_threads()},
    }
    report["seconds"] = round(time.perf_counter() - t0, 1)
    report = json_safe(report)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "transfer.json").write_text(json.dumps(report, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    (out / "transfer.md").write_text(markdown(report), encoding="utf-8")
    print(text_matrix(report))
    print(f"({report['seconds']:.0f} s; {NOTE}) -> {out}")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
