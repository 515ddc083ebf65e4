import pytest
import torch

from cifar_lab.errors import UnknownBackboneError
from cifar_lab.models import available, create


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(("name", "parameters"), [("simple_cnn", 620_362), ("resnet18", 11_173_962)])
def test_parameter_counts_match_the_reference_architectures(name: str, parameters: int) -> None:
    assert count_parameters(create(name, num_classes=10)) == parameters


@pytest.mark.parametrize("name", available())
@pytest.mark.parametrize("num_classes", [10, 100])
def test_every_backbone_maps_cifar_images_to_class_logits(name: str, num_classes: int) -> None:
    model = create(name, num_classes=num_classes).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, num_classes)


def test_unknown_backbone_lists_the_registered_names() -> None:
    with pytest.raises(UnknownBackboneError) as err:
        create("resnet19")
    assert "'resnet19'" in str(err.value)
    assert all(name in str(err.value) for name in available())


def test_dotted_path_builds_the_users_own_network() -> None:
    model = create("torchvision.models:resnet18", num_classes=7).eval()
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 7)
    with pytest.raises(UnknownBackboneError, match="cannot import module 'no_such_pkg.nets'"):
        create("no_such_pkg.nets:net")
    with pytest.raises(UnknownBackboneError, match="has no callable 'nope'"):
        create("torchvision.models:nope")
