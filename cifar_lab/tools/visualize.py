"""Look inside a trained model: top-3 predictions, feature maps, Grad-CAM heat maps and first-layer filters.

    cifar-lab visualize runs/simple_cnn/version_0/checkpoints/last.ckpt --images 8 --out visualize
    cifar-lab visualize runs/simple_cnn/version_0/checkpoints/last.ckpt --misclassified
    python scripts/visualize.py <checkpoint> --layers backbone.features.0.0 backbone.features.2.0

Uses the first ``--images`` images of the CIFAR-10 test split (``--data_dir`` or ``$CIFAR_LAB_DATA``), or
with ``--misclassified`` the ``--images`` test images the model gets wrong most confidently, and writes
``predictions.png``, ``feature_maps_<layer>.png``, ``grad_cam.png`` and ``filters.png``.
"""

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.utils import make_grid, save_image

from cifar_lab.data import ImageDataModule
from cifar_lab.errors import ConfigError
from cifar_lab.module import ImageClassifier, load_classifier
from cifar_lab.reporting.plots import (
    denormalize,
    filter_grid,
    first_conv,
    grad_cam_figure,
    top_predictions_figure,
)

FEATURE_CHANNELS = 16  # channels shown per image and layer


def conv_layers(model: nn.Module) -> dict[str, nn.Conv2d]:
    return {name: module for name, module in model.named_modules() if isinstance(module, nn.Conv2d)}


def pick_layers(model: nn.Module, names: list[str] | None) -> dict[str, nn.Module]:
    """The named modules, or the first and last convolutions; an unknown name lists the convolutions."""
    convs = conv_layers(model)
    if not names:
        return {name: convs[name] for name in dict.fromkeys([next(iter(convs)), next(reversed(convs))])}
    modules = dict(model.named_modules())
    unknown = [name for name in names if name not in modules]
    if unknown:
        raise ConfigError(f"no layer named {', '.join(unknown)}; convolutions of this model: {', '.join(convs)}")
    return {name: modules[name] for name in names}


def feature_maps(model: nn.Module, layers: dict[str, nn.Module], images: Tensor) -> dict[str, Tensor]:
    """Each layer's output ``[N,C,H,W]`` for the images, captured by forward hooks (cloned before in-place ops)."""
    captured = {}
    handles = [layer.register_forward_hook(lambda m, i, output, name=name: captured.__setitem__(name, output.clone()))
               for name, layer in layers.items()]
    try:
        with torch.no_grad():
            model(images)
    finally:
        for handle in handles:
            handle.remove()
    return captured


def grad_cam(model: nn.Module, layer: nn.Module, images: Tensor, classes: Tensor) -> Tensor:
    """Grad-CAM (Selvaraju et al., 2017): the layer's activation maps weighted by the spatial mean of the class
    score's gradient, summed, ReLU'd and scaled to [0, 1] per image; ``[N,H,W]`` at the input size."""
    captured = {}
    handle = layer.register_forward_hook(lambda m, i, output: captured.__setitem__("activation", output))
    try:
        with torch.enable_grad():
            logits = model(images)
            activation = captured["activation"]
            (gradient,) = torch.autograd.grad(logits.gather(1, classes[:, None]).sum(), activation)
    finally:
        handle.remove()
    weights = gradient.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * activation).sum(dim=1, keepdim=True)).detach()
    cam = F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return cam / cam.amax(dim=(1, 2), keepdim=True).clamp_min(1e-8)


def test_split(model: ImageClassifier, data_dir: str | None) -> tuple[Tensor, Tensor]:
    """The test images of the model's dataset, normalised as the model saw them, and their labels."""
    test = ImageDataModule.for_evaluation(model.data_hparams, data_dir).datasets["test"]
    return torch.stack([test[i][0] for i in range(len(test))]), test.labels.clone()


def most_confident_mistakes(model: nn.Module, images: Tensor, labels: Tensor, count: int,
                            batch_size: int = 500) -> Tensor:
    """Indices of up to ``count`` images the model gets wrong, the most confident (highest top-1 probability)
    first: the mistakes that say most about what it has learnt."""
    with torch.no_grad():
        probs = torch.cat([model(batch).softmax(dim=1) for batch in images.split(batch_size)])
    confidence, predicted = probs.max(dim=1)
    wrong = torch.nonzero(predicted != labels).flatten()
    if len(wrong) == 0:
        raise ConfigError("the model classifies every test image correctly: there is no mistake to show; "
                          "run without --misclassified")
    return wrong[confidence[wrong].argsort(descending=True)[:count]]


def visualize(ckpt_path: Path, out: Path, count: int = 8, layer_names: list[str] | None = None,
              cam_layer: str | None = None, data_dir: str | None = None, misclassified: bool = False) -> list[Path]:
    """Write the four kinds of picture for ``count`` test images (the first, or the most confident mistakes);
    returns the files written."""
    model = load_classifier(ckpt_path)
    images, targets = test_split(model, data_dir)
    first = torch.arange(min(count, len(targets)))
    chosen = most_confident_mistakes(model, images, targets, count) if misclassified else first
    images, targets = images[chosen], targets[chosen]
    shown, names = denormalize(images, model.input_stats), model.class_names
    out.mkdir(parents=True, exist_ok=True)
    written = []

    def save_figure(figure, name: str) -> None:
        figure.savefig(out / name, dpi=80)
        written.append(out / name)

    with torch.no_grad():
        probs = model(images).softmax(dim=1)
    save_figure(top_predictions_figure(shown, probs, targets, names), "predictions.png")
    for name, maps in feature_maps(model, pick_layers(model, layer_names), images).items():
        maps = maps[:, :FEATURE_CHANNELS]  # one grey tile per channel, a row per image
        path = out / f"feature_maps_{name}.png"
        save_image(make_grid(maps.flatten(0, 1)[:, None], nrow=maps.shape[1], normalize=True, scale_each=True,
                             pad_value=1.0), path)
        written.append(path)
    cam_module = pick_layers(model, [cam_layer])[cam_layer] if cam_layer else list(conv_layers(model).values())[-1]
    preds = probs.argmax(dim=1)
    save_figure(grad_cam_figure(shown, grad_cam(model, cam_module, images, preds), preds, names), "grad_cam.png")
    save_image(filter_grid(first_conv(model)), out / "filters.png")
    written.append(out / "filters.png")
    return written


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cifar-lab visualize", description=__doc__.split("\n")[0])
    parser.add_argument("ckpt", type=Path, help="a checkpoint written by cifar-lab fit")
    parser.add_argument("--images", type=int, default=8, help="how many test images (from the first)")
    parser.add_argument("--misclassified", action="store_true",
                        help="show the test images the model gets wrong most confidently instead of the first ones")
    parser.add_argument("--layers", nargs="+", help="modules whose feature maps to show (default: first and last conv)")
    parser.add_argument("--cam_layer", help="module for Grad-CAM (default: the last conv)")
    parser.add_argument("--data_dir", help="where the checkpoint's dataset is now (default: its data.data_dir, else "
                                           "$CIFAR_LAB_DATA or ./data)")
    parser.add_argument("--out", type=Path, default=Path("visualize"), help="folder for the PNG files")
    return parser


def main(argv: list[str]) -> None:
    tool = parser()
    args = tool.parse_args(argv)
    if args.images < 1:
        tool.error("--images must be at least 1")
    for path in visualize(args.ckpt, args.out, args.images, args.layers, args.cam_layer, args.data_dir,
                          args.misclassified):
        print(f"wrote {path}")
