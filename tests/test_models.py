import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import SqueezeExcitation

from cifar_lab.cli import main
from cifar_lab.errors import ConfigError, UnknownBackboneError, WeightsNotFoundError
from cifar_lab.models import available, create
from cifar_lab.models.resnet import BasicBlock
from cifar_lab.models.torchvision import replace_stem
from cifar_lab.tools import models as summary


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# Parameters for 10 classes, counted by hand from each design (BatchNorm: 2 per channel; conv
# biases only where the design has them). Block sums follow the stage layouts in the docstrings.
PARAMETERS = {
    # convs 864 + 18,432 + 73,728 and their biases 224; FC 2048*256+256 and 256*10+10
    "simple_cnn": 620_362,
    # the same without the 224 conv biases, plus BN 2*(32+64+128) = 448
    "simple_cnn_bn": 620_586,
    # Linear 3,072*512+512 = 1,573,376, 512*256+256 = 131,328, 256*10+10 = 2,570
    "mlp": 1_707_274,
    # convs 3*6*25+6 = 456 and 6*16*25+16 = 2,416; FC 400*120+120 = 48,120, 120*84+84 = 10,164, 84*10+10 = 850
    "lenet5": 62_006,
    # 3x3 convs with bias + BN per width; Linear(512, 10) = 5,130
    "vgg11": 9_231_114,
    "vgg13": 9_416_010,
    "vgg16": 14_728_266,
    "vgg19": 20_040_522,
    # stem 1,728 + 128; BasicBlocks [2,2,2,2] / [3,4,6,3]; Bottlenecks [3,4,6,3] / [3,4,23,3];
    # 1x1 conv + BN projections at each stage entry; FC 512*expansion*10 + 10
    "resnet18": 11_173_962,
    "resnet34": 21_282_122,
    "resnet50": 23_520_842,
    "resnet101": 42_512_970,
    # ResNet-18 without the stem BN (-128) and projection BNs (-2*(128+256+512) = -1,792), with
    # the final BN of 512 (+1,024); each block's first BN normalises its input, which has 64/128/256
    # instead of 128/256/512 channels in the first block of stages 2-4 (-2*(64+128+256) = -896)
    "preact_resnet18": 11_172_170,
    # ResNet-18 + SE per block, C*C/16*2 + C/16 + C: 2*(580 + 2,184 + 8,464 + 33,312) = 89,080
    "se_resnet18": 11_263_042,
    # ConvBlock 3->32 (928); per stage a ConvBlock to the width and one BasicBlock:
    # 9,280+18,560 / 18,560+73,984 / 73,984+295,424 / 295,424+1,180,672; FC 2,570
    "resnet_stages": 1_969_386,
    # stem 3->32, 17 inverted residual blocks (expand 1x1, depthwise 3x3, project 1x1, each + BN),
    # 1x1 320->1280 + BN, FC 12,810
    "mobilenet_v2": 2_236_682,
    # 12 MBConv blocks with SE squeezing to a quarter of the block input, SiLU; same stem and head
    "mbconv_net": 2_532_982,
    # growth 32, blocks 6/12/24/16, bottleneck 128, compression 0.5: 1,024 channels to the FC
    "densenet121": 6_956_298,
    # growth 12, blocks 16/16/16: 342 channels to the FC (Huang et al.: 0.8M)
    "densenet_bc_100": 769_162,
    # prep 1,856; stage 1 73,984 + residual 295,424; stage 2 295,424; stage 3 1,180,672 +
    # residual 4,720,640; bias-free FC 5,120
    "fast_resnet9": 6_573_120,
    # 2x2 whitening conv 3->24 with bias 312; conv groups 24->64, 64->256, 256->256 (3x3 convs
    # without bias, two BatchNorms each): 50,944 + 738,304 + 1,180,672; bias-free head 2,560
    "airbench": 1_972_792,
}


def test_every_registered_backbone_has_a_reference_count() -> None:
    assert sorted(PARAMETERS) == available()


@pytest.mark.parametrize(("name", "parameters"), sorted(PARAMETERS.items()))
def test_parameter_counts_match_the_reference_architectures(name: str, parameters: int) -> None:
    assert count_parameters(create(name, num_classes=10)) == parameters


# The largest nets; `pytest -m "not big"` leaves them out while iterating.
BIG = {"densenet121", "resnet34", "resnet50", "resnet101", "vgg19"}
BACKBONES = [pytest.param(name, marks=pytest.mark.big) if name in BIG else name for name in available()]


