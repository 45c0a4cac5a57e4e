"""Low-VRAM mode (anti_i2v.lowvram): the plan, its effect on memory, and that it leaves results and models alone."""

from __future__ import annotations

import json

import pytest
import torch

from anti_i2v import lowvram
from anti_i2v.losses import DiffusionLoss, IRALoss, IRCLoss, Objective
from anti_i2v.protect import ProtectConfig, protect
from anti_i2v.surrogates import tiny_surrogate


def _state(s):
    return {k: v.clone() for m in s.modules() for k, v in m.state_dict().items()}


def _adv_pass_bytes(s, obj, ckpt: bool) -> int:
    req = obj.request()
    img = torch.rand(1, 3, *s.working_size(40, 56), generator=torch.Generator().manual_seed(0), requires_grad=True)
    draw = s.draw_noise(1, torch.Generator().manual_seed(0), size=img.shape[-2:])
    clean = s.clean_latent(s.encode_image(img.detach()))
    s.gradient_checkpointing = ckpt
    try:
        with torch.enable_grad():
            _, nb = lowvram.saved_bytes(lambda: s.features(None, draw, req, clean=clean,
                                                          cond=s.encode_image(img, req.vae_layers)), s.modules())
    finally:
        s.gradient_checkpointing = False
    return nb


def test_plan_frames_per_family():
    cog = tiny_surrogate("cogvideox", num_frames=13)
    wan = tiny_surrogate("wan21", num_frames=9)
    svd = tiny_surrogate("svd", num_frames=8)
    assert lowvram.plan(cog, cog.default_objective()).frames == lowvram.FRAMES["cogvideox"] == 9
    assert lowvram.plan(wan, wan.default_objective()).frames == 5  # Wan needs 4k + 1
    assert lowvram.plan(svd, svd.default_objective()).frames == 6
    # never more frames than the surrogate already had, and the user's explicit choice wins (snapped to 4k + 1)
    small = tiny_surrogate("cogvideox", num_frames=5)
    assert lowvram.plan(small, small.default_objective()).frames == 5
    assert lowvram.plan(wan, wan.default_objective(), lowvram.LowVram(frames=8)).frames == 5
    with pytest.raises(ValueError, match="low_vram frames"):
        lowvram.LowVram(frames=0)


def test_plan_offloads_only_what_the_iteration_never_runs():
    s = tiny_surrogate("cogvideox", num_layers=6)
    obj = Objective((IRALoss(blocks=(3,)), IRCLoss(pairs=((1, 3),))))
    p = lowvram.plan(s, obj)
    names = [n for n, _ in s.denoiser_blocks()]
    assert p.deepest_block == 3
    assert p.offloaded == [f"denoiser.{names[4]}", f"denoiser.{names[5]}", "vae.decoder"]
    # a loss that reads the denoiser's output runs every block: none may leave the device
    p2 = lowvram.plan(s, obj + DiffusionLoss())
    assert p2.offloaded == ["vae.decoder"]
    assert "every block runs" in p2.note
    assert lowvram.plan(s, obj, lowvram.LowVram(offload_unused=False)).offloaded == []


def test_offloaded_blocks_are_never_called_and_everything_is_restored():
    s = tiny_surrogate("cogvideox", num_layers=6, num_frames=13)
    obj = Objective((IRALoss(blocks=(3,)), IRCLoss(pairs=((1, 3),))))
    before = _state(s)
    flags = [p.requires_grad for m in s.modules() for p in m.parameters()]
    calls = {"late": 0}
    handles = [m.register_forward_pre_hook(lambda *_: calls.__setitem__("late", calls["late"] + 1))
               for i, (_, m) in enumerate(s.denoiser_blocks()) if i > 3]
    try:
        r = protect(torch.rand(1, 3, 40, 56), s, obj, config=ProtectConfig(steps=2), low_vram=True)
    finally:
        for h in handles:
            h.remove()
    assert calls["late"] == 0
    lv = r.settings["low_vram"]
    assert lv["frames"] == 9 and lv["frames_before"] == 13 and lv["gradient_checkpointing"] is True
    assert r.settings["surrogate"]["num_frames"] == 9  # the report states the frames attacked
    assert any("9 video frames attacked instead of 13" in n for n in r.settings["notes"])
    json.dumps(r.report())
    # the surrogate leaves as it came: frames, flags, weights, grad flags
    assert (s.num_frames, s.gradient_checkpointing, s.early_exit) == (13, False, True)
    after = _state(s)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert flags == [p.requires_grad for m in s.modules() for p in m.parameters()]


