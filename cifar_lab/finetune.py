"""Old home of ``HeadFirstFinetuning``: saved configs that name ``cifar_lab.finetune.HeadFirstFinetuning`` still load.

The class lives in ``cifar_lab.callbacks.finetune``; new configs use ``cifar_lab.callbacks.HeadFirstFinetuning``.
"""

import warnings

from cifar_lab.callbacks.finetune import HeadFirstFinetuning

warnings.warn("cifar_lab.finetune.HeadFirstFinetuning moved to cifar_lab.callbacks.HeadFirstFinetuning; "
              "update the class_path in your config", DeprecationWarning, stacklevel=2)

__all__ = ["HeadFirstFinetuning"]
