"""README.md and docs/*.md cannot rot silently.

Every ``configs/`` path they name exists, every link between them leads to a file (and heading) that exists,
and every ``cifar-lab`` command line they show in a ``bash`` block parses: the LightningCLI subcommands with
``--print_config`` (which prints the resolved config and exits), the tools with their own parsers. Commands
that read a run's outputs (``runs/...``) parse in a temporary working folder holding tiny runs of the two
recipes the docs use (``simple_cnn`` and the laptop recipe ``configs/fast/cpu.yaml``), where the files they
name must exist. Nothing is trained beyond those tiny runs and nothing is written into the working tree.
"""

import glob
import re
import shlex
import shutil
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from cifar_lab.cli import build_cli
from cifar_lab.tools import TOOLS, tool_parser
from cifar_lab.tools.experiment import fit_command, load_suite, parse_seeds, split_fit_options
from cifar_lab.tools.search_space import load_space
from tests.helpers import ROOT, SMOKE, TINY_DATA, cifar_lab

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")
SHELL_BLOCKS = {"bash", "sh", "shell", "console"}
SCRIPT_TOOLS = {"scripts/run_experiment.py": "experiment", "scripts/compare_runs.py": "compare",
                "scripts/visualize.py": "visualize"}  # thin wrappers: the same command as `cifar-lab <tool>`
SHELL_OPERATORS = {"|", "||", "&&", ";", ">", ">>", "2>&1"}
PLACEHOLDER = re.compile(r"<[^<>\s]+>")
READ_OPTIONS = ("--config", "--ckpt_path", "--resume")  # options whose value is a file or folder the command reads
# Old spellings that still work but warn; the docs show the current ones.
DEPRECATED = ("predict_with_tta", "data.channels_last", "cifar_lab.finetune.", "--format torchscript",
              "-m cifar_lab.models", "-m cifar_lab.compare")
PARSED: set[tuple[str, ...]] = set()  # command lines already parsed here: a repeated one in another doc passes at once
CONFIG_PATH = re.compile(r"(?<![\w./-])configs/[\w./<>*-]*")
LINK = re.compile(r"\]\(([^)\s]+)\)")
TINY_FIT = [*TINY_DATA, "--threads", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
            "--figures.every_n_epochs", "0", "--trainer.logger.init_args.log_graph", "false"]


def relative(path: Path) -> str:
    return str(path.relative_to(ROOT))


def fenced_blocks(path: Path) -> Iterator[tuple[str, int, str]]:
    """``(language, line number, line)`` of every line inside a fenced code block."""
    language = None
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.lstrip().startswith("```"):
            language = line.strip()[3:].strip() if language is None else None
        elif language is not None:
            yield language, number, line


@dataclass(frozen=True)
class DocCommand:
    """One command line shown in a doc: where it is, and the arguments after ``cifar-lab``."""

    doc: str
    line: int
    text: str
    argv: tuple[str, ...]

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}-{self.argv[0] if self.argv else ''}"

    @property
    def reads_runs(self) -> bool:
        return any("runs/" in arg for arg in self.argv)


def cifar_lab_argv(tokens: list[str]) -> list[str] | None:
    """The arguments of the ``cifar-lab`` command in a shell line (also behind ``srun``, ``torchrun -m``,
    ``python -m cifar_lab`` or a script wrapper), up to the first shell operator; None if there is none."""
    for index, token in enumerate(tokens):
        if token == "cifar-lab":
            argv = tokens[index + 1:]
        elif token == "-m" and tokens[index + 1:index + 2] == ["cifar_lab"]:
            argv = tokens[index + 2:]
        elif token in SCRIPT_TOOLS:
            argv = [SCRIPT_TOOLS[token], *tokens[index + 1:]]
        else:
            continue
        end = next((i for i, arg in enumerate(argv) if arg in SHELL_OPERATORS), len(argv))
        return argv[:end]
    return None


def doc_commands(path: Path) -> Iterator[DocCommand]:
    """The ``cifar-lab`` command lines of a doc's shell blocks, ``\\`` continuations joined, comments dropped."""
    pending, start = "", 0
    for language, number, line in fenced_blocks(path):
        if language not in SHELL_BLOCKS:
            continue
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        text, pending = pending + line, ""
        argv = cifar_lab_argv(shlex.split(text, comments=True))
        if argv is not None:
            yield DocCommand(relative(path), start, " ".join(text.split()), tuple(argv))