def test_offload_moves_and_restores(monkeypatch):
    """The move itself (a GPU matter) is recorded here with a stand-in device: out before the loop, back after."""
    s = tiny_surrogate("cogvideox", num_layers=6)
    obj = Objective((IRALoss(blocks=(3,)),))
    moves: list[tuple[str, str]] = []
    blocks = dict(s.denoiser_blocks())
    watched = {f"denoiser.{n}": m for n, m in blocks.items()} | {"vae.decoder": s.vae.decoder}
    for name, m in watched.items():
        monkeypatch.setattr(m, "to", lambda dev, name=name: moves.append((name, str(dev))), raising=False)
    with lowvram.applied(s, obj, lowvram.LowVram(offload_device="meta")) as p:
        assert sorted(moves) == sorted((n, "meta") for n in p.offloaded)
        moves.clear()
    assert sorted(moves) == sorted((n, "cpu") for n in p.offloaded)


def test_low_vram_changes_nothing_but_memory_at_equal_frames():
    """Checkpointing and offloading are exact: same frames, same seed -> the same protected photo (fp32 CPU)."""
    s = tiny_surrogate("cogvideox", num_layers=6)
    obj = Objective((IRALoss(blocks=(3,)), IRCLoss(pairs=((1, 3),))))
    img = torch.rand(1, 3, 40, 56, generator=torch.Generator().manual_seed(3))
    cfg = ProtectConfig(steps=3, seed=5)
    a = protect(img, s, obj, config=cfg)
    b = protect(img, s, obj, config=cfg, low_vram=lowvram.LowVram(frames=s.num_frames))
    # recomputation repeats the same float32 ops; 1e-6 leaves room for a different summation order on other CPUs
    assert torch.allclose(a.protected, b.protected, atol=1e-6, rtol=0)
    assert a.settings["low_vram"] is None and b.settings["low_vram"]["frames"] == s.num_frames


@pytest.mark.parametrize("family", ["cogvideox", "wan21", "svd"])
def test_checkpointing_keeps_fewer_bytes_for_backward(family):
    s = tiny_surrogate(family)
    obj = s.default_objective()
    naive = _adv_pass_bytes(s, obj, ckpt=False)
    ckpt = _adv_pass_bytes(s, obj, ckpt=True)
    assert 0 < ckpt < naive  # measured: cogvideox 0.35x, wan21 0.79x, svd 0.78x of the naive bytes


def test_estimate_orders_the_settings():
    kw = dict(num_layers=42, hidden=3072, block_params=1.2e8, other_params=6e8, tokens=17776, deepest=27,
              act_per_token_hidden=20.0)
    naive = lowvram.estimate(checkpointing=False, offload_unused=False, **kw)
    ck = lowvram.estimate(checkpointing=True, offload_unused=False, **kw)
    low = lowvram.estimate(checkpointing=True, offload_unused=True, **kw)
    assert low.total_gb < ck.total_gb < naive.total_gb
    assert low.weights_gb < ck.weights_gb == naive.weights_gb
    assert low.blocks_run == 28 and low.describe()["tokens"] == 17776


def test_cli_low_vram(tmp_path):
    from PIL import Image

    from anti_i2v.cli import main

    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray((torch.rand(40, 56, 3) * 255).byte().numpy()).save(src / "a.png")
    out = tmp_path / "out"
    rc = main(["protect", str(src), "--out", str(out), "--demo", "--steps", "2", "--low-vram", "--quiet",
               "--frames", "5"])
    assert rc == 0
    rep = json.loads((out / "a.report.json").read_text())
    lv = rep["settings"]["low_vram"]
    assert lv["frames"] == 5 and lv["gradient_checkpointing"] is True


