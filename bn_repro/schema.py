"""The config's schema: every key's type and range, declared once, checked before torch is imported.

    problem = first_problem(config)       # None, or "optim.lr='abc': expected a number >= 0"
    Spec.parse("number in [0, 1] | null").problem(2)    # "expected a number in [0, 1] or null"

A spec is a short string, the same in this file's table, in the norm and measurement registries'
declarations (`register_norm(..., specs={"eps": "number > 0"})`) and in bn_repro/models/__init__.py:

    int >= 1               an integer (true/false are not integers); a bound: >= N, > N, <= N, < N
    number in [0, 1)       an int or a finite float; an interval: in [a, b], in (a, b), in [a, b), in (a, b]
    bool  str  null  any   true/false, a string (`non-empty str`: not ""), null, anything
    list of int >= 0       a list whose items match (`non-empty list of ...`: at least one item)
    auto                   any other word: that string
    a | b                  either
    int >= 0  # 0: off     after `#`: a note the error message repeats

Integers must fit in 64 bits unless a narrower range is given.

The fixed part of the config is KEYS below. Its open parts take their keys from their owners: model
options from bn_repro.models.OPTIONS (per model.name), norm options from the norm registry (per
norm.kind), measurement options from the measurement registry (per measurement), logger options per
logger.name (LOGGER_OPTIONS). The registries are torch modules: until they are imported, their entries
come from bn_repro/registry_index.py, which reads the same declarations from their source files.

What depends on several keys at once (a batch that ghost batches must divide, ...) is checked by
bn_repro/config.py after these; what needs the model built (norm.groups against the layer widths) after
that, on the meta device.
"""

from __future__ import annotations

import ast
import difflib
import math
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "LOGGER_OPTIONS", "Options", "Spec", "bad_choice", "first_problem", "keys", "near", "one_of",
    "options_problems", "problems", "show", "spec", "unknown_measurement",
]  # fmt: skip

INT64 = 2**63 - 1


def one_of(choices) -> str:
    """The spec of a value that is one of `choices` (strings)."""
    return " | ".join(map(str, choices))


# ------------------------------------------------------------------------------------------ specs


@dataclass(frozen=True)
class _Alt:
    """One alternative of a spec."""

    kind: str  # int | number | bool | str | null | any | list | word
    low: float | None = None
    low_open: bool = False
    high: float | None = None
    high_open: bool = False
    bound: str = ""  # the range as written: ">= 1", "in [0, 1)"
    item: _Alt | None = None  # a list's items
    nonempty: bool = False
    word: str = ""

    def matches(self, value: Any) -> bool:
        kind = self.kind
        if kind == "any":
            return True
        if kind == "null":
            return value is None
        if kind == "bool":
            return isinstance(value, bool)
        if kind == "str":
            return isinstance(value, str) and not (self.nonempty and value == "")
        if kind == "word":
            return isinstance(value, str) and value == self.word
        if kind == "list":
            assert self.item is not None
            return (
                isinstance(value, list | tuple)
                and not (self.nonempty and not value)
                and all(self.item.matches(v) for v in value)
            )
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if kind == "int" and (not isinstance(value, int) or abs(value) > INT64):
            return False
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.high_open else value > self.high))

    def describe(self, plural: bool = False) -> str:
        nouns = {"int": ("an integer", "integers"), "number": ("a number", "numbers"),
                 "str": ("a string", "strings"), "bool": ("true or false", "true/false values"),
                 "null": ("null", "nulls"), "any": ("anything", "anything")}  # fmt: skip
        if self.kind == "word":
            return self.word
        if self.kind == "list":
            assert self.item is not None
            head = "non-empty list" if self.nonempty else "list"
            return (
                f"{'' if plural else 'a '}{head}{'s' if plural else ''} of {self.item.describe(plural=True)}"
            )
        noun = nouns[self.kind][plural]
        if self.kind == "str" and self.nonempty:
            noun = "non-empty strings" if plural else "a non-empty string"
        return f"{noun} {self.bound}" if self.bound else noun


