"""Which files lie in the working tree, so the suite can fail when a test leaves one behind."""

import os
from pathlib import Path

# What installing, testing and linting write by design: caches and environments, never results.
IGNORED_DIRS = {".git", "__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache", ".import_linter_cache"}
IGNORED_DIR_PREFIXES = (".venv",)
IGNORED_DIR_SUFFIXES = (".egg-info",)


def files_in(root: Path) -> set[Path]:
    """Every file under ``root`` (relative to it) except caches, virtualenvs and package metadata."""
    found = set()
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in IGNORED_DIRS and not d.startswith(IGNORED_DIR_PREFIXES)
                   and not d.endswith(IGNORED_DIR_SUFFIXES)]
        found.update(Path(folder, name).relative_to(root) for name in files)
    return found