def test_real_shape_report_calibrates_and_projects():
    """bench/speed.py --real-shape's pure part: the model calibrated on measured rows, projected to real shapes."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "speed.py"
    spec = importlib.util.spec_from_file_location("bench_speed", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    base = dict(hidden=3072, block_params=1.3e8, rss_growth_mb=0.0)
    rows = [dict(base, setting="naive", tokens=706, blocks_run=4, s_per_iter_median=4.0, saved_for_backward_mb=400.0),
            dict(base, setting="early_exit", tokens=706, blocks_run=2, s_per_iter_median=2.5, saved_for_backward_mb=200.0),
            dict(base, setting="early_exit+checkpointing", tokens=706, blocks_run=2, s_per_iter_median=3.0,
                 saved_for_backward_mb=20.0),
            dict(base, setting="low_vram", tokens=514, blocks_run=2, s_per_iter_median=2.0, saved_for_backward_mb=15.0)]
    rep = mod._real_shape_report(rows)
    act = 400.0 * 2**20 / (4 * 706 * 3072 * 4)
    assert rep["act_per_token_hidden"] == pytest.approx(act, abs=0.01)
    proj = {p["setting"]: p for p in rep["projected_cogvideox_5b_480x720_bf16"]}
    assert proj["low_vram"]["total_gb"] < proj["early_exit+checkpointing"]["total_gb"] < proj["naive"]["total_gb"]
    assert proj["low_vram"]["tflop_per_iteration"] < proj["early_exit"]["tflop_per_iteration"] < \
        proj["naive"]["tflop_per_iteration"]
    assert proj["low_vram"]["video_frames"] == 9 and proj["naive"]["video_frames"] == 49
    assert [c["s_per_iter_ratio_naive_over_this"] for c in rep["cpu_model_check"]] == [1.0, 1.6, 1.33, 2.0]
    wan = {p["setting"]: p for p in rep["projected_wan21_14b_480x832_bf16"]}
    assert wan["low_vram"]["total_gb"] < wan["early_exit+checkpointing"]["total_gb"] < wan["naive"]["total_gb"]
    assert wan["low_vram"]["video_frames"] == 5 and wan["low_vram"]["blocks_run"] == 27
    # the fp8 row: the same activations, the blocks run at 1 byte per weight instead of 2 (bf16)
    for table in (proj, wan):
        lv, f8 = table["low_vram"], table["low_vram+fp8"]
        assert f8["saved_activations_gb"] == lv["saved_activations_gb"] and f8["weights_gb"] < lv["weights_gb"]
    assert wan["low_vram"]["weights_gb"] - wan["low_vram+fp8"]["weights_gb"] == pytest.approx(
        27 * 0.35e9 / 2**30, abs=0.01)


def test_saved_bytes_counts_activations_not_weights():
    lin = torch.nn.Linear(64, 64)
    x = torch.rand(8, 64, requires_grad=True)
    _, with_w = lowvram.saved_bytes(lambda: torch.tanh(lin(x)).sum())
    _, without_w = lowvram.saved_bytes(lambda: torch.tanh(lin(x)).sum(), [lin])
    weight = lin.weight.numel() * 4
    assert with_w - without_w == weight  # the weight's storage, counted once, and only when not excluded
    assert without_w >= 8 * 64 * 4  # tanh's output (and the input) are real activations


# ---------------------------------------------------------------------------------------------- fp8 weights
def _user_state(s):
    """Everything fp8 must leave as it found: Parameter objects, storage, dtype, device, grad flags, hooks."""
    out = []
    for root in s.modules():
        for name, m in root.named_modules():
            hooks = tuple(len(getattr(m, a)) for a in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks"))
            out.append((name, type(m).__name__, "forward" in m.__dict__, hooks))
            for k, p in m._parameters.items():
                if p is not None:
                    out.append((name, k, id(p), p.untyped_storage().data_ptr(), p.dtype, p.device, tuple(p.shape),
                                p.requires_grad))
    return out


def _fp8_grad(s, obj, fp8: bool):
    """The objective's gradient w.r.t. the photo at one fixed draw, with or without fp8 weights (same frames)."""
    img = torch.rand(1, 3, *s.working_size(40, 56), generator=torch.Generator().manual_seed(0))
    draw = s.draw_noise(1, torch.Generator().manual_seed(0), size=img.shape[-2:])
    settings = lowvram.LowVram(frames=s.num_frames, fp8=fp8, gradient_checkpointing=False)
    with lowvram.applied(s, obj, settings) as p, torch.enable_grad():
        clean = s.clean_latent(s.encode_image(img))
        tgt = s.features(torch.full_like(img, 0.5), draw, obj.target_request(), clean=clean)
        x = img.clone().requires_grad_(True)
        loss = obj.evaluate(s.features(x, draw, obj.request(), clean=clean), tgt)[0]
        (g,) = torch.autograd.grad(loss, x)
    return g, p


