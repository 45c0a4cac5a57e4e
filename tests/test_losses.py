"""Loss terms, their composition, and the layer-index text syntax used by the nodes and the CLI."""

# Loss values computed here and by the library are float32 reductions that may sum in another order: they agree to
# about 1e-6 relative on any CPU, so comparisons use rtol=1e-5 (atol=1e-7 for values near zero).

import pytest
import torch

from anti_i2v.losses import (
    DiffusionLoss,
    EncoderLoss,
    IRALoss,
    IRCLoss,
    AUTO,
    Objective,
    parse_indices,
    parse_layer_spec,
    parse_pair_spec,
    parse_pairs,
    resolve_objective,
)
from anti_i2v.surrogates.base import Features


def _feats(seed, shape=(1, 4, 5)):
    g = torch.Generator().manual_seed(seed)
    r = lambda: torch.randn(shape, generator=g)  # noqa: E731
    return Features(blocks={0: r(), 1: r(), 3: r()}, vae={0: r()}, latent=r(), output=r(), target=r())


class TestTerms:
    def test_ira_is_layerwise_mean_squared_distance(self):
        a, t = _feats(0), _feats(1)
        v = IRALoss(blocks=(0, 3), vae_layers=(0,)).value(a, t)
        ref = sum(((a.blocks[i] - t.blocks[i]) ** 2).mean() for i in (0, 3)) + ((a.vae[0] - t.vae[0]) ** 2).mean()
        assert torch.allclose(v, ref, rtol=1e-5, atol=1e-7)
        assert float(IRALoss(blocks=(1,)).value(a, a)) == 0.0

    def test_irc_pulls_deep_to_shallow(self):
        a = _feats(0)
        v = IRCLoss(pairs=((0, 3),)).value(a, None)
        assert torch.allclose(v, ((a.blocks[3] - a.blocks[0]) ** 2).mean(), rtol=1e-5, atol=1e-7)

    def test_irc_shape_mismatch_is_clear(self):
        a = _feats(0)
        a.blocks[3] = torch.zeros(1, 2, 2)
        with pytest.raises(ValueError, match="same feature shape"):
            IRCLoss(pairs=((0, 3),)).value(a, None)

    def test_irc_detach_shallow(self):
        a = _feats(0)
        a.blocks[0].requires_grad_()
        assert not IRCLoss(pairs=((0, 3),), detach_shallow=True).value(a, None).requires_grad
        assert IRCLoss(pairs=((0, 3),)).value(a, None).requires_grad

    def test_advdm_is_negated_denoising_loss(self):
        a = _feats(0)
        assert torch.allclose(DiffusionLoss().value(a, None), -((a.output - a.target) ** 2).mean(), rtol=1e-5, atol=1e-7)

    def test_photoguard_latent_distance(self):
        a, t = _feats(0), _feats(1)
        assert torch.allclose(EncoderLoss().value(a, t), ((a.latent - t.latent) ** 2).mean(), rtol=1e-5, atol=1e-7)

    def test_requests(self):
        r = (IRALoss(blocks=(2,), vae_layers=(1,)) + IRCLoss(pairs=((0, 5),)) + DiffusionLoss()).request()
        assert r.blocks == {0, 2, 5} and r.vae_layers == {1} and r.need_output
        assert IRCLoss(pairs=((0, 5),)).target_request().empty

    @pytest.mark.parametrize("make", [lambda: IRALoss(), lambda: IRCLoss(pairs=()), lambda: IRCLoss(pairs=((2, 2),)),
                                      lambda: IRALoss(blocks=(1,), weight=float("nan"))])
    def test_invalid_terms(self, make):
        with pytest.raises(ValueError):
            make()


class TestObjective:
    def test_weighted_sum_and_unique_names(self):
        a, t = _feats(0), _feats(1)
        obj = IRALoss(blocks=(0,), weight=2.0) + IRALoss(blocks=(1,), weight=0.5) + IRCLoss(pairs=((0, 1),))
        assert isinstance(obj, Objective) and obj.names() == ["ira", "ira_2", "irc"]
        total, values = obj.evaluate(a, t)
        assert torch.allclose(total, 2 * values["ira"] + 0.5 * values["ira_2"] + values["irc"], rtol=1e-5, atol=1e-7)

    def test_empty_objective(self):
        with pytest.raises(ValueError, match="no loss terms"):
            Objective().evaluate(_feats(0), None)


