"""Speed and memory of the protect loop, printed as JSON.

Measures, each in a fresh subprocess (so peak memory is the measurement's own):

* ``per_family``: seconds per iteration (median over iterations after one warm-up) and peak memory of the protect
  loop on each tiny surrogate (CPU) with its default objective;
* ``caching``: per tiny family, seconds per iteration with the target's conditioning (VAE latent, VAE-encoder
  features, image-encoder tokens) computed once per run against recomputing it every iteration (the loop before
  this change), measured in the same run, interleaved, with the ratio;
* ``early_exit``: on a CogVideoX config with 42 blocks (CPU-sized widths), IRA on block 27 + IRC 3->27, seconds per
  iteration with the early exit against the full forward, measured in the same run, interleaved, with the ratio;
* ``real_shape`` (``--real-shape``, needs a GPU): CogVideoX-5B-I2V shapes (random weights) at 480x720, bf16, with
  13 and 5 latent frames (49 and 17 video frames), with and without gradient checkpointing.

Usage: python bench/speed.py [--iters N] [--families cogvideox,wan21,svd] [--real-shape] [--out FILE]
This machine is noisy: the figures are medians; compare ratios measured in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

#: CogVideoX-5B-I2V transformer shape (public config.json of the model); weights are random here.
COGVIDEOX_5B_I2V = dict(
    num_attention_heads=48, attention_head_dim=64, in_channels=32, out_channels=16, num_layers=42,
    text_embed_dim=4096, time_embed_dim=512, sample_width=90, sample_height=60, sample_frames=49,
    patch_size=2, max_text_seq_length=226, use_learned_positional_embeddings=True,
    use_rotary_positional_embeddings=True, spatial_interpolation_scale=1.875, temporal_interpolation_scale=1.0,
)


def _peak_mb(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: KiB
    return kb / 1024.0


def _time_loop(surrogate, objective, image, iters: int, seed: int = 0, cache: bool = True) -> list[float]:
    """Seconds of each iteration of one protect run (first iteration excluded as warm-up)."""
    import torch

    from anti_i2v.dsp import DSPConfig
    from anti_i2v.protect import ProtectConfig, protect

    stamps: list[float] = []

    def cb(_p):
        if surrogate.device.type == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    t0 = time.perf_counter()
    protect(image, surrogate, objective, DSPConfig(), ProtectConfig(steps=iters + 1, seed=seed), callback=cb,
            cache_conditioning=cache)
    times = [b - a for a, b in zip([t0] + stamps[:-1], stamps)]
    return times[1:]


def child(kind: str, arg: str, iters: int) -> dict:
    import torch

    torch.manual_seed(0)
    from anti_i2v.losses import IRALoss, IRCLoss, Objective
    from anti_i2v.surrogates import tiny_surrogate

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "family":
        s = tiny_surrogate(arg, seed=0).to(device)
        h, w = s.working_size(64, 64)
        img = torch.rand(1, 3, h, w)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        before = _peak_mb(device)
        times = _time_loop(s, s.default_objective(), img, iters)
        peak = _peak_mb(device)
        return {"family": arg, "working_size": [h, w], "num_frames": s.num_frames, "num_blocks": s.num_blocks,
                "s_per_iter_median": statistics.median(times), "s_per_iter_all": times,
                "peak_memory_mb": round(peak, 1), "loop_peak_growth_mb": round(peak - before, 1),
                "memory_note": "CPU: process max RSS (torch itself ~800 MB) and its growth during the loop; "
                               "GPU: torch.cuda.max_memory_allocated",
                "device": str(device)}
    if kind == "caching":
        family, rounds = arg.split(",")
        s = tiny_surrogate(family, seed=0).to(device)
        h, w = s.working_size(64, 64)
        img = torch.rand(1, 3, h, w)
        obj = s.default_objective()
        res = {"cached": [], "naive": []}
        for _ in range(int(rounds)):
            for mode in ("cached", "naive"):
                res[mode] += _time_loop(s, obj, img, iters, cache=mode == "cached")
        c, n = statistics.median(res["cached"]), statistics.median(res["naive"])
        return {"family": family, "objective": obj.describe(), "s_per_iter_cached": c,
                "s_per_iter_recomputed_every_iteration": n, "speedup": round(n / c, 3),
                "iterations_each": len(res["cached"])}
    if kind == "early_exit":
        s = tiny_surrogate("cogvideox", seed=0, num_layers=42).to(device)
        h, w = s.working_size(64, 64)
        img = torch.rand(1, 3, h, w)
        obj = Objective((IRALoss(blocks=(27,)), IRCLoss(pairs=((3, 27),))))
        # gradient equality once
        from anti_i2v.protect import resize_to  # noqa: F401

        res = {"early": [], "full": []}
        for _ in range(int(arg)):
            for mode in ("early", "full"):
                s.early_exit = mode == "early"
                res[mode] += _time_loop(s, obj, img, iters)
        e, f = statistics.median(res["early"]), statistics.median(res["full"])
        return {"config": "CogVideoX transformer, 42 blocks, CPU-sized widths", "loss_blocks": "IRA 27 + IRC 3->27",
                "working_size": [h, w], "s_per_iter_early_exit": e, "s_per_iter_full_forward": f,
                "speedup_full_over_early": round(f / e, 3), "iterations_each": len(res["early"])}
    if kind == "real_shape":
        from anti_i2v.surrogates.cogvideox import CogVideoXSurrogate

        latent_frames, ckpt = (int(v) for v in arg.split(","))
        overrides = dict(COGVIDEOX_5B_I2V)
        layers = int(os.environ.get("ANTI_I2V_BENCH_LAYERS", "42"))  # smaller only for a CPU dry run
        overrides["num_layers"] = layers
        import inspect

        from diffusers import AutoencoderKLCogVideoX

        from anti_i2v.surrogates.cogvideox import TINY_VAE

        sig = inspect.signature(AutoencoderKLCogVideoX.__init__).parameters
        real_vae = {k: sig[k].default for k in TINY_VAE if k in sig}  # the library defaults are CogVideoX's VAE
        s = CogVideoXSurrogate.tiny(seed=0, num_frames=(latent_frames - 1) * 4 + 1, vae_config=real_vae, **overrides)
        s.dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        for m in s.modules():
            m.to(device=device, dtype=s.dtype)
        s._move_extras(device)
        s.gradient_checkpointing = bool(ckpt)
        img = torch.rand(1, 3, 480, 720)
        obj = Objective((IRALoss(blocks=(min(27, layers - 1),)), IRCLoss(pairs=((min(3, layers - 2), min(27, layers - 1)),))))
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        times = _time_loop(s, obj, img, iters)
        return {"config": f"CogVideoX-5B-I2V shapes, {layers} blocks, random weights", "size": [480, 720],
                "latent_frames": latent_frames, "video_frames": s.num_frames, "dtype": str(s.dtype),
                "gradient_checkpointing": bool(ckpt), "s_per_iter_median": statistics.median(times),
                "peak_memory_gb": round(_peak_mb(device) / 1024, 2), "device": str(device)}
    raise SystemExit(f"unknown kind {kind}")


def _run_child(kind: str, arg: str, iters: int) -> dict:
    cmd = [sys.executable, __file__, "--_child", kind, arg, "--iters", str(iters)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        return {"kind": kind, "arg": arg, "error": p.stderr.strip().splitlines()[-1:] or ["failed"]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=5, help="timed iterations per measurement (after 1 warm-up)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds for the early-exit comparison")
    ap.add_argument("--families", default="cogvideox,wan21,svd")
    ap.add_argument("--real-shape", action="store_true", help="CogVideoX-5B-I2V shapes at 480x720 (GPU)")
    ap.add_argument("--skip-early-exit", action="store_true")
    ap.add_argument("--skip-caching", action="store_true")
    ap.add_argument("--out", help="also write the JSON here")
    ap.add_argument("--_child", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._child:
        print(json.dumps(child(a._child[0], a._child[1], a.iters)))
        return
    import torch

    out = {"machine": {"python": platform.python_version(), "torch": torch.__version__,
                       "cpu_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available(),
                       "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
           "note": "tiny random-weight models: figures show relative costs, not real-model times"}
    out["per_family"] = [_run_child("family", f, a.iters) for f in a.families.split(",") if f]
    if not a.skip_caching:
        out["caching"] = [_run_child("caching", f"{f},{a.rounds}", a.iters) for f in a.families.split(",") if f]
    if not a.skip_early_exit:
        out["early_exit"] = _run_child("early_exit", str(a.rounds), a.iters)
    if a.real_shape:
        out["real_shape"] = [_run_child("real_shape", f"{lf},{ck}", a.iters) for lf in (13, 5) for ck in (0, 1)]
    text = json.dumps(out, indent=2)
    print(text)
    if a.out:
        with open(a.out, "w") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
