"""``cifar-lab export``: the exported files reproduce the PyTorch model, quantisation and errors."""

from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from jsonargparse import ArgumentError

from cifar_lab.cli import main
from cifar_lab.data.augment import build_transform, normalization_stats
from cifar_lab.data.sources import RELEASES
from cifar_lab.errors import CheckpointError, ConfigError, ExportMismatchError
from cifar_lab.module import ImageClassifier
from cifar_lab.tools import export as export_module
from cifar_lab.tools.export import export, parser


def pytorch_logits(checkpoint: Path, images: torch.Tensor, normalization: str = "dataset") -> np.ndarray:
    """The checkpoint's logits for [0, 1] images normalised as in training: the reference."""
    model = ImageClassifier.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=True).eval()
    normalise = build_transform("standard", train=False, stats=normalization_stats(normalization, RELEASES["cifar10"].stats))
    with torch.no_grad():
        return model(normalise(images)).numpy()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    # A batch size other than the export's example (2): the batch dimension must be dynamic.
    return torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def test_images(npz_dir: Path) -> torch.Tensor:
    """Five of the tiny CIFAR-format test images as [0, 1] floats, again a batch size other than 2."""
    uint8 = np.load(npz_dir / "cifar10.npz")["test_images"][:5]
    return torch.from_numpy(uint8).permute(0, 3, 1, 2).float() / 255


def test_onnx_export_matches_pytorch_and_quantises(checkpoint: Path, npz_dir: Path, tmp_path: Path,
                                                   images: torch.Tensor, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "model.onnx"
    export(str(checkpoint), str(out), format="onnx", quantize="static", data_dir=str(npz_dir), eval_images=60,
           calibration_images=64, timing_runs=1)
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    onnx_logits = session.run(None, {"images": images.numpy()})[0]
    assert onnx_logits.shape == (5, 10)
    assert np.abs(onnx_logits - pytorch_logits(checkpoint, images)).max() < 1e-4

    quantized = tmp_path / "model.int8.onnx"
    assert quantized.stat().st_size < out.stat().st_size / 2  # int8 weights: about a quarter of float32
    int8 = onnxruntime.InferenceSession(str(quantized), providers=["CPUExecutionProvider"])
    assert int8.run(None, {"images": images.numpy()})[0].shape == (5, 10)
    report = capsys.readouterr().out
    assert "on 256 test" not in report and "on 60 test images" in report
    assert "onnx int8 static" in report and "accuracy" in report


def test_pt2_export_through_main_matches_pytorch_at_another_batch_size(
        checkpoint: Path, npz_dir: Path, tmp_path: Path, test_images: torch.Tensor,
        capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "model.pt2"
    export_module.main(["--ckpt_path", str(checkpoint), "--out", str(out), "--format", "pt2",
                        "--data_dir", str(npz_dir), "--timing_runs", "1"])
    program = torch.export.load(out).module()
    with torch.no_grad():
        logits = program(test_images).numpy()
    assert logits.shape == (5, 10)
    assert np.abs(logits - pytorch_logits(checkpoint, test_images)).max() < 1e-4
    report = capsys.readouterr().out
    assert "on 60 test images" in report
    assert any(line.startswith("| pt2 ") for line in report.splitlines())  # its size and latency row


def test_export_builds_in_the_normalisation_the_checkpoint_was_trained_with(
        checkpoint: Path, npz_dir: Path, tmp_path: Path, test_images: torch.Tensor) -> None:
    saved = torch.load(checkpoint, weights_only=True)
    saved["datamodule_hyper_parameters"]["normalize"] = "half"  # as if trained with --data.normalize half
    torch.save(saved, tmp_path / "half.ckpt")
    out = tmp_path / "model.pt2"
    export(str(tmp_path / "half.ckpt"), str(out), format="pt2", data_dir=str(npz_dir), timing_runs=1)
    with torch.no_grad():
        logits = torch.export.load(out).module()(test_images).numpy()
    assert np.abs(logits - pytorch_logits(checkpoint, test_images, "half")).max() < 1e-4
    assert np.abs(logits - pytorch_logits(checkpoint, test_images, "dataset")).max() > 1e-2


def test_torchscript_export_still_matches_pytorch_and_warns_it_is_deprecated(
        checkpoint: Path, npz_dir: Path, tmp_path: Path, images: torch.Tensor) -> None:
    out = tmp_path / "model.pt"
    with pytest.warns(FutureWarning, match="torchscript is deprecated.*--format pt2"):
        export(str(checkpoint), str(out), format="torchscript", data_dir=str(npz_dir), timing_runs=1)
    scripted = torch.jit.load(str(out))
    with torch.no_grad():
        logits = scripted(images).numpy()
    assert np.abs(logits - pytorch_logits(checkpoint, images)).max() < 1e-4


def test_export_stops_when_outputs_differ(checkpoint: Path, npz_dir: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(export_module, "TOLERANCE", -1.0)
    with pytest.raises(ExportMismatchError, match="differ from PyTorch"):
        export(str(checkpoint), str(tmp_path / "model.pt2"), format="pt2", data_dir=str(npz_dir))


def test_bad_export_requests_are_clear_errors(checkpoint: Path, npz_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--format onnx"):
        export(str(checkpoint), str(tmp_path / "m.pt2"), format="pt2", quantize="dynamic", data_dir=str(npz_dir))
    with pytest.raises(ConfigError, match="a .pt2 name"):
        export(str(checkpoint), str(tmp_path / "m.pt"), format="pt2", data_dir=str(npz_dir))
    not_a_checkpoint = tmp_path / "notes.ckpt"
    not_a_checkpoint.write_text("hello")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        export(str(not_a_checkpoint), str(tmp_path / "m.onnx"), data_dir=str(npz_dir))


def test_cli_export_subcommand_reports_a_missing_checkpoint_in_one_line(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--ckpt_path", str(tmp_path / "missing.ckpt"), "--format", "onnx", "--out", "m.onnx"])
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == f"cifar-lab: error: checkpoint {tmp_path / 'missing.ckpt'} does not exist\n"


def test_parser_takes_the_documented_options_and_refuses_an_unknown_format(tmp_path: Path) -> None:
    required = ["--ckpt_path", "a.ckpt", "--out", "m.pt2"]
    options = parser().parse_args([*required, "--format", "pt2", "--quantize", "none", "--data_dir", "data",
                                   "--eval_images", "8", "--calibration_images", "4", "--timing_runs", "2",
                                   "--threads", "3"])
    assert (options.ckpt_path, options.out, options.format, options.data_dir) == ("a.ckpt", "m.pt2", "pt2", "data")
    assert (options.eval_images, options.calibration_images, options.timing_runs, options.threads) == (8, 4, 2, 3)
    assert parser().parse_args(required).format == "onnx"
    config = tmp_path / "export.yaml"
    config.write_text("format: pt2\nthreads: 2\n")
    from_file = parser().parse_args(["--config", str(config), *required])
    assert (from_file.format, from_file.threads) == ("pt2", 2)
    assert "torch.export" in parser().format_help()  # the format docstring is the option's help
    with pytest.raises(ArgumentError, match="format"):
        parser().parse_args([*required, "--format", "xyz"])