class TestParsing:
    @pytest.mark.parametrize(
        "text, expected",
        [("3", (3,)), ("0-3", (0, 1, 2, 3)), ("3,10,27", (3, 10, 27)), (" 0-2, 8 ,8", (0, 1, 2, 8)), ("", ())],
    )
    def test_indices(self, text, expected):
        assert parse_indices(text) == expected

    @pytest.mark.parametrize("text", ["a", "3-1", "1-", "-2", "3;4"])
    def test_bad_indices_name_argument(self, text):
        with pytest.raises(ValueError, match="blocks"):
            parse_indices(text, name="blocks")

    def test_pairs(self):
        assert parse_pairs("3:27, 5:30") == ((3, 27), (5, 30))
        with pytest.raises(ValueError, match="shallow:deep"):
            parse_pairs("3-27")
        with pytest.raises(ValueError, match="no block pair"):
            parse_pairs(" ")

    @pytest.mark.parametrize("text", ["0-99999999999", "4097", "0-5000", "3,10-99999999999999999999"])
    def test_huge_index_is_refused_fast_without_memory(self, text):
        import time
        import tracemalloc

        tracemalloc.start()
        try:
            t0 = time.perf_counter()
            with pytest.raises(ValueError, match=r"--ira-blocks: index \d+ .*allowed indices are 0-4096"):
                parse_indices(text, name="--ira-blocks")
            elapsed = time.perf_counter() - t0
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert elapsed < 0.5, f"refusing {text!r} took {elapsed:.3f} s (a bound on a hang, not a benchmark)"
        assert peak < 2 * 1024 * 1024, f"refusing {text!r} allocated {peak} bytes at peak"

    def test_index_cap_edges(self):
        assert parse_indices("4090-4096") == tuple(range(4090, 4097))
        assert parse_indices("0-4096")[-1] == 4096 and len(parse_indices("0-4096, 0-4096")) == 4097
        assert parse_indices("10-12", max_index=12) == (10, 11, 12)
        with pytest.raises(ValueError, match="allowed indices are 0-12"):
            parse_indices("13", max_index=12)
        with pytest.raises(ValueError, match="allowed indices are 0-4096"):
            parse_indices([1, 5000])
        with pytest.raises(ValueError, match="allowed indices are 0-4096"):
            parse_indices(99999)

    def test_pairs_are_capped(self):
        with pytest.raises(ValueError, match="irc: index 99999999999 .*allowed indices are 0-4096"):
            parse_pairs("3:99999999999", name="irc")
        with pytest.raises(ValueError, match="allowed indices are 0-30"):
            parse_pairs("3:31", max_index=30)
        with pytest.raises(ValueError, match="allowed indices are 0-4096"):
            parse_pairs([(3, 5000)])
        assert parse_pairs([(3, 27)]) == ((3, 27),)


class _Depth:
    """Just what ``Surrogate.default_objective`` reads: a family name, block and VAE-layer counts."""

    def __init__(self, family, blocks, vae_layers, irc_ok=True):
        self.family, self.num_blocks, self.num_vae_layers, self.irc_ok = family, blocks, vae_layers, irc_ok

    def block_shapes_match(self, i, j):
        return self.irc_ok

    def default_objective(self):
        from anti_i2v.surrogates.base import Surrogate

        return Surrogate.default_objective(self)


class TestAutoLayers:
    def test_auto_follows_the_depth_of_the_loaded_model(self):
        auto = IRALoss(blocks="auto", vae_layers="auto") + IRCLoss(pairs=AUTO)
        cog = resolve_objective(auto, _Depth("cogvideox", 42, 5))
        wan = resolve_objective(auto, _Depth("wan21", 40, 16))
        assert cog.terms[0].blocks == (27,) and cog.terms[1].pairs == ((3, 27),)  # the paper's CogVideoX layers
        assert wan.terms[0].blocks == (26,) and wan.terms[1].pairs == ((3, 26),)  # Wan 2.1 14B: 26 and 3:26
        assert wan.terms[0].vae_layers == (14, 15)
        assert "IRC 'auto' on wan21: pairs 3->26 (the model's recommended pair)" in wan.notes

    def test_explicit_fields_stay_and_missing_recommendations_are_noted(self):
        mixed = Objective((IRALoss(blocks=(5,), vae_layers="auto"), IRCLoss(pairs="auto")))
        out = resolve_objective(mixed, _Depth("unet", 25, 8, irc_ok=False))
        assert len(out.terms) == 1 and out.terms[0].blocks == (5,) and out.terms[0].vae_layers == (6, 7)
        assert out.terms[0].auto == ("vae_layers",)
        assert any(n.startswith("IRC left out: unet") for n in out.notes)
        with pytest.raises(ValueError, match="empty after resolving"):
            resolve_objective(IRCLoss(pairs="auto"), _Depth("unet", 25, 8, irc_ok=False))
        plain = IRALoss(blocks=(1,)) + IRCLoss(pairs=((0, 1),))
        assert resolve_objective(plain, _Depth("x", 4, 2)) is plain

    def test_unresolved_terms_refuse_to_run_and_parse(self):
        with pytest.raises(ValueError, match="'auto'; resolve it"):
            IRALoss(blocks="auto").request()
        with pytest.raises(ValueError, match="'auto'; resolve it"):
            IRCLoss(pairs="auto").request()
        assert IRALoss(blocks=" Auto ").describe()["blocks"] == AUTO
        assert parse_layer_spec("auto") == AUTO and parse_layer_spec("3,1") == (1, 3)
        assert parse_pair_spec("AUTO") == AUTO and parse_pair_spec("3:27") == ((3, 27),)
        with pytest.raises(ValueError, match="blocks: cannot read"):
            parse_layer_spec("autox", name="blocks")
