"""Which precision a run gets when its config leaves ``trainer.precision`` null: one answer for the CLI, which
applies it, and for the suite driver, which compares a saved run's config with what it would run now."""

import torch


def cpu_has_bf16() -> bool:
    """Whether this x86 CPU computes in bf16 natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def automatic_precision(accelerator: object) -> tuple[str, str]:
    """The precision of a run whose config leaves ``trainer.precision`` null, and why: bf16 autocast on a CPU that
    computes in bf16 natively, fp32 on other CPUs (emulated bf16 is slower) and on accelerators (where a config says
    what the card supports: ``configs/trainer/gpu.yaml``)."""
    on_cpu = accelerator == "cpu" or (accelerator in (None, "auto") and not torch.cuda.is_available()
                                      and not torch.backends.mps.is_available())
    if not on_cpu:
        return "32-true", "not a CPU run: set trainer.precision for the accelerator (bf16-mixed on recent GPUs)"
    if cpu_has_bf16():
        return "bf16-mixed", "this CPU computes in bf16 natively (AVX512-BF16 or AMX)"
    return "32-true", "this CPU has no bf16 instructions, so bf16 would be emulated and slower"
