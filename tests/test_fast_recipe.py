"""The fast-recipe knobs: patch whitening, test-time augmentation, parameter groups, Lookahead,
the piecewise-linear schedule and channels_last."""

from functools import partial
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from cifar_lab.callbacks import Lookahead
from cifar_lab.models import create
from cifar_lab.module import ImageClassifier
from cifar_lab.optim import apply_group_scales, parameter_groups
from cifar_lab.schedules import PiecewiseLinearLR
from tests.helpers import CLASSES, learning_rates, load_benchmark


def test_patch_whitening_decorrelates_the_first_layer() -> None:
    torch.manual_seed(0)
    net = create("airbench")
    images = torch.randn(200, 3, 32, 32) * torch.tensor([1.0, 2.0, 0.5]).view(1, 3, 1, 1)
    images[:, 1] += 0.7 * images[:, 0]  # correlated channels
    net.init_whitening(images)
    out = nn.functional.conv2d(images, net.whiten.weight[:12]).permute(0, 2, 3, 1).reshape(-1, 12)
    covariance = out.T @ out / len(out)
    torch.testing.assert_close(covariance, torch.eye(12), atol=5e-3, rtol=0)
    torch.testing.assert_close(net.whiten.weight[12:], -net.whiten.weight[:12])  # each filter and its negative


@pytest.mark.parametrize("tta", ["flip", "flip_translate"])
def test_tta_averages_the_logits_of_the_views(tta: str) -> None:
    torch.manual_seed(0)
    model = ImageClassifier("simple_cnn", tta=tta).eval()
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = (model(images) + model(images.flip(-1))) / 2
        if tta == "flip_translate":
            padded = nn.functional.pad(images, (1, 1, 1, 1), mode="reflect")
            views = [padded[:, :, :32, :32], padded[:, :, 2:, 2:]]
            translated = torch.stack([(model(v) + model(v.flip(-1))) / 2 for v in views]).mean(0)
            expected = (expected + translated) / 2
        torch.testing.assert_close(model.predict_logits(images), expected)


def test_parameter_groups_scale_norm_lr_and_drop_decay() -> None:
    net = create("simple_cnn_bn")
    groups = {g["name"]: g for g in parameter_groups(net, norm_lr_scale=4.0)}
    assert set(groups) == {"norm", "bias", "weight"}
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(groups["norm"]["params"]) == 2 * len(norms)
    optimizer = torch.optim.SGD(list(groups.values()), lr=0.1, weight_decay=1e-3)
    apply_group_scales(optimizer)
    by_name = {g["name"]: g for g in optimizer.param_groups}
    assert by_name["norm"]["lr"] == pytest.approx(0.4) and by_name["norm"]["weight_decay"] == pytest.approx(2.5e-4)
    assert by_name["weight"]["lr"] == pytest.approx(0.1) and by_name["weight"]["weight_decay"] == pytest.approx(1e-3)
    no_decay = {g["name"]: g for g in parameter_groups(net, no_decay_norm_bias=True)}
    assert no_decay["norm"]["weight_decay_scale"] == no_decay["bias"]["weight_decay_scale"] == 0.0


def test_module_builds_its_optimizer_from_the_groups() -> None:
    model = ImageClassifier("simple_cnn_bn", optimizer=partial(torch.optim.SGD, lr=0.1, weight_decay=1e-3),
                            norm_lr_scale=8.0)
    model.trainer = SimpleNamespace(max_epochs=1)  # read only when there is a schedule
    optimizer = model.configure_optimizers()
    lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert lrs == pytest.approx({"norm": 0.8, "bias": 0.1, "weight": 0.1})


def test_lookahead_pulls_weights_towards_the_slow_copy() -> None:
    module = nn.Linear(2, 1, bias=False)
    callback = Lookahead(every_n_steps=2, decay=0.5, decay_power=0.0)
    trainer = SimpleNamespace(global_step=2, current_epoch=0, estimated_stepping_batches=10)
    with torch.no_grad():
        module.weight.fill_(1.0)
    callback.on_train_batch_end(trainer, module)  # first call: the slow copy starts here
    with torch.no_grad():
        module.weight.fill_(3.0)
    trainer.global_step = 3
    callback.on_train_batch_end(trainer, module)  # not a multiple of every_n_steps: nothing happens
    assert module.weight.eq(3.0).all()
    trainer.global_step = 4
    callback.on_train_batch_end(trainer, module)
    assert module.weight.eq(2.0).all() and callback.slow["weight"].eq(2.0).all()  # 0.5 * 1 + 0.5 * 3


