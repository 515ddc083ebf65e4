"""Same as ``cifar-lab compare``: python scripts/compare_runs.py 'runs/*/version_*' --out comparison"""

import sys

from cifar_lab.cli import main

if __name__ == "__main__":
    main(["compare", *sys.argv[1:]])