_BOUND = re.compile(r"^(>=|>|<=|<)\s*(\S+)$")
_INTERVAL = re.compile(r"^in\s*([\[(])\s*([^,]+?)\s*,\s*([^\])]+?)\s*([\])])$")
_WORD = re.compile(r"^[A-Za-z_][\w.-]*$")


def _number(text: str) -> float:
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        value = None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"not a number: {text!r}")
    return value


def _parse_alt(text: str) -> _Alt:
    t = " ".join(text.split())
    nonempty = t.startswith("non-empty ")
    if nonempty:
        t = t[len("non-empty ") :]
    if t.startswith("list of "):
        return _Alt("list", item=_parse_alt(t[len("list of ") :]), nonempty=nonempty)
    head, _, rest = t.partition(" ")
    if head in ("int", "number") and not nonempty:
        if not rest:
            return _Alt(head)
        if match := _BOUND.match(rest):
            op, value = match.group(1), _number(match.group(2))
            if op.startswith(">"):
                return _Alt(head, low=value, low_open=op == ">", bound=rest)
            return _Alt(head, high=value, high_open=op == "<", bound=rest)
        if match := _INTERVAL.match(rest):
            left, low, high, right = match.groups()
            return _Alt(head, _number(low), left == "(", _number(high), right == ")", bound=rest)
    elif not rest and (head == "str" or (head in ("bool", "null", "any") and not nonempty)):
        return _Alt(head, nonempty=nonempty)
    elif not rest and not nonempty and _WORD.match(head):
        return _Alt("word", word=head)
    raise ValueError(f"not a spec: {text!r} (see bn_repro/schema.py)")


@dataclass(frozen=True)
class Spec:
    """What one key takes (the syntax in the module docstring)."""

    text: str
    alts: tuple[_Alt, ...]
    note: str = ""

    @classmethod
    def parse(cls, text: str) -> Spec:
        body, _, note = text.partition("#")
        return cls(text, tuple(_parse_alt(alt) for alt in body.split("|")), note.strip())

    def matches(self, value: Any) -> bool:
        return any(alt.matches(value) for alt in self.alts)

    def expected(self) -> str:
        """ "valid choices: a, b" for words and booleans, else "expected an integer >= 1 or null"."""
        if all(alt.kind in ("word", "bool") for alt in self.alts):
            words = [
                w for alt in self.alts for w in (("true", "false") if alt.kind == "bool" else (alt.word,))
            ]
            text = f"valid choices: {', '.join(words)}"
        else:
            parts = [alt.describe() for alt in self.alts]
            text = "expected " + (parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} or {parts[-1]}")
        return f"{text} ({self.note})" if self.note else text

    def problem(self, value: Any) -> str | None:
        """None when `value` matches; else what is expected."""
        return None if self.matches(value) else self.expected()


_PARSED: dict[str, Spec] = {}


def spec(text: str) -> Spec:
    """Spec.parse, remembered."""
    if text not in _PARSED:
        _PARSED[text] = Spec.parse(text)
    return _PARSED[text]


