"""Half precision: the loop's loss scaling keeps fp16 gradients usable on real-size features, and an iteration
whose gradients all vanish stops the loop with an error that names the dtype.

Real-size means millions of elements per feature (ToyDiT: 4.2 M per block output): a mean over that many
elements gives per-element gradients below fp16's subnormal range unless the loss is scaled.
"""

import pytest
import torch

import anti_i2v.protect as protect_mod
from anti_i2v.dsp import DSPConfig
from anti_i2v.losses import IRALoss
from anti_i2v.protect import GradientVanished, ProtectConfig, protect

from .toy_dit import ToyDiT
from .toy_surrogate import ToySurrogate


@pytest.fixture(scope="module")
def photos():
    g = torch.Generator().manual_seed(5)
    x = (torch.rand(1, 3, 256, 256, generator=g) * 255).round() / 255  # 8-bit, so one 1/255 step is exact
    return x, torch.rand(1, 3, 256, 256, generator=g)


def _first_step_signs(x, target, dtype):
    """Signs of the first signed RGB step (= -sign of the gradient; 0 where it vanished) and the report."""
    s = ToyDiT(dtype=dtype)
    assert s.blocks[0][0].weight.dtype == dtype and s.default_size == (256, 256)
    r = protect(x, s, IRALoss(blocks=(2,)), DSPConfig(space="rgb", eps=4), ProtectConfig(steps=1, optimizer="sign"),
                target=target)
    return (r.protected - x).sign(), r


def test_fp16_and_bf16_gradients_agree_with_fp32(photos):
    x, target = photos
    ref, r32 = _first_step_signs(x, target, torch.float32)
    assert r32.settings["loss_scale"] == 1.0
    for dtype in (torch.float16, torch.bfloat16):
        signs, r = _first_step_signs(x, target, dtype)
        assert r.settings["loss_scale"] >= 2**20  # ~ the 4.2 M elements of the feature
        agree = float((signs == ref).float().mean())
        assert agree > 0.99, (dtype, agree)


def test_fp16_without_loss_scaling_loses_gradients(photos, monkeypatch):
    """The premise of the scaling: unscaled, a visible share of fp16 gradients underflows or flips."""
    x, target = photos
    ref, _ = _first_step_signs(x, target, torch.float32)
    monkeypatch.setattr(protect_mod, "_initial_scale", lambda feats, dtype: 1.0)
    signs, r = _first_step_signs(x, target, torch.float16)
    assert r.settings["loss_scale"] == 1.0
    assert float((signs == ref).float().mean()) < 0.95


def test_vanished_gradients_stop_the_loop_with_the_dtype_named():
    toy = ToySurrogate()
    encode = toy.encode

    def detached(image):
        c = encode(image)
        c.latent = c.latent.detach()
        c.parts = {k: v.detach() for k, v in c.parts.items()}
        return c

    toy.encode = detached  # the features no longer depend on the photo
    with pytest.raises(GradientVanished, match="float32"):
        protect(torch.rand(1, 3, 24, 32), toy, IRALoss(blocks=(2,)), DSPConfig(), ProtectConfig(steps=2))
