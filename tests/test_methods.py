"""The defenses (anti_i2v.methods): each loss against a hand computation on a toy model (sign, target, which pass),
I2VGuard's temporal attention maps really read, the loop's invariants for every method, and every method end to end
from the command line on each tiny family."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from anti_i2v.cli import main
from anti_i2v.losses import DiffusionLoss, EncoderLoss, Objective
from anti_i2v.methods import METHOD_NAMES, get_method, loss_term, predict_x0, run_method
from anti_i2v.methods.i2vguard import (I2VGuardDiffusionLoss, I2VGuardSpatialLoss, I2VGuardTemporalLoss,
                                       ImageDistanceLoss)
from anti_i2v.methods.mist import MistTexturalLoss
from anti_i2v.methods.sds import SDSLoss
from anti_i2v.methods.vgmshield import VGMShieldLoss
from anti_i2v.surrogates import tiny_surrogate
from anti_i2v.surrogates.attention import has_attention_slot
from anti_i2v.surrogates.base import FeatureRequest, Features
from tests.toy_surrogate import ToySurrogate

TOL = 1e-5  # float32 sums of a few hundred elements


def _feats(seed: int, **kw) -> Features:
    g = torch.Generator().manual_seed(seed)
    f = Features(latent=torch.randn(1, 4, 3, 3, generator=g), image_embed=torch.randn(1, 1, 5, generator=g),
                 output=torch.randn(1, 4, 3, 3, generator=g), target=torch.randn(1, 4, 3, 3, generator=g),
                 image=torch.rand(1, 3, 6, 6, generator=g))
    f.attention = {"a": torch.rand(2, 3, 3, generator=g), "b": torch.rand(2, 3, 3, generator=g)}
    for k, v in kw.items():
        setattr(f, k, v)
    return f


class TestRegistry:
    def test_names_records_and_errors(self):
        assert METHOD_NAMES == ("anti-i2v", "advdm", "mist", "sds", "photoguard", "vgmshield", "i2vguard")
        for name in METHOD_NAMES:
            m = get_method(name)
            assert m.name == name and m.paper and m.defaults
            assert m.space == ("dsp" if name == "anti-i2v" else "rgb")
            assert m.perturbation().space == m.space and m.perturbation(space="dsp", eps=4).eps == 4
            assert m.config(steps=3).steps == 3 and m.config().step_size == m.step_size
        with pytest.raises(ValueError, match="anti-i2v, advdm, mist, sds, photoguard, vgmshield, i2vguard"):
            get_method("glaze")
        with pytest.raises(ValueError, match="unknown option"):
            get_method("mist").objective(ToySurrogate(), colour="red")
        # paper budgets in 1/255 of [0, 1]: PhotoGuard's 0.06 on [-1, 1] images is 7.65 here
        assert get_method("photoguard").eps == pytest.approx(0.06 / 2 * 255)
        assert get_method("mist").eps == 16 and get_method("sds").eps == 16


class TestLossesByHand:
    def test_advdm_maximises_the_denoising_error_on_its_own_latent(self):
        adv = _feats(0)
        assert DiffusionLoss().request().own_latent
        want = -((adv.output - adv.target) ** 2).mean()
        assert float(DiffusionLoss().value(adv, None)) == pytest.approx(float(want), abs=TOL)

    def test_mist_textural_sum_and_fused_weight(self):
        adv, tgt = _feats(0), _feats(1)
        want = ((adv.latent - tgt.latent) ** 2).sum()  # summed, as Mist's MSELoss(reduction="sum")
        assert float(MistTexturalLoss().value(adv, tgt)) == pytest.approx(float(want), rel=1e-6)
        obj = get_method("mist").objective(ToySurrogate())
        assert [t.name for t in obj.terms] == ["mist_textural", "mist_semantic"]
        assert [t.weight for t in obj.terms] == [1.0, 1e4]
        total, values = obj.evaluate(adv, tgt)
        hand = float(want) - 1e4 * float(((adv.output - adv.target) ** 2).mean())
        assert float(total) == pytest.approx(hand, rel=1e-5)

    def test_sds_value_sign_and_jacobian_free_gradient(self):
        noisy = torch.randn(1, 4, 3, 3, requires_grad=True)
        adv = _feats(0, noisy=noisy)
        r = adv.output - adv.target
        for mode, sign in (("-", 1.0), ("+", -1.0)):
            v = SDSLoss(mode=mode).value(adv, None)
            assert float(v) == pytest.approx(sign * float((r ** 2).mean()), abs=TOL)
            (g,) = torch.autograd.grad(v, noisy)
            torch.testing.assert_close(g, sign * 2 * r / r.numel(), atol=1e-7, rtol=1e-5)
        with pytest.raises(ValueError, match="'-'"):
            SDSLoss(mode="x")

    def test_sds_runs_the_denoiser_without_a_graph(self):
        s = ToySurrogate()
        x = torch.rand(1, 3, 24, 32, requires_grad=True)
        draw = s.sample_noise(1, torch.Generator().manual_seed(0))
        f = s.features(x, draw, SDSLoss().request())
        assert f.output is not None and not f.output.requires_grad  # no graph through the denoiser
        assert f.noisy.requires_grad  # the gradient goes through z_t = f(E(x)) only
        (g,) = torch.autograd.grad(SDSLoss().value(f, None), x)
        assert g.abs().sum() > 0

    def test_photoguard_pulls_the_latent_to_the_target(self):
        adv, tgt = _feats(0), _feats(1)
        want = ((adv.latent - tgt.latent) ** 2).mean()
        assert float(EncoderLoss().value(adv, tgt)) == pytest.approx(float(want), abs=TOL)
        # which passes: the photo's and the target's VAE latents, no denoiser
        assert EncoderLoss().target_request().need_latent and not EncoderLoss().request().needs_denoiser
        assert MistTexturalLoss().target_request().need_latent and I2VGuardSpatialLoss().target_request().need_latent
        diff = I2VGuardDiffusionLoss().request()
        assert diff.need_output and not diff.own_latent  # the shared z_t of the clean photo, as the sampler's
        assert DiffusionLoss().request().own_latent and SDSLoss().request().own_latent  # their own z_t

    def test_vgmshield_undirected_reads_the_clean_pass_directed_the_target(self):
        adv, clean, tgt = _feats(0), _feats(1), _feats(2)
        und, dirc = VGMShieldLoss(mode="undirected"), VGMShieldLoss(mode="directed")
        assert und.clean_request().image_embed and und.target_request().empty
        assert dirc.target_request().need_latent and dirc.clean_request().empty

        def cosd(a, b):  # 1 - cos of the flattened embeddings, by hand (the authors' code uses cosine distances)
            a, b = a.double().flatten(), b.double().flatten()
            return 1.0 - float(a @ b / (a.norm() * b.norm()))

        def d(a, b):
            return cosd(a.image_embed, b.image_embed) + cosd(a.latent, b.latent)

        assert float(und.evaluate_term(adv, tgt, clean, None)) == pytest.approx(-d(adv, clean), abs=TOL)
        assert float(dirc.evaluate_term(adv, tgt, clean, None)) == pytest.approx(d(adv, tgt), abs=TOL)
        vae_only = VGMShieldLoss(mode="undirected", encoders="vae").evaluate_term(adv, None, clean, None)
        assert float(vae_only) == pytest.approx(-cosd(adv.latent, clean.latent), abs=TOL)
        assert VGMShieldLoss().mode == "directed"  # the default of the authors' code

    def test_vgmshield_without_image_encoder_says_so(self):
        obj = get_method("vgmshield").objective(ToySurrogate())
        assert "no image encoder" in obj.notes[0]
        with pytest.raises(ValueError, match="no image encoder"):
            get_method("vgmshield").objective(ToySurrogate(), encoders="image")

    def test_i2vguard_terms(self):
        adv, clean, tgt = _feats(0), _feats(1), _feats(2)
        assert float(I2VGuardSpatialLoss().value(adv, tgt)) == pytest.approx(
            float(((adv.latent - tgt.latent) ** 2).mean()), abs=TOL)
        want_t = -sum(float(((adv.attention[k] - clean.attention[k]) ** 2).mean()) for k in ("a", "b"))
        assert float(I2VGuardTemporalLoss().evaluate_term(adv, None, clean, None)) == pytest.approx(want_t, abs=TOL)
        assert I2VGuardTemporalLoss().clean_request().attention
        photo = torch.rand(1, 3, 6, 6)
        st = ImageDistanceLoss().prepare(None, photo=photo, target=None)
        assert float(ImageDistanceLoss().evaluate_term(adv, None, None, st)) == pytest.approx(
            float(((adv.image - photo) ** 2).mean()), abs=TOL)

    def test_i2vguard_diffusion_contrast_on_the_x0_estimate(self):
        s = ToySurrogate()
        draw = s.sample_noise(1, torch.Generator().manual_seed(0))
        x0 = torch.randn(1, 4, 12, 16)
        noisy = s.noisy_latent(x0, draw)
        pred = torch.randn_like(x0)
        z_tgt, z_gen = torch.randn_like(x0), torch.randn_like(x0)
        adv = Features(output=pred, noisy=noisy, draw=draw)
        st = {"surrogate": s, "target": z_tgt, "negative": z_gen}
        a = (draw.timestep.float() / 1000).view(-1, 1, 1, 1)
        x0_hat = (noisy - a * pred) / (1 - a)  # toy: z = (1-a) x0 + a eps, epsilon prediction
        want = ((x0_hat - z_tgt) ** 2).mean() - ((x0_hat - z_gen) ** 2).mean()
        got = I2VGuardDiffusionLoss().evaluate_term(adv, None, None, st)
        assert float(got) == pytest.approx(float(want), rel=1e-4)

    def test_predict_x0_inverts_every_family_forward_process(self, svd):
        for s in (ToySurrogate(), svd):
            g = torch.Generator().manual_seed(3)
            size = s.working_size(40, 48)
            draw = s.draw_noise(1, g, size=size)
            x0 = torch.randn(draw.noise.shape, generator=g)
            z = s.noisy_latent(x0, draw)
            # the exact training target gives back x0
            torch.testing.assert_close(predict_x0(s, z, s.prediction_target(x0, draw), draw), x0,
                                       atol=1e-4, rtol=1e-4)

    def test_loss_terms_by_name(self):
        assert isinstance(loss_term("sds+"), SDSLoss) and loss_term("sds+").mode == "+"
        with pytest.raises(ValueError, match="advdm"):
            loss_term("nope")
        assert Objective((loss_term("advdm"),)).method_name() == "advdm"
        assert Objective((loss_term("advdm"), loss_term("photoguard"))).method_name() == "custom"


_CACHE: dict = {}


def _cached_tiny(family, *, seed=0, **kw):
    """One tiny surrogate per (family, settings) for this module: building tiny SVD takes seconds."""
    key = (family, seed, tuple(sorted(kw.items())))
    if key not in _CACHE:
        _CACHE[key] = tiny_surrogate(family, seed=seed, **kw)
    return _CACHE[key]


@pytest.fixture(scope="module")
def svd():
    return _cached_tiny("svd", num_frames=2)


#: families with temporal self-attention, the tiny surrogate's settings, and the latent-frame axis of ``noisy``
TEMPORAL = {"svd": ({"num_frames": 2}, 1), "dynamicrafter": ({}, 2), "opensora": ({}, 2)}


@pytest.fixture(scope="module", params=sorted(TEMPORAL))
def temporal(request):
    return _cached_tiny(request.param, **TEMPORAL[request.param][0])


def _attn_state(m):
    """What capture_attention swaps: the diffusers processor, or the attention slot."""
    return ("slot", m.attention_fn) if has_attention_slot(m) else ("processor", m.processor)


def _query_weight(attn):
    """The query projection's weight rows of an attention module (diffusers / LVDM ``to_q``, STDiT3 fused ``qkv``)."""
    if hasattr(attn, "to_q"):
        return attn.to_q.weight
    return attn.qkv.weight[: attn.qkv.weight.shape[0] // 3]


class TestTemporalAttention:
    def test_maps_are_read_and_the_output_is_unchanged(self, temporal):
        mods = temporal.temporal_attention_modules()
        assert mods
        if temporal.family == "svd":
            assert all(n.endswith("temporal_transformer_blocks.0.attn1") for n, _ in mods)
        states = [_attn_state(m) for _, m in mods]
        g = torch.Generator().manual_seed(0)
        x = torch.rand(1, 3, *temporal.working_size(40, 48), generator=g)
        draw = temporal.draw_noise(1, g, size=tuple(x.shape[-2:]))
        plain = temporal.features(x, draw, FeatureRequest(need_output=True))
        read = temporal.features(x, draw, FeatureRequest(need_output=True, attention=True))
        assert list(read.attention) == [n for n, _ in mods]
        torch.testing.assert_close(read.output, plain.output, atol=1e-5, rtol=1e-4)  # same computation
        frames = read.noisy.shape[TEMPORAL[temporal.family][1]]
        assert frames > 1
        for a in read.attention.values():  # probabilities over the latent frames
            torch.testing.assert_close(a.sum(-1), torch.ones_like(a.sum(-1)), atol=1e-5, rtol=0)
            assert a.shape[-1] == a.shape[-2] == frames
        assert [_attn_state(m) for _, m in mods] == states  # processors / slots put back

    def test_changing_one_map_changes_the_loss(self, temporal):
        name, attn = temporal.temporal_attention_modules()[-1]
        g = torch.Generator().manual_seed(0)
        size = temporal.working_size(40, 48)
        x, y = torch.rand(1, 3, *size, generator=g), torch.rand(1, 3, *size, generator=g)
        draw = temporal.draw_noise(1, g, size=size)
        req = FeatureRequest(attention=True)
        adv, clean = temporal.features(x, draw, req), temporal.features(y, draw, req)
        term = I2VGuardTemporalLoss()
        before = float(term.evaluate_term(adv, None, clean, None).detach())
        w = _query_weight(attn)
        saved = w.detach().clone()
        try:
            with torch.no_grad():  # another query direction in that one module (survives a q-norm)
                w.add_(torch.randn(w.shape, generator=g) * 3 * float(saved.std()))
            adv2 = temporal.features(x, draw, req)
        finally:
            with torch.no_grad():
                w.copy_(saved)
        assert not torch.allclose(adv2.attention[name], adv.attention[name], atol=1e-4)
        for k in adv.attention:  # the last module in forward order: every map before it is the same
            if k != name:
                torch.testing.assert_close(adv2.attention[k], adv.attention[k], atol=1e-6, rtol=0)
        assert abs(float(term.evaluate_term(adv2, None, clean, None)) - before) > 1e-6

    def test_maps_carry_gradient_also_with_gradient_checkpointing(self, temporal):
        g = torch.Generator().manual_seed(1)
        size = temporal.working_size(40, 48)
        x = torch.rand(1, 3, *size, generator=g)
        y = torch.rand(1, 3, *size, generator=g)
        draw = temporal.draw_noise(1, g, size=size)
        req = FeatureRequest(attention=True)
        with torch.no_grad():
            clean = temporal.features(y, draw, req)
        temporal.gradient_checkpointing = True
        try:
            xx = x.clone().requires_grad_(True)
            adv = temporal.features(xx, draw, req)
            (grad,) = torch.autograd.grad(I2VGuardTemporalLoss().evaluate_term(adv, None, clean, None), xx)
        finally:
            temporal.gradient_checkpointing = False
        assert torch.isfinite(grad).all() and grad.abs().max() > 0

    def test_i2vguard_has_its_temporal_term_where_the_model_has_temporal_attention(self, temporal):
        obj = get_method("i2vguard").objective(temporal)
        assert any(isinstance(t, I2VGuardTemporalLoss) for t in obj.terms)
        assert not any("temporal attack left out" in n for n in obj.notes)

    def test_i2vguard_negative_is_the_generated_clean_video(self, temporal):
        """The diffusion attack's negative: the family's own sampler's latent video of the clean photo (seeded, in
        clean_latent's layout), not the still video."""
        size = temporal.working_size(40, 48)
        photo = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(4))
        target = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(5))
        with torch.no_grad():
            still = temporal.clean_latent(temporal.encode_image(photo))
        obj = get_method("i2vguard").objective(temporal, generation_steps=2)
        assert not any("cannot generate" in n for n in obj.notes)
        (term,) = [t for t in obj.terms if isinstance(t, I2VGuardDiffusionLoss)]
        state = term.prepare(temporal, photo=photo, target=target)
        z = temporal.generate_latent(photo, num_inference_steps=2, seed=0)
        assert state["source"] == "generated" and state["negative"].shape == still.shape == z.shape
        torch.testing.assert_close(state["negative"], z.float(), atol=0, rtol=0)  # seed 0 for the first photo
        assert not torch.allclose(z.float(), still, atol=1e-3)
        if temporal.family != "svd":  # our own samplers (SVD's is diffusers' pipeline, with its own output types)
            with pytest.raises(ValueError, match="output_type"):
                temporal.generate(photo, num_inference_steps=1, output_type="pil")

    def test_capture_refuses_what_it_cannot_reproduce(self):
        from anti_i2v.surrogates.attention import capture_attention

        with pytest.raises(ValueError, match="neither a diffusers Attention module .* nor a module with an attention "
                                             "slot"):
            with capture_attention([("lin", torch.nn.Linear(2, 2))], {}):
                pass


