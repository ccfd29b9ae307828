"""OmegaConf resolvers the presets use for values that follow from others (registered on import):

    trainer.max_steps: ${bn.div:${train_examples},${data.batch_size}}   # a fixed number of examples
    optim.lr: ${bn.mul:0.003125,${data.batch_size}}                      # lr scaled linearly with the batch

`bn.div` is an integer division when both sides are integers (at least 1), `bn.mul` a product. Torch-free,
so the app registers them before Hydra composes a config.
"""

from __future__ import annotations

from omegaconf import OmegaConf

__all__ = ["register"]


def _number(value, name: str):
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"${{{name}:...}} expects numbers, got {value!r}")
    return value


def _div(a, b):
    a, b = _number(a, "bn.div"), _number(b, "bn.div")
    if b == 0:
        raise ValueError("${bn.div:a,b}: b is 0")
    if isinstance(a, int) and isinstance(b, int):
        return max(a // b, 1)  # a step count: at least one
    return a / b


def _mul(*values):
    product = 1
    for value in values:
        product *= _number(value, "bn.mul")
    return product


def register() -> None:
    for name, fn in (("bn.div", _div), ("bn.mul", _mul)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


register()