def show(value: Any) -> str:
    """A value as a command line would write it: strings quoted, true/false/null, lists in brackets."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(show(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {show(v)}" for k, v in value.items()) + "}"
    return repr(value)


def near(word: str, candidates) -> str | None:
    """The candidate `word` is most likely a typo of, if any (difflib)."""
    matches = difflib.get_close_matches(str(word), [str(c) for c in candidates], n=1, cutoff=0.7)
    return matches[0] if matches else None


def bad_choice(key: str, value: Any, choices, what: str = "") -> str:
    """ "norm.kind='nope': valid choices: none, builtin, ...; did you mean none?" (`what`: words before
    the choices, e.g. "unknown measurement 'x'")."""
    hint = near(value, choices) if isinstance(value, str) else None
    return (
        f"{key}={show(value)}: {what + '; ' if what else ''}valid choices: {', '.join(map(str, choices))}"
        + (f"; did you mean {hint}?" if hint else "")
    )


def unknown_measurement(name: str, entry: Any, names) -> str:
    """The message for measure.<name> when no measurement has that name."""
    return bad_choice(f"measure.{name}", _plain(entry), names, f"unknown measurement {name!r}")


# ------------------------------------------------------------------------------------------ the table


@dataclass(frozen=True)
class _Open:
    """A node whose keys depend on one of its values (model.name, norm.kind, logger.name), or on each
    of its keys (measure.<name>)."""

    selector: str | None  # None: `measure`, one entry per measurement
    names: Callable[[], tuple[str, ...]]
    options: Callable[[str], Options]


@dataclass(frozen=True)
class Options:
    """The keys of one model, norm, logger or measurement besides its selector."""

    owner: str  # how messages name it: "model=inception", "norm.kind=builtin", "measure.landscape"
    specs: Mapping[str, str]  # option -> spec text
    required: frozenset[str] = frozenset()
    open: bool = False  # it takes **options: any further key is its own to check
    extra: Mapping[str, str] | None = None  # keys besides the options (a measurement's `every`)


def _model_names() -> tuple[str, ...]:
    from bn_repro.models import MODELS

    return tuple(MODELS)


def _model_options(name: str) -> Options:
    from bn_repro.models import OPTIONS

    return Options(f"model={name}", OPTIONS[name])


def _norm_names() -> tuple[str, ...]:
    if "bn_repro.norms" in sys.modules:  # the registry is the authority once imported
        return sys.modules["bn_repro.norms.registry"].names()
    from bn_repro.registry_index import norm_index

    return tuple(norm_index())


def _norm_options(kind: str) -> Options:
    from bn_repro import registry_index as index

    if "bn_repro.norms" in sys.modules:
        entry = sys.modules["bn_repro.norms.registry"].get(kind).declared()
    else:
        entry = index.norm_index()[kind]
    return index.options_of(entry, f"norm.kind={kind}")


def _measure_names() -> tuple[str, ...]:
    if "bn_repro.measures" in sys.modules:
        return sys.modules["bn_repro.measures.base"].names()
    from bn_repro.registry_index import measure_names

    return measure_names()


def _measure_options(name: str) -> Options:
    from bn_repro import registry_index as index

    if "bn_repro.measures" in sys.modules:
        entry = sys.modules["bn_repro.measures.base"].declared(name)
    else:
        entry = index.measure_index()[name]
    every = {"every": index.EVERY}
    if entry is None:  # options the index cannot read: the registry checks them once imported
        return Options(f"measure.{name}", {}, open=True, extra=every)
    return index.options_of(entry, f"measure.{name}", every)


def _logger_options(name: str) -> Options:
    return Options(f"logger.name={name}", LOGGER_OPTIONS[name])


# logger.name -> its keys.
LOGGER_OPTIONS: dict[str, dict[str, str]] = {
    "none": {},
    "wandb": {
        "project": "non-empty str", "entity": "str | null", "group": "str | null", "job_type": "str",
        "tags": "list of str", "run_name": "str | null", "mode": "online | offline | disabled",
        "init_timeout_s": "number > 0",
    },
}  # fmt: skip


def _table() -> dict[str, Any]:
    """The fixed part (its choices come from their torch-free owners)."""
    from bn_repro.data.catalog import DATASETS, SAMPLERS, SYNTHETIC_SHAPES
    from bn_repro.engine.fast_path import PRECISIONS

    return {
        "experiment_name": "non-empty str",
        "seed": "int in [0, 4294967295]  # numpy's seed range",
        "epochs?": "int >= 1",
        # Before `measure`: measure.activations takes its options from here.
        "probe": {
            "units": "non-empty list of int >= 0",
            "num_examples": "int >= 1",
            "mode": "eval | train",
        },
        "data": {
            "name": one_of(DATASETS),
            "root": "str",
            "batch_size": "int >= 1",
            "download": "bool",
            "download_timeout_s": "number > 0",
            "augment": "bool",
            "sampler?": one_of(SAMPLERS),
            "classes_per_batch?": "int >= 1",
            "synthetic?": {
                "shape": one_of(SYNTHETIC_SHAPES),
                "num_train": "int >= 1",
                "num_test": "int >= 1",
                "num_classes": "int >= 1",
                "seed": "int",
            },
        },
        "model": _Open("name", _model_names, _model_options),
        "norm": _Open("kind", _norm_names, _norm_options),
        "optim": {
            "name": "sgd",
            "lr": "number >= 0  # 0: no update, the control of the ICS measurements",
            "momentum": "number in [0, 1]",
            "nesterov": "bool",
            "weight_decay": "number >= 0",
            "schedule": {
                "name": "constant | exponential",
                "decay_rate": "number in (0, 1]",
                "decay_steps": "int >= 1",
                "staircase": "bool",
            },
        },
        "trainer": {
            "max_steps": "int >= 1",
            "eval_every": "int >= 1",
            "log_every": "int >= 1",
            "eval_batch_size": "int >= 1",
            "eval_examples?": "int >= 1 | null  # null: the whole test set",
            "device": "auto | cpu | cuda",
            "threads": "auto | int >= 1",
            "deterministic": "bool",
            "progress": "bool",
            "population_stats_batches": "int >= 0  # 0: skip the recomputed statistics",
            "checkpoint_every": "int >= 0  # 0: none by steps",
            "checkpoint_every_s?": "number >= 0  # seconds of training; 0: none by time",
            "divergence_factor?": "number >= 1 | null  # null: only non-finite losses end a run",
            "precision": one_of(PRECISIONS),
            "channels_last": "bool | auto",
            "compile": "bool",
        },
        "logger?": _Open("name", lambda: tuple(LOGGER_OPTIONS), _logger_options),
        "measure?": _Open(None, _measure_names, _measure_options),
    }


_KEYS: dict[str, Any] | None = None


def keys() -> dict[str, Any]:
    """The table: key -> spec, a nested table, or an open part; a key ending in "?" may be absent."""
    global _KEYS
    if _KEYS is None:
        _KEYS = _table()
    return _KEYS


# ------------------------------------------------------------------------------------------ checking


class _Unresolved(Exception):
    def __init__(self, path: str, raw: Any, error: Exception):
        super().__init__(path)
        self.path, self.raw, self.error = path, raw, error


def _items(node: Any, path: str) -> Iterator[tuple[str, Any]]:
    """(key, value) of a dict or DictConfig node, interpolations resolved one key at a time (a value
    that does not resolve raises _Unresolved naming its key)."""
    for key in list(node.keys()):
        yield str(key), _value(node, key, f"{path}{key}")


def _value(node: Any, key: Any, path: str) -> Any:
    if isinstance(node, Mapping) and not hasattr(node, "_get_node"):
        return node[key]
    from omegaconf import ListConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        value = node[key]
        if isinstance(value, ListConfig):
            return OmegaConf.to_container(value, resolve=True)
        return value
    except (OmegaConfBaseException, ValueError, TypeError, ArithmeticError) as error:
        try:
            raw = node._get_node(key)._value()
        except Exception:  # noqa: BLE001 - only for the message
            raw = "?"
        raise _Unresolved(path, raw, error) from error


def _is_node(value: Any) -> bool:
    return isinstance(value, Mapping)


def problems(cfg: Mapping[str, Any]) -> Iterator[str]:
    """Every problem of `cfg` (a plain dict or a DictConfig, resolved key by key), each one line:
    `<key>=<value>: <what is expected>`, in the order of the table (unknown keys of a node first)."""
    try:
        yield from _node(cfg, keys(), "", "the top level")
    except _Unresolved as unresolved:
        cause = str(unresolved.error).strip().splitlines()[0] if str(unresolved.error).strip() else ""
        yield (
            f"{unresolved.path}={show(unresolved.raw)}: does not resolve "
            f"({type(unresolved.error).__name__}: {cause})"
        )


def first_problem(cfg: Mapping[str, Any]) -> str | None:
    return next(problems(cfg), None)


def _unknown_key(path: str, value: Any, owner: str, known) -> str:
    leaf = path.rpartition(".")[2]
    match = near(leaf, known)
    prefix = path[: len(path) - len(leaf)]
    if match:
        return f"{path}={show(value)}: {owner} has no key {leaf}; did you mean {prefix}{match}?"
    listed = ", ".join(known) or "none"
    return f"{path}={show(value)}: {owner} has no key {leaf}; its keys: {listed}"


def _node(node: Mapping, table: Mapping[str, Any], path: str, owner: str) -> Iterator[str]:
    declared = {key.rstrip("?"): (key.endswith("?"), entry) for key, entry in table.items()}
    values = dict(_items(node, path))
    for key, value in values.items():
        if key not in declared:
            yield _unknown_key(f"{path}{key}", value, owner, list(declared))
    for key, (optional, entry) in declared.items():
        here = f"{path}{key}"
        if key not in values:
            if not optional:
                expected = "a mapping" if isinstance(entry, Mapping | _Open) else spec(entry).expected()
                yield f"{here}: missing; {expected}"
            continue
        value = values[key]
        if isinstance(entry, _Open):
            yield from _open(value, entry, here)
        elif isinstance(entry, Mapping):
            if not _is_node(value):
                keys_ = ", ".join(k.rstrip("?") for k in entry)
                yield f"{here}={show(value)}: expected a mapping with keys {keys_}"
            else:
                yield from _node(value, entry, here + ".", here)
        elif (problem := spec(entry).problem(value)) is not None:
            yield f"{here}={show(value)}: {problem}"


def _open(value: Any, entry: _Open, path: str) -> Iterator[str]:
    if not _is_node(value):
        yield f"{path}={show(value)}: expected a mapping"
        return
    names = entry.names()
    if entry.selector is None:  # measure: each key is a measurement
        for name, options in _items(value, path + "."):
            if name not in names:
                yield unknown_measurement(name, options, names)
            elif not _is_node(options):
                yield f"{path}.{name}={show(options)}: expected a mapping (e.g. {path}.{name}.every=100)"
            else:
                yield from options_problems(entry.options(name), _items_dict(options, f"{path}.{name}."),
                                            f"{path}.{name}")  # fmt: skip
        return
    selected = _value(value, entry.selector, f"{path}.{entry.selector}") if entry.selector in value else None
    if selected not in names:
        key = f"{path}.{entry.selector}"
        if entry.selector not in value:
            yield f"{key}: missing; valid choices: {', '.join(names)}"
        else:
            yield bad_choice(key, selected, names)
        return
    given = {k: v for k, v in _items_dict(value, path + ".").items() if k != entry.selector}
    yield from options_problems(entry.options(selected), given, path)


def _items_dict(node: Any, path: str) -> dict[str, Any]:
    return dict(_items(node, path))


def _plain(value: Any) -> Any:
    if hasattr(value, "_get_node"):
        from omegaconf import OmegaConf

        try:
            return OmegaConf.to_container(value, resolve=True)
        except Exception:  # noqa: BLE001 - only for the message
            return OmegaConf.to_container(value, resolve=False)
    return value


def options_problems(options: Options, given: Mapping[str, Any], path: str) -> Iterator[str]:
    """The problems of the keys `given` to one model, norm, logger or measurement."""
    extra = dict(options.extra or {})
    known = [*extra, *options.specs]
    for key, value in given.items():
        if key not in extra and key not in options.specs and not options.open:
            leaf = f"{path}.{key}"
            match = near(key, known)
            listed = ", ".join(known) or "none"
            yield f"{leaf}={show(_plain(value))}: {options.owner} takes no option {key!r}; " + (
                f"did you mean {path}.{match}?" if match else f"its options: {listed}"
            )
    for key in sorted(options.required - set(given)):
        yield f"{path}.{key}: missing; {options.owner} needs it ({spec(options.specs[key]).expected()})"
    for key, text in [*extra.items(), *options.specs.items()]:
        if key in given and (problem := spec(text).problem(_plain(given[key]))) is not None:
            yield f"{path}.{key}={show(_plain(given[key]))}: {problem}"