@pytest.mark.parametrize("family", ["cogvideox", "wan21"])
def test_fp8_gradient_close_to_full_precision(family):
    """e4m3 keeps 3 mantissa bits (each weight moves by up to 1/16 of itself, randomly signed), so the gradient is
    not equal but points the same way: measured cosine 0.9991 (Wan) and 1.0000 (CogVideoX, where the VAE path
    dominates) on these tiny models; 0.99 leaves room for other CPUs and seeds, while a sign error, a missing
    scale or a dropped input gradient gives ~0 or negative."""
    s = tiny_surrogate(family)
    obj = Objective((IRALoss(blocks=(1,)), IRCLoss(pairs=((0, 1),))))
    g0, p0 = _fp8_grad(s, obj, fp8=False)
    g1, p1 = _fp8_grad(s, obj, fp8=True)
    assert p0.fp8 is None and p1.fp8["applied"] and p1.fp8["layers"] > 0 and p1.fp8["blocks"] == 2
    assert torch.isfinite(g1).all() and g1.abs().sum() > 0
    assert not torch.equal(g0, g1)  # the fp8 weights were really used
    cos = torch.nn.functional.cosine_similarity(g0.flatten(), g1.flatten(), dim=0)
    assert cos > 0.99, float(cos)


def test_fp8_weights_are_what_the_run_holds_and_come_back_bit_exact():
    s = tiny_surrogate("cogvideox", num_layers=4)
    obj = Objective((IRALoss(blocks=(1,)), IRCLoss(pairs=((0, 1),))))
    blocks = [m for _, m in s.denoiser_blocks()]
    run, rest = blocks[:2], blocks[2:]
    linears = [m for b in run for m in b.modules() if isinstance(m, torch.nn.Linear)]
    state, before = _user_state(s), _state(s)
    plain = lowvram.weight_bytes_on(run, "cpu")
    linear_bytes = sum(m.weight.numel() * m.weight.element_size() for m in linears)
    numel = [m.weight.numel() for m in linears]
    seen = {}

    def measure(_progress):
        if not seen:  # during the run: the blocks run hold the fp8 weights + scales, not the float32 originals
            seen["bytes"] = lowvram.weight_bytes_on(run, "cpu")
            seen["registered"] = sum(m.weight.untyped_storage().nbytes() for m in linears)
            got = [lowvram.fp8_weight(m) for m in linears]
            seen["dtypes"] = {q.dtype for q, _ in got}
            seen["fp8"] = sum(q.numel() * q.element_size() + sc.numel() * sc.element_size() for q, sc in got)
            seen["numel"] = [q.numel() for q, _ in got] == numel
            seen["late"] = [lowvram.fp8_weight(m) for b in rest for m in b.modules()]

    r = protect(torch.rand(1, 3, 40, 56), s, obj, config=ProtectConfig(steps=2), callback=measure,
                low_vram=lowvram.LowVram(fp8=True))
    assert seen["dtypes"] == {torch.float8_e4m3fn} and seen["numel"] and seen["registered"] == 0
    assert seen["late"] == [None] * len(seen["late"])  # blocks past the deepest used one are not converted
    # 1 byte per weight + one float32 scale per output row, instead of 4 bytes per weight (float32 on the CPU)
    assert seen["bytes"] == plain - linear_bytes + seen["fp8"]
    assert seen["fp8"] == linear_bytes // 4 + sum(m.out_features * 4 for m in linears)
    fp8 = r.settings["low_vram"]["fp8"]
    assert fp8["applied"] and fp8["dtype"] == "float8_e4m3fn" and fp8["layers"] == len(linears)
    assert fp8["weight_bytes_on_device"] == seen["fp8"] and fp8["original_bytes"] == linear_bytes
    assert any("fp8 weights: " in n for n in r.settings["notes"])
    json.dumps(r.report())
    # afterwards: the same Parameter objects on the same storage, bit-exact values, flags, hooks, no instance forward
    assert _user_state(s) == state
    after = _state(s)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert lowvram.weight_bytes_on(run, "cpu") == plain and all(lowvram.fp8_weight(m) is None for m in linears)


