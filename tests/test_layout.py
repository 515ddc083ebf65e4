"""The architecture holds: imports point down the flow, no import circle, old class paths still load."""

import subprocess
import sys
from pathlib import Path

import grimp
import pytest
import yaml

from cifar_lab.cli import build_cli
from tests.helpers import CONFIGS, ROOT, cifar_lab
from tests.worktree import files_in


def import_cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Every import circle between modules of the graph found by one depth-first search."""
    state: dict[str, str] = {}
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            if state.get(imported) == "open":
                cycles.append([*path[path.index(imported):], imported])
            elif imported not in state:
                visit(imported, [*path, imported])
        state[module] = "done"

    for module in sorted(graph.modules):
        if module not in state:
            visit(module, [module])
    return cycles


def test_imports_point_down_the_layers_of_pyproject() -> None:
    # A subprocess: lint-imports reconfigures logging (dictConfig), which would silence Lightning in this one.
    lint = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(sys.argv[1], no_cache=True))"
    result = subprocess.run([sys.executable, "-c", lint, str(ROOT / "pyproject.toml")], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-2000:]
    assert "1 kept, 0 broken" in result.stdout


def test_the_package_has_no_import_circle() -> None:
    assert import_cycles(grimp.build_graph("cifar_lab", cache_dir=None)) == []  # no cache in the working tree


def test_the_cycle_finder_reports_a_circle() -> None:
    graph = grimp.ImportGraph()
    for module in ("a", "b", "c"):
        graph.add_module(module)
    graph.add_import(importer="a", imported="b")
    graph.add_import(importer="b", imported="c")
    graph.add_import(importer="c", imported="a")
    assert import_cycles(graph) == [["a", "b", "c", "a"]]


def test_a_run_config_saved_with_the_old_finetune_class_path_still_loads(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs saved before the callbacks moved name ``cifar_lab.finetune.HeadFirstFinetuning`` in config.yaml."""
    saved = yaml.safe_load((CONFIGS / "finetune_resnet18.yaml").read_text())
    callback = next(c for c in saved["trainer"]["callbacks"] if c["class_path"].endswith("HeadFirstFinetuning"))
    callback["class_path"] = "cifar_lab.finetune.HeadFirstFinetuning"
    saved["model"]["backbone_kwargs"].pop("weights", None)  # no pretrained file in a test
    old_config = tmp_path / "config.yaml"
    old_config.write_text(yaml.safe_dump(saved))
    monkeypatch.setattr(sys, "argv", ["cifar-lab"])
    sys.modules.pop("cifar_lab.finetune", None)  # so its deprecation warning is raised here
    with pytest.warns(DeprecationWarning, match="cifar_lab.callbacks.HeadFirstFinetuning"):
        cli = build_cli(["--config", str(old_config), "--trainer.logger", "false", "--data.download", "false",
                         "--trainer.default_root_dir", str(tmp_path)], run=False)
    finetuning = [c for c in cli.trainer.callbacks if type(c).__name__ == "HeadFirstFinetuning"]
    assert [type(c).__module__ for c in finetuning] == ["cifar_lab.callbacks.finetune"]
    assert finetuning[0].unfreeze_at_epoch == callback["init_args"]["unfreeze_at_epoch"]


def test_the_working_tree_scan_sees_a_new_file_but_not_caches(tmp_path: Path) -> None:
    (tmp_path / "pkg" / "__pycache__").mkdir(parents=True)
    (tmp_path / "pkg" / "__pycache__" / "m.pyc").write_bytes(b"")
    (tmp_path / ".venv-ci" / "bin").mkdir(parents=True)
    (tmp_path / ".venv-ci" / "bin" / "python").write_text("")
    before = files_in(tmp_path)
    (tmp_path / "runs" / "simple_cnn").mkdir(parents=True)
    (tmp_path / "runs" / "simple_cnn" / "events.out").write_text("")
    assert before == set()
    assert files_in(tmp_path) - before == {Path("runs/simple_cnn/events.out")}


def test_the_old_python_m_cifar_lab_models_names_its_new_spelling(tmp_path: Path) -> None:
    result = cifar_lab(cwd=tmp_path, data_dir=tmp_path, module="cifar_lab.models")
    assert result.returncode == 1
    assert result.stderr.strip() == ("cifar-lab: error: 'python -m cifar_lab.models' is now 'cifar-lab models' "
                                     "(or 'python -m cifar_lab models')")
