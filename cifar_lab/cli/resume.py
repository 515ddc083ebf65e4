"""``fit --resume RUN_DIR``: continue an interrupted run in its own folder from its ``last.ckpt``."""

from pathlib import Path

import yaml

from cifar_lab.errors import ConfigError

RESUME_FLAG = "--resume"


def expand_resume(args: list[str]) -> list[str]:
    """Replace ``--resume RUN_DIR`` by the options that continue that run in its own folder."""
    expanded = []
    remaining = iter(args)
    for arg in remaining:
        if arg == RESUME_FLAG or arg.startswith(f"{RESUME_FLAG}="):
            run = arg.partition("=")[2] or next(remaining, "")
            expanded += resume_args(Path(run))
        else:
            expanded.append(arg)
    return expanded


def resume_args(run: Path) -> list[str]:
    """The saved config, the run's ``last.ckpt`` and the logger folder ``<save_dir>/<name>/<version>`` of ``run``.

    The saved ``save_dir`` is kept when it still leads to ``run`` (resuming from the folder the run
    started in), so ModelCheckpoint recognises its own folder and carries on with ``last.ckpt`` and
    its best-k bookkeeping. From anywhere else the run's own path is used, and ``last.ckpt`` is
    overwritten in place instead of starting a ``last-v1.ckpt``.
    """
    config_file = run / "config.yaml"
    if not config_file.is_file():
        raise ConfigError(f"{RESUME_FLAG} {run}: {config_file} not found; give a run folder such as "
                          f"runs/simple_cnn/version_0")
    config = yaml.safe_load(config_file.read_text())
    dirpath = (config.get("checkpoint") or {}).get("dirpath")
    last = Path(dirpath or run / "checkpoints") / "last.ckpt"
    logger = "--trainer.logger.init_args"
    save_dir = (((config.get("trainer") or {}).get("logger") or {}).get("init_args") or {}).get("save_dir")
    in_place = save_dir is not None and Path(save_dir).resolve() == run.resolve().parent.parent
    args = ["--config", str(config_file), "--ckpt_path", str(last), f"{logger}.save_dir",
            save_dir if in_place else str(run.parent.parent), f"{logger}.name", run.parent.name,
            f"{logger}.version", run.name]
    return args if in_place else [*args, "--checkpoint.enable_version_counter", "false"]
