"""The protect loop on each real family (tiny configs of the real diffusers classes).

Full-resolution budget at an odd size with a batch, seed determinism, and the model invariants after success,
failure and cancel. Family-specific behaviour is in tests/test_surrogate_<family>.py.
"""

import pytest
import torch

from anti_i2v.dsp import DSPConfig
from anti_i2v.protect import ProtectCancelled, ProtectConfig, protect


def _state(s):
    mods = [mm for m in s.modules() for mm in m.modules()]
    return (
        [p.detach().clone() for m in s.modules() for p in m.parameters()],
        [p.requires_grad for m in s.modules() for p in m.parameters()],
        [mm.training for mm in mods],
        [(len(mm._forward_hooks), len(mm._forward_pre_hooks)) for mm in mods],
    )


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a[0], b[0])) and a[1:] == b[1:]


CFG = DSPConfig(eps=16, dct_block=8)


def test_odd_size_batch_budget_and_determinism(tiny):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 333, 517, generator=g)
    x0 = x.clone()
    obj = tiny.default_objective()
    a = protect(x, tiny, obj, CFG, ProtectConfig(steps=2, step_size=4, seed=5))
    b = protect(x, tiny, obj, CFG, ProtectConfig(steps=2, step_size=4, seed=5))
    assert torch.equal(x, x0)
    assert a.protected.shape == (2, 3, 333, 517)
    assert float((a.protected - x).abs().max()) <= 16 / 255 + 1e-6
    assert 0.0 <= float(a.protected.min()) and float(a.protected.max()) <= 1.0
    assert float((a.protected - x).abs().max()) > 4 / 255  # something was optimised
    assert torch.equal(a.protected, b.protected) and a.history == b.history


def test_models_unchanged_after_success_failure_and_cancel(tiny):
    before = _state(tiny)
    obj = tiny.default_objective()
    x = torch.rand(1, 3, 40, 44)
    protect(x, tiny, obj, CFG, ProtectConfig(steps=1))
    assert _same(before, _state(tiny))

    r = protect(x, tiny, obj, CFG, ProtectConfig(steps=5), callback=lambda p: p.step < 2)
    assert r.cancelled and len(r.history) == 2
    assert _same(before, _state(tiny))

    def cancel(p):
        raise ProtectCancelled("cancelled by the user")

    with pytest.raises(ProtectCancelled):
        protect(x, tiny, obj, CFG, ProtectConfig(steps=5), callback=cancel)
    assert _same(before, _state(tiny))

    # a failure inside the denoiser forward (a block raising) half-way through an iteration
    name, block = tiny.denoiser_blocks()[0]
    h = block.register_forward_hook(lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))
    try:
        before_fail = _state(tiny)
        with pytest.raises(RuntimeError, match="boom"):
            protect(x, tiny, obj, CFG, ProtectConfig(steps=2))
        assert _same(before_fail, _state(tiny))
    finally:
        h.remove()
    assert _same(before, _state(tiny))
