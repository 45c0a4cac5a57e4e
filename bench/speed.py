"""Speed and memory of the protect loop, printed as JSON.

Measures, each in a fresh subprocess (so peak memory is the measurement's own):

* ``per_family``: seconds per iteration (median over iterations after one warm-up) and peak memory of the protect
  loop on each tiny surrogate (CPU) with its default objective;
* ``caching``: per tiny family, seconds per iteration with the target's conditioning (VAE latent, VAE-encoder
  features, image-encoder tokens) computed once per run against recomputing it every iteration (the loop before
  this change), measured in the same run, interleaved, with the ratio;
* ``early_exit``: on a CogVideoX config with 42 blocks (CPU-sized widths), IRA on block 27 + IRC 3->27, seconds per
  iteration with the early exit against the full forward, measured in the same run, interleaved, with the ratio;
* ``real_shape`` (``--real-shape``): the low-VRAM mode against the naive loop, per setting (naive: every block,
  no checkpointing, all frames; early exit; early exit + checkpointing; ``--low-vram``; ``--low-vram
  --fp8-weights``), measured in the same run (``--real-shape-settings`` picks a subset; ``naive`` is always run):

  - on a GPU, CogVideoX-5B-I2V shapes (random weights) at 480x720 in bf16, 49 frames for the naive settings:
    s/iteration, projected minutes per photo (200 iterations), peak ``torch.cuda.max_memory_allocated``;
  - on a CPU, a scaled-down real-width CogVideoX (real block width 3072, real text width 4096, 4 blocks, 128x192,
    17 frames; a small VAE): s/iteration, the bytes autograd keeps for backward (deterministic), and the process
    RSS growth checked against :func:`anti_i2v.lowvram.estimate`'s prediction, and the bytes of weights the
    model computes with on the device before, during and after the loop (:func:`anti_i2v.lowvram.weight_bytes_on`;
    with fp8 on a CPU the originals stay in the same RAM, on a GPU they wait on the CPU); then the memory model,
    calibrated on that block, projects the real shapes (42 blocks, 480x720, bf16) per setting, with the FLOP
    count per iteration and the minutes per photo it implies at an assumed 400 TFLOP/s (40 % of an H100's bf16
    peak).

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


def _time_loop(surrogate, objective, image, iters: int, seed: int = 0, cache: bool = True,
               low_vram=False, probe=None) -> list[float]:
    """Seconds of each iteration of one protect run (first iteration excluded as warm-up).

    ``low_vram``: False, True or a :class:`anti_i2v.lowvram.LowVram`; ``probe``: called once, after the first
    iteration (inside the run), e.g. to measure what the run holds."""
    import torch

    from anti_i2v.dsp import DSPConfig
    from anti_i2v.protect import ProtectConfig, protect

    stamps: list[float] = []

    def cb(_p):
        if surrogate.device.type == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())
        if probe is not None and len(stamps) == 1:
            probe()
            stamps[0] = time.perf_counter()  # the probe's time is not the iteration's

    t0 = time.perf_counter()
    protect(image, surrogate, objective, DSPConfig(), ProtectConfig(steps=iters + 1, seed=seed), callback=cb,
            cache_conditioning=cache, low_vram=low_vram or None)
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
    if kind == "real_width_cpu":
        return _real_width_cpu(arg, iters)
    if kind == "real_shape":
        from anti_i2v.surrogates.cogvideox import CogVideoXSurrogate

        name = arg
        early, ckpt, low = next((e, c, lv) for n, e, c, lv in REAL_SHAPE_SETTINGS if n == name)
        low = _low_vram_setting(name, low)
        latent_frames = 13
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
        s.early_exit = bool(early)
        img = torch.rand(1, 3, 480, 720)
        obj = Objective((IRALoss(blocks=(min(27, layers - 1),)), IRCLoss(pairs=((min(3, layers - 2), min(27, layers - 1)),))))
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        from anti_i2v import lowvram

        during = {}
        before_w = lowvram.weight_bytes_on(s.modules(), device)
        times = _time_loop(s, obj, img, iters, low_vram=low,
                           probe=lambda: during.setdefault("b", lowvram.weight_bytes_on(s.modules(), device)))
        med = statistics.median(times)
        return {"setting": name, "config": f"CogVideoX-5B-I2V shapes, {layers} blocks, random weights",
                "size": [480, 720], "video_frames": 9 if low else s.num_frames, "dtype": str(s.dtype),
                "early_exit": early, "gradient_checkpointing": bool(ckpt), "low_vram": bool(low),
                "fp8_weights": name.endswith("+fp8"),
                "weights_on_device_gb": {"before": round(before_w / 2**30, 2),
                                         "during_run": round(during.get("b", 0) / 2**30, 2),
                                         "after": round(lowvram.weight_bytes_on(s.modules(), device) / 2**30, 2)},
                "s_per_iter_median": med, "projected_minutes_per_photo": round(200 * med / 60, 2),
                "peak_memory_gb": round(_peak_mb(device) / 1024, 2), "device": str(device)}
    raise SystemExit(f"unknown kind {kind}")


#: the settings ``--real-shape`` compares: (name, early exit, gradient checkpointing, low-VRAM mode)
REAL_SHAPE_SETTINGS = (("naive", False, False, False), ("early_exit", True, False, False),
                       ("early_exit+checkpointing", True, True, False), ("low_vram", True, True, True),
                       ("low_vram+fp8", True, True, True))


def _low_vram_setting(name: str, low: bool):
    """What ``protect(low_vram=)`` gets for a setting: False, True, or LowVram(fp8=True) for ``*+fp8``."""
    if low and name.endswith("+fp8"):
        from anti_i2v.lowvram import LowVram

        return LowVram(fp8=True)
    return low


def _rss_sampler():
    """Start a thread sampling this process's RSS every 20 ms; returns (stop() -> peak bytes, baseline bytes)."""
    import threading

    page = os.sysconf("SC_PAGE_SIZE")

    def rss() -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * page

    base = rss()
    peak = [base]
    done = threading.Event()

    def run():
        while not done.is_set():
            peak[0] = max(peak[0], rss())
            done.wait(0.02)

    th = threading.Thread(target=run, daemon=True)
    th.start()

    def stop() -> int:
        done.set()
        th.join()
        return max(peak[0], rss())

    return stop, base


