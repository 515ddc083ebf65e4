"""``python -m cifar_lab.models`` was the old spelling of ``cifar-lab models``: say so in one line."""

import sys

if __name__ == "__main__":
    sys.exit("cifar-lab: error: 'python -m cifar_lab.models' is now 'cifar-lab models' "
             "(or 'python -m cifar_lab models')")
