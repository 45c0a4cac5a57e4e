"""ComfyUI nodes of Anti-I2V (imported by the pack's root ``__init__.py`` only when ComfyUI is importable).

The literal mappings below are what ComfyUI loads and what ComfyUI-Manager's scanner reads. Node ids are
permanent (saved workflows refer to them).
"""

from .ensemble_nodes import EnsembleSurrogate
from .inspect_nodes import LayerPCA
from .loss_nodes import BaselineLossNode, DSPPerturb, IRALossNode, IRCLossNode
from .method_nodes import DefenseMethod
from .preview_nodes import PreviewAttackVideo
from .protect_image import ProtectImage
from .protect_nodes import ProtectLoop
from .surrogate_nodes import LoadSurrogateI2V

NODE_CLASS_MAPPINGS = {
    "AntiI2V_LoadSurrogateI2V": LoadSurrogateI2V,
    "AntiI2V_DSPPerturb": DSPPerturb,
    "AntiI2V_IRALoss": IRALossNode,
    "AntiI2V_IRCLoss": IRCLossNode,
    "AntiI2V_BaselineLoss": BaselineLossNode,
    "AntiI2V_ProtectLoop": ProtectLoop,
    "AntiI2V_PreviewAttackVideo": PreviewAttackVideo,
    "AntiI2V_LayerPCA": LayerPCA,
    "AntiI2V_EnsembleSurrogate": EnsembleSurrogate,
    "AntiI2V_ProtectImage": ProtectImage,
    "AntiI2V_DefenseMethod": DefenseMethod,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "AntiI2V_LoadSurrogateI2V": "Load I2V Surrogate (Anti-I2V)",
    "AntiI2V_DSPPerturb": "Dual-Space Perturbation (Anti-I2V)",
    "AntiI2V_IRALoss": "IRA Loss (Anti-I2V)",
    "AntiI2V_IRCLoss": "IRC Loss (Anti-I2V)",
    "AntiI2V_BaselineLoss": "Baseline Loss (AdvDM / PhotoGuard)",
    "AntiI2V_ProtectLoop": "Protect Image (Anti-I2V)",
    "AntiI2V_PreviewAttackVideo": "Preview Attack Video (Anti-I2V)",
    "AntiI2V_LayerPCA": "Layer PCA Maps (Anti-I2V)",
    "AntiI2V_EnsembleSurrogate": "Ensemble Surrogate (Anti-I2V)",
    "AntiI2V_ProtectImage": "Protect Image for I2V (Anti-I2V)",
    "AntiI2V_DefenseMethod": "Defense Method (Anti-I2V)",
}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
