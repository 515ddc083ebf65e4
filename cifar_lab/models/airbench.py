"""The small VGG-like net of the fast CIFAR-10 training records (airbench94-style).

A frozen 2x2 patch-whitening convolution (initialised from training-data statistics by
``init_whitening``), three conv groups (conv, max-pool, BN, GELU, conv, BN, GELU), a final max-pool
and a bias-free linear head scaled down by ``1/9``. BatchNorm has no learnable scale and a high
momentum; 3x3 convs start near the identity (dirac init) so the deep stack trains from step one.
"""

import torch
from torch import Tensor, nn

from cifar_lab.models.registry import register


class BatchNormNoScale(nn.BatchNorm2d):
    """BatchNorm with a learnable shift only: the following conv absorbs any scale."""

    def __init__(self, num_features: int, momentum: float = 0.4) -> None:
        super().__init__(num_features, eps=1e-12, momentum=momentum)
        self.weight.requires_grad_(False)


def identity_conv(in_channels: int, out_channels: int) -> nn.Conv2d:
    """3x3 'same' conv whose first ``in_channels`` filters start as the identity (an implicit residual)."""
    conv = nn.Conv2d(in_channels, out_channels, 3, padding="same", bias=False)
    with torch.no_grad():
        nn.init.dirac_(conv.weight[: min(in_channels, out_channels)])
    return conv


class ConvGroup(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, bn_momentum: float) -> None:
        super().__init__(
            identity_conv(in_channels, out_channels),
            nn.MaxPool2d(2),
            BatchNormNoScale(out_channels, bn_momentum),
            nn.GELU(),
            identity_conv(out_channels, out_channels),
            BatchNormNoScale(out_channels, bn_momentum),
            nn.GELU(),
        )


class AirbenchNet(nn.Module):
    def __init__(self, num_classes: int = 10, widths: tuple[int, int, int] = (64, 256, 256),
                 whiten_kernel: int = 2, bn_momentum: float = 0.4, logit_scale: float = 1 / 9) -> None:
        super().__init__()
        whiten_width = 2 * 3 * whiten_kernel**2  # each whitening filter and its negative
        self.whiten = nn.Conv2d(3, whiten_width, whiten_kernel, padding=0, bias=True)
        self.whiten.weight.requires_grad_(False)  # set from data, never trained
        nn.init.zeros_(self.whiten.bias)
        channels = (whiten_width, *widths)
        self.features = nn.Sequential(
            nn.GELU(),
            *(ConvGroup(i, o, bn_momentum) for i, o in zip(channels, channels[1:])),
            nn.MaxPool2d(3),
            nn.Flatten(),
        )
        self.head = nn.Linear(widths[-1], num_classes, bias=False)
        self.logit_scale = logit_scale

    @torch.no_grad()
    def init_whitening(self, images: Tensor, eps: float = 5e-4) -> None:
        """Set the whitening filters to the patch covariance's eigenvectors / sqrt(eigenvalues)."""
        k = self.whiten.kernel_size[0]
        patches = images.float().unfold(2, k, 1).unfold(3, k, 1).transpose(1, 3).reshape(-1, 3 * k * k)
        covariance = patches.T @ patches / len(patches)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
        # rows of patches are laid out (c, h, w) like the conv's filters; strongest direction first
        filters = (eigenvectors.T / torch.sqrt(eigenvalues + eps)[:, None]).flip(0).reshape(-1, 3, k, k)
        self.whiten.weight.copy_(torch.cat([filters, -filters]).to(self.whiten.weight))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(self.whiten(x))) * self.logit_scale


@register("airbench")
def airbench(num_classes: int = 10, **kwargs) -> AirbenchNet:
    return AirbenchNet(num_classes=num_classes, **kwargs)
