"""Every recipe in configs/ parses and trains one batch on tiny data; every add-on composes with a recipe;
every variant of every experiment suite (configs/experiments/) composes with its base and trains one batch.

In-process through ``build_cli`` (the CLI ``cifar-lab`` runs), which is several times faster than
a subprocess per config; ``test_cli.py`` covers the console entry point itself.
"""

import sys
import typing
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision
import yaml
from lightning.pytorch.cli import LightningCLI

from cifar_lab.cli import build_cli
from cifar_lab.models import available, families
from cifar_lab.models.registry import get_factory
from cifar_lab.tools.experiment import Suite, fit_command, load_suite, suite_names

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
EXPERIMENTS = CONFIGS / "experiments"
SWEEPS = CONFIGS / "sweeps"  # search spaces: read by `cifar-lab sweep --space`, never by fit
STANDALONE = sorted(path for path in CONFIGS.rglob("*.yaml") if EXPERIMENTS not in path.parents
                    and SWEEPS not in path.parents)
RECIPES = [path for path in STANDALONE if "model" in yaml.safe_load(path.read_text())]
ADD_ONS = [path for path in STANDALONE if path not in RECIPES]
SUITES = [load_suite(name, EXPERIMENTS) for name in suite_names(EXPERIMENTS)]
BIG = {"densenet121.yaml"}
TINY_DATA = ["--data.batch_size", "4", "--data.num_workers", "0", "--data.val_size", "50"]
ONE_BATCH = ["--trainer.fast_dev_run", "1", "--trainer.enable_model_summary", "false"]  # the summary's forward: ~0.4 s


@pytest.fixture(autouse=True)
def cli_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    """LightningCLI gets its arguments from ``args``; pytest's own command line is not for it."""
    monkeypatch.setattr(sys, "argv", ["cifar-lab"])


def save_pretrained_weights(model: dict) -> None:
    """A recipe that starts from a local weights file gets one saved from a random model (no network)."""
    weights = (model.get("backbone_kwargs") or {}).get("weights")
    if weights:
        Path(weights).parent.mkdir(parents=True, exist_ok=True)
        torch.save(torchvision.models.get_model(model["backbone"].split(":")[1]).state_dict(), weights)


def config_id(path: Path) -> str:
    return str(path.relative_to(CONFIGS))


def params(paths: list[Path]) -> list[Any]:
    return [pytest.param(path, id=config_id(path), marks=[pytest.mark.big] if path.name in BIG else []) for path in paths]


def contains(printed: Any, expected: Any) -> bool:
    """Whether every value the config file sets appears in the resolved config (which adds defaults)."""
    if isinstance(expected, dict):
        return isinstance(printed, dict) and all(key in printed and contains(printed[key], value)
                                                 for key, value in expected.items())
    if isinstance(expected, list):
        return isinstance(printed, list) and len(printed) == len(expected) and all(map(contains, printed, expected))
    return printed == expected


def print_config(*configs: Path, capsys: pytest.CaptureFixture[str]) -> dict:
    args = ["fit", *(arg for config in configs for arg in ("--config", str(config))), "--print_config"]
    with pytest.raises(SystemExit) as exit_info:
        build_cli(args)
    assert exit_info.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


def family(backbone: str) -> str:
    """A registered family's prefix (``torchvision``), else the network class the backbone's factory builds."""
    prefix, colon, _ = backbone.partition(":")
    return prefix if colon else typing.get_type_hints(get_factory(backbone))["return"].__name__


def test_there_is_a_recipe_for_every_family_and_the_add_ons_are_found() -> None:
    """Every recipe parses and keeps its backbone: test_recipe_parses_with_print_config."""
    recipe_families = {family(yaml.safe_load(path.read_text())["model"]["backbone"]) for path in RECIPES}
    assert sorted(recipe_families) == sorted({family(name) for name in available()} | set(families()))
    assert {config_id(path) for path in ADD_ONS} >= {"early_stopping.yaml", "trainer/cpu.yaml", "trainer/smoke.yaml"}