def test_piecewise_linear_schedule_interpolates_between_milestones() -> None:
    lrs = learning_rates(partial(PiecewiseLinearLR, milestones=[0.0, 0.25, 1.0], factors=[0.2, 1.0, 0.1],
                                 total_steps=100), 101)
    assert lrs[0] == pytest.approx(0.2) and lrs[25] == pytest.approx(1.0) and lrs[100] == pytest.approx(0.1)
    assert lrs[10] == pytest.approx(0.2 + 0.8 * 10 / 25) and lrs[50] == pytest.approx(1.0 - 0.9 * 25 / 75)


def test_channels_last_backbone_gives_the_same_logits() -> None:
    torch.manual_seed(0)
    plain = ImageClassifier("airbench").eval()
    fast = ImageClassifier("airbench", channels_last=True).eval()
    fast.load_state_dict(plain.state_dict())
    images = torch.randn(2, 3, 32, 32)
    assert fast.backbone.head.weight.is_contiguous()
    conv = next(m for m in fast.backbone.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(fast(images), plain(images), atol=1e-5, rtol=1e-4)


def test_benchmark_overhead_section_times_a_cpu_step_three_ways_subtracts_the_plain_loop_and_its_noise(
        npz_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIFAR_LAB_DATA", str(npz_dir))  # the CLI's DataModule checks its data dir at fit
    benchmark = load_benchmark()
    args = SimpleNamespace(overhead_steps=3, repeats=2, data_dir=str(npz_dir), scratch=str(tmp_path))
    threads = torch.get_num_threads()
    result = benchmark.bench_overhead(args, torch.device("cpu"))
    assert torch.get_num_threads() == threads  # one thread while timing, then back
    for loop in ("plain_loop", "bare_lightning", "lightning", "bare_lightning_again"):
        assert 0 < result[f"{loop}_ms_per_step_min"] <= result[f"{loop}_ms_per_step_median"]
    assert result["lightning_extra_ms_per_step"] == pytest.approx(
        result["lightning_ms_per_step_min"] - result["plain_loop_ms_per_step_min"])
    assert result["lightning_extra_vs_bare_ms_per_step"] == pytest.approx(
        result["lightning_ms_per_step_min"] - result["bare_lightning_ms_per_step_min"])
    for difference in ("lightning_extra", "lightning_extra_vs_bare", "noise_bare_vs_bare"):
        assert f"{difference}_ms_per_step_paired_median" in result
    assert "lightning_host_syncs_per_step" not in result  # counted on CUDA only
    hooks = result["callback_hooks_ms_per_step"]  # from a profiled fit of the same proxy: the 8 costliest
    # Which 8 they are depends on timings; that they are per-step hooks of the run's own callbacks does not.
    run_callbacks = {"ModelCheckpoint", "MidEpochCheckpoint", "NonFiniteGuard", "EpochSpeed", "LearningRateMonitor",
                     "ThrottledProgressBar", "FigureLogger", "CSVPredictionWriter", "RandomStateCheckpoint", "HpMetric",
                     "RunReport", "SaveConfigAsHparams", "RichModelSummary", "StepWindow"}
    per_step = {"on_train_batch_start", "on_before_backward", "on_after_backward", "on_before_optimizer_step",
                "on_before_zero_grad", "on_train_batch_end"}
    assert 0 < len(hooks) <= 8
    assert all(name.rsplit(".", 1)[0] in run_callbacks and name.rsplit(".", 1)[1] in per_step for name in hooks), hooks
    assert list(hooks.values()) == sorted(hooks.values(), reverse=True) and min(hooks.values()) > 0


def test_paired_median_is_the_median_of_each_repeats_difference_in_ms_per_step() -> None:
    # per repeat (10 steps): 2 - 1.5, 5 - 1, 3 - 2.5 seconds -> 50, 400, 50 ms a step; the mins (2 - 1) would give 100
    assert load_benchmark().paired_median_ms([2.0, 5.0, 3.0], [1.5, 1.0, 2.5], steps=10) == pytest.approx(50.0)


def test_per_step_hook_costs_keep_callback_hooks_run_every_step_at_their_median_call() -> None:
    durations = {"[Callback]ModelCheckpoint{'monitor': 'val/acc', 'every_n_train_steps': 0}.on_train_batch_end":
                 [0.001, 0.002, 0.003], "[Callback]FigureLogger.on_train_batch_start": [0.9, 0.004, 0.004],
                 "[Callback]EpochSpeed.on_train_epoch_end": [0.5],  # once an epoch, not a step
                 "[Callback]Lookahead.on_train_batch_end": [0.001] * 6,  # twice a step (gradient accumulation)
                 "[LightningModule]ImageClassifier.training_step": [0.1, 0.1, 0.1]}
    costs = load_benchmark().per_step_hook_costs(durations, steps=3)
    # the first step's 0.9 s figure is a one-off: the median call (4 ms) is what a step costs
    assert costs == pytest.approx({"FigureLogger.on_train_batch_start": 4.0, "ModelCheckpoint.on_train_batch_end": 2.0,
                                   "Lookahead.on_train_batch_end": 2.0})
    assert list(costs)[0] == "FigureLogger.on_train_batch_start"


def test_the_airbench_section_writes_the_files_airbenchs_loader_reads(npz_dir: Path, tmp_path: Path) -> None:
    benchmark = load_benchmark()
    folder = benchmark.write_airbench_data(npz_dir, tmp_path)
    arrays = np.load(npz_dir / "cifar10.npz")
    for split in ("train", "test"):
        # What airbench's CifarLoader does with it: data["images"].half() / 255, permuted NHWC -> NCHW.
        data = torch.load(folder / f"{split}.pt", weights_only=True)
        assert sorted(data) == ["classes", "images", "labels"] and data["classes"] == CLASSES
        images, labels = data["images"], data["labels"]
        assert images.dtype == torch.uint8 and images.shape == (len(arrays[f"{split}_labels"]), 32, 32, 3)
        assert labels.dtype == torch.int64 and torch.equal(labels, torch.from_numpy(arrays[f"{split}_labels"]))
        assert torch.equal(images, torch.from_numpy(arrays[f"{split}_images"]))


def test_the_airbench_section_says_it_needs_cuda_and_skips_cleanly_without_it(
        capsys: pytest.CaptureFixture[str]) -> None:
    benchmark = load_benchmark()
    result = benchmark.bench_airbench(SimpleNamespace(), torch.device("cpu"))
    assert result == {"skipped": "no CUDA device"}
    assert "no CUDA device here" in capsys.readouterr().out
    report = {"environment": {"device": "CPU", "torch": "t", "lightning": "l", "quick": False}, "airbench": result}
    assert benchmark.markdown(report).endswith("airbench section: no CUDA device, not run\n")


def test_the_airbench_sections_summary_has_each_trainers_mean_std_and_interval() -> None:
    runs = [{"seed": 0, "test_acc": 0.93, "train_seconds": 4.0}, {"seed": 1, "test_acc": 0.95, "train_seconds": 6.0}]
    summary = load_benchmark().seeded_summary(runs)
    # two runs: mean 0.94, sample std 0.01 * sqrt(2); t(0.975, 1) = 12.706, so 0.94 ± 12.706 * 0.01
    assert summary["runs"] == runs
    assert summary["mean_test_acc"] == pytest.approx(0.94) and summary["std_test_acc"] == pytest.approx(0.0141421, 1e-5)
    assert summary["ci95_test_acc"] == pytest.approx([0.94 - 0.127062, 0.94 + 0.127062], abs=1e-5)
    assert summary["mean_train_seconds"] == 5.0 and summary["std_train_seconds"] == pytest.approx(1.414214, 1e-6)


class RecordingWindow:
    """A step window that notes the optimizer steps taken when it opens and closes."""

    def __init__(self, optimizer_steps: list[int]) -> None:
        self.optimizer_steps, self.events = optimizer_steps, []

    def open(self) -> None:
        self.events.append(("open", len(self.optimizer_steps)))

    def close(self) -> None:
        self.events.append(("close", len(self.optimizer_steps)))


@pytest.mark.parametrize("loop", ["plain_loop", "bare_lightning"])
def test_the_proxy_loops_open_their_window_after_the_warmup_and_close_it_after_the_last_step(
        loop: str, npz_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    benchmark = load_benchmark()
    optimizer_steps: list[int] = []
    step = torch.optim.SGD.step
    monkeypatch.setattr(torch.optim.SGD, "step", lambda self, *a, **k: optimizer_steps.append(1) or step(self, *a, **k))
    window = RecordingWindow(optimizer_steps)
    proxy = benchmark.COUNTED_PROXY
    args = SimpleNamespace(data_dir=str(npz_dir), scratch=str(tmp_path))
    benchmark.PROXY_LOOPS[loop](proxy, proxy.datamodule(str(npz_dir)), 2, 3, window, args)
    assert window.events == [("open", 2), ("close", 5)]


def test_callgrind_instructions_reads_the_totals_line_not_the_summary_that_switching_leaves_at_zero(
        tmp_path: Path) -> None:
    benchmark = load_benchmark()
    out = tmp_path / "run.callgrind"
    out.write_text("# callgrind format\nversion: 1\ncmd: python\nevents: Ir\nfl=(1) a.c\nfn=(1) f\n16 40\n"
                   "summary: 0\n\n\ntotals: 1234567\n")
    assert benchmark.callgrind_instructions(out) == 1234567
    out.write_text("events: Ir\n16 40\nsummary: 40\n")
    with pytest.raises(ValueError, match="no totals line"):
        benchmark.callgrind_instructions(out)


def test_the_instructions_section_subtracts_the_counts_and_converts_them_at_bare_lightnings_pace(
        npz_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    benchmark = load_benchmark()
    monkeypatch.setattr(benchmark.shutil, "which", lambda name: f"/usr/bin/{name}")
    counted = {"plain_loop": 5.0e6, "bare_lightning": 5.9e6, "lightning": 6.2e6}  # a step's, 4 steps counted
    monkeypatch.setattr(benchmark, "count_instructions", lambda loop, args: 4 * counted[loop])
    args = SimpleNamespace(overhead_steps=4, repeats=2, data_dir=str(npz_dir), scratch=str(tmp_path))
    result = benchmark.bench_instructions(args, torch.device("cpu"))
    assert result["plain_loop_m_instructions_per_step"] == pytest.approx(5.0)
    assert result["lightning_extra_m_instructions_per_step"] == pytest.approx(1.2)
    assert result["lightning_extra_vs_bare_m_instructions_per_step"] == pytest.approx(0.3)
    pace = result["bare_lightning_ms_per_m_instructions"]  # timed: bare Lightning's ms a step / its 5.9 M
    assert pace > 0
    assert result["lightning_extra_ms_per_step_at_bare_lightnings_pace"] == pytest.approx(1.2 * pace)
    assert result["lightning_extra_vs_bare_ms_per_step_at_bare_lightnings_pace"] == pytest.approx(0.3 * pace)


def test_the_instructions_section_says_it_needs_valgrind_and_skips_cleanly_without_it(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    benchmark = load_benchmark()
    monkeypatch.setattr(benchmark.shutil, "which", lambda name: None)
    result = benchmark.bench_instructions(SimpleNamespace(), torch.device("cpu"))
    assert result == {"skipped": "no valgrind"}
    assert "apt install valgrind" in capsys.readouterr().out
    report = {"environment": {"device": "CPU", "torch": "t", "lightning": "l", "quick": False}, "instructions": result}
    assert benchmark.markdown(report).endswith("instructions section: no valgrind, not run\n")


def test_the_benchmark_says_a_missing_dataset_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    benchmark = load_benchmark()
    monkeypatch.setattr("sys.argv", ["benchmark.py", "--device", "cpu", "--sections", "overhead",
                                     "--data-dir", str(tmp_path)])
    with pytest.raises(SystemExit) as ended:  # a string code: Python writes it to stderr and exits with status 1
        benchmark.main()
    message = ended.value.code
    assert message.startswith(f"benchmark: error: CIFAR-10 not found: looked for {tmp_path}/cifar10.npz")
    assert "\n" not in message and "data.download=true" in message


def test_the_benchmark_refuses_an_unknown_section_naming_the_sections(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    benchmark = load_benchmark()
    monkeypatch.setattr("sys.argv", ["benchmark.py", "--sections", "overhead,instruction"])
    with pytest.raises(SystemExit) as ended:
        benchmark.main()
    assert ended.value.code == 2
    assert ("--sections: no section instruction; the sections are pipeline, overhead, accuracy, cpu-recipe, "
            "airbench, instructions") in capsys.readouterr().err
