"""Fine-tuning a torchvision backbone from a local weights file: head replacement, upsampling,
freezing and unfreezing."""

from pathlib import Path

import lightning as L
import pytest
import torch
from torchvision.models import resnet18

from cifar_lab.callbacks.finetune import HeadFirstFinetuning
from cifar_lab.data import ImageDataModule
from cifar_lab.errors import ConfigError, UnknownBackboneError, WeightsNotFoundError
from cifar_lab.models import create
from cifar_lab.module import ImageClassifier
from tests.helpers import tiny_trainer


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Stands in for the ImageNet file: a randomly initialised torchvision ResNet-18 (1000 classes)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "resnet18-imagenet.pth"
    torch.save(resnet18().state_dict(), path)
    return path


def test_imagenet_weights_load_and_the_head_is_replaced(weights_file: Path) -> None:
    saved = torch.load(weights_file, weights_only=True)
    with pytest.warns(UserWarning, match="fc.weight, fc.bias"):  # the 1000-class head keeps its fresh init
        model = create("torchvision:resnet18", num_classes=10, weights=str(weights_file))
    assert torch.equal(model.conv1.weight, saved["conv1.weight"])
    assert torch.equal(model.layer4[1].bn2.running_var, saved["layer4.1.bn2.running_var"])
    assert model.fc.weight.shape == (10, 512)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_input_is_upsampled_before_the_imagenet_stem(weights_file: Path) -> None:
    model = create("torchvision:resnet18", num_classes=10, weights=str(weights_file), input_size=64).eval()
    seen = []
    model.net.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape))
    model(torch.rand(3, 3, 32, 32))
    assert seen == [(3, 3, 64, 64)]


def test_missing_or_wrong_weights_file_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "resnet18.pth"
    with pytest.raises(WeightsNotFoundError, match=f"weights file {missing} for torchvision:resnet18 does not exist"):
        create("torchvision:resnet18", weights=str(missing))
    other = tmp_path / "other.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, other)
    with pytest.raises(ConfigError, match="does not match torchvision:resnet18"):
        create("torchvision:resnet18", weights=str(other))
    with pytest.raises(UnknownBackboneError, match="unknown torchvision model 'resnet19'"):
        create("torchvision:resnet19")
    with pytest.raises(ConfigError, match="freeze must be"):
        HeadFirstFinetuning(freeze="head")


def finetune(npz_dir: Path, weights_file: Path, callbacks: list[L.Callback], model_kwargs: dict | None = None,
             **trainer_kwargs) -> ImageClassifier:
    L.seed_everything(0)
    datamodule = ImageDataModule(str(npz_dir), download=False, batch_size=16, num_workers=0, val_size=50)
    model = ImageClassifier("torchvision:resnet18", backbone_kwargs={"weights": str(weights_file)},
                            optimizer=torch.optim.SGD,  # plain SGD: a step changes exactly the parameters with grads
                            **(model_kwargs or {}))
    tiny_trainer(callbacks=callbacks, limit_val_batches=0, **trainer_kwargs).fit(model, datamodule)
    return model


@pytest.mark.parametrize(("freeze", "changed_prefixes"),
                         [("backbone", {"fc."}), ("none", {"fc.", "conv1.", "layer4."})])
def test_freezing_the_backbone_trains_only_the_head(npz_dir: Path, weights_file: Path, freeze: str,
                                                    changed_prefixes: set[str]) -> None:
    saved = torch.load(weights_file, weights_only=True)
    model = finetune(npz_dir, weights_file, [HeadFirstFinetuning(freeze=freeze)], max_steps=1)
    after = {name.removeprefix("backbone."): value for name, value in model.state_dict().items()}
    changed = {name for name, value in saved.items() if name in after and not torch.equal(value, after[name])}
    assert changed  # the step did something
    assert all(any(name.startswith(prefix) for name in changed) for prefix in changed_prefixes)
    if freeze == "backbone":  # weights and batch-norm statistics of the backbone untouched
        assert all(name.startswith("fc.") for name in changed)


class RecordTrainable(L.Callback):
    """Which epochs the first backbone convolution could learn in."""

    def __init__(self) -> None:
        self.trainable: list[bool] = []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        self.trainable.append(pl_module.backbone.conv1.weight.requires_grad)


def test_backbone_unfreezes_at_the_given_epoch(npz_dir: Path, weights_file: Path) -> None:
    recorder = RecordTrainable()
    finetune(npz_dir, weights_file, [HeadFirstFinetuning(unfreeze_at_epoch=2), recorder], max_epochs=3,
             limit_train_batches=1)
    assert recorder.trainable == [False, False, True]


@pytest.mark.parametrize("groups", [{"norm_lr_scale": 2.0}, {"no_decay_norm_bias": True}])
def test_a_backbone_unfrozen_later_is_stepped_with_parameter_groups_too(npz_dir: Path, weights_file: Path,
                                                                        groups: dict) -> None:
    saved = torch.load(weights_file, weights_only=True)
    model = finetune(npz_dir, weights_file, [HeadFirstFinetuning(unfreeze_at_epoch=1)], model_kwargs=groups,
                     max_epochs=2, limit_train_batches=1)
    after = {name.removeprefix("backbone."): value for name, value in model.state_dict().items()}
    assert not torch.equal(after["conv1.weight"], saved["conv1.weight"])  # the epoch after unfreezing trained it
    assert not torch.equal(after["layer1.0.bn1.weight"], saved["layer1.0.bn1.weight"])
