"""``python -m cifar_lab.models``, the same as ``cifar-lab models``."""

import sys

from cifar_lab.cli import main

if __name__ == "__main__":
    main(["models", *sys.argv[1:]])