@pytest.mark.parametrize("name", BACKBONES)
def test_every_backbone_gives_logits_and_finite_gradients_for_every_parameter(name: str) -> None:
    torch.manual_seed(0)
    model = create(name, num_classes=10)
    images = torch.randn(2, 3, 32, 32)
    logits = model.train()(images)
    assert logits.shape == (2, 10)
    F.cross_entropy(logits, torch.tensor([3, 7])).backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]  # airbench freezes a few by design
    assert [n for n, p in trainable if p.grad is None] == []
    assert all(torch.isfinite(p.grad).all() for _, p in trainable)
    with torch.no_grad():
        assert model.eval()(images).shape == (2, 10)


@pytest.mark.parametrize("name", BACKBONES)
def test_every_backbone_builds_for_100_classes(name: str) -> None:
    model = create(name, num_classes=100)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert model.train()(images).shape == (2, 100)
        assert model.eval()(images).shape == (2, 100)


@pytest.mark.parametrize(("name", "block"), [("resnet18", "layer2.1"), ("resnet50", "layer3.1"),
                                             ("preact_resnet18", "layer1.1"), ("se_resnet18", "layer4.1")])
def test_zero_init_residual_makes_every_identity_block_start_as_the_identity(name: str, block: str) -> None:
    model = create(name, zero_init_residual=True).eval()
    module = model.get_submodule(block)
    channels = next(m for m in module.modules() if isinstance(m, nn.Conv2d)).in_channels
    x = torch.rand(2, channels, 8, 8)  # non-negative, as after a ReLU
    with torch.no_grad():
        assert torch.equal(module(x), x)
        assert not torch.equal(create(name).eval().get_submodule(block)(x), x)


def test_se_resnet_and_mbconv_net_share_the_squeeze_excitation_module() -> None:
    for name, count in [("se_resnet18", 8), ("mbconv_net", 12)]:
        assert sum(isinstance(m, SqueezeExcitation) for m in create(name).modules()) == count


def test_unknown_backbone_lists_the_registered_names_and_suggests_the_closest() -> None:
    with pytest.raises(UnknownBackboneError) as err:
        create("resnet19")
    assert "'resnet19' (did you mean 'resnet18'?)" in str(err.value)
    assert all(name in str(err.value) for name in available())
    assert "'torchvision:<name>'" in str(err.value)
    with pytest.raises(UnknownBackboneError, match="did you mean 'mobilenet_v2'"):
        create("mobilenetv2")


def test_an_option_the_backbone_does_not_take_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="backbone 'vgg16' does not take this option .*'zero_init_residual'"):
        create("vgg16", zero_init_residual=True)


def test_dotted_path_builds_the_users_own_network() -> None:
    model = create("torchvision.models:resnet18", num_classes=7).eval()
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 7)
    assert model.conv1.kernel_size == (7, 7)  # the plain function: no family options, ImageNet stem
    with pytest.raises(UnknownBackboneError, match="cannot import module 'no_such_pkg.nets'"):
        create("no_such_pkg.nets:net")
    with pytest.raises(UnknownBackboneError, match="has no callable 'nope'"):
        create("torchvision.models:nope")


def test_torchvision_resnet18_with_cifar_stem_is_the_cifar_resnet18() -> None:
    plain = create("torchvision:resnet18")
    assert plain.conv1.kernel_size == (7, 7) and isinstance(plain.maxpool, nn.MaxPool2d)
    model = create("torchvision:resnet18", cifar_stem=True)
    assert (model.conv1.kernel_size, model.conv1.stride) == ((3, 3), (1, 1))
    assert isinstance(model.maxpool, nn.Identity)
    ours, theirs = summary.summarize("resnet18"), summary.summarize("torchvision:resnet18", cifar_stem=True)
    assert theirs.parameters == ours.parameters == 11_173_962
    assert theirs.mflops == ours.mflops


def test_cifar_stem_fits_other_torchvision_families() -> None:
    model = create("torchvision:shufflenet_v2_x0_5", num_classes=100, cifar_stem=True).eval()
    assert model.conv1[0].stride == (1, 1) and isinstance(model.maxpool, nn.Identity)
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    model = create("torchvision:mobilenet_v3_small", cifar_stem=True)
    assert model.features[0][0].stride == (1, 1)
    assert not any(isinstance(m, nn.Identity) for m in model.modules())  # no max-pool to drop


def test_cifar_stem_refuses_a_network_without_a_downsampling_stem() -> None:
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3))
    with pytest.raises(ConfigError, match="leave out cifar_stem"):
        replace_stem(net, "vgg11")


def test_unknown_torchvision_model_suggests_the_closest() -> None:
    with pytest.raises(UnknownBackboneError, match="unknown torchvision model 'resnet181' .did you mean 'resnet18'"):
        create("torchvision:resnet181")


