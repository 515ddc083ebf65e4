"""Augmentation presets, erasing, custom transform lists from YAML and MixUp/CutMix of batches."""

import sys
from pathlib import Path

import pytest
import torch
from torchvision import tv_tensors

from cifar_lab.cli import build_cli
from cifar_lab.data.augment import (
    PRESETS,
    batch_mix,
    build_transform,
    normalization_stats,
)
from cifar_lab.data.sources import RELEASES
from cifar_lab.errors import ConfigError
from cifar_lab.reporting.plots import denormalize
from tests.helpers import make_images

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
IMAGE = tv_tensors.Image(torch.from_numpy(make_images(1, seed=3)[0][0]).permute(2, 0, 1).contiguous())
STATS = RELEASES["cifar10"].stats
MEAN, STD = (torch.tensor(values).view(3, 1, 1) for values in STATS)
# Where black and white pixels land after normalisation, per channel.
LOWEST, HIGHEST = (0 - MEAN) / STD, (1 - MEAN) / STD


@pytest.mark.parametrize(("normalize", "black", "white"), [
    ("dataset", LOWEST, HIGHEST),
    ("half", torch.full((3, 1, 1), -1.0), torch.full((3, 1, 1), 1.0)),
    ("none", torch.zeros(3, 1, 1), torch.ones(3, 1, 1)),
])
def test_each_normalize_choice_maps_black_and_white_where_it_says_and_figures_undo_it(
        normalize: str, black: torch.Tensor, white: torch.Tensor) -> None:
    extremes = tv_tensors.Image(torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 2).expand(3, 1, 2).contiguous())
    stats = normalization_stats(normalize, STATS)
    normalised = build_transform("none", train=False, stats=stats)(extremes)
    torch.testing.assert_close(normalised[:, :, :1], black)
    torch.testing.assert_close(normalised[:, :, 1:], white)
    torch.testing.assert_close(denormalize(normalised[None], stats)[0], extremes.float() / 255)


def test_an_unknown_normalize_choice_is_a_config_error_listing_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"unknown normalize 'imagenet'; choose one of \['dataset', 'half', 'none'\]"):
        normalization_stats("imagenet", STATS)


def seeded(transform, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    return transform(IMAGE)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_gives_normalised_float_images_that_a_seed_repeats(preset: str) -> None:
    transform = build_transform(preset, train=True, stats=STATS)
    view = seeded(transform, 0)
    assert view.shape == (3, 32, 32) and view.dtype == torch.float32
    assert (view >= LOWEST - 1e-5).all() and (view <= HIGHEST + 1e-5).all()
    assert torch.equal(view, seeded(transform, 0))
    plain = build_transform("none", train=True, stats=STATS)(IMAGE)
    torch.testing.assert_close(plain, (IMAGE.float() / 255 - MEAN) / STD)
    if preset != "none":
        assert not torch.equal(view, plain)
        assert not torch.equal(view, seeded(transform, 1))


def test_cutout_sets_one_16x16_square_to_the_mean_colour() -> None:
    plain = build_transform("none", train=True, stats=STATS)(IMAGE)
    for seed in range(5):
        erased = seeded(build_transform("none", train=True, stats=STATS, erasing="cutout"), seed)
        changed = (erased != plain).any(dim=0)
        rows, cols = changed.any(dim=1).nonzero().flatten(), changed.any(dim=0).nonzero().flatten()
        assert changed.sum() == 256 and len(rows) == len(cols) == 16
        assert rows[-1] - rows[0] == cols[-1] - cols[0] == 15  # one solid square
        assert (erased[:, changed] == 0).all()  # 0 after normalisation: the mean colour


def test_random_erasing_erases_about_half_the_images_with_the_mean_colour() -> None:
    plain = build_transform("none", train=True, stats=STATS)(IMAGE)
    transform = build_transform("none", train=True, stats=STATS, erasing="random_erasing")
    views = [seeded(transform, seed) for seed in range(20)]
    erased = [view for view in views if not torch.equal(view, plain)]
    assert 3 < len(erased) < 17  # p=0.5
    assert all((view[view != plain] == 0).all() for view in erased)


def test_erasing_follows_the_preset_on_the_training_split_only() -> None:
    with pytest.raises(ConfigError, match="unknown erasing 'holes'; choose one of \\['cutout', 'random_erasing'\\]"):
        build_transform("standard", train=True, stats=STATS, erasing="holes")
    torch.testing.assert_close(build_transform("autoaugment", train=False, stats=STATS)(IMAGE), (IMAGE.float() / 255 - MEAN) / STD)


def test_a_list_of_transforms_in_yaml_goes_through_the_cli_parser(npz_dir: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["cifar-lab"])
    config = tmp_path / "flip.yaml"
    config.write_text("data:\n"
                      "  augment:\n"
                      "    - class_path: torchvision.transforms.v2.RandomHorizontalFlip\n"
                      "      init_args: {p: 1.0}\n"
                      "    - class_path: torchvision.transforms.v2.RandomInvert\n"
                      "      init_args: {p: 1.0}\n")
    cli = build_cli(["--config", str(CONFIGS / "simple_cnn.yaml"), "--config", str(config), "--data.data_dir",
                     str(npz_dir), "--data.val_size", "50"], run=False)
    dm = cli.datamodule
    dm.setup("fit")
    image, _ = dm.datasets["train"][0]
    source = dm.datasets["train"].images[0]
    torch.testing.assert_close(image, ((255 - source.flip(-1)).float() / 255 - MEAN) / STD)
    val_image, _ = dm.datasets["val"][0]  # eval splits are only normalised
    torch.testing.assert_close(val_image, (dm.datasets["val"].images[0].float() / 255 - MEAN) / STD)


BATCH = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
LABELS = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7])
ROWS = torch.arange(8)


