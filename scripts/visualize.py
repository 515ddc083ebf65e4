"""Same as ``cifar-lab visualize``: python scripts/visualize.py <checkpoint> --images 8 --out visualize"""

import sys

from cifar_lab.cli import main

if __name__ == "__main__":
    main(["visualize", *sys.argv[1:]])