@pytest.mark.parametrize("how", ["raise", "cancel"])
def test_fp8_weights_restored_when_the_loop_stops_mid_run(how):
    s = tiny_surrogate("wan21")
    obj = Objective((IRALoss(blocks=(1,)),))
    state, before = _user_state(s), _state(s)

    def stop(progress):
        if progress.step == 1:
            assert lowvram.fp8_weight(s.denoiser_blocks()[0][1].attn1.to_q) is not None  # mid-run: converted
            if how == "raise":
                raise RuntimeError("stop here")
            return False

    if how == "raise":
        with pytest.raises(RuntimeError, match="stop here"):
            protect(torch.rand(1, 3, 32, 32), s, obj, config=ProtectConfig(steps=3), callback=stop,
                    low_vram=lowvram.LowVram(fp8=True))
    else:
        r = protect(torch.rand(1, 3, 32, 32), s, obj, config=ProtectConfig(steps=3), callback=stop,
                    low_vram=lowvram.LowVram(fp8=True))
        assert r.cancelled and r.settings["low_vram"]["fp8"]["applied"]
    assert _user_state(s) == state
    after = _state(s)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_fp8_is_not_applied_in_an_ensemble():
    """Members move between devices per turn: fp8 is dropped for them, and the report says so."""
    from anti_i2v.protect import Ensemble, Member

    a, b = tiny_surrogate("wan21"), tiny_surrogate("wan21", seed=1)
    obj = Objective((IRALoss(blocks=(0,)),))
    before = _state(a)
    r = protect(torch.rand(1, 3, 32, 32), Ensemble([Member(a, obj), Member(b, obj)]), None,
                config=ProtectConfig(steps=1), low_vram=lowvram.LowVram(fp8=True))
    assert all(plan["fp8"] is None for plan in r.settings["low_vram"].values())
    assert sum("fp8 weights are not applied in an ensemble" in n for n in r.settings["notes"]) == 2
    after = _state(a)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_fp8_estimate_counts_one_byte_per_block_weight():
    kw = dict(num_layers=40, hidden=5120, block_params=0.35e9, other_params=0.8e9, tokens=3120, deepest=26,
              act_per_token_hidden=24.0, checkpointing=True, offload_unused=True)
    bf16 = lowvram.estimate(**kw)
    fp8 = lowvram.estimate(fp8=True, **kw)
    gib = 2.0**30
    assert bf16.weights_gb == pytest.approx((27 * 0.35e9 + 0.8e9) * 2 / gib, rel=1e-9)
    assert fp8.weights_gb == pytest.approx((27 * 0.35e9 * 1 + 0.8e9 * 2) / gib, rel=1e-9)
    # one layer upcast at a time (a quarter of a block, 2 bf16 copies) on top of the same activations
    assert fp8.transient_gb - bf16.transient_gb == pytest.approx(2 * 2 * 0.35e9 / 4 / gib, rel=1e-9)
    assert fp8.total_gb < bf16.total_gb


def test_cli_fp8_weights(tmp_path):
    from PIL import Image

    from anti_i2v.cli import main

    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray((torch.rand(40, 56, 3) * 255).byte().numpy()).save(src / "a.png")
    out = tmp_path / "out"
    assert main(["protect", str(src), "--out", str(out), "--demo", "--steps", "1", "--fp8-weights", "--quiet"]) == 2
    assert not out.exists() or not any(out.iterdir())
    rc = main(["protect", str(src), "--out", str(out), "--demo", "--steps", "1", "--low-vram", "--fp8-weights",
               "--quiet", "--frames", "5"])
    assert rc == 0
    lv = json.loads((out / "a.report.json").read_text())["settings"]["low_vram"]
    assert lv["fp8"]["applied"] is True and lv["fp8"]["dtype"] == "float8_e4m3fn"