COMMANDS = sorted((command for doc in DOCS for command in doc_commands(doc)),
                  key=lambda command: command.reads_runs)  # those needing no tiny run first, while it trains


def config_paths() -> Iterator[tuple[str, int, str]]:
    for doc in DOCS:
        for number, line in enumerate(doc.read_text().splitlines(), start=1):
            for match in CONFIG_PATH.finditer(line):
                yield relative(doc), number, match.group().rstrip(".,")


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    code_lines = {number for _, number, _ in fenced_blocks(path)}
    return {slug(line.lstrip("#")) for number, line in enumerate(path.read_text().splitlines(), start=1)
            if line.startswith("#") and number not in code_lines}


@pytest.mark.parametrize(("doc", "line", "path"), list(config_paths()),
                         ids=[f"{doc}:{line}:{path}" for doc, line, path in config_paths()])
def test_configs_path_named_in_the_docs_exists(doc: str, line: int, path: str) -> None:
    fixed = re.split(r"[<*]", path)[0]  # a placeholder (configs/experiments/<suite>/) or glob: its fixed part
    assert (ROOT / fixed).exists(), f"{doc}:{line} names {path}, but {fixed} does not exist"
    if "*" in path and "<" not in path:
        assert glob.glob(str(ROOT / path)), f"{doc}:{line}: {path} matches no file"


@pytest.mark.parametrize("doc", DOCS, ids=relative)
def test_links_between_the_docs_lead_to_files_and_headings_that_exist(doc: Path) -> None:
    broken = []
    for target in LINK.findall(doc.read_text()):
        if re.match(r"[a-z]+://", target):
            continue
        file, _, anchor = target.partition("#")
        linked = (doc.parent / file).resolve() if file else doc
        if not linked.exists():
            broken.append(f"{target}: no file {linked}")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target}: no heading #{anchor} in {relative(linked)}")
    assert not broken, f"{relative(doc)}: " + "; ".join(broken)


@pytest.mark.parametrize("doc", DOCS, ids=relative)
def test_code_in_the_docs_shows_no_deprecated_spelling(doc: Path) -> None:
    found = [f"{relative(doc)}:{number}: {old!r}" for _, number, line in fenced_blocks(doc)
             for old in DEPRECATED if old in line]
    assert not found, "deprecated spellings in code blocks: " + "; ".join(found)


def test_the_docs_show_every_command() -> None:
    """Guards the extraction itself: a docs rewrite or a parsing bug that finds no commands would pass vacuously."""
    shown = {command.argv[0] for command in COMMANDS if command.argv}
    assert shown >= {*LIGHTNING_SUBCOMMANDS, *TOOLS}, f"never shown: {sorted({*LIGHTNING_SUBCOMMANDS, *TOOLS} - shown)}"
    assert any("--resume" in command.argv for command in COMMANDS), "fit --resume is never shown"


class Workdir:
    """A temporary working folder with ``configs`` linked in and tiny runs training in the background,
    at the paths the docs use: ``runs/simple_cnn/version_0`` (and ``version_1``, a copy, for the commands that
    compare two runs), ``runs/airbench/version_0`` (the laptop recipe) and copies as the seeded run folders of
    ``runs/experiments/batchnorm/``."""

    def __init__(self, path: Path, data_dir: Path) -> None:
        self.path = path
        (path / "configs").symlink_to(ROOT / "configs", target_is_directory=True)
        self.executor = ThreadPoolExecutor(max_workers=2)
        fit = [
            ("simple_cnn", ["fit", *SMOKE, *TINY_FIT]),
            ("airbench", ["fit", "--config", "configs/fast/cpu.yaml", "--config", "configs/trainer/smoke.yaml",
                          *TINY_FIT, "--data.eval_batch_size", "32"]),
        ]
        self.fits: dict[str, Future] = {
            name: self.executor.submit(cifar_lab, *args, cwd=path, data_dir=data_dir) for name, args in fit
        }
        self.ready = False

    def wait_for_runs(self) -> None:
        if self.ready:
            return
        for name, fit in self.fits.items():
            result = fit.result()
            assert result.returncode == 0, f"the tiny {name} run failed:\n{result.stderr[-3000:]}"
        simple_cnn = self.path / "runs" / "simple_cnn"
        shutil.copytree(simple_cnn / "version_0", simple_cnn / "version_1")
        for variant in ("plain", "bn"):  # a seeded suite's run folders, for `compare` examples
            for seed in (0, 1):
                seeded = self.path / "runs/experiments/batchnorm" / variant / f"seed_{seed}"
                shutil.copytree(simple_cnn / "version_0", seeded)
        self.ready = True


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory, npz_dir: Path) -> Iterator[Workdir]:
    folder = Workdir(tmp_path_factory.mktemp("docs"), npz_dir)
    yield folder
    folder.executor.shutdown(wait=True)


