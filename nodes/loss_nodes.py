"""The perturbation and objective nodes: DSP settings and the chainable IRA / IRC / baseline loss terms.

Each loss node appends one :mod:`anti_i2v.losses` term to an ``ANTI_I2V_LOSS`` chain (:class:`nodes.types.LossChain`),
so ``IRALoss -> IRCLoss`` builds the paper's objective (Anti-I2V Sec. 3.2-3.3) as a sum of weighted terms.
Layer indices are checked against the surrogate by the protect node, which knows the model.
"""

from __future__ import annotations

import torch

from anti_i2v.dsp import DCT_CHANNEL_SETS, SPACES, DSPConfig
from anti_i2v.losses import AUTO, IRALoss, IRCLoss, parse_layer_spec, parse_pair_spec
from anti_i2v.methods import TERM_NAMES, loss_term

from . import runtime
from .comfy import CATEGORY, DSPType, LossType, io
from .types import LossChain

__all__ = ["DSPPerturb", "IRALossNode", "IRCLossNode", "BaselineLossNode"]


def _chain(losses: LossChain | None, term, target: torch.Tensor | None, node: str) -> LossChain:
    if losses is not None and not isinstance(losses, LossChain):
        raise ValueError(f"{node}: 'losses' must come from another Anti-I2V loss node, got {type(losses).__name__}")
    if target is not None:
        target = target.detach().clone()  # the chain outlives this prompt's tensors
    return LossChain.start(term, target) if losses is None else losses.extend(term, target)


def _loss_inputs(with_target: bool) -> list:
    extra = []
    if with_target:
        extra.append(io.Image.Input(
            "target_image", optional=True,
            tooltip="Optional unrelated target image whose features the photo's are pulled towards; a fixed "
                    "stripe pattern when empty. Batch 1 or the protected batch size."))
    extra.append(LossType.Input("losses", optional=True,
                                tooltip="Optional loss chain to add this term to (from another loss node)."))
    return extra


class DSPPerturb(io.ComfyNode):
    """Dual-Space Perturbation settings (Anti-I2V Sec. 3.1): a*/b* colour field plus low-frequency DCT block."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        d = DSPConfig()
        return io.Schema(
            node_id="AntiI2V_DSPPerturb",
            display_name="Dual-Space Perturbation (Anti-I2V)",
            category=CATEGORY,
            description=(
                "Settings of the Dual-Space Perturbation (Anti-I2V Sec. 3.1): noise on the a*/b* colour channels "
                "of CIE Lab and on the low-frequency DCT coefficients, stepped and bounded in pixel units and "
                "projected in RGB to an L-inf budget. The defaults keep the photo visually unchanged (PSNR over "
                "35 dB, CIEDE2000 under 2.5 on the benchmark photos); 'rgb' space is plain PGD, for comparisons."
            ),
            inputs=[
                io.Float.Input("eps", default=d.eps, min=0.5, max=64.0, step=0.5,
                               tooltip="L-inf budget in 1/255 of the pixel range. Default 8 (= '16/255' of code "
                                       "working on images in [-1, 1]); the paper's 16 is stronger but visible."),
                io.Int.Input("dct_block", default=d.dct_block, min=1, max=256,
                             tooltip="Side k of the low-frequency DCT block (k x k coefficients per channel)."),
                io.Combo.Input("dct_channels", options=list(DCT_CHANNEL_SETS), default=d.dct_channels,
                               tooltip="Where the DCT part acts: 'ab' (a*/b*, lightness untouched), RGB, or L*a*b*."),
                io.Float.Input("mix", default=d.mix, min=0.0, max=1.0, step=0.05,
                               tooltip="Share of the budget for the colour (a*/b*) part; the rest goes to the DCT "
                                       "part ('dsp' space only)."),
                io.Boolean.Input("restore_luminance", default=d.restore_luminance,
                                 tooltip="Finish by putting back the original L* (lightness) within the budget."),
                io.Combo.Input("space", options=list(SPACES), default=d.space, optional=True,
                               tooltip="What is optimised: 'dsp' (colour + low-frequency DCT, the paper's), 'ab' "
                                       "(colour only), 'dct' (low-frequency only) or 'rgb' (plain per-pixel PGD)."),
                io.Int.Input("chroma_downsample", default=d.chroma_downsample, min=1, max=16, optional=True,
                             tooltip="The colour field has the photo's size divided by this; 2 matches JPEG's "
                                     "chroma resolution, so re-encoding keeps more of it."),
            ],
            outputs=[DSPType.Output(display_name="perturbation", tooltip="DSP settings for the protect node.")],
        )

    @classmethod
    def execute(cls, eps: float, dct_block: int, dct_channels: str, mix: float, restore_luminance: bool,
                space: str = "dsp", chroma_downsample: int = 2) -> io.NodeOutput:
        with runtime.node_errors("AntiI2V_DSPPerturb"):
            cfg = DSPConfig(eps=float(eps), space=space, dct_block=int(dct_block), dct_channels=dct_channels,
                            mix=float(mix), chroma_downsample=int(chroma_downsample),
                            restore_luminance=bool(restore_luminance))
        return io.NodeOutput(cfg)


class IRALossNode(io.ComfyNode):
    """Internal Representation Attack term (Anti-I2V Sec. 3.2)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="AntiI2V_IRALoss",
            display_name="IRA Loss (Anti-I2V)",
            category=CATEGORY,
            description=(
                "Internal Representation Attack (Anti-I2V Sec. 3.2): pulls the features of the protected photo "
                "in the chosen denoiser blocks and VAE-encoder layers towards those of an unrelated target image."
            ),
            inputs=[
                io.String.Input("blocks", default=AUTO,
                                tooltip="Denoiser block indices: 'auto' (default: the loaded model's recommended "
                                        "block, e.g. 27 of CogVideoX-5B's 42, 26 of Wan 2.1 14B's 40; the report "
                                        "names it), '27', '0-27' or '3,10,27' (empty: none). The protect node names "
                                        "the valid range of the loaded surrogate."),
                io.String.Input("vae_layers", default=AUTO,
                                tooltip="VAE-encoder layer indices, same syntax: 'auto' (default: the model's "
                                        "recommended, the last two), indices, or empty for none."),
                io.Float.Input("weight", default=1.0, min=-1000.0, max=1000.0, step=0.1,
                               tooltip="Multiplier of this term in the sum."),
                *_loss_inputs(with_target=True),
            ],
            outputs=[LossType.Output(display_name="losses", tooltip="The loss chain with this term added.")],
        )

    @classmethod
    def execute(cls, blocks: str, vae_layers: str, weight: float, target_image=None,
                losses=None) -> io.NodeOutput:
        node = "AntiI2V_IRALoss"
        with runtime.node_errors(node):
            term = IRALoss(blocks=parse_layer_spec(blocks, name="blocks"),
                           vae_layers=parse_layer_spec(vae_layers, name="vae_layers"), weight=float(weight))
            return io.NodeOutput(_chain(losses, term, target_image, node))


