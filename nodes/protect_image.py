"""AntiI2V_ProtectImage: protect the photo of an existing I2V graph with one node (one rewire).

It takes the image and the models the graph already loads (MODEL, VAE, CLIP_VISION, positive CONDITIONING),
builds the native surrogate around them (:func:`nodes.native.native_surrogate`), leaves the layers to the model
(``"auto"``: :func:`anti_i2v.losses.resolve_objective`), uses a strength preset (:data:`anti_i2v.protect.PRESETS`)
and runs :func:`anti_i2v.protect.protect`. Its ``protected`` output replaces the photo for EVERY consumer
(WanImageToVideo's ``start_image`` and CLIPVisionEncode's ``image`` in ComfyUI's Wan 2.1 I2V template); the
frontend action "Anti-I2V: protect this image" (js/anti_i2v_protect_action.js) inserts it and moves every link.
"""

from __future__ import annotations


from anti_i2v.dsp import DSPConfig
from anti_i2v.losses import AUTO, IRALoss, IRCLoss, Objective
from anti_i2v.protect import PRESETS, ProtectConfig, protect

from . import runtime
from .comfy import CATEGORY, io

__all__ = ["ProtectImage"]

NODE_ID = "AntiI2V_ProtectImage"
CROPS = ("auto", "none", "center")


class ProtectImage(io.ComfyNode):
    """All-in-one protection against the user's own I2V model: image in, protected image out."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=NODE_ID,
            display_name="Protect Image for I2V (Anti-I2V)",
            category=CATEGORY,
            description=(
                "Protects a photo against the image-to-video model of this graph in one node: connect the image "
                "and the models the graph already loads (Wan 2.1 I2V or SVD), then feed the protected output to "
                "EVERY node that used the photo (WanImageToVideo and CLIPVisionEncode). Right-click the image's "
                "node and choose 'Anti-I2V: protect this image' to insert it with all links moved. Layers follow "
                "the model ('auto'); the report names them, the frames attacked and any unprotected CLIP-vision input."
            ),
            inputs=[
                io.Image.Input("image", tooltip="The photo to protect (e.g. the LoadImage output of your I2V graph)."),
                io.Model.Input("model", tooltip="Your I2V model: Wan 2.1 I2V (UNETLoader, ModelSamplingSD3 is fine) "
                                                "or SVD (ImageOnlyCheckpointLoader)."),
                io.Vae.Input("vae", tooltip="The VAE your graph uses with that model."),
                io.Combo.Input("strength", options=list(PRESETS), default="default",
                               tooltip="low: eps 4/255, 100 steps; default: eps 8/255, 200 steps (imperceptible on "
                                       "the benchmark photos); high: eps 16/255 (the paper's), 300 steps, visible "
                                       "up close."),
                io.Int.Input("frames", default=33, min=1, max=1024,
                             tooltip="Pixel frames of the video attacked. Set it to your WanImageToVideo 'length' "
                                     "(33 in ComfyUI's template) or SVD 'video_frames', or link the same INT to "
                                     "both; fewer frames are faster and attack the first frames only."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=False,
                             tooltip="Seed of the timesteps and noise; the same seed gives the same result."),
                io.ClipVision.Input("clip_vision", optional=True,
                                    tooltip="The CLIP vision model of your graph (Wan 2.1: clip_vision_h; required "
                                            "for SVD). Its image tokens are attacked too."),
                io.Conditioning.Input("positive", optional=True,
                                      tooltip="Your positive prompt's CONDITIONING (Wan); zeros when empty."),
                io.Combo.Input("clip_vision_crop", options=list(CROPS), default="auto", optional=True,
                               tooltip="Must match your CLIPVisionEncode 'crop'. auto: 'none' for Wan (what "
                                       "ComfyUI's Wan 2.1 I2V template uses: the whole photo squashed), centre crop "
                                       "for SVD (SVD_img2vid_Conditioning always crops)."),
                io.Int.Input("steps", default=0, min=0, max=10000, optional=True,
                             tooltip="0: the strength preset's steps; otherwise this many iterations."),
                io.Mask.Input("mask", optional=True,
                              tooltip="Optional MASK (the image's size): where the perturbation may go, e.g. the face."),
            ],
            outputs=[
                io.Image.Output(display_name="protected",
                                tooltip="The protected photo, same size: connect it wherever the photo went."),
                io.String.Output(display_name="report",
                                 tooltip="JSON report: resolved layers, frames attacked, quality figures, warnings."),
            ],
            hidden=[io.Hidden.unique_id, io.Hidden.prompt],
        )

    @classmethod
    def execute(cls, image, model, vae, strength: str, frames: int, seed: int, clip_vision=None, positive=None,
                clip_vision_crop: str = "auto", steps: int = 0, mask=None) -> io.NodeOutput:
        node_id = cls.hidden.unique_id if cls.hidden is not None else None
        prompt = cls.hidden.prompt if cls.hidden is not None else None
        with runtime.node_errors(NODE_ID):
            if strength not in PRESETS:
                raise ValueError(f"strength must be one of {', '.join(PRESETS)}, got {strength!r}")
            if clip_vision_crop not in CROPS:
                raise ValueError(f"clip_vision_crop must be one of {', '.join(CROPS)}, got {clip_vision_crop!r}")
            if int(frames) < 1 or int(steps) < 0:
                raise ValueError(f"frames must be >= 1 and steps >= 0, got frames={frames}, steps={steps}")
            preset = PRESETS[strength]
            config = ProtectConfig(steps=int(steps) or preset["steps"], step_size=preset["step_size"],
                                   seed=int(seed), robust_jpeg=preset["robust_jpeg"])
            perturbation = DSPConfig(eps=preset["eps"])
            objective = Objective((IRALoss(blocks=AUTO, vae_layers=AUTO), IRCLoss(pairs=AUTO)))
            warnings = runtime.clip_vision_warnings(prompt, node_id)
            for w in warnings:
                runtime.LOG.warning("%s: %s", NODE_ID, w)
            with runtime.grad_enabled():
                from .native import native_surrogate

                surrogate = native_surrogate(model=model, vae=vae, clip_vision=clip_vision, positive=positive,
                                             frames=int(frames), clip_vision_crop=clip_vision_crop)
                x = runtime.to_library_image(image, node=NODE_ID, arg="image")
                m = runtime.to_library_mask(mask, x)
                callback = runtime.progress_callback(node_id, config.steps)
                with runtime.loaded_for_run(surrogate):
                    result = protect(x, surrogate, objective, perturbation, config, mask=m, callback=callback)
        report = result.report()
        report["strength"] = strength
        report["warnings"] = warnings
        return io.NodeOutput(runtime.to_comfy_image(result.protected), runtime.to_json(report))
