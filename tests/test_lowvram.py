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


def test_saved_bytes_counts_activations_not_weights():
    lin = torch.nn.Linear(64, 64)
    x = torch.rand(8, 64, requires_grad=True)
    _, with_w = lowvram.saved_bytes(lambda: torch.tanh(lin(x)).sum())
    _, without_w = lowvram.saved_bytes(lambda: torch.tanh(lin(x)).sum(), [lin])
    weight = lin.weight.numel() * 4
    assert with_w - without_w == weight  # the weight's storage, counted once, and only when not excluded
    assert without_w >= 8 * 64 * 4  # tanh's output (and the input) are real activations
