"""``cifar-lab export``: a trained checkpoint as a self-contained ONNX model or ``torch.export`` program.

The exported model takes ``[N, 3, S, S]`` float RGB in ``[0, 1]`` (any N; S is 32, or the image size an image
folder was trained at) and returns class logits; the training run's normalisation is inside it. After writing,
the file is loaded back (onnxruntime, ``torch.export.load`` or ``torch.jit.load``) and its outputs are compared
with the PyTorch model's on random images and on test images of the checkpoint's dataset. ``--quantize`` adds an
int8 copy of the ONNX model made with onnxruntime's quantizer and compares accuracy and latency before and after.
``--format torchscript`` (``torch.jit.trace``, deprecated by torch) still works but warns: use ``--format pt2``.

    cifar-lab export --ckpt_path runs/simple_cnn/version_0/checkpoints/last.ckpt --format onnx --out model.onnx
    cifar-lab export --ckpt_path runs/simple_cnn/version_0/checkpoints/last.ckpt --format pt2 --out model.pt2
"""

import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from jsonargparse import ActionConfigFile, ArgumentParser
from torch import Tensor, nn

from cifar_lab.data.augment import ChannelStats
from cifar_lab.data.datamodule import ImageDataModule
from cifar_lab.errors import ConfigError, ExportMismatchError
from cifar_lab.module import load_classifier
from cifar_lab.reporting.tables import markdown_table

TOLERANCE = 1e-4
NEEDS_EXTRA = "ONNX export needs onnxscript and onnxruntime: pip install 'cifar-lab[export]'"
Runner = Callable[[np.ndarray], np.ndarray]  # float32 [N,3,32,32] in [0,1] -> logits [N,classes]


class Normalized(nn.Module):
    """``net`` behind the normalisation it was trained with (``ImageClassifier.input_stats``), so callers feed plain
    ``[0, 1]`` RGB."""

    def __init__(self, net: nn.Module, stats: ChannelStats) -> None:
        super().__init__()
        self.net = net
        mean, std = stats
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, images: Tensor) -> Tensor:
        return self.net((images - self.mean) / self.std)


def traced_input(size: int) -> tuple[tuple[Tensor], tuple[dict[int, torch.export.Dim]]]:
    """The example batch exporters trace with, and its batch dimension marked dynamic so the file takes any N."""
    return (torch.rand(2, 3, size, size),), ({0: torch.export.Dim("batch", min=1)},)


def export_onnx(model: nn.Module, out: Path, size: int) -> None:
    try:
        import onnxscript  # noqa: F401  (torch's ONNX exporter builds the graph with it)
    except ImportError as err:
        raise ConfigError(NEEDS_EXTRA) from err
    example, dynamic_shapes = traced_input(size)
    torch.onnx.export(model, example, out, input_names=["images"], output_names=["logits"],
                      dynamic_shapes=dynamic_shapes, dynamo=True, external_data=False, verbose=False)


def export_pt2(model: nn.Module, out: Path, size: int) -> None:
    example, dynamic_shapes = traced_input(size)
    torch.export.save(torch.export.export(model, example, dynamic_shapes=dynamic_shapes), out)


def export_torchscript(model: nn.Module, out: Path, size: int) -> None:
    torch.jit.trace(model, traced_input(size)[0]).save(str(out))


def onnx_runner(path: Path) -> Runner:
    try:
        import onnxruntime
    except ImportError as err:
        raise ConfigError(NEEDS_EXTRA) from err
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # the same CPU share as PyTorch gets
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda images: session.run(None, {"images": images})[0]


def torch_runner(model: nn.Module) -> Runner:
    def run(images: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(images)).numpy()

    return run


def pt2_runner(path: Path) -> Runner:
    return torch_runner(torch.export.load(path).module())


def torchscript_runner(path: Path) -> Runner:
    return torch_runner(torch.jit.load(str(path), map_location="cpu").eval())


EXPORTERS = {
    "onnx": (export_onnx, onnx_runner),
    "pt2": (export_pt2, pt2_runner),
    "torchscript": (export_torchscript, torchscript_runner),
}


def max_difference(reference: Runner, exported: Runner, images: np.ndarray) -> float:
    return float(np.abs(reference(images) - exported(images)).max())


def latency_ms(run: Runner, images: np.ndarray, runs: int) -> float:
    """Median wall time per image of ``run`` on the batch ``images``, after warm-up calls."""
    for _ in range(3):
        run(images)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run(images)
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times)) / len(images)


def accuracy(run: Runner, images: np.ndarray, labels: np.ndarray, batch_size: int = 500) -> float:
    predicted = np.concatenate([run(images[i : i + batch_size]).argmax(1) for i in range(0, len(images), batch_size)])
    return float((predicted == labels).mean())


def as_model_input(images: Tensor) -> np.ndarray:
    """uint8 ``[N, 3, H, W]`` -> float32 in ``[0, 1]``."""
    return images.numpy().astype(np.float32) / 255


