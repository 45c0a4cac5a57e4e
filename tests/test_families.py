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


def test_auto_layers_resolve_to_the_family_recommendation_and_reach_the_report(tiny):
    """``"auto"`` layer fields take this family's ``default_objective()`` layers; the report names them."""
    from anti_i2v.losses import IRALoss, IRCLoss, Objective, resolve_objective

    auto = Objective((IRALoss(blocks="auto", vae_layers="auto"), IRCLoss(pairs="auto", weight=0.5)))
    resolved = resolve_objective(auto, tiny)
    default = tiny.default_objective()
    d_ira = next(t for t in default.terms if isinstance(t, IRALoss))
    ira = next(t for t in resolved.terms if isinstance(t, IRALoss))
    assert (ira.blocks, ira.vae_layers, ira.auto) == (d_ira.blocks, d_ira.vae_layers, ("blocks", "vae_layers"))
    d_irc = [t for t in default.terms if isinstance(t, IRCLoss)]
    irc = [t for t in resolved.terms if isinstance(t, IRCLoss)]
    assert [t.pairs for t in irc] == [t.pairs for t in d_irc] and all(t.weight == 0.5 for t in irc)
    r = protect(torch.rand(1, 3, 32, 40), tiny, auto, CFG, ProtectConfig(steps=0))
    losses = r.report()["settings"]["losses"]
    assert losses[0]["blocks"] == list(d_ira.blocks) and losses[0]["auto"] == ["blocks", "vae_layers"]
    notes = r.report()["settings"]["notes"]
    assert any(n.startswith(f"IRA 'auto' on {tiny.family}: blocks {','.join(map(str, d_ira.blocks))}") for n in notes)
    assert r.report()["settings"]["frames_attacked"] == tiny.num_frames