def test_mixup_blends_each_image_with_its_neighbour_and_weights_the_labels_alike() -> None:
    torch.manual_seed(0)
    images, targets = batch_mix(10, mixup_alpha=0.4)(BATCH, LABELS)
    assert targets.shape == (8, 10)
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(8))
    lam = targets[0, 0]
    assert 0 < lam < 1
    torch.testing.assert_close(targets[ROWS, LABELS], lam.expand(8))
    torch.testing.assert_close(targets[ROWS, LABELS.roll(1)], (1 - lam).expand(8))
    torch.testing.assert_close(images, lam * BATCH + (1 - lam) * BATCH.roll(1, 0))


def test_cutmix_label_weights_are_the_pasted_area() -> None:
    torch.manual_seed(0)
    images, targets = batch_mix(10, cutmix_alpha=1.0)(BATCH, LABELS)
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(8))
    pasted = (images != BATCH).any(dim=1).float().mean(dim=(1, 2))
    assert 0 < pasted[0] < 1
    torch.testing.assert_close(targets[ROWS, LABELS.roll(1)], pasted)
    torch.testing.assert_close(targets[ROWS, LABELS], 1 - pasted)


def test_with_both_each_batch_gets_mixup_or_cutmix_and_mix_prob_leaves_some_batches_alone() -> None:
    torch.manual_seed(0)
    both = batch_mix(10, mixup_alpha=0.4, cutmix_alpha=1.0)
    every_pixel_changed = [bool((both(BATCH, LABELS)[0] != BATCH).all()) for _ in range(20)]
    assert any(every_pixel_changed) and not all(every_pixel_changed)  # MixUp changes all, CutMix a box
    sometimes = batch_mix(10, mixup_alpha=0.4, prob=0.5)
    outputs = [sometimes(BATCH, LABELS) for _ in range(20)]
    kept = [targets.ndim == 1 for _, targets in outputs]
    assert any(kept) and not all(kept)
    assert all(torch.equal(images, BATCH) and torch.equal(targets, LABELS)
               for (images, targets), unmixed in zip(outputs, kept) if unmixed)


def test_no_mixing_when_off_and_bad_settings_are_config_errors() -> None:
    assert batch_mix(10) is None and batch_mix(10, mixup_alpha=0.2, prob=0.0) is None
    with pytest.raises(ConfigError, match="cutmix_alpha must be >= 0 \\(0 turns it off\\), got -1"):
        batch_mix(10, cutmix_alpha=-1)
    with pytest.raises(ConfigError, match="mix_prob must be between 0 and 1, got 1.5"):
        batch_mix(10, mixup_alpha=0.2, prob=1.5)