def _flops_per_iteration(*, hidden: int, block_params: float, tokens: int, blocks_run: int, checkpointing: bool) -> float:
    """Denoiser FLOPs of one iteration: target forward (no grad) + adversarial forward + backward (2x forward),
    + one more forward of the blocks with checkpointing. Per block forward: 2 * params * tokens (matmuls) +
    4 * tokens^2 * hidden (attention scores and values)."""
    fwd = blocks_run * (2.0 * block_params * tokens + 4.0 * tokens**2 * hidden)
    return fwd * (1 + 1 + 2 + (1 if checkpointing else 0))


def _real_width_cpu(name: str, iters: int) -> dict:
    """One setting on the scaled-down real-width CogVideoX (CPU)."""
    import torch

    from anti_i2v import lowvram
    from anti_i2v.losses import IRALoss, IRCLoss, Objective
    from anti_i2v.surrogates.cogvideox import TINY_VAE, CogVideoXSurrogate

    early, ckpt, low = next((e, c, lv) for n, e, c, lv in REAL_SHAPE_SETTINGS if n == name)
    low = _low_vram_setting(name, low)
    cfg = dict(COGVIDEOX_5B_I2V)
    cfg.update(num_layers=4, sample_height=16, sample_width=24)
    vae = dict(TINY_VAE)  # a small 8x VAE with CogVideoX's 16 latent channels: the transformer is what is measured
    vae.update(block_out_channels=(8, 8, 8, 8), down_block_types=("CogVideoXDownBlock3D",) * 4,
               up_block_types=("CogVideoXUpBlock3D",) * 4, latent_channels=16, sample_height=128, sample_width=192)
    s = CogVideoXSurrogate.tiny(seed=0, num_frames=17, vae_config=vae, **cfg)
    s.early_exit, s.gradient_checkpointing = early, ckpt
    obj = Objective((IRALoss(blocks=(1,)), IRCLoss(pairs=((0, 1),))))
    img = torch.rand(1, 3, 128, 192, generator=torch.Generator().manual_seed(0))
    hidden = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    block_params = float(sum(p.numel() for p in s.denoiser_blocks()[0][1].parameters()))
    frames = lowvram.plan(s, obj).frames if low else s.num_frames
    # bytes autograd keeps for one adversarial pass at this setting (deterministic)
    req = obj.request()
    saved_frames = s.num_frames
    s.num_frames = frames
    s.gradient_checkpointing = ckpt
    x = img.clone().requires_grad_(True)
    draw = s.draw_noise(1, torch.Generator().manual_seed(0), size=(128, 192))
    clean = s.clean_latent(s.encode_image(img))
    with torch.enable_grad():
        _, kept = lowvram.saved_bytes(lambda: s.features(None, draw, req, clean=clean,
                                                         cond=s.encode_image(x, req.vae_layers)), s.modules())
    tokens = s.latent_frames() * (128 // 16) * (192 // 16) + cfg["max_text_seq_length"]
    s.num_frames = saved_frames
    x = clean = None  # free before the timed loop
    cpu = torch.device("cpu")
    blocks_run = 2 if early else cfg["num_layers"]
    blocks = [m for _, m in s.denoiser_blocks()][:blocks_run]
    before_w, before_b = lowvram.weight_bytes_on(s.modules(), cpu), lowvram.weight_bytes_on(blocks, cpu)
    during: dict = {}

    def probe():
        during["all"] = lowvram.weight_bytes_on(s.modules(), cpu)
        during["blocks"] = lowvram.weight_bytes_on(blocks, cpu)

    stop, base = _rss_sampler()
    times = _time_loop(s, obj, img, iters, low_vram=low, probe=probe)
    peak = stop()
    return {"setting": name, "frames": frames, "tokens": tokens, "blocks_run": blocks_run, "hidden": hidden,
            "block_params": block_params, "s_per_iter_median": statistics.median(times), "iterations": len(times),
            "saved_for_backward_mb": round(kept / 2**20, 1), "rss_growth_mb": round((peak - base) / 2**20, 1),
            "fp8_weights": name.endswith("+fp8"),
            "weights_on_device_mb": {"before": round(before_w / 2**20, 1),
                                     "during_run": round(during.get("all", 0) / 2**20, 1),
                                     "after": round(lowvram.weight_bytes_on(s.modules(), cpu) / 2**20, 1)},
            "blocks_run_weights_mb": {"before": round(before_b / 2**20, 1),
                                      "during_run": round(during.get("blocks", 0) / 2**20, 1)}}


def _real_shape_report(rows: list[dict]) -> dict:
    """Calibrate the memory model on the CPU rows and project CogVideoX-5B-I2V at 480x720 per setting."""
    from anti_i2v import lowvram

    by = {r["setting"]: r for r in rows if "error" not in r}
    out: dict = {"measured": rows}
    if "naive" not in by:
        return out
    n = by["naive"]
    # elements kept per token per hidden unit per block run, without checkpointing (fp32 on the CPU: 4 bytes)
    act = n["saved_for_backward_mb"] * 2**20 / (4 * n["tokens"] * n["hidden"] * n["blocks_run"])
    out["act_per_token_hidden"] = round(act, 2)
    checks = []
    for r in by.values():
        _, early, ckpt, low = next(t for t in REAL_SHAPE_SETTINGS if t[0] == r["setting"])
        est = lowvram.estimate(num_layers=4, hidden=r["hidden"], block_params=r["block_params"], other_params=0,
                               tokens=r["tokens"], deepest=r["blocks_run"] - 1, bytes_per_element=4,
                               act_per_token_hidden=act, checkpointing=ckpt, offload_unused=True,
                               fp8=r["setting"].endswith("+fp8"))
        checks.append({"setting": r["setting"],
                       "predicted_saved_mb": round(est.saved_activations_gb * 1024, 1),
                       "saved_for_backward_mb": r["saved_for_backward_mb"],
                       "predicted_peak_activation_mb": round((est.saved_activations_gb + est.transient_gb) * 1024, 1),
                       "rss_growth_mb": r["rss_growth_mb"],
                       "s_per_iter_median": r["s_per_iter_median"],
                       "s_per_iter_ratio_naive_over_this": round(n["s_per_iter_median"] / r["s_per_iter_median"], 2)})
        if "blocks_run_weights_mb" in r:  # the model counts whole blocks at 1 byte with fp8; norms stay float32
            checks[-1]["weights_on_device_mb"] = r["weights_on_device_mb"]
            checks[-1]["blocks_run_weights_mb"] = r["blocks_run_weights_mb"]
            checks[-1]["predicted_blocks_run_weights_mb"] = round(est.weights_gb * 1024, 1)
    out["cpu_model_check"] = checks
    real = dict(COGVIDEOX_5B_I2V)
    hidden = real["num_attention_heads"] * real["attention_head_dim"]
    block_params = n["block_params"]
    other = 0.35e9  # patch/time embeddings, final norm and projection (~0.15B) + the VAE encoder (~0.2B)
    proj = []
    for name, early, ckpt, low in REAL_SHAPE_SETTINGS:
        latent_frames = 3 if low else 13  # 9 and 49 video frames
        tokens = latent_frames * 30 * 45 + real["max_text_seq_length"]
        deepest = 27 if early else real["num_layers"] - 1
        est = lowvram.estimate(num_layers=real["num_layers"], hidden=hidden, block_params=block_params,
                               other_params=other, tokens=tokens, deepest=deepest, bytes_per_element=2,
                               act_per_token_hidden=act, checkpointing=ckpt, offload_unused=low,
                               fp8=name.endswith("+fp8"))
        flops = _flops_per_iteration(hidden=hidden, block_params=block_params, tokens=tokens,
                                     blocks_run=deepest + 1, checkpointing=ckpt)
        proj.append({"setting": name, "video_frames": (latent_frames - 1) * 4 + 1, **est.describe(),
                     "tflop_per_iteration": round(flops / 1e12, 1),
                     "projected_minutes_per_photo_at_400_tflops": round(200 * flops / 400e12 / 60, 1)})
    out["projected_cogvideox_5b_480x720_bf16"] = proj
    # Wan 2.1 I2V 14B at 480x832 (40 blocks of width 5120, ~0.35 B parameters each; CLIP ViT-H + VAE encoder +
    # embeddings ~0.8 B), 81 frames (21 latent) or the low-VRAM 5 (2 latent), 1560 tokens per latent frame. The
    # activation constant is CogVideoX's (Wan's feed-forward is narrower: 2.7x the width against 4x, so fewer).
    wan = []
    for name, early, ckpt, low in REAL_SHAPE_SETTINGS:
        latent_frames = 2 if low else 21
        tokens = latent_frames * 30 * 52
        deepest = 26 if early else 39
        est = lowvram.estimate(num_layers=40, hidden=5120, block_params=0.35e9, other_params=0.8e9, tokens=tokens,
                               deepest=deepest, bytes_per_element=2, act_per_token_hidden=act, checkpointing=ckpt,
                               offload_unused=low, fp8=name.endswith("+fp8"))
        flops = _flops_per_iteration(hidden=5120, block_params=0.35e9, tokens=tokens, blocks_run=deepest + 1,
                                     checkpointing=ckpt)
        wan.append({"setting": name, "video_frames": (latent_frames - 1) * 4 + 1, **est.describe(),
                    "tflop_per_iteration": round(flops / 1e12, 1),
                    "projected_minutes_per_photo_at_400_tflops": round(200 * flops / 400e12 / 60, 1)})
    out["projected_wan21_14b_480x832_bf16"] = wan
    out["projection_note"] = ("memory: the model calibrated on the real-width block above (weights + activations kept "
                              "for backward + one live block; VAE-encoder activations not included); time: FLOPs "
                              "at an assumed 400 TFLOP/s, not a measurement. Run --real-shape on a GPU to measure.")
    return out


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
    ap.add_argument("--real-shape", action="store_true",
                    help="low-VRAM settings against the naive loop: real shapes on a GPU; on a CPU a real-width "
                         "model with few blocks, the memory model checked and projected to real shapes")
    ap.add_argument("--only-real-shape", action="store_true", help="skip the tiny-model measurements")
    ap.add_argument("--real-shape-settings", default=",".join(n for n, *_ in REAL_SHAPE_SETTINGS),
                    help="comma-separated subset of the real-shape settings to measure (naive is always measured: "
                         "the ratios are against it)")
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
    if not a.only_real_shape:
        out["per_family"] = [_run_child("family", f, a.iters) for f in a.families.split(",") if f]
        if not a.skip_caching:
            out["caching"] = [_run_child("caching", f"{f},{a.rounds}", a.iters) for f in a.families.split(",") if f]
        if not a.skip_early_exit:
            out["early_exit"] = _run_child("early_exit", str(a.rounds), a.iters)
    if a.real_shape or a.only_real_shape:
        known = [n for n, *_ in REAL_SHAPE_SETTINGS]
        wanted = [n.strip() for n in a.real_shape_settings.split(",") if n.strip()]
        bad = [n for n in wanted if n not in known]
        if bad:
            raise SystemExit(f"--real-shape-settings: unknown {', '.join(bad)} (allowed: {', '.join(known)})")
        chosen = [n for n in known if n == "naive" or n in wanted]
        if torch.cuda.is_available():
            rows = [_run_child("real_shape", n, a.iters) for n in chosen]
            naive = next((r for r in rows if r.get("setting") == "naive" and "error" not in r), None)
            for r in rows:
                if naive and "error" not in r:
                    r["ratio_naive_s_over_this"] = round(naive["s_per_iter_median"] / r["s_per_iter_median"], 2)
                    r["ratio_naive_memory_over_this"] = round(naive["peak_memory_gb"] / r["peak_memory_gb"], 2)
            out["real_shape"] = rows
        else:
            out["real_shape"] = _real_shape_report([_run_child("real_width_cpu", n, a.iters) for n in chosen])
    text = json.dumps(out, indent=2)
    print(text)
    if a.out:
        with open(a.out, "w") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
