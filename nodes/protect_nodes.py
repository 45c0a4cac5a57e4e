"""AntiI2V_ProtectLoop: run :func:`anti_i2v.protect.protect` (Anti-I2V Alg. 1) on a ComfyUI image batch."""

from __future__ import annotations


from anti_i2v.dsp import DSPConfig
from anti_i2v.protect import OPTIMIZERS, SCHEDULES, ProtectConfig, protect
from anti_i2v.surrogates.base import Surrogate

from . import runtime
from .comfy import CATEGORY, DSPType, LossType, SurrogateType, io
from .types import EnsembleSpec, LossChain

__all__ = ["ProtectLoop"]

NODE_ID = "AntiI2V_ProtectLoop"


def _check_sockets(surrogate, perturbation, losses) -> None:
    if not isinstance(surrogate, (Surrogate, EnsembleSpec)):
        raise ValueError(f"{NODE_ID}: 'surrogate' must come from the Load I2V Surrogate or Ensemble Surrogate "
                         f"node, got {type(surrogate).__name__}")
    if not isinstance(perturbation, DSPConfig):
        raise ValueError(f"{NODE_ID}: 'perturbation' must come from the Dual-Space Perturbation node, "
                         f"got {type(perturbation).__name__}")
    if not isinstance(losses, LossChain):
        raise ValueError(f"{NODE_ID}: 'losses' must come from an Anti-I2V loss node (IRA, IRC, Baseline), "
                         f"got {type(losses).__name__}")