class IRCLossNode(io.ComfyNode):
    """Internal Representation Collapse term (Anti-I2V Sec. 3.3)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="AntiI2V_IRCLoss",
            display_name="IRC Loss (Anti-I2V)",
            category=CATEGORY,
            description=(
                "Internal Representation Collapse (Anti-I2V Sec. 3.3): pulls a deep denoiser block's output "
                "towards a shallow block's output for the protected photo, so deep semantics collapse."
            ),
            inputs=[
                io.String.Input("pairs", default=AUTO,
                                tooltip="Block pairs 'shallow:deep', comma separated, e.g. '3:27' or '3:27,5:30'; "
                                        "'auto' (default): the loaded model's recommended pair (CogVideoX-5B 3:27, "
                                        "Wan 2.1 14B 3:26, SVD a mirror pair of one shape), named in the report."),
                io.Float.Input("weight", default=1.0, min=-1000.0, max=1000.0, step=0.1,
                               tooltip="Multiplier of this term in the sum."),
                *_loss_inputs(with_target=False),
            ],
            outputs=[LossType.Output(display_name="losses", tooltip="The loss chain with this term added.")],
        )

    @classmethod
    def execute(cls, pairs: str, weight: float, losses=None) -> io.NodeOutput:
        node = "AntiI2V_IRCLoss"
        with runtime.node_errors(node):
            term = IRCLoss(pairs=parse_pair_spec(pairs, name="pairs"), weight=float(weight))
            return io.NodeOutput(_chain(losses, term, None, node))


class BaselineLossNode(io.ComfyNode):
    """Baseline terms: AdvDM (diffusion loss) and PhotoGuard (encoder attack)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="AntiI2V_BaselineLoss",
            display_name="Baseline Loss (AdvDM / PhotoGuard)",
            category=CATEGORY,
            description=(
                "One term of another defense, to compose objectives by hand (README 'Defenses'): AdvDM maximises "
                "the denoiser's error; PhotoGuard's encoder attack pulls the VAE latent to a target's; Mist's "
                "textural loss; SDS(-)/(+) (score distillation, no denoiser Jacobian); VGMShield (image- and "
                "VAE-encoder embeddings pushed from the clean photo's or pulled to a target's); I2VGuard's "
                "spatial, temporal-attention and diffusion attacks and its image-distance term. The Defense "
                "Method node builds a whole defense with its paper's defaults."
            ),
            inputs=[
                io.Combo.Input("method", options=list(TERM_NAMES), default="advdm",
                               tooltip="advdm: maximise the denoising loss; photoguard: VAE-latent attack; "
                                       "mist_textural: Mist's summed latent distance to the target; sds-/sds+: "
                                       "score distillation (minimise/maximise); vgmshield_undirected/directed: "
                                       "encoder embeddings away from the clean photo / to the target; "
                                       "i2vguard_spatial/temporal/diffusion, image_distance: I2VGuard's terms."),
                io.Float.Input("weight", default=1.0, min=-1000.0, max=1000.0, step=0.1,
                               tooltip="Multiplier of this term in the sum."),
                *_loss_inputs(with_target=True),
            ],
            outputs=[LossType.Output(display_name="losses", tooltip="The loss chain with this term added.")],
        )

    @classmethod
    def execute(cls, method: str, weight: float, target_image=None, losses=None) -> io.NodeOutput:
        node = "AntiI2V_BaselineLoss"
        with runtime.node_errors(node):
            term = loss_term(method, float(weight))
            return io.NodeOutput(_chain(losses, term, target_image, node))
