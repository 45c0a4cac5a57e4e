"""The protect loop on the toy surrogate: invariants, budget, determinism, cancel, failure, schedules.

Each real family runs the same loop in tests/test_surrogate_*.py.
"""

import pytest
import torch

from anti_i2v.dsp import DSPConfig
from anti_i2v.losses import DiffusionLoss, EncoderLoss, IRALoss, IRCLoss
from anti_i2v.protect import ProtectCancelled, ProtectConfig, default_target, protect
from anti_i2v.surrogates.base import SurrogateError

from .toy_surrogate import ToySurrogate

CFG = DSPConfig(eps=16, dct_block=8)
OBJ = IRALoss(blocks=(3,), vae_layers=(1,)) + IRCLoss(pairs=((1, 4),))


def _state(s):
    return {
        "weights": [p.detach().clone() for m in s.modules() for p in m.parameters()],
        "flags": [p.requires_grad for m in s.modules() for p in m.parameters()],
        "training": [mm.training for m in s.modules() for mm in m.modules()],
        "hooks": sum(len(mm._forward_hooks) + len(mm._forward_pre_hooks) for m in s.modules() for mm in m.modules()),
    }


def _assert_same_state(a, b):
    assert all(torch.equal(x, y) for x, y in zip(a["weights"], b["weights"]))
    assert a["flags"] == b["flags"] and a["training"] == b["training"] and a["hooks"] == b["hooks"]


@pytest.fixture
def toy():
    return ToySurrogate()


