"""Parameter groups with their own learning-rate and weight-decay multipliers.

Normalisation layers' affine parameters and biases often want a larger learning rate and less
(or no) weight decay than convolution weights. Groups carry ``lr_scale``/``weight_decay_scale``
and are scaled once the optimizer from the config has set its base values.
"""

from torch import nn
from torch.optim import Optimizer

NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def parameter_groups(module: nn.Module, norm_lr_scale: float = 1.0, no_decay_norm_bias: bool = False) -> list[dict]:
    """Split the parameters into normalisation, bias and weight groups.

    ``norm_lr_scale`` multiplies the normalisation parameters' learning rate and divides their
    weight decay, keeping the decay per step unchanged; ``no_decay_norm_bias`` turns weight decay
    off for normalisation parameters and all biases. Frozen parameters are included: the optimizer
    skips them while they get no gradient, and steps them once a fine-tuning callback unfreezes them.
    """
    norm_ids = {id(p) for m in module.modules() if isinstance(m, NORM_LAYERS) for p in m.parameters(recurse=False)}
    groups: dict[str, list[nn.Parameter]] = {"norm": [], "bias": [], "weight": []}
    for param in module.parameters():
        kind = "norm" if id(param) in norm_ids else "bias" if param.ndim <= 1 else "weight"
        groups[kind].append(param)
    decay = 0.0 if no_decay_norm_bias else 1.0
    scales = {"norm": (norm_lr_scale, decay / norm_lr_scale), "bias": (1.0, decay), "weight": (1.0, 1.0)}
    return [
        {"params": params, "name": kind, "lr_scale": scales[kind][0], "weight_decay_scale": scales[kind][1]}
        for kind, params in groups.items()
        if params
    ]


def apply_group_scales(optimizer: Optimizer) -> None:
    """Turn each group's multipliers into absolute values (before any scheduler reads them)."""
    for group in optimizer.param_groups:
        group["lr"] *= group.get("lr_scale", 1.0)
        if "weight_decay" in group:
            group["weight_decay"] *= group.get("weight_decay_scale", 1.0)