def test_local_weights_load_and_a_resized_head_keeps_its_fresh_init(tmp_path: Path) -> None:
    source = create("torchvision:resnet18", cifar_stem=True)
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same = create("torchvision:resnet18", cifar_stem=True, weights=str(path))
    assert all(torch.equal(a, b) for a, b in zip(same.state_dict().values(), source.state_dict().values()))
    with pytest.warns(UserWarning, match="fc.weight, fc.bias; these keep their fresh initialisation"):
        resized = create("torchvision:resnet18", num_classes=100, cifar_stem=True, weights=str(path))
    assert torch.equal(resized.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
    assert resized.fc.out_features == 100


def test_weights_that_do_not_fit_or_do_not_exist_are_clear_errors(tmp_path: Path) -> None:
    path = tmp_path / "resnet18.pth"
    torch.save(create("torchvision:resnet18").state_dict(), path)
    with pytest.raises(ConfigError, match="does not match torchvision:resnet34: missing"):
        create("torchvision:resnet34", weights=str(path))
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(WeightsNotFoundError, match=f"weights file {missing} .*does not exist.*never downloaded"):
        create("torchvision:resnet18", weights=str(missing))


def test_summary_counts_flops_of_one_image() -> None:
    # simple_cnn multiply-adds: 32*32*32*27 + 16*16*64*288 + 8*8*128*576 + 2048*256 + 256*10 = 10,848,768
    assert summary.summarize("simple_cnn") == summary.BackboneSummary("simple_cnn", 620_362, 2 * 10_848_768 / 1e6)


def test_models_table_is_markdown_with_thousands_separators() -> None:
    rows = [summary.BackboneSummary("a", 1_234_567, 8.26), summary.BackboneSummary("long_name", 12, 1234.56)]
    assert summary.format_table(rows) == (
        "| backbone    | parameters | MFLOPs  |\n"
        "| ---         | ---:       | ---:    |\n"
        "| `a`         | 1,234,567  | 8.3     |\n"
        "| `long_name` | 12         | 1,234.6 |"
    )


def test_models_command_lists_every_registered_backbone_by_default(monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(summary, "summarize", lambda name, num_classes: summary.BackboneSummary(name, 1, 1.0))
    summary.main([])
    rows = capsys.readouterr().out.splitlines()[2:]
    assert [row.split("`")[1] for row in rows] == available()


def test_models_command_passes_backbone_kwargs_and_rejects_a_non_mapping(capsys: pytest.CaptureFixture[str]) -> None:
    summary.main(["torchvision:resnet18", "--backbone_kwargs", "{cifar_stem: true}", "--num_classes", "100"])
    row = capsys.readouterr().out.splitlines()[2]
    assert row.split() == ["|", "`torchvision:resnet18`", "|", f"{11_173_962 + 90 * 513:,}", "|", "1,110.9", "|"]
    with pytest.raises(ConfigError, match="--backbone_kwargs must be a mapping"):
        summary.main(["resnet18", "--backbone_kwargs", "cifar_stem"])


def test_timed_training_step_updates_every_parameter_of_the_backbone() -> None:
    model = create("lenet5")
    before = [p.detach().clone() for p in model.parameters()]
    summary.training_step(model, torch.randn(4, 3, 32, 32), torch.arange(4))()
    assert all(not torch.equal(old, new) for old, new in zip(before, model.parameters()))


def test_models_speed_adds_training_images_per_second_and_says_how_it_was_measured(
        capsys: pytest.CaptureFixture[str]) -> None:
    summary.main(["lenet5", "mlp", "--speed", "--batch_size", "2", "--min_time", "0.01"])
    out = capsys.readouterr().out.splitlines()
    assert out[0].split("|")[1:-1] == [" backbone ", " parameters ", " MFLOPs ", " train images/s "]
    assert [float(row.split("|")[4].replace(",", "")) > 0 for row in out[2:4]] == [True, True]
    assert out[5].startswith(f"train images/s: SGD steps of batch 2 on synthetic 32x32 images, fp32, "
                             f"{torch.get_num_threads()} CPU thread(s)")


@pytest.mark.parametrize(("option", "message"), [
    (["--batch_size", "0"], "--batch_size must be at least 1, got 0"),
    (["--min_time", "0"], "--min_time must be a number of seconds > 0, got 0.0"),
])
def test_models_speed_settings_out_of_range_are_one_line_errors(option: list[str], message: str,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["models", "lenet5", "--speed", *option])
    assert capsys.readouterr().err == f"cifar-lab: error: {message}\n"


@pytest.mark.parametrize("name", ["simple_cnn", "simple_cnn_bn"])
def test_pooling_variants_keep_the_parameters_and_the_4x4_feature_map(name: str) -> None:
    layers = {}
    for pool in ("max", "avg", "strided"):
        model = create(name, pool=pool)
        assert count_parameters(model) == PARAMETERS[name]  # pooling has no weights; strided reuses each conv
        assert model.features(torch.zeros(1, 3, 32, 32)).shape == (1, 128, 4, 4)
        layers[pool] = [type(m).__name__ for m in model.features.modules()]
    assert layers["max"].count("MaxPool2d") == layers["avg"].count("AvgPool2d") == 3
    assert not {"MaxPool2d", "AvgPool2d"} & set(layers["strided"])
    assert [m.stride for m in create(name, pool="strided").modules() if isinstance(m, nn.Conv2d)] == [(2, 2)] * 3
    with pytest.raises(ConfigError, match="unknown pool 'min'; choose one of \\['max', 'avg', 'strided'\\]"):
        create(name, pool="min")


# simple_cnn's convs 3->32->64->128 with k x k kernels and biases 224, plus its unchanged head 527,114
@pytest.mark.parametrize(("kernel_size", "parameters"), [(1, 10_336 + 224 + 527_114), (5, 258_400 + 224 + 527_114),
                                                         (7, 506_464 + 224 + 527_114)])
def test_kernel_size_changes_only_the_conv_weights_and_keeps_the_4x4_feature_map(kernel_size: int,
                                                                                parameters: int) -> None:
    model = create("simple_cnn", kernel_size=kernel_size)
    assert count_parameters(model) == parameters
    assert model.features(torch.zeros(1, 3, 32, 32)).shape == (1, 128, 4, 4)
    assert {m.kernel_size for m in model.modules() if isinstance(m, nn.Conv2d)} == {(kernel_size, kernel_size)}


@pytest.mark.parametrize("kernel_size", [0, 2, -3])
def test_an_even_or_non_positive_kernel_size_is_a_config_error(kernel_size: int) -> None:
    with pytest.raises(ConfigError, match=f"kernel_size must be an odd number >= 1 .*got {kernel_size}"):
        create("simple_cnn_bn", kernel_size=kernel_size)


def test_mlp_takes_its_hidden_widths_and_refuses_impossible_ones() -> None:
    model = create("mlp", hidden=[100])  # 3,072*100+100 + 100*10+10
    assert count_parameters(model) == 307_300 + 1_010
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)] == [0.2]
    with pytest.raises(ConfigError, match=r"mlp hidden widths must be >= 1, got \[0\]"):
        create("mlp", hidden=[0])
    with pytest.raises(ConfigError, match=r"mlp dropout must be in \[0, 1\), got 1.0"):
        create("mlp", dropout=1.0)