class TestProtect:
    def test_input_untouched_budget_and_size(self, toy):
        x = torch.rand(2, 3, 33, 47)
        x0 = x.clone()
        r = protect(x, toy, OBJ, CFG, ProtectConfig(steps=3, step_size=4))
        assert torch.equal(x, x0)
        assert r.protected.shape == x.shape
        assert float((r.protected - x).abs().max()) <= 16 / 255 + 1e-6
        assert float(r.protected.min()) >= 0 and float(r.protected.max()) <= 1
        assert max(r.linf) <= 16.0 + 1e-3 and len(r.psnr) == 2 and len(r.ssim) == 2
        assert torch.equal(r.perturbation, r.protected - x)  # computed the same way: exact
        assert len(r.history) == 3 and {"loss", "ira", "irc", "step"} <= r.history[0].keys()

    def test_objective_improves(self, toy):
        r = protect(torch.rand(1, 3, 24, 32), toy, OBJ, CFG, ProtectConfig(steps=12, step_size=2))
        assert r.history[-1]["loss"] < r.history[0]["loss"]

    def test_seed_determinism(self, toy):
        x = torch.rand(1, 3, 30, 30)
        a = protect(x, toy, OBJ, CFG, ProtectConfig(steps=3, seed=7))
        b = protect(x, toy, OBJ, CFG, ProtectConfig(steps=3, seed=7))
        c = protect(x, toy, OBJ, CFG, ProtectConfig(steps=3, seed=8))
        assert torch.equal(a.protected, b.protected) and a.history == b.history
        assert not torch.equal(a.protected, c.protected)

    def test_models_unchanged_after_success(self, toy):
        before = _state(toy)
        protect(torch.rand(1, 3, 24, 32), toy, OBJ + DiffusionLoss() + EncoderLoss(), CFG, ProtectConfig(steps=2))
        _assert_same_state(before, _state(toy))

    def test_models_unchanged_after_failure(self):
        toy = ToySurrogate(fail_at_block=2)
        before = _state(toy)
        with pytest.raises(RuntimeError, match="toy failure"):
            protect(torch.rand(1, 3, 24, 32), toy, IRALoss(blocks=(4,)), CFG, ProtectConfig(steps=2))
        _assert_same_state(before, _state(toy))

    def test_cancel_by_return_and_by_raise(self, toy):
        before = _state(toy)
        seen = []
        r = protect(torch.rand(1, 3, 24, 32), toy, OBJ, CFG, ProtectConfig(steps=10),
                    callback=lambda p: (seen.append(p), p.step < 3)[1])
        assert r.cancelled and len(r.history) == 3 and [p.step for p in seen] == [1, 2, 3]
        assert set(seen[0].terms) == {"ira", "irc"} and seen[0].total == 10

        def boom(p):
            raise ProtectCancelled("user cancelled")

        with pytest.raises(ProtectCancelled):
            protect(torch.rand(1, 3, 24, 32), toy, OBJ, CFG, ProtectConfig(steps=10), callback=boom)
        _assert_same_state(before, _state(toy))

    def test_early_exit_skips_blocks(self, toy):
        calls = []
        h = toy.net[5].register_forward_hook(lambda *a: calls.append(1))
        try:
            protect(torch.rand(1, 3, 24, 32), toy, IRALoss(blocks=(2,)), CFG, ProtectConfig(steps=1))
        finally:
            h.remove()
        assert calls == []

    def test_layer_index_out_of_range(self, toy):
        with pytest.raises(SurrogateError, match="valid indices are 0-5"):
            protect(torch.rand(1, 3, 24, 32), toy, IRALoss(blocks=(6,)), CFG, ProtectConfig(steps=1))
        with pytest.raises(SurrogateError, match="VAE-encoder layer index 9"):
            protect(torch.rand(1, 3, 24, 32), toy, IRALoss(vae_layers=(9,)), CFG, ProtectConfig(steps=1))

    def test_bad_images(self, toy):
        with pytest.raises(ValueError, match="NaN"):
            protect(torch.full((1, 3, 8, 8), float("nan")), toy, OBJ, CFG, ProtectConfig(steps=1))
        with pytest.raises(ValueError, match="empty"):
            protect(torch.rand(0, 3, 8, 8), toy, OBJ, CFG, ProtectConfig(steps=1))
        r = protect(torch.rand(1, 4, 20, 20), toy, OBJ, CFG, ProtectConfig(steps=1))  # RGBA loses alpha
        assert r.protected.shape == (1, 3, 20, 20)
        with pytest.raises(ValueError, match="target batch"):
            protect(torch.rand(2, 3, 20, 20), toy, OBJ, CFG, ProtectConfig(steps=1), target=torch.rand(3, 3, 8, 8))

    @pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
    @pytest.mark.parametrize("optimizer", ["sign", "adam"])
    def test_schedules_and_optimizers(self, toy, schedule, optimizer):
        cfg = ProtectConfig(steps=4, schedule=schedule, optimizer=optimizer)
        r = protect(torch.rand(1, 3, 24, 32), toy, OBJ, CFG, cfg)
        assert len(r.history) == 4 and max(r.linf) <= 16 + 1e-3
        assert cfg.step_at(3) <= cfg.step_at(0)

    def test_objective_that_cannot_move_the_photo_is_reported(self, toy):
        """Every weight 0: no optimisation runs (and no vanished-gradient error), the report says why."""
        x = torch.rand(1, 3, 24, 32)
        zero = IRALoss(blocks=(3,), weight=0.0) + IRCLoss(pairs=((1, 4),), weight=0.0)
        r = protect(x, toy, zero, CFG, ProtectConfig(steps=3))
        assert torch.equal(r.protected, x) and r.history == []
        assert any("every loss weight is 0" in n for n in r.report()["settings"]["notes"])
        r0 = protect(x, toy, OBJ, CFG, ProtectConfig(steps=0))
        assert any("0 steps" in n for n in r0.report()["settings"]["notes"])
        assert protect(x, toy, OBJ, CFG, ProtectConfig(steps=1)).settings["notes"] == []

    def test_zero_steps_is_identity(self, toy):
        x = torch.rand(1, 3, 21, 22)
        r = protect(x, toy, OBJ, CFG, ProtectConfig(steps=0))
        assert torch.equal(r.protected, x) and r.linf == [0.0]

    def test_report_is_json(self, toy):
        import json
        r = protect(torch.rand(1, 3, 24, 32), toy, OBJ, CFG, ProtectConfig(steps=1))
        rep = json.loads(json.dumps(r.report()))
        assert rep["settings"]["perturbation"]["eps"] == 16 and rep["steps_done"] == 1

    def test_default_target_deterministic(self):
        assert torch.equal(default_target(16, 20), default_target(16, 20))
        t = default_target(16, 20)
        assert t.shape == (1, 3, 16, 20) and 0 <= float(t.min()) and float(t.max()) <= 1

    def test_output_on_8bit_grid_within_budget(self, toy):
        x = torch.randint(0, 256, (1, 3, 24, 32)).float() / 255  # an 8-bit photo, as LoadImage gives
        r = protect(x, toy, OBJ, DSPConfig(eps=8, dct_block=8), ProtectConfig(steps=3, step_size=4))
        q = r.protected * 255
        assert torch.equal(q, q.round())
        saved = (r.protected.numpy() * 255.0).astype("uint8")  # ComfyUI's SaveImage truncates
        diff = abs(saved.astype(int) - (x.numpy() * 255).round().astype(int)).max()
        assert diff <= 8
        f = protect(x, toy, OBJ, DSPConfig(eps=8, dct_block=8), ProtectConfig(steps=3, step_size=4, quantize=False))
        assert not torch.equal(f.protected * 255, (f.protected * 255).round())

    def test_robust_jpeg(self, toy):
        x = torch.rand(1, 3, 24, 32)
        plain = protect(x, toy, OBJ, CFG, ProtectConfig(steps=3, step_size=2))
        robust = protect(x, toy, OBJ, CFG, ProtectConfig(steps=3, step_size=2, robust_jpeg=75))
        assert max(robust.linf) <= 16 + 1e-3 and not torch.equal(plain.protected, robust.protected)
        assert robust.settings["loop"]["robust_jpeg"] == 75
        with pytest.raises(ValueError, match="robust_jpeg"):
            ProtectConfig(robust_jpeg=101)

    def test_mask_limits_the_change(self, toy):
        x = torch.randint(0, 256, (1, 3, 24, 32)).float() / 255
        mask = torch.zeros(24, 32)
        mask[:, 16:] = 1.0
        for restore in (False, True):
            cfg = DSPConfig(eps=16, dct_block=8, restore_luminance=restore)
            r = protect(x, toy, OBJ, cfg, ProtectConfig(steps=3, step_size=4), mask=mask)
            assert torch.equal(r.protected[..., :16], x[..., :16])
            assert float((r.protected[..., 16:] - x[..., 16:]).abs().max()) > 4 / 255
            assert r.settings["mask"] == "given"

    @pytest.mark.parametrize(
        "mask, match",
        [(torch.ones(10, 10), "must match"), (torch.zeros(24, 32), "all zero"), (torch.ones(3, 24, 32), "batch"),
         (torch.full((24, 32), 2.0), r"\[0, 1\]"), (torch.ones(24, 32, dtype=torch.int64), "floating")],
    )
    def test_bad_mask(self, toy, mask, match):
        with pytest.raises(ValueError, match=match):
            protect(torch.rand(1, 3, 24, 32), toy, OBJ, CFG, ProtectConfig(steps=1), mask=mask)
