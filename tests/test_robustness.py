"""``cifar-lab robustness``: CIFAR-10.1 and CIFAR-10-C in their official formats (tiny: a few images per severity),
their checks and downloads, the scores against an independent computation, the scalars and ``compare``'s columns."""

import contextlib
import csv
import hashlib
import io
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch.loggers import TensorBoardLogger

from cifar_lab.cli import main as cli_main
from cifar_lab.data import ImageDataModule
from cifar_lab.data import robustness_sets as sets
from cifar_lab.data.datamodule import ImageArrayDataset
from cifar_lab.errors import ChecksumError, ConfigError, DataFormatError, DownloadError
from cifar_lab.module import ImageClassifier, load_classifier
from cifar_lab.reporting.runs import load_run
from cifar_lab.tools import compare
from cifar_lab.tools.robustness import (
    CORRUPTIONS,
    Robustness,
    Score,
    main,
    scalars,
    sets_table,
)
from tests.helpers import make_images, write_npz
from tests.mirror import serving

PER_SEVERITY = 2  # instead of 10,000
CIFAR10_1_SIZE = 20  # instead of 2,000
TAR = "CIFAR-10-C.tar"


def shrink(patch: pytest.MonkeyPatch) -> None:
    """The releases' sizes, made tiny: the files below are official in everything else."""
    patch.setattr(sets, "CIFAR10_C_PER_SEVERITY", PER_SEVERITY)
    patch.setattr(sets, "CIFAR10_1_IMAGES", CIFAR10_1_SIZE)


@pytest.fixture(autouse=True)
def tiny_releases(monkeypatch: pytest.MonkeyPatch) -> None:
    shrink(monkeypatch)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Batches of a few images: on a busy 2-core machine a second thread costs ~0.1 s a forward pass in waiting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def cifar10_1_arrays() -> tuple[np.ndarray, np.ndarray]:
    return make_images(CIFAR10_1_SIZE, seed=3)


def cifar10_c_arrays(corruption: str) -> tuple[np.ndarray, np.ndarray]:
    """A corruption file's images (the same images under noise of the corruption's own) and ``labels.npy``."""
    images, labels = make_images(len(sets.SEVERITIES) * PER_SEVERITY, seed=4)
    noise = np.random.default_rng(CORRUPTIONS.index(corruption)).integers(-90, 90, images.shape)
    return np.clip(images + noise, 0, 255).astype(np.uint8), labels


def write_cifar10_1(data_dir: Path) -> None:
    images, labels = cifar10_1_arrays()
    folder = data_dir / sets.CIFAR10_1_DIR
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / sets.CIFAR10_1_FILES[0], images)
    np.save(folder / sets.CIFAR10_1_FILES[1], labels.astype(np.int32))  # any integer dtype is read as int64