def shell_globbed(argv: tuple[str, ...]) -> list[str]:
    """The arguments as the shell passes them: a pattern that matches files becomes those files."""
    return [match for arg in argv for match in (sorted(glob.glob(arg)) if glob.has_magic(arg) else []) or [arg]]


def missing_inputs(argv: list[str]) -> list[str]:
    """Values of ``--config``/``--ckpt_path``/``--resume`` that name no file or folder."""
    return [value for option, value in zip(argv, argv[1:]) if option in READ_OPTIONS and not Path(value).exists()]


def parse_lightning(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """LightningCLI parses the whole command line and exits 0 after printing the config (or the help)."""
    extra = [] if {"--print_config", "--help", "-h"} & set(argv) else ["--print_config"]
    with pytest.raises(SystemExit) as exit_info:
        build_cli([*argv, *extra])
    captured = capsys.readouterr()
    assert exit_info.value.code == 0, captured.err[-3000:]


def parse_tool(name: str, argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """The tool's own parser accepts the options; for ``experiment`` the suite exists and the options after
    ``--`` parse as part of a variant's ``fit``, for ``sweep`` the space loads and the options after ``--``
    parse with its base configs; the run folders and checkpoints a tool reads exist."""
    own, fit_options = split_fit_options(argv) if name in ("experiment", "sweep") else (argv, [])
    if {"--help", "-h"} & set(own):
        with pytest.raises(SystemExit) as exit_info:
            tool_parser(name).parse_args(own)
        assert exit_info.value.code == 0
        return
    args = tool_parser(name).parse_args(own)
    if name == "experiment":
        suite = load_suite(args.suite, args.configs)
        if fit_options:  # the variants' own configs parse in test_configs.py
            seeds = parse_seeds(args.seeds) if args.seeds else suite.seeds
            parse_lightning(fit_command(suite, next(iter(suite.variants)), seeds[0], args.epochs, fit_options)[1:],
                            capsys)
    elif name == "sweep":
        load_space(args.space)
        parse_lightning(["fit", *(part for config in args.config for part in ("--config", str(config))), *fit_options],
                        capsys)
    elif name == "visualize":
        assert Path(args.ckpt).is_file(), f"visualize reads {args.ckpt}, which the tiny run does not have"
    elif name == "compare":
        assert all(glob.glob(run) for run in args.runs), f"compare reads {args.runs}; some match no run folder"


# --print_config cannot write some defaults as YAML (StochasticWeightAveraging's device=torch.device("cpu")).
@pytest.mark.filterwarnings(r"ignore:\s*Unable to serialize instance")
@pytest.mark.parametrize("command", COMMANDS, ids=[command.id for command in COMMANDS])
def test_command_shown_in_the_docs_parses(command: DocCommand, workdir: Workdir, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    if any(PLACEHOLDER.search(arg) for arg in command.argv):
        pytest.skip(f"{command.doc}:{command.line} has a placeholder: {command.text}")
    if command.argv in PARSED:
        return
    if command.reads_runs:
        workdir.wait_for_runs()
    monkeypatch.chdir(workdir.path)
    monkeypatch.setattr(sys, "argv", ["cifar-lab"])
    argv = shell_globbed(command.argv)
    assert not missing_inputs(argv), f"{command.doc}:{command.line} reads {missing_inputs(argv)}: {command.text}"
    name = argv[0] if argv else ""
    if name in LIGHTNING_SUBCOMMANDS:
        parse_lightning(argv, capsys)
    elif name in TOOLS:
        parse_tool(name, argv[1:], capsys)
    else:
        pytest.fail(f"{command.doc}:{command.line}: {name!r} is no cifar-lab command: {command.text}")
    PARSED.add(command.argv)