def _state(s):
    sd = {}
    for i, m in enumerate(s.modules()):
        for k, v in m.state_dict().items():
            sd[f"{i}.{k}"] = v.detach().clone()
    flags = [(p.requires_grad) for m in s.modules() for p in m.parameters()]
    hooks = sum(len(mm._forward_hooks) + len(mm._forward_pre_hooks) for m in s.modules() for mm in m.modules())
    procs = [_attn_state(m) for _, m in s.temporal_attention_modules()]
    return sd, flags, hooks, procs


class TestInvariants:
    @pytest.mark.parametrize("name", METHOD_NAMES)
    def test_model_unchanged_cancel_and_settings(self, name, temporal):
        """Every family with temporal attention (I2VGuard reads its maps there): svd, dynamicrafter, opensora."""
        before = _state(temporal)
        x = torch.rand(1, 3, 30, 34, generator=torch.Generator().manual_seed(2))
        x0 = x.clone()
        calls = []

        def stop(p):
            calls.append(p.step)
            return False  # cancel after the first iteration

        r = run_method(name, x, temporal, steps=3, callback=stop)
        assert r.cancelled and calls == [1] and len(r.history) == 1
        assert r.settings["method"] == name and r.settings["space"] == get_method(name).space
        assert torch.equal(x, x0)
        assert max(r.linf) <= get_method(name).eps + 1e-4
        after = _state(temporal)
        assert after[1:] == before[1:]
        assert all(torch.equal(before[0][k], after[0][k]) for k in before[0])


