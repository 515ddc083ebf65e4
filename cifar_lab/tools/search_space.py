"""A sweep's search space: a YAML mapping from the CLI's dotted option names to a distribution each.

    model.optimizer.init_args.lr: {float: [1.0e-3, 1.0], log: true}   # log-uniform between the bounds
    model.label_smoothing: {float: [0.0, 0.3]}                       # uniform; ``step: 0.05`` for a grid
    model.backbone_kwargs.blocks: {int: [1, 3]}                      # integers, bounds included
    data.batch_size: {categorical: [256, 512]}                       # one of the listed values

Each name is given to ``fit`` as ``--<name> <value>``, so it must be an option of the base config: a name
the config does not have is refused before any trial starts, with the closest real one.
"""

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml

from cifar_lab.errors import ConfigError
from cifar_lab.reporting.runs import flatten

KINDS = ("float", "int", "categorical")
OPTIONS = {"float": {"log", "step"}, "int": {"log", "step"}, "categorical": set()}


@dataclass(frozen=True)
class Dimension:
    """One option of the search space and the values it may take."""

    name: str
    kind: str
    bounds: tuple[Any, ...]  # (low, high) for float and int, the choices for categorical
    log: bool = False
    step: float | int | None = None

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.kind == "float":
            return trial.suggest_float(self.name, *self.bounds, log=self.log, step=self.step)
        if self.kind == "int":
            return trial.suggest_int(self.name, *self.bounds, log=self.log, step=self.step or 1)
        return trial.suggest_categorical(self.name, list(self.bounds))

    def describe(self) -> str:
        if self.kind == "categorical":
            return f"one of {list(self.bounds)}"
        scale = "log-uniform" if self.log else "uniform"
        grid = f", step {self.step}" if self.step is not None else ""
        return f"{self.kind} in [{self.bounds[0]}, {self.bounds[1]}], {scale}{grid}"


def parse_dimension(name: str, spec: Any, where: str) -> Dimension:
    """``{float: [low, high], log: true}`` and the like, or a one-line error saying what a dimension looks like."""
    example = f"e.g. '{name}: {{float: [1.0e-3, 1.0], log: true}}' (float, int or categorical)"
    kinds = [kind for kind in KINDS if isinstance(spec, dict) and kind in spec]
    if len(kinds) != 1:
        raise ConfigError(f"{where}: {name} must name one distribution, {example}; got {spec!r}")
    kind = kinds[0]
    unknown = set(spec) - {kind} - OPTIONS[kind]
    if unknown:
        raise ConfigError(f"{where}: {name} has unknown keys {sorted(unknown)}; {kind} takes "
                          f"{sorted(OPTIONS[kind]) or 'no options'}")
    values = spec[kind]
    if kind == "categorical":
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: {name}: categorical takes a non-empty list of values, got {values!r}")
        return Dimension(name, kind, tuple(values))
    number = float if kind == "float" else int
    if (not isinstance(values, list) or len(values) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
            or (kind == "int" and not all(isinstance(v, int) for v in values))):
        raise ConfigError(f"{where}: {name}: {kind} takes [low, high] as two {'integers' if kind == 'int' else 'numbers'}"
                          f", got {values!r}")
    low, high = (number(v) for v in values)
    log = spec.get("log", False)
    if not low < high:
        raise ConfigError(f"{where}: {name}: low must be below high, got [{low}, {high}]")
    if log and low <= 0:
        raise ConfigError(f"{where}: {name}: a log scale needs low > 0, got {low}")
    step = spec.get("step")
    if step is not None and (log or not isinstance(step, (int, float)) or step <= 0):
        raise ConfigError(f"{where}: {name}: step must be a number > 0 and cannot go with log, got {step!r}")
    return Dimension(name, kind, (low, high), bool(log), step)


def load_space(path: Path) -> list[Dimension]:
    """The dimensions of the space file at ``path``, in file order."""
    if not path.is_file():
        raise ConfigError(f"search space {path} does not exist; pass a YAML file such as configs/sweeps/cpu.yaml")
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"search space {path} is not valid YAML: {' '.join(str(err).split())}") from err
    if not isinstance(spec, dict) or not spec:
        raise ConfigError(f"search space {path} must map option names to distributions, e.g. "
                          f"'model.label_smoothing: {{float: [0.0, 0.3]}}'")
    return [parse_dimension(str(name), value, str(path)) for name, value in spec.items()]


def check_options(space: list[Dimension], config: dict[str, Any]) -> None:
    """Every dimension names an option of ``config`` (the base config as ``fit`` resolves it), or a key inside
    a free-form mapping option such as ``model.backbone_kwargs``."""
    options = flatten(config)
    mappings = {key.rsplit(".", 1)[0] if not key.endswith("kwargs") else key for key in options}
    mappings = {m for m in mappings if m.endswith("kwargs")}
    for dimension in space:
        if dimension.name in options or dimension.name.rsplit(".", 1)[0] in mappings:
            continue
        closest = difflib.get_close_matches(dimension.name, options, n=1, cutoff=0.5)
        hint = f"; did you mean {closest[0]}?" if closest else ""
        raise ConfigError(f"search space: {dimension.name} is not an option of the base config{hint}")