# resnet18's projections: 1x1 convs 64->128, 128->256, 256->512 (8,192 + 32,768 + 131,072) and their BNs 2*896
@pytest.mark.parametrize(("name", "projections"), [("resnet18", 172_032 + 1_792), ("se_resnet18", 172_032 + 1_792),
                                                   ("preact_resnet18", 172_032), ("resnet_stages", 0)])
def test_shortcut_false_keeps_every_layer_but_the_projections(name: str, projections: int) -> None:
    plain = create(name, shortcut=False)
    assert count_parameters(plain) == PARAMETERS[name] - projections
    assert plain(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_a_block_without_its_shortcut_is_its_residual_branch_alone() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 16, 8, 8)
    residual, plain = BasicBlock(16, 16).eval(), BasicBlock(16, 16, shortcut=False).eval()
    plain.load_state_dict(residual.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(residual(x), torch.relu(residual.residual(x) + x))
        torch.testing.assert_close(plain(x), torch.relu(residual.residual(x)))


def test_zero_init_residual_without_shortcuts_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="with shortcut: false it would start the network at zero"):
        create("resnet18", shortcut=False, zero_init_residual=True)


def test_vgg_dropout_drops_features_in_training_only_and_adds_no_parameters() -> None:
    torch.manual_seed(0)
    images = torch.randn(4, 3, 32, 32)
    plain, dropped = create("vgg11").train(), create("vgg11", dropout=0.5).train()
    assert plain.state_dict().keys() == dropped.state_dict().keys()  # checkpoints of either fit both
    assert count_parameters(dropped) == PARAMETERS["vgg11"]
    assert torch.equal(plain(images), plain(images))
    assert not torch.equal(dropped(images), dropped(images))
    dropped.eval()
    assert torch.equal(dropped(images), dropped(images))