FAMILY_FRAMES = {"cogvideox": 1, "wan21": 1, "svd": 2, "dynamicrafter": 2, "opensora": 5}  # the fewest each takes


def _png(path, size=(36, 30)):
    arr = np.random.default_rng(0).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return path


@pytest.mark.parametrize("family", ["cogvideox", "wan21", "svd", "dynamicrafter", "opensora"])
def test_every_method_from_the_cli(family, tmp_path, capsys, monkeypatch):
    """The real command line, each method on one tiny model per family (the CLI's --demo builds it; here the
    module's cached one is handed out, the rest of the CLI runs as shipped)."""
    import anti_i2v.surrogates as surrogates

    monkeypatch.setattr(surrogates, "tiny_surrogate", _cached_tiny)
    src = _png(tmp_path / "p.png")
    for name in METHOD_NAMES:
        out = tmp_path / name
        space = "dsp" if name == "mist" else None  # any method runs in the other space too
        argv = ["protect", str(src), "--out", str(out), "--demo", "--surrogate", family, "--method", name,
                "--steps", "1", "--frames", str(FAMILY_FRAMES[family]), "--quiet"]
        if space:
            argv += ["--space", space]
        assert main(argv) == 0, capsys.readouterr().err
        rep = json.loads((out / "p.report.json").read_text())
        m = get_method(name)
        assert rep["method"] == name and rep["settings"]["method"] == name
        assert rep["settings"]["space"] == (space or m.space)
        assert rep["settings"]["perturbation"]["eps"] == pytest.approx(m.eps)
        assert rep["saved_png"]["linf_255"][0] <= math.ceil(m.eps) + 1e-6
        assert rep["steps_done"] == 1
    assert main(["protect", str(src), "--out", str(tmp_path / "x"), "--demo", "--method", "sds",
                 "--ira-blocks", "1", "--quiet"]) == 2
    assert "anti-i2v only" in capsys.readouterr().err


