"""Same as ``cifar-lab experiment``: python scripts/run_experiment.py <suite> [--dry-run] [--epochs N] [-- fit options]

Runs every variant of ``configs/experiments/<suite>/`` (fit, then test of its last checkpoint) and writes
``results/<suite>.md``, ``.csv`` and ``.png``; ``--dry-run`` prints the commands instead.
"""

import sys

from cifar_lab.cli import main

if __name__ == "__main__":
    main(["experiment", *sys.argv[1:]])