def write_cifar10_c(data_dir: Path, corruptions: tuple[str, ...] = CORRUPTIONS) -> None:
    """``CIFAR-10-C/``: ``labels.npy`` (uint8: any integer dtype is read as int64) and a file per corruption."""
    folder = data_dir / sets.CIFAR10_C_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for name in corruptions:
        images, labels = cifar10_c_arrays(name)
        np.save(folder / f"{name}.npy", images)
    np.save(folder / sets.CIFAR10_C_LABELS, labels.astype(np.uint8))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny CIFAR-10 beside tiny CIFAR-10.1 and CIFAR-10-C folders."""
    folder = tmp_path_factory.mktemp("robustness_data")
    write_npz(folder)
    write_cifar10_1(folder)
    write_cifar10_c(folder)
    return folder


@pytest.fixture(scope="module")
def run(checkpoint: Path, data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A run folder holding the tiny checkpoint as its last.ckpt (its config's test-time augmentation: flip),
    evaluated on every set; and what it printed."""
    folder = tmp_path_factory.mktemp("runs") / "simple_cnn" / "version_0"
    (folder / "checkpoints").mkdir(parents=True)
    shutil.copy(checkpoint, folder / "checkpoints" / "last.ckpt")
    config = {"model": {"backbone": "simple_cnn", "tta": "flip"}, "data": {}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(io.StringIO()) as out:
        shrink(patch)
        main(["--ckpt_path", str(folder / "checkpoints" / "last.ckpt"), "--data_dir", str(data_dir),
              "--accelerator", "cpu"])
    return folder, out.getvalue()


def read_csv(path: Path) -> dict[str, dict[str, str]]:
    """First column -> the row."""
    with path.open() as file:
        return {row[next(iter(row))]: row for row in csv.DictReader(file)}


def as_dataset(images: np.ndarray, labels: np.ndarray, transform: torch.nn.Module) -> ImageArrayDataset:
    """NHWC arrays as the DataModule holds a split, normalised item by item by its transform."""
    return ImageArrayDataset(torch.from_numpy(images).permute(0, 3, 1, 2), torch.from_numpy(labels), transform)


def accuracy_and_ece(model: ImageClassifier, dataset: ImageArrayDataset) -> tuple[float, float]:
    """Computed here from the DataModule's own per-image transform, the ECE by hand (15 equal-width bins)."""
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    with torch.no_grad():
        probs = model.predict_logits(images).softmax(dim=1).numpy()
    confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == dataset.labels.numpy()
    bins = np.minimum((confidence * 15).astype(int), 14)
    ece = sum(abs(correct[bins == b].mean() - confidence[bins == b].mean()) * np.mean(bins == b)
              for b in np.unique(bins))
    return correct.mean(), ece


def test_the_table_has_every_corruption_at_every_severity_and_the_mca_is_the_mean_of_the_benchmark_cells(
        run: tuple[Path, str]) -> None:
    folder, printed = run
    corruptions = read_csv(folder / "robustness_corruptions.csv")
    severities = [f"s{severity}" for severity in sets.SEVERITIES]
    assert set(CORRUPTIONS) <= set(corruptions)
    assert all(corruptions[name][column] != "" for name in CORRUPTIONS for column in severities)
    cells = [float(corruptions[name][column]) for name in sets.BENCHMARK_CORRUPTIONS for column in severities]
    mca = read_csv(folder / "robustness.csv")["CIFAR-10-C benchmark mCA: 15 corruptions x 5 severities"]
    assert len(cells) == 75 and float(mca["accuracy"]) == pytest.approx(np.mean(cells))
    extra = [float(corruptions[name][column]) for name in sets.EXTRA_CORRUPTIONS for column in severities]
    assert float(corruptions["mean: extra"]["mean"]) == pytest.approx(np.mean(extra))  # apart from the mCA
    assert load_run(folder).last("robustness/corruption_acc") == pytest.approx(np.mean(cells))
    assert "CIFAR-10-C 19/19 saturate, severity 1 2 3 4 5: accuracy" in printed  # a progress line per corruption
    assert "| CIFAR-10-C benchmark mCA: 15 corruptions x 5 severities |" in printed


def test_the_mca_is_the_mean_of_the_75_benchmark_cells_and_the_extras_are_reported_apart() -> None:
    rng = np.random.default_rng(0)
    corrupted = {name: {severity: Score(rng.random(), rng.random(), 3) for severity in sets.SEVERITIES}
                 for name in CORRUPTIONS}
    values = scalars(Robustness(Score(0.9, 0.05, 60), Score(0.75, 0.1, 20), corrupted, sets.SEVERITIES))
    for group, tag in ((sets.BENCHMARK_CORRUPTIONS, "corruption"), (sets.EXTRA_CORRUPTIONS, "extra_corruption")):
        cells = [corrupted[name][severity] for name in group for severity in sets.SEVERITIES]
        assert values[f"robustness/{tag}_acc"] == pytest.approx(np.mean([cell.accuracy for cell in cells]))
        assert values[f"robustness/{tag}_ece"] == pytest.approx(np.mean([cell.ece for cell in cells]))
    assert values["robustness/cifar10_1_gap"] == pytest.approx(0.15)
    frost = [cell.accuracy for cell in corrupted["frost"].values()]
    assert values["robustness/frost_acc"] == pytest.approx(np.mean(frost))
    del corrupted["frost"]
    part = Robustness(Score(0.9, 0.05, 60), None, corrupted, sets.SEVERITIES)
    assert "robustness/corruption_acc" not in scalars(part) and "robustness/extra_corruption_acc" in scalars(part)
    assert sets_table(part)[1][1][0] == "CIFAR-10-C benchmark mean: 14 corruptions x 5 severities"


def test_each_sets_accuracy_and_ece_equal_the_models_own_predictions_with_the_runs_tta_on_the_same_images(
        run: tuple[Path, str], data_dir: Path) -> None:
    folder, _ = run
    model = load_classifier(folder / "checkpoints" / "last.ckpt")
    model.tta = "flip"  # the run's, which robustness takes by default
    assert "test-time augmentation 'flip'" in (folder / "robustness.md").read_text()
    test = ImageDataModule.for_evaluation(model.data_hparams, str(data_dir)).datasets["test"]
    frost, frost_labels = cifar10_c_arrays("frost")
    severity_3 = slice(2 * PER_SEVERITY, 3 * PER_SEVERITY)
    datasets = {"clean": test, "cifar10_1": as_dataset(*cifar10_1_arrays(), test.transform),
                "frost_s3": as_dataset(frost[severity_3], frost_labels[severity_3], test.transform)}
    ours = {name: accuracy_and_ece(model, dataset) for name, dataset in datasets.items()}
    scalars = load_run(folder)
    logged = {tag: scalars.last(f"robustness/{tag}")
              for tag in ("clean_acc", "clean_ece", "cifar10_1_acc", "cifar10_1_ece", "cifar10_1_gap",
                          "frost_s3_acc", "frost_s3_ece")}
    for name, (accuracy, ece) in ours.items():
        assert logged[f"{name}_acc"] == pytest.approx(accuracy, abs=1e-6), name
        assert logged[f"{name}_ece"] == pytest.approx(ece, abs=1e-5), name
    assert logged["cifar10_1_gap"] == pytest.approx(ours["clean"][0] - ours["cifar10_1"][0], abs=1e-6)
    table = read_csv(folder / "robustness.csv")
    assert float(table["CIFAR-10 test"]["accuracy"]) == pytest.approx(ours["clean"][0])
    assert int(table["CIFAR-10.1 v6"]["images"]) == CIFAR10_1_SIZE


def test_the_scalars_land_in_the_runs_tensorboard_and_compare_shows_the_new_columns(
        run: tuple[Path, str], tmp_path: Path) -> None:
    folder, _ = run
    other = tmp_path / "runs" / "simple_cnn" / "version_1"  # a run never evaluated for robustness
    other.mkdir(parents=True)
    shutil.copy(folder / "config.yaml", other)
    logger = TensorBoardLogger(str(tmp_path / "runs"), name="simple_cnn", version="version_1")
    logger.log_metrics({"test/acc": 0.5}, step=0)
    logger.finalize("success")
    before = compare.per_run_table([load_run(other)])[0]
    assert not set(compare.ROBUSTNESS_COLUMNS) & set(before)  # its output as it was
    header, rows, cells = compare.per_run_table([load_run(folder), load_run(other)])
    assert header[:len(before)] == before
    assert header[len(before):len(before) + 4] == list(compare.ROBUSTNESS_COLUMNS)
    values, scalars = dict(zip(header, rows[0])), load_run(folder)
    for column in compare.ROBUSTNESS_COLUMNS:
        assert values[column] == pytest.approx(scalars.last(f"robustness/{column}"))
    assert dict(zip(header, rows[1]))["corruption_acc"] is None
    assert dict(zip(header, cells[0]))["corruption_acc"] == f"{values['corruption_acc']:.4f}"


def test_a_limited_set_needs_only_its_files_and_its_part_of_the_benchmark_is_no_mca(
        checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_npz(tmp_path)
    write_cifar10_c(tmp_path, ("frost", "fog"))
    main(["--ckpt_path", str(checkpoint), "--data_dir", str(tmp_path), "--sets", "cifar10_c",
          "--corruptions", "fog", "frost", "--severities", "4", "2", "--out", str(tmp_path / "out"),
          "--accelerator", "cpu"])
    corruptions = read_csv(tmp_path / "out" / "robustness_corruptions.csv")
    assert list(corruptions) == ["frost", "fog", "mean: benchmark"]  # the benchmark's order
    assert list(corruptions["frost"]) == ["corruption", "s2", "s4", "mean", "ece"]
    sets_rows = read_csv(tmp_path / "out" / "robustness.csv")
    assert list(sets_rows) == ["CIFAR-10 test", "CIFAR-10-C benchmark mean: 2 corruptions x 2 severities"]
    assert "no TensorBoard to log into" in capsys.readouterr().out  # a checkpoint outside a run folder


@pytest.mark.parametrize(("name", "array", "problem"), [
    ("frost.npy", np.zeros((5 * PER_SEVERITY, 32, 32, 3), np.float32), "float32"),
    ("frost.npy", np.zeros((5 * PER_SEVERITY, 3, 32, 32), np.uint8), "[10, 3, 32, 32]"),
    ("frost.npy", np.zeros((5 * PER_SEVERITY - 1, 32, 32, 3), np.uint8), "[9, 32, 32, 3]"),
    ("labels.npy", np.zeros(5 * PER_SEVERITY, np.float64), "float64"),
], ids=["dtype", "shape", "length", "labels_not_integers"])
def test_a_cifar10_c_file_of_the_wrong_dtype_shape_or_length_is_a_one_line_error_naming_it(
        tmp_path: Path, name: str, array: np.ndarray, problem: str) -> None:
    write_cifar10_c(tmp_path, ("frost",))
    path = tmp_path / sets.CIFAR10_C_DIR / name
    np.save(path, array)
    with pytest.raises(DataFormatError) as error:
        sets.cifar10_c(tmp_path, ["frost"])
    message = str(error.value)
    assert "\n" not in message and str(path) in message and problem in message


def test_a_missing_corruption_file_is_one_line_on_stderr_naming_it(
        checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_npz(tmp_path)
    write_cifar10_1(tmp_path)
    write_cifar10_c(tmp_path, ("frost",))
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["robustness", "--ckpt_path", str(checkpoint), "--data_dir", str(tmp_path), "--corruptions", "fog"])
    stderr = capsys.readouterr().err
    lines = [line for line in stderr.splitlines() if line.startswith("cifar-lab: error:")]
    assert exit_info.value.code == 1 and len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    assert str(tmp_path / sets.CIFAR10_C_DIR / "fog.npy") in lines[0]


def test_a_checkpoint_of_another_dataset_is_refused(checkpoint: Path, tmp_path: Path) -> None:
    saved = torch.load(checkpoint, weights_only=True)
    saved["datamodule_hyper_parameters"]["dataset"] = "cifar100"
    torch.save(saved, tmp_path / "cifar100.ckpt")
    with pytest.raises(ConfigError, match="trained on cifar100"):
        main(["--ckpt_path", str(tmp_path / "cifar100.ckpt"), "--data_dir", str(tmp_path)])


@pytest.fixture
def mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder served as ``$CIFAR_LAB_MIRROR`` holding a tiny CIFAR-10-C.tar (its MD5 made the published one)
    and the CIFAR-10.1 files; the tests start the server themselves (some cut a file)."""
    folder = tmp_path / "mirror"
    write_cifar10_c(folder, ("frost",))
    with tarfile.open(folder / TAR, "w") as tar:
        tar.add(folder / sets.CIFAR10_C_DIR, arcname=sets.CIFAR10_C_DIR)
    shutil.rmtree(folder / sets.CIFAR10_C_DIR)
    write_cifar10_1(folder)
    for name in sets.CIFAR10_1_FILES:
        shutil.move(folder / sets.CIFAR10_1_DIR / name, folder / name)
    monkeypatch.setattr(sets, "CIFAR10_C_MD5", hashlib.md5((folder / TAR).read_bytes()).hexdigest())
    return folder


@contextlib.contextmanager
def mirrored(folder: Path, monkeypatch: pytest.MonkeyPatch, cut: dict[str, int] | None = None) -> Iterator[None]:
    with serving(folder, cut) as url:
        monkeypatch.setenv("CIFAR_LAB_MIRROR", url)
        yield


def test_download_fetches_and_unpacks_cifar10_c_when_its_md5_is_the_published_one(
        mirror: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data_dir = tmp_path / "data"
    with mirrored(mirror, monkeypatch):
        corrupted = sets.cifar10_c(data_dir, ["frost"], download=True)
    assert np.array_equal(corrupted.severity("frost", 5).images, cifar10_c_arrays("frost")[0][-PER_SEVERITY:])
    assert corrupted.labels.dtype == np.int64
    assert sorted(path.name for path in data_dir.iterdir()) == [sets.CIFAR10_C_DIR]  # no tar, no .partial/


def test_a_cifar10_c_download_with_another_md5_is_refused_and_nothing_is_unpacked(
        mirror: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sets, "CIFAR10_C_MD5", "0" * 32)
    data_dir = tmp_path / "data"
    with mirrored(mirror, monkeypatch), pytest.raises(ChecksumError, match="0" * 32):
        sets.cifar10_c(data_dir, ["frost"], download=True)
    assert list(data_dir.iterdir()) == []


def test_a_cut_cifar10_c_download_is_refused_and_leaves_no_partial_file(
        mirror: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data_dir = tmp_path / "data"
    with mirrored(mirror, monkeypatch, cut={TAR: 1000}), pytest.raises(DownloadError, match="connection ended"):
        sets.cifar10_c(data_dir, ["frost"], download=True)
    assert list(data_dir.iterdir()) == []


def test_download_fetches_cifar10_1_into_its_folder(mirror: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    data_dir = tmp_path / "data"
    with mirrored(mirror, monkeypatch):
        cifar10_1 = sets.cifar10_1(data_dir, download=True)
    images, labels = cifar10_1_arrays()
    assert np.array_equal(cifar10_1.images, images) and np.array_equal(cifar10_1.labels, labels)
    assert cifar10_1.labels.dtype == np.int64
    assert sorted(path.name for path in (data_dir / sets.CIFAR10_1_DIR).iterdir()) == sorted(sets.CIFAR10_1_FILES)