def assert_val_acc_is_the_share_of_the_batch_predicted_right(cli: LightningCLI) -> None:
    """``fast_dev_run`` validates one batch after the one training step."""
    images, labels = next(iter(cli.datamodule.val_dataloader()))
    with torch.no_grad():
        right = cli.model.eval().predict_logits(images).argmax(dim=1) == labels
    assert float(cli.trainer.callback_metrics["val/acc"]) == pytest.approx(float(right.float().mean()))


@pytest.mark.parametrize("recipe", params(RECIPES))
def test_recipe_parses_with_print_config(recipe: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert contains(print_config(recipe, capsys=capsys), yaml.safe_load(recipe.read_text()))


@pytest.mark.parametrize("add_on", params(ADD_ONS))
def test_add_on_composes_with_a_recipe(add_on: Path, capsys: pytest.CaptureFixture[str]) -> None:
    printed = print_config(CONFIGS / "simple_cnn.yaml", add_on, capsys=capsys)
    assert contains(printed, yaml.safe_load(add_on.read_text()))
    assert printed["model"]["backbone"] == "simple_cnn"


@pytest.mark.parametrize("recipe", params(RECIPES))
def test_recipe_trains_one_batch_on_tiny_data(recipe: Path, npz_dir: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    save_pretrained_weights(yaml.safe_load(recipe.read_text())["model"])
    cli = build_cli(["fit", "--config", str(recipe), "--config", str(CONFIGS / "trainer/cpu.yaml"),
                     *ONE_BATCH, "--data.data_dir", str(npz_dir), *TINY_DATA])
    assert cli.trainer.state.finished
    assert cli.trainer.global_step == 1
    assert cli.model.hparams.backbone == yaml.safe_load(recipe.read_text())["model"]["backbone"]
    assert_val_acc_is_the_share_of_the_batch_predicted_right(cli)


def test_the_issues_experiment_suites_are_found() -> None:
    assert {suite.name: sorted(suite.variants) for suite in SUITES} == {
        "architecture": ["densenet121", "mobilenet_v2", "resnet18", "simple_cnn", "vgg11"],
        "augmentation": ["autoaugment", "color", "cutmix", "cutout", "mixup", "none", "standard"],
        "batchnorm": ["bn", "bn_lr10x", "plain", "plain_lr10x"],
        "depth_width": ["blocks1", "blocks2", "blocks3", "wide_blocks2"],
        "kernel_size": ["k1", "k3", "k5", "k7"],
        "mlp_vs_cnn": ["course_cnn", "lenet5", "mlp"],
        "optimizer": ["adam", "adamw", "sgd"],
        "pooling": ["avg", "max", "strided"],
        "schedules": ["constant", "cosine", "one_cycle", "plateau", "step"],
        "shortcuts": ["plain", "residual"],
        "transfer": ["pretrained_100pct", "pretrained_10pct", "scratch_100pct", "scratch_10pct"],
    }


VARIANTS = [pytest.param(suite, variant, id=f"{suite.name}/{variant}",
                         marks=[pytest.mark.big] if f"{variant}.yaml" in BIG else [])
            for suite in SUITES for variant in suite.variants]


@pytest.mark.parametrize(("suite", "variant"), VARIANTS)
def test_experiment_variant_composes_with_its_base(suite: Suite, variant: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    printed = print_config(suite.base, suite.variants[variant], capsys=capsys)
    assert contains(printed, yaml.safe_load(suite.base.read_text()))
    assert contains(printed, yaml.safe_load(suite.variants[variant].read_text()))


@pytest.mark.parametrize(("suite", "variant"), VARIANTS)
def test_experiment_variant_trains_one_batch_on_tiny_data(suite: Suite, variant: str, npz_dir: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    model = {**yaml.safe_load(suite.base.read_text())["model"],
             **yaml.safe_load(suite.variants[variant].read_text()).get("model", {})}
    save_pretrained_weights(model)
    command = fit_command(suite, variant, seed=0, epochs=None, extra=[*ONE_BATCH, "--trainer.accelerator", "cpu",
                                                                      "--data.data_dir", str(npz_dir), *TINY_DATA])
    cli = build_cli(command[1:])
    assert cli.trainer.state.finished and cli.trainer.global_step == 1
    assert cli.model.hparams.backbone == model["backbone"]
    assert cli.model.hparams.backbone_kwargs == model.get("backbone_kwargs")
    assert_val_acc_is_the_share_of_the_batch_predicted_right(cli)
