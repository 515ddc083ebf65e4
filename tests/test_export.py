"""``cifar-lab export``: the exported files reproduce the PyTorch model, quantisation and errors."""

from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch

from cifar_lab.tools import export as export_module
from cifar_lab.data.augment import build_transform
from cifar_lab.errors import CheckpointError, ConfigError, ExportMismatchError
from cifar_lab.module import ImageClassifier
from cifar_lab.tools.export import export
from tests.helpers import cifar_lab, one_line_error


def pytorch_logits(checkpoint: Path, images: torch.Tensor) -> np.ndarray:
    """The checkpoint's logits for [0, 1] images normalised as in training: the reference."""
    model = ImageClassifier.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=True).eval()
    normalise = build_transform("standard", train=False)
    with torch.no_grad():
        return model(normalise(images)).numpy()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    # A batch size other than the export's example (2): the batch dimension must be dynamic.
    return torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))


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
    assert "on 256 cifar10-test" not in report and "on 60 cifar10-test images" in report
    assert "onnx int8 static" in report and "accuracy" in report


def test_torchscript_export_matches_pytorch(checkpoint: Path, npz_dir: Path, tmp_path: Path,
                                            images: torch.Tensor) -> None:
    out = tmp_path / "model.pt"
    export(str(checkpoint), str(out), format="torchscript", data_dir=str(npz_dir), timing_runs=1)
    scripted = torch.jit.load(str(out))
    with torch.no_grad():
        logits = scripted(images).numpy()
    assert np.abs(logits - pytorch_logits(checkpoint, images)).max() < 1e-4


def test_export_stops_when_outputs_differ(checkpoint: Path, npz_dir: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(export_module, "TOLERANCE", -1.0)
    with pytest.raises(ExportMismatchError, match="differ from PyTorch"):
        export(str(checkpoint), str(tmp_path / "model.pt"), format="torchscript", data_dir=str(npz_dir))


def test_bad_export_requests_are_clear_errors(checkpoint: Path, npz_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--format onnx"):
        export(str(checkpoint), str(tmp_path / "m.pt"), format="torchscript", quantize="dynamic", data_dir=str(npz_dir))
    not_a_checkpoint = tmp_path / "notes.ckpt"
    not_a_checkpoint.write_text("hello")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        export(str(not_a_checkpoint), str(tmp_path / "m.onnx"), data_dir=str(npz_dir))


def test_cli_export_subcommand_reports_a_missing_checkpoint_in_one_line(npz_dir: Path, tmp_path: Path) -> None:
    result = cifar_lab("export", "--ckpt_path", "missing.ckpt", "--format", "onnx", "--out", "m.onnx",
                       cwd=tmp_path, data_dir=npz_dir)
    assert "checkpoint missing.ckpt does not exist" in one_line_error(result)