def quantize_onnx(fp32: Path, out: Path, mode: Literal["dynamic", "static"], calibration: np.ndarray) -> None:
    """int8 weights (``dynamic``) or int8 weights and activations calibrated on images (``static``)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Calibration(CalibrationDataReader):
        def __init__(self, images: np.ndarray, batch_size: int = 32) -> None:
            self.batches = iter(np.array_split(images, max(1, len(images) // batch_size)))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {"images": batch}

    prepared = out.with_suffix(".prep.onnx")
    quant_pre_process(str(fp32), str(prepared))
    try:
        if mode == "dynamic":
            quantize_dynamic(prepared, out, weight_type=QuantType.QInt8)
        else:
            quantize_static(prepared, out, Calibration(calibration), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    finally:
        prepared.unlink(missing_ok=True)


def export(
    ckpt_path: str,
    out: str,
    format: Literal["onnx", "pt2", "torchscript"] = "onnx",  # noqa: A002  (the option is --format)
    quantize: Literal["none", "dynamic", "static"] = "none",
    data_dir: str | None = None,
    eval_images: int = 10000,
    calibration_images: int = 512,
    timing_runs: int = 100,
    threads: int = 1,
) -> None:
    """Export a checkpoint and check the exported model against PyTorch.

    Args:
        ckpt_path: checkpoint written by ``cifar-lab fit``.
        out: the file to write (``.onnx``, ``.pt2`` or ``.pt``).
        format: ``onnx`` (run with onnxruntime), ``pt2`` (a ``torch.export`` program, run with
            ``torch.export.load``) or ``torchscript`` (``torch.jit.trace``, deprecated: use ``pt2``).
        quantize: also write ``<out>.int8.onnx`` with int8 weights (``dynamic``) or int8 weights and
            activations calibrated on training images (``static``); ONNX only.
        data_dir: where the checkpoint's dataset is now, for the real-image check, calibration and accuracy; null
            means its saved ``data.data_dir``, else ``$CIFAR_LAB_DATA`` or ``./data``.
        eval_images: test images for the accuracy comparison of ``--quantize``.
        calibration_images: training images that calibrate ``--quantize static``.
        timing_runs: timed calls behind each latency figure (their median).
        threads: CPU threads for PyTorch and onnxruntime; 1 gives per-core latencies that stay
            comparable on a machine busy with other work.
    """
    if quantize != "none" and format != "onnx":
        raise ConfigError("--quantize works on the ONNX model: add --format onnx")
    if format == "pt2" and not out.endswith(".pt2"):  # torch.export.save warns on other names, to refuse them later
        raise ConfigError(f"--format pt2 writes a .pt2 archive: give --out a .pt2 name, not {out}")
    if format == "torchscript":
        warnings.warn("--format torchscript is deprecated, as torch.jit.trace is: use --format pt2 (torch.export)",
                      FutureWarning, stacklevel=2)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        export_and_check(ckpt_path, out, format, quantize, data_dir, eval_images, calibration_images, timing_runs)
    finally:  # the thread count is process-wide: leave it as it was for whoever called us
        torch.set_num_threads(previous_threads)


def export_and_check(ckpt_path: str, out: str, format: str, quantize: str, data_dir: str | None,  # noqa: A002
                     eval_images: int, calibration_images: int, timing_runs: int) -> None:
    classifier = load_classifier(ckpt_path)
    data = ImageDataModule.for_evaluation(classifier.data_hparams, data_dir)
    test = data.datasets["test"]
    test_images, test_labels = as_model_input(test.images[:eval_images]), test.labels[:eval_images].numpy()
    model = Normalized(classifier.backbone, classifier.input_stats).eval()
    reference = torch_runner(model)
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    write, load = EXPORTERS[format]
    write(model, target, data.image_size)
    exported = load(target)

    checks = {
        "random": np.random.default_rng(0).random((7, 3, data.image_size, data.image_size), dtype=np.float32),
        "test": test_images[:256],
    }
    for name, images in checks.items():
        difference = max_difference(reference, exported, images)
        print(f"max |logit difference| vs PyTorch on {len(images)} {name} images: {difference:.2e}")
        if difference > TOLERANCE:
            raise ExportMismatchError(f"{target}: outputs differ from PyTorch by {difference:.2e} (> {TOLERANCE})")

    rows = [("pytorch", reference, None), (format, exported, target)]
    if quantize != "none":
        quantized = target.with_suffix(".int8.onnx")
        calibration = as_model_input(data.datasets["train"].images[:calibration_images])
        quantize_onnx(target, quantized, quantize, calibration)
        rows.append((f"onnx int8 {quantize}", onnx_runner(quantized), quantized))
    print_report(rows, test_images, test_labels, with_accuracy=quantize != "none", timing_runs=timing_runs)


def print_report(rows: list[tuple[str, Runner, Path | None]], images: np.ndarray, labels: np.ndarray,
                 with_accuracy: bool, timing_runs: int) -> None:
    """Size, per-image CPU latency at batch 1 and 64, and (for quantisation) test accuracy."""
    print(f"CPU latency per image, median of {timing_runs} calls, {torch.get_num_threads()} thread(s):")
    header = ["model", "file MB", "ms/img b=1", "ms/img b=64"] + (["accuracy"] if with_accuracy else [])
    body = []
    for name, run, path in rows:
        row = [name, f"{path.stat().st_size / 2**20:.2f}" if path else "-",
               f"{latency_ms(run, images[:1], timing_runs):.3f}", f"{latency_ms(run, images[:64], timing_runs):.3f}"]
        body.append(row + ([f"{accuracy(run, images, labels):.4f}"] if with_accuracy else []))
    print(markdown_table(header, body, right_aligned=header[1:]), end="")
    if with_accuracy:
        print(f"(accuracy on the first {len(labels)} test images of the checkpoint's dataset)")


def parser() -> ArgumentParser:
    """The options of ``export`` with its docstring as help; a bad value raises (the CLI prints one line)."""
    tool = ArgumentParser(prog="cifar-lab export", description=export.__doc__.split("\n")[0], exit_on_error=False)
    tool.add_argument("--config", action=ActionConfigFile, help="a YAML file of these options")
    tool.add_function_arguments(export, as_positional=False, as_group=False)
    return tool


def main(argv: list[str]) -> None:
    options = parser().parse_args(argv)
    options.pop("config")  # already merged into the other options
    export(**options.as_dict())
