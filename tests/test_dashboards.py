"""TensorBoard dashboards, the test report, compare and visualize, on two tiny runs made by the real CLI."""

import csv
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import (
    EventAccumulator,
    ScalarEvent,
)
from tensorboard.plugins.hparams import plugin_data_pb2
from torch import nn

from cifar_lab.callbacks import FigureLogger, GradientNorms
from cifar_lab.cli import main
from cifar_lab.errors import ConfigError
from cifar_lab.models import create
from cifar_lab.reporting.plots import confusion_matrix_figure, groups_figure
from cifar_lab.reporting.runs import Run, RunGroup, RunNotFoundError, load_run
from cifar_lab.reporting.tables import markdown_table
from cifar_lab.tools.visualize import grad_cam, most_confident_mistakes, visualize
from tests.helpers import ROOT, SMOKE, cifar_lab

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
NARROW = ["--model.backbone_kwargs", '{"widths": [8, 16]}']
FIGURES_OFF = ["--figures.every_n_epochs", "0", "--figures.first_layer_filters", "false", "--figures.training_images",
               "0"]


@pytest.fixture(scope="module")
def runs(npz_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two fits (default simple_cnn with figures every epoch; a narrow one with figures off); the first is tested."""
    cwd = tmp_path_factory.mktemp("dash")
    for extra in (["--figures.every_n_epochs", "1"], [*NARROW, *FIGURES_OFF]):
        result = cifar_lab("fit", *SMOKE, *extra, cwd=cwd, data_dir=npz_dir)
        assert result.returncode == 0, result.stderr[-3000:]
    run = cwd / "runs" / "simple_cnn" / "version_0"
    result = cifar_lab("test", "--config", str(run / "config.yaml"), "--ckpt_path",
                       str(run / "checkpoints" / "last.ckpt"), cwd=cwd, data_dir=npz_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    return cwd


def events(run: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(run))
    accumulator.Reload()
    return accumulator


def scalar_values(accumulator: EventAccumulator, tag: str) -> list[float]:
    return [event.value for event in accumulator.Scalars(tag)]


def markdown_cells(table: str) -> list[list[str]]:
    """The stripped cells of each row of a Markdown table, whatever its padding (notes below it left out)."""
    return [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in table.splitlines()
            if line.startswith("|")]


def assert_png(path: Path, min_side: int = 64) -> None:
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert min(image.size) >= min_side, image.size
        darkest, brightest = image.convert("L").getextrema()
        assert brightest - darkest > 50  # not a blank canvas


def test_fit_logs_scalars_hparams_graph_and_figures(runs: Path) -> None:
    accumulator = events(runs / "runs" / "simple_cnn" / "version_0")
    tags = accumulator.Tags()
    for tag in ("val/acc", "val/acc_top5", "train/loss_epoch", "lr-SGD", "train/epoch_time_s",
                "train/images_per_s", "hp_metric"):
        assert tag in tags["scalars"], tag
    assert scalar_values(accumulator, "hp_metric")[-1] == pytest.approx(max(scalar_values(accumulator, "val/acc")))
    assert scalar_values(accumulator, "lr-SGD") == [pytest.approx(0.05 / 2)]  # the first of 2 warm-up epochs
    (images_per_s,) = scalar_values(accumulator, "train/images_per_s")
    (epoch_time_s,) = scalar_values(accumulator, "train/epoch_time_s")
    assert images_per_s > 4 * 32 / epoch_time_s  # the smoke preset's 4 batches of 32, in part of the epoch's time
    for tag in ("val/confusion_matrix", "val/per_class_accuracy", "val/predictions", "filters/first_conv",
                "test/confusion_matrix", "test/per_class_accuracy", "test/predictions", "test/reliability_diagram",
                "train/augmented_images"):
        assert tag in tags["images"], tag
    assert [event.step for event in accumulator.Images("train/augmented_images")] == [0]  # once per run
    assert tags["graph"]
    content = accumulator.PluginTagToContent("hparams")
    session = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    assert session.session_start_info.hparams["model/optimizer/init_args/lr"].number_value == 0.05
    assert session.session_start_info.hparams["model/backbone"].string_value == "simple_cnn"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
    assert [info.name.tag for info in experiment.experiment.metric_infos] == ["hp_metric"]


def test_figures_switched_off_are_not_logged(runs: Path) -> None:
    accumulator = events(runs / "runs" / "simple_cnn" / "version_1")
    assert accumulator.Tags()["images"] == []
    assert "val/acc" in accumulator.Tags()["scalars"]


def test_test_logs_into_the_checkpoints_run_and_writes_its_report(runs: Path) -> None:
    run = runs / "runs" / "simple_cnn" / "version_0"
    assert sorted(p.name for p in (runs / "runs" / "simple_cnn").iterdir()) == ["version_0", "version_1"]
    assert yaml.safe_load((run / "config.yaml").read_text())["ckpt_path"] is None  # fit's config, kept
    accumulator = events(run)
    assert len(scalar_values(accumulator, "test/acc")) == 1
    (ece,) = scalar_values(accumulator, "test/ece")
    assert 0 < ece < 1
    assert_png(run / "curves.png", min_side=200)
    assert_png(run / "reliability_diagram.png", min_side=200)
    table = markdown_cells((run / "per_class_accuracy.md").read_text())
    assert table[2:] == [*([name, f"{scalar_values(accumulator, f'test/acc_{name}')[0]:.4f}"] for name in CLASSES),
                         ["**all**", f"{scalar_values(accumulator, 'test/acc')[0]:.4f}"]]


def test_compare_writes_a_table_matching_the_event_files(runs: Path) -> None:
    (runs / "runs" / "empty" / "version_0").mkdir(parents=True)
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "compare_runs.py"), "runs/*/version_*",
                             "--out", "cmp"], cwd=runs, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert "skipped runs/empty/version_0: no TensorBoard event files" in result.stderr
    with open(runs / "cmp" / "comparison.csv") as file:
        rows = list(csv.DictReader(file))
    assert [row["run"] for row in rows] == ["simple_cnn/version_0", "simple_cnn/version_1"]
    for row in rows:
        accumulator = events(runs / "runs" / row["run"])
        assert float(row["best_val_acc"]) == pytest.approx(max(scalar_values(accumulator, "val/acc")))
        assert float(row["images_per_s"]) == pytest.approx(scalar_values(accumulator, "train/images_per_s")[0])
        assert row["epochs"] == "1"
        fit_times = [event.wall_time for tag in ("hp_metric", "train/loss_epoch", "val/acc")
                     for event in accumulator.Scalars(tag)]
        assert float(row["wall_time_s"]) == pytest.approx(max(fit_times) - min(fit_times))
    assert float(rows[0]["test_acc"]) == pytest.approx(
        scalar_values(events(runs / "runs" / "simple_cnn" / "version_0"), "test/acc")[0])
    assert rows[1]["test_acc"] == ""  # never tested: blank
    assert int(rows[0]["parameters"]) == 620_362
    assert int(rows[1]["parameters"]) == sum(p.numel() for p in create("simple_cnn", widths=[8, 16]).parameters())
    assert rows[0]["model.backbone_kwargs.widths"] == "" and rows[1]["model.backbone_kwargs.widths"] == "[8, 16]"
    header, _, *lines = markdown_cells((runs / "cmp" / "comparison.md").read_text())
    assert header == list(rows[0])
    best = header.index("best_val_acc")
    assert [(line[0], line[best]) for line in lines] == [(row["run"], f"{float(row['best_val_acc']):.4f}")
                                                          for row in rows]
    assert_png(runs / "cmp" / "comparison.png", min_side=200)


def test_compare_without_any_run_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "not_a_run").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", str(tmp_path / "not_a_run"), "--out", str(tmp_path / "cmp")])
    assert exit_info.value.code == 1
    errors = capsys.readouterr().err.splitlines()
    assert errors[0] == f"cifar-lab compare: skipped {tmp_path / 'not_a_run'}: no TensorBoard event files " \
                        "(events.out.tfevents.*); is it a run folder?"
    assert errors[1].startswith("cifar-lab: error: no run folders with TensorBoard event files")
    with pytest.raises(RunNotFoundError):
        load_run(tmp_path / "missing")


def test_visualize_writes_its_pictures(runs: Path, npz_dir: Path, tmp_path: Path) -> None:
    ckpt = runs / "runs" / "simple_cnn" / "version_0" / "checkpoints" / "last.ckpt"
    written = visualize(ckpt, tmp_path, count=3, data_dir=str(npz_dir))
    assert [p.name for p in written] == ["predictions.png", "feature_maps_backbone.features.0.0.png",
                                         "feature_maps_backbone.features.2.0.png", "grad_cam.png", "filters.png"]
    for path in written:
        assert_png(path, min_side=20)
    with Image.open(tmp_path / "feature_maps_backbone.features.0.0.png") as image:  # 3 rows of 16 32x32 maps
        assert image.size == (2 + 16 * 34, 2 + 3 * 34)
    with pytest.raises(ConfigError, match="no layer named nope; convolutions of this model: backbone.features.0.0"):
        visualize(ckpt, tmp_path, count=1, layer_names=["nope"], data_dir=str(npz_dir))


def test_misclassified_picks_the_most_confident_mistakes_first(runs: Path, npz_dir: Path, tmp_path: Path) -> None:
    logits = torch.tensor([[5.0, 0.0], [0.0, 1.0], [3.0, 0.0], [0.0, 4.0], [2.0, 0.0]])  # the "images" are logits
    labels = torch.tensor([0, 0, 1, 0, 1])  # wrong: 1 (p 0.73), 2 (p 0.95), 3 (p 0.98), 4 (p 0.88)
    assert most_confident_mistakes(nn.Identity(), logits, labels, count=3).tolist() == [3, 2, 4]
    with pytest.raises(ConfigError, match="classifies every test image correctly"):
        most_confident_mistakes(nn.Identity(), logits, logits.argmax(dim=1), count=3)
    ckpt = runs / "runs" / "simple_cnn" / "version_0" / "checkpoints" / "last.ckpt"
    written = visualize(ckpt, tmp_path, count=2, data_dir=str(npz_dir), misclassified=True)
    assert len(written) == 5
    assert_png(tmp_path / "predictions.png", min_side=20)


def test_grad_cam_highlights_where_the_class_evidence_is() -> None:
    # The class score is the mean of one feature map, so its Grad-CAM is that map's positive part, scaled to 1.
    conv = nn.Conv2d(1, 2, 1, bias=False)
    conv.weight.data = torch.tensor([1.0, -1.0]).view(2, 1, 1, 1)
    model = nn.Sequential(conv, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    image = torch.zeros(1, 1, 4, 4)
    image[0, 0, 1, 2] = 2.0
    image[0, 0, 3, 0] = 1.0
    cam = grad_cam(model, conv, image, torch.tensor([0]))
    assert torch.allclose(cam, image[:, 0] / 2.0)


def test_markdown_table_leaves_missing_values_blank() -> None:
    assert markdown_cells(markdown_table(["a", "b"], [[1, None]])) == [["a", "b"], ["---", "---"], ["1", ""]]


def test_figures_switched_off_collect_nothing(tmp_path: Path) -> None:
    trainer = SimpleNamespace(loggers=[TensorBoardLogger(tmp_path)], sanity_checking=False, current_epoch=4,
                              max_epochs=10)
    module = SimpleNamespace(class_names=CLASSES, device=torch.device("cpu"))
    batch = (torch.zeros(2, 3, 32, 32), torch.tensor([0, 1]))
    off = FigureLogger(confusion_matrix=False, per_class_accuracy=False, sample_predictions=0)
    on = FigureLogger(every_n_epochs=5, confusion_matrix=False, per_class_accuracy=False, sample_predictions=1)
    for figures in (off, on):
        figures.on_validation_epoch_start(trainer, module)
        figures.on_validation_batch_end(trainer, module, torch.eye(2, 10), batch, 0)
    assert not off.collecting and off.confmat is None and off.samples == []
    assert on.collecting and len(on.samples) == 1 and len(on.samples[0][0]) == 1  # epoch 5 of every 5


def test_gradient_norms_are_logged_per_parameter_every_n_steps(npz_dir: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CIFAR_LAB_DATA", str(npz_dir))
    main(["fit", *SMOKE, "--config", str(ROOT / "configs" / "gradient_norms.yaml"),
          "--trainer.callbacks.init_args.every_n_steps", "2"])  # 4 steps: logged at steps 0 and 2
    run = load_run(tmp_path / "runs" / "simple_cnn" / "version_0")
    parameters = [name for name, _ in create("simple_cnn").named_parameters()]
    assert {f"grad_2.0_norm/{name}" for name in parameters} | {"grad_2.0_norm_total"} <= set(run.scalars)
    total = run.scalars["grad_2.0_norm_total"]
    assert [event.step for event in total] == [0, 2]
    assert all(0 < event.value < float("inf") for event in total)


def test_gradient_norm_options_out_of_range_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"norm_type must be > 0 .*got 0"):
        GradientNorms(norm_type=0)
    with pytest.raises(ConfigError, match="every_n_steps must be >= 1 or null, got 0"):
        GradientNorms(every_n_steps=0)


def fake_run(folder: str, per_epoch: dict[str, list[float]]) -> Run:
    """A run whose tags have one value per epoch, at steps 10, 20, ... (with the ``epoch`` scalar Lightning logs)."""
    scalars = {tag: [ScalarEvent(0.0, 10 * (i + 1), v) for i, v in enumerate(values)]
               for tag, values in per_epoch.items()}
    scalars["epoch"] = [ScalarEvent(0.0, 10 * (i + 1), float(i)) for i in range(len(next(iter(per_epoch.values()))))]
    return Run(Path(folder), scalars, [], {})


def test_curves_show_training_dashed_beside_validation_with_the_mean_over_seeds() -> None:
    runs = [fake_run(f"a/seed_{s}", {"val/acc": [0.5 + s, 0.6], "train/acc": [0.4, 0.8], "val/loss": [1.0, 0.9],
                                     "train/loss_epoch": [1.2, 0.5]}) for s in (0, 1)]
    figure = groups_figure([RunGroup("a", runs)])
    ax_acc, ax_loss, _ = figure.axes
    (val_line, train_line), _ = ax_acc.get_lines(), ax_loss.get_lines()
    assert list(val_line.get_ydata()) == [1.0, 0.6] and val_line.get_linestyle() == "-"  # mean of 0.5 and 1.5
    assert list(train_line.get_ydata()) == [0.4, 0.8] and train_line.get_linestyle() == "--"
    assert [line.get_linestyle() for line in ax_loss.get_lines()] == ["-", "--"]
    assert train_line.get_color() == val_line.get_color()


@pytest.mark.parametrize(("classes", "texts"), [(10, 100), (100, 0)])
def test_the_confusion_matrix_writes_each_cell_for_few_classes_and_colour_only_for_many(classes: int,
                                                                                        texts: int) -> None:
    figure = confusion_matrix_figure(torch.eye(classes), [f"class_{i}" for i in range(classes)])
    [axes] = figure.axes[:1]
    assert len(axes.texts) == texts
    assert [label.get_text() for label in axes.get_yticklabels()][:2] == ["class_0", "class_1"]