class ProtectLoop(io.ComfyNode):
    """Optimise the Dual-Space Perturbation of each photo against the surrogate for the chained losses."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=NODE_ID,
            display_name="Protect Image (Anti-I2V)",
            category=CATEGORY,
            description=(
                "Protects photos against image-to-video models (Anti-I2V): optimises an imperceptible Dual-Space "
                "Perturbation so the surrogate's internal representations follow the chained losses. Outputs the "
                "protected images at their original size, an amplified view of the change and a JSON report."
            ),
            inputs=[
                io.Image.Input("image", tooltip="Photo(s) to protect (any size; RGBA loses its alpha channel)."),
                SurrogateType.Input("surrogate", tooltip="The I2V surrogate from Load I2V Surrogate, or several "
                                                         "from Ensemble Surrogate."),
                DSPType.Input("perturbation", tooltip="Perturbation settings from Dual-Space Perturbation."),
                LossType.Input("losses", tooltip="The objective: a chain of IRA / IRC / Baseline loss nodes, or a "
                                                 "Defense Method node (with an ensemble: for the members without "
                                                 "losses of their own)."),
                io.Int.Input("steps", default=200, min=0, max=10000,
                             tooltip="Iterations (paper: 200)."),
                io.Float.Input("step_size", default=1.0, min=0.01, max=64.0, step=0.05,
                               tooltip="Step per iteration in 1/255 of the pixel range (signed-gradient step, "
                                       "or Adam's learning rate)."),
                io.Combo.Input("schedule", options=list(SCHEDULES), default="constant",
                               tooltip="Step-size schedule: constant, or decaying linearly / by cosine to 10%."),
                io.Combo.Input("optimizer", options=list(OPTIMIZERS), default=ProtectConfig().optimizer,
                               tooltip="normalized (default): the gradient scaled so the most sensitive pixel "
                                       "moves by step_size, less visible change for the same effect; sign: "
                                       "classic L-inf PGD (signed gradient); adam: Adam on the DSP parameters."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=False,
                             tooltip="Seed of the timesteps and noise; the same seed gives the same result."),
                io.Int.Input("frames", default=0, min=0, max=1024,
                             tooltip="Pixel frames the denoiser sees for this run; 0 keeps the surrogate's. To "
                                     "attack the video you will generate, give it WanImageToVideo's 'length' (33 "
                                     "in ComfyUI's template) or link one INT to both; the report's "
                                     "settings.frames_attacked says what was used."),
                io.Mask.Input("mask", optional=True,
                              tooltip="Optional MASK (same size as the image; e.g. painted in the mask editor): "
                                      "where the perturbation may go, such as the face. 0 leaves pixels untouched."),
                io.Int.Input("robust_jpeg", default=0, min=0, max=100, optional=True,
                             tooltip="0: off. A JPEG quality (e.g. 75): optimise through a differentiable JPEG every "
                                     "iteration so the protection survives re-encoding."),
                io.Boolean.Input("loop_from_method", default=False, optional=True,
                                 tooltip="Use the paper's steps, step size, step rule, schedule and random start of "
                                         "the defense from a Defense Method node (this node's widgets for those are "
                                         "then ignored)."),
                io.Boolean.Input("random_start", default=False, optional=True,
                                 tooltip="Start from a random point of the budget (as the baselines' PGD does)."),
            ],
            outputs=[
                io.Image.Output(display_name="protected", tooltip="Protected images, same size as the input."),
                io.Image.Output(display_name="perturbation_view",
                                tooltip="|protected - image| amplified so the budget is white."),
                io.String.Output(display_name="report",
                                 tooltip="JSON report: settings, L-inf, PSNR, SSIM, loss history."),
            ],
            hidden=[io.Hidden.unique_id, io.Hidden.prompt],
        )

    @classmethod
    def execute(cls, image, surrogate, perturbation, losses, steps: int, step_size: float, schedule: str,
                optimizer: str, seed: int, frames: int, mask=None, robust_jpeg: int = 0,
                loop_from_method: bool = False, random_start: bool = False) -> io.NodeOutput:
        _check_sockets(surrogate, perturbation, losses)
        node_id = cls.hidden.unique_id if cls.hidden is not None else None
        with runtime.node_errors(NODE_ID):
            if loop_from_method:
                if losses.loop is None:
                    raise ValueError("loop_from_method is on but the losses do not come from a Defense Method node; "
                                     "connect one or turn loop_from_method off")
                config = ProtectConfig(**losses.loop, seed=int(seed), robust_jpeg=int(robust_jpeg))
            else:
                config = ProtectConfig(steps=int(steps), step_size=float(step_size), schedule=schedule,
                                       optimizer=optimizer, seed=int(seed), robust_jpeg=int(robust_jpeg),
                                       random_start=bool(random_start))
            if int(frames) < 0:
                raise ValueError(f"frames must be >= 0 (0 keeps the surrogate's), got {frames}")
            with runtime.grad_enabled():
                x = runtime.to_library_image(image, node=NODE_ID, arg="image")
                target = None
                if losses.target is not None:
                    target = runtime.to_library_image(losses.target, node=NODE_ID, arg="target_image")
                    if target.shape[0] not in (1, x.shape[0]):
                        raise ValueError(
                            f"target_image has a batch of {target.shape[0]} but image has {x.shape[0]}: the "
                            f"target batch must be 1 or equal the image batch")
                m = runtime.to_library_mask(mask, x)
                callback = runtime.progress_callback(node_id, config.steps)
                model, objective = surrogate, losses.objective
                if isinstance(surrogate, EnsembleSpec):
                    from .ensemble_nodes import library_ensemble

                    model, objective = library_ensemble(surrogate, losses, node=NODE_ID), None
                with runtime.frames_for_run(surrogate, int(frames)), runtime.loaded_for_run(surrogate):
                    result = protect(x, model, objective, perturbation, config, target=target,
                                     mask=m, callback=callback)
        report = result.report()
        report["warnings"] = runtime.clip_vision_warnings(cls.hidden.prompt if cls.hidden is not None else None,
                                                          node_id)
        for w in report["warnings"]:
            runtime.LOG.warning("%s: %s", NODE_ID, w)
        report = runtime.to_json(report)
        view = runtime.perturbation_view(result.perturbation, perturbation.eps01)
        return io.NodeOutput(runtime.to_comfy_image(result.protected), runtime.to_comfy_image(view), report)
