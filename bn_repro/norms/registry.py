"""The norm registry: `norm.kind` names an entry; an entry builds the layer for one place in a model.

    @register_norm("my_bn", label="BN (mine)", synchronizes=False, population_stats=True,
                   specs={"eps": EPS, "momentum": MOMENTUM})
    def my_bn(num_features: int, dim: int, *, eps: float = 1e-5, momentum: float | None = 0.1) -> nn.Module:
        ...

    layer = build("my_bn", 100, 2, eps=1e-3)     # one layer for a (N, 100) input
    norm_layer = factory({"kind": "my_bn", "eps": 1e-3})
    layer = norm_layer(100, 2)                    # what models call: a factory, never a config

Every question the rest of the package asks about a norm (its options and their defaults, its label in
figures, how DDP treats it, whether Algorithm 2 applies) is answered here, from the entry. Each built
layer carries the name of its entry (`kind_of(layer)`), so a model can be asked about its norms without
isinstance checks on layer classes.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from bn_repro.errors import UserError
from bn_repro.registry_index import REQUIRED, Entry, option_problem
from bn_repro.schema import bad_choice, spec

# A built layer remembers its entry under this attribute (not a buffer: not part of the state_dict).
_KIND_ATTR = "_bn_repro_norm_kind"
_BUILDER_ARGS = ("num_features", "dim")

Synchronizes = bool | Callable[[nn.Module, Any], nn.Module]


# What the options most entries share take (bn_repro/schema.py spec syntax; bn_repro/registry_index.py
# reads these names in the entries' `specs=` too).
EPS = "number > 0"
MOMENTUM = "number in [0, 1] | null  # null: a cumulative average"


class NormConfigError(UserError, ValueError):
    """An unknown norm kind or option, or an option value the entry refuses (the app reports it as one
    line, `error: <key>=<value>: <what is expected>`, exit code 2)."""


@dataclass(frozen=True)
class NormSpec:
    """One registry entry.

    label: what figures and tables print; `{option}` fields are filled from the run's options
      (with the entry's defaults), e.g. "BN (custom, {backward})".
    synchronizes: how DDP treats the layers: True, the layer all-reduces its statistics itself once its
      `process_group` is set; False, statistics stay per replica (or there are none to share); a
      callable `(layer, device) -> layer` converts each layer (torch's BN into SyncBatchNorm).
    population_stats: whether Algorithm 2 (recomputed population statistics) applies to the layers.
    identity: the `none` entry: the model keeps its layer biases, since no norm's shift replaces them.
    choices: the valid values of options that take one of a few, checked with the config.
    specs: what options take (bn_repro/schema.py), checked with the config before torch is imported;
      an option without a spec or choices takes what its annotation says (`float` a number, ...).
    """

    name: str
    builder: Callable[..., nn.Module]
    label: str
    synchronizes: Synchronizes
    population_stats: bool
    identity: bool = False
    choices: Mapping[str, tuple] = field(default_factory=dict)
    specs: Mapping[str, str] = field(default_factory=dict)

    @property
    def defaults(self) -> dict[str, Any]:
        """The entry's options and their default values (its keyword-only parameters)."""
        return {
            name: param.default
            for name, param in inspect.signature(self.builder).parameters.items()
            if param.kind is inspect.Parameter.KEYWORD_ONLY
        }

    @property
    def open_options(self) -> bool:
        """The builder takes **options: options beyond its named ones are its own to check."""
        return any(p.kind is inspect.Parameter.VAR_KEYWORD
                   for p in inspect.signature(self.builder).parameters.values())  # fmt: skip

    def declared(self) -> Entry:
        """The entry as bn_repro/registry_index.py reads it from the source (what the checks use)."""
        params = [p for p in inspect.signature(self.builder).parameters.values() if p.kind is p.KEYWORD_ONLY]
        return Entry(
            self.name,
            {p.name: REQUIRED if p.default is p.empty else p.default for p in params},
            self.open_options,
            dict(self.choices),
            dict(self.specs),
            {p.name: _annotation(p.annotation) for p in params},
        )

    def check_options(self, options: Mapping[str, Any]) -> None:
        problem = option_problem("norm", f"norm.kind={self.name}", self.declared(), options)
        if problem:
            raise NormConfigError(problem)

    def format_label(self, options: Mapping[str, Any]) -> str:
        return self.label.format(**{**self.defaults, **options})


def _annotation(annotation: Any) -> str | None:
    """A parameter's annotation as source text (it is, under `from __future__ import annotations`)."""
    if annotation is inspect.Parameter.empty:
        return None
    return annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)


_REGISTRY: dict[str, NormSpec] = {}


def register_norm(
    name: str,
    *,
    label: str,
    synchronizes: Synchronizes,
    population_stats: bool,
    identity: bool = False,
    choices: Mapping[str, tuple] | None = None,
    specs: Mapping[str, str] | None = None,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register `builder(num_features, dim, **options) -> nn.Module` as norm.kind=`name`.

    Options must be keyword-only parameters with defaults (they are the config keys besides `kind`).
    `specs`: what options take, e.g. {"eps": EPS, "groups": "int >= 1"} (bn_repro/schema.py); literals or
    this module's constants, so that bn_repro/registry_index.py reads them before torch.
    """

    def decorate(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY and _REGISTRY[name].builder is not builder:
            raise ValueError(f"a norm named {name!r} is already registered ({_REGISTRY[name].builder})")
        positional = [p.name for p in inspect.signature(builder).parameters.values()
                      if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]  # fmt: skip
        if positional != list(_BUILDER_ARGS):
            raise TypeError(f"norm builder {builder.__name__} must take (num_features, dim, *, options...)")
        options = [p.name for p in inspect.signature(builder).parameters.values() if p.kind is p.KEYWORD_ONLY]
        for option, text in (specs or {}).items():
            if option not in options:
                raise TypeError(
                    f"norm builder {builder.__name__}: specs names {option!r}, not one of its options"
                )
            spec(text)  # raises ValueError for a spec that does not parse
        _REGISTRY[name] = NormSpec(
            name,
            builder,
            label,
            synchronizes,
            population_stats,
            identity,
            dict(choices or {}),
            dict(specs or {}),
        )
        return builder

    return decorate


def names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def get(kind: str) -> NormSpec:
    if kind not in _REGISTRY:
        raise NormConfigError(bad_choice("norm.kind", kind, tuple(_REGISTRY)))
    return _REGISTRY[kind]


def build(kind: str, num_features: int, dim: int, **options: Any) -> nn.Module:
    """The layer of entry `kind` for an input of rank `dim` ((N, C) is 2, (N, C, H, W) is 4)."""
    spec = get(kind)
    spec.check_options(options)
    layer = spec.builder(num_features, dim, **options)
    tag(layer, kind)
    return layer


def tag(layer: nn.Module, kind: str) -> nn.Module:
    """Mark `layer` as built by entry `kind` (also for layers that replace a built one, e.g. SyncBN)."""
    setattr(layer, _KIND_ATTR, kind)
    return layer


def kind_of(layer: nn.Module) -> str | None:
    """The entry that built `layer`; None for a layer the registry did not build."""
    return getattr(layer, _KIND_ATTR, None)


def split_config(norm_cfg: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """A `norm` config node -> (kind, options)."""
    options = dict(norm_cfg)
    if "kind" not in options:
        raise NormConfigError(f"norm.kind: missing; valid choices: {', '.join(_REGISTRY)}")
    return options.pop("kind"), options


def check_config(norm_cfg: Mapping[str, Any]) -> None:
    kind, options = split_config(norm_cfg)
    get(kind).check_options(options)


def label(norm_cfg: Mapping[str, Any]) -> str:
    """What figures print for a run's norm; an unregistered kind prints as its name."""
    kind, options = split_config(norm_cfg)
    if kind not in _REGISTRY:
        return f"BN ({kind})"
    spec = _REGISTRY[kind]
    return spec.format_label(options)


@dataclass(frozen=True)
class NormFactory:
    """What models take: `norm_layer(num_features, dim)` builds one layer of the configured kind."""

    kind: str
    options: Mapping[str, Any]

    def __post_init__(self) -> None:
        get(self.kind).check_options(self.options)

    def __call__(self, num_features: int, dim: int) -> nn.Module:
        return build(self.kind, num_features, dim, **self.options)

    @property
    def identity(self) -> bool:
        """True for norm.kind=none: the layers before it keep their bias."""
        return get(self.kind).identity


def factory(norm_cfg: Mapping[str, Any] | str) -> NormFactory:
    """A NormFactory from a `norm` config node (or a bare kind, with the entry's default options)."""
    if isinstance(norm_cfg, str):
        return NormFactory(norm_cfg, {})
    kind, options = split_config(norm_cfg)
    return NormFactory(kind, options)


@register_norm("none", label="no BN", synchronizes=False, population_stats=False, identity=True)
def none(num_features: int, dim: int) -> nn.Module:
    """No normalization: the identity."""
    return nn.Identity()