class TestLoopHooks:
    def test_random_start_is_seeded_inside_the_budget_and_off_for_inert_runs(self):
        from anti_i2v.dsp import DSPConfig
        from anti_i2v.protect import ProtectConfig, protect

        s = ToySurrogate()
        x = torch.rand(1, 3, 24, 32, generator=torch.Generator().manual_seed(0))
        obj = Objective((loss_term("vgmshield_undirected", 1.0),))
        cfg = DSPConfig(eps=8, space="rgb")
        a = protect(x, s, obj, cfg, ProtectConfig(steps=1, seed=5, random_start=True, optimizer="sign"))
        b = protect(x, s, obj, cfg, ProtectConfig(steps=1, seed=5, random_start=True, optimizer="sign"))
        assert torch.equal(a.protected, b.protected) and max(a.linf) <= 8 + 1e-4
        assert a.history[0]["vgmshield"] < 0  # pushed away from the clean photo from the first step
        # without a random start the first loss is read at the photo itself: the undirected distance is 0 there
        # (a stationary point: its gradient vanishes up to rounding), which the random start leaves behind
        c = protect(x, s, obj, cfg, ProtectConfig(steps=1, seed=5, optimizer="sign"))
        assert abs(c.history[0]["vgmshield"]) < 1e-5 < abs(a.history[0]["vgmshield"])
        zero = protect(x, s, obj, cfg, ProtectConfig(steps=0, random_start=True))
        assert torch.equal(zero.protected, x)
        assert a.settings["method"] == "custom" and a.settings["space"] == "rgb"
