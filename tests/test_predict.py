"""``predict`` on image files and on the test split: preprocessing, CSV, skipped files, TTA."""

import csv
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cifar_lab.callbacks.prediction_writer import CSV_COLUMNS
from cifar_lab.cli import main
from cifar_lab.data.augment import build_transform
from cifar_lab.data.image_files import find_images, load_image, load_images
from cifar_lab.data.sources import RELEASES
from cifar_lab.errors import DataFormatError, DataNotFoundError
from cifar_lab.module import ImageClassifier, load_classifier
from tests.helpers import cifar_lab

# (file name, PIL mode, width, height): every mode the issue names, JPEG and PNG, odd sizes.
IMAGES = [("rgb.png", "RGB", 50, 40), ("rgba.png", "RGBA", 20, 20), ("grey.jpg", "L", 64, 64),
          ("palette.png", "P", 33, 47), ("photo.jpeg", "RGB", 100, 60)]


def write_images(folder: Path, seed: int = 0) -> list[Path]:
    """Noise images in several modes and sizes, plus a file that is not an image at all."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, mode, width, height in IMAGES:
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).convert(mode).save(folder / name)
        paths.append(folder / name)
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    (folder / "notes.txt").write_text("not an image")
    return paths


@pytest.mark.parametrize(("mode", "suffix"), [("RGB", "png"), ("RGBA", "png"), ("L", "jpg"), ("P", "png")])
@pytest.mark.parametrize("size", [(32, 32), (97, 45), (8, 12)])
def test_load_image_gives_cifar_shaped_rgb_with_the_pixels_pil_sees(tmp_path: Path, mode: str, suffix: str,
                                                                     size: tuple[int, int]) -> None:
    path = tmp_path / f"image.{suffix}"
    Image.new("RGB", size, (200, 100, 30)).convert(mode, dither=Image.Dither.NONE).save(path)
    expected = np.array(Image.open(path).convert("RGB"))[0, 0]  # one colour: resizing keeps it
    image = load_image(path)
    assert image.dtype == torch.uint8 and image.shape == (3, 32, 32)
    assert (image.permute(1, 2, 0).reshape(-1, 3) - torch.from_numpy(expected).int()).abs().max() <= 1


def test_find_images_takes_a_file_a_folder_or_a_glob(tmp_path: Path) -> None:
    paths = write_images(tmp_path / "photos")
    every_image = sorted([*paths, tmp_path / "photos" / "corrupt.png"])
    assert find_images(str(tmp_path / "photos")) == every_image
    assert find_images(str(paths[0])) == [paths[0]]
    assert find_images(str(tmp_path / "photos" / "*.png")) == [p for p in every_image if p.suffix == ".png"]
    with pytest.raises(DataNotFoundError, match="no PNG/JPEG images at .*nowhere"):
        find_images(str(tmp_path / "nowhere"))


def test_unreadable_images_are_named_in_a_warning_and_skipped(tmp_path: Path) -> None:
    write_images(tmp_path)
    with pytest.warns(UserWarning, match=r"skipping .*corrupt\.png"):
        images, names = load_images(str(tmp_path))
    assert images.shape == (len(IMAGES), 3, 32, 32)
    assert sorted(Path(name).name for name in names) == sorted(name for name, *_ in IMAGES)
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "broken.jpg").write_bytes(b"garbage")
    with pytest.warns(UserWarning), pytest.raises(DataFormatError, match="could be read"):
        load_images(str(tmp_path / "only"))


def test_predict_with_tta_is_a_deprecated_spelling_of_tta_flip() -> None:
    torch.manual_seed(0)
    with pytest.warns(DeprecationWarning, match="--model.tta flip"):
        model = ImageClassifier("simple_cnn", predict_with_tta=True).eval()
    assert model.tta == "flip" and "predict_with_tta" not in model.hparams
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = ((model(images) + model(images.flip(-1))) / 2).softmax(1)
        assert torch.allclose(model.predict_step((images, torch.zeros(4)), 0), expected, atol=1e-6)
    plain = ImageClassifier("simple_cnn").eval()
    with torch.no_grad():
        assert torch.equal(plain.predict_step((images, torch.zeros(4)), 0), plain(images).softmax(1))


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        reader = csv.DictReader(file)
        assert reader.fieldnames == CSV_COLUMNS
        return list(reader)


def test_predict_on_image_files_matches_the_models_forward(checkpoint: Path, tmp_path: Path) -> None:
    paths = write_images(tmp_path / "photos")
    out = tmp_path / "out" / "predictions.csv"
    # Only the checkpoint: the model config comes from its hyperparameters; no CIFAR-10 on disk.
    result = cifar_lab("predict", "--ckpt_path", str(checkpoint), "--data.predict_path", str(tmp_path / "photos"),
                       "--predictions.output_path", str(out), "--data.num_workers", "0", "--trainer.precision",
                       "32-true",  # as the model's own forward below (null would be bf16 on a CPU that has it)
                       cwd=tmp_path, data_dir=tmp_path / "no_cifar")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "corrupt.png" in result.stderr and "skipping" in result.stderr
    assert f"{len(paths)} predictions written to {out}" in result.stdout

    rows = read_csv(out)
    assert sorted(row["path"] for row in rows) == sorted(map(str, paths))
    model = load_classifier(checkpoint)
    normalise = build_transform("standard", train=False, stats=RELEASES["cifar10"].stats)
    for row in rows:
        with torch.no_grad():
            probabilities = model(normalise(load_image(Path(row["path"])))[None]).softmax(1)[0]
        top = probabilities.topk(3)
        assert row["class"] == model.class_names[top.indices[0]]
        assert float(row["probability"]) == pytest.approx(top.values[0].item(), abs=1e-4)
        assert [entry.split(":")[0] for entry in row["top3"].split()] == [model.class_names[i] for i in top.indices]


def test_predict_defaults_to_the_test_split_and_applies_tta(checkpoint: Path, npz_dir: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "test_split.csv"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["cifar-lab"])
    main(["predict", "--ckpt_path", str(checkpoint), "--model.tta", "flip", "--predictions.output_path", str(out),
          "--data.num_workers", "0", "--data.val_size", "50", "--data.data_dir", str(npz_dir)])
    rows = read_csv(out)
    assert [row["path"] for row in rows] == [f"test[{i}]" for i in range(60)]

    model = load_classifier(checkpoint)
    first_test_image = torch.from_numpy(np.load(npz_dir / "cifar10.npz")["test_images"][0]).permute(2, 0, 1)
    image = build_transform("standard", train=False, stats=RELEASES["cifar10"].stats)(first_test_image)
    with torch.no_grad():
        tta = ((model(image[None]) + model(image.flip(-1)[None])) / 2).softmax(1)
    assert float(rows[0]["probability"]) == pytest.approx(tta.max().item(), abs=1e-4)
