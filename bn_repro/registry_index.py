"""The norm and measurement registries as their source files declare them, read without importing them.

    index = norm_index()            # {"custom": Entry(options={"eps": 1e-05, ...}, choices=...), ...}
    problem = option_problem("norm.kind=custom", "norm", index["custom"].options, False, {}, options)

The registries (bn_repro/norms/registry.py, bn_repro/measures/base.py) are torch modules: importing
them costs seconds, so a typo in `norm.kind` or a measurement option used to wait for torch. Their
entries are plain decorated definitions (`@register_norm("name", choices=...)` on a builder whose
keyword-only parameters are its options; `@register_measurement("name")` on a class whose `__init__`
keywords are its options), so `ast` reads the same facts from the files in a few milliseconds.
config.check_values uses this index before torch; once the real registry is imported (it is the
authority, and code may register entries of its own), the index steps aside. A test holds the index
equal to the real registries, entry by entry.

The option checks' messages live here, shared by the index and the registries, so both say the same.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PACKAGE = Path(__file__).resolve().parent
# Modules of bn_repro/norms that hold no entry (bn_repro/norms/__init__.py imports all the others).
NORM_INFRASTRUCTURE = frozenset({"registry", "sync", "fast_batchnorm", "population", "seed_reference"})
MEASURE_INFRASTRUCTURE = frozenset({"base"})
# An option without a default: the config must give it.
REQUIRED = object()


@dataclass(frozen=True)
class Entry:
    """One registry entry as its source declares it.

    options: its options and their defaults (REQUIRED where there is none; None where the default is
    not a literal). open: it takes **options (any further key is its own to check). choices: the valid
    values of options that take one of a few; None where the source's choices are not literals (then
    only the real registry can check them)."""

    name: str
    options: dict[str, Any]
    open: bool = False
    choices: dict[str, tuple] | None = field(default_factory=dict)


def option_problem(
    owner: str,
    prefix: str,
    options: Mapping[str, Any],
    open_options: bool,
    choices: Mapping[str, Iterable] | None,
    given: Mapping[str, Any],
    extra: tuple[str, ...] = (),
) -> str | None:
    """What is wrong with the options `given` to an entry (None: nothing): an unknown option, a
    missing required one, a value outside its choices. `owner` names the entry in the message
    ("norm.kind=custom", "measure.landscape"), `prefix` the config node of an option ("norm"), `extra`
    the keys the config node holds besides the options (a measurement's `every`)."""
    unknown = [] if open_options else sorted(set(given) - set(options) - set(extra))
    if unknown:
        valid = ", ".join([*extra, *options]) or "none"
        return f"{owner} has no option {', '.join(map(repr, unknown))}; its options: {valid}"
    missing = [name for name, default in options.items() if default is REQUIRED and name not in given]
    if missing:
        return f"{owner} needs the option(s) {', '.join(missing)}"
    for option, valid in (choices or {}).items():
        if option in given and given[option] not in tuple(valid):
            return (
                f"{prefix}.{option}={given[option]!r} is not valid for {owner}; "
                f"valid choices: {', '.join(map(str, valid))}"
            )
    return None


def every_problem(name: str, every: Any) -> str | None:
    """`measure.<name>.every` must be an integer >= 0 (0: off)."""
    if isinstance(every, bool) or not isinstance(every, int) or every < 0:
        return f"measure.{name}.every={every!r} is not valid; expected an integer >= 0 (0: off)"
    return None


# ---------------------------------------------------------------------------------------- reading


class _Unreadable(Exception):
    """The source does not declare this fact as a literal."""


def _literal(node: ast.expr, constants: Mapping[str, Any]) -> Any:
    """A literal, or a module-level constant that is one (BACKWARDS = ("autograd", "explicit"))."""
    if isinstance(node, ast.Name):
        if node.id in constants:
            return constants[node.id]
        raise _Unreadable(node.id)
    if isinstance(node, ast.Dict) and None not in node.keys:
        pairs = zip(node.keys, node.values, strict=True)
        return {_literal(k, constants): _literal(v, constants) for k, v in pairs}
    if isinstance(node, ast.Tuple | ast.List):
        items = [_literal(e, constants) for e in node.elts]
        return tuple(items) if isinstance(node, ast.Tuple) else items
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError):
        raise _Unreadable(ast.dump(node)) from None


def _constants(tree: ast.Module) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, ast.AnnAssign) and node.value is not None else []  # fmt: skip
        for target in targets:
            if isinstance(target, ast.Name):
                try:
                    out[target.id] = _literal(node.value, out)
                except _Unreadable:
                    out.pop(target.id, None)
    return out


def _options(args: ast.arguments, names: list[ast.arg], defaults: list[ast.expr | None], constants) -> dict:
    out = {}
    for arg, default in zip(names, defaults, strict=True):
        if default is None:
            out[arg.arg] = REQUIRED
        else:
            try:
                out[arg.arg] = _literal(default, constants)
            except _Unreadable:
                out[arg.arg] = None  # a default the config may leave out, its value not a literal
    return out


def _decorator_name(call: ast.expr, decorator: str) -> ast.Call | None:
    if isinstance(call, ast.Call):
        func = call.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        if name == decorator and call.args and isinstance(call.args[0], ast.Constant):
            return call
    return None


def _modules(folder: Path, skip: frozenset[str]) -> list[ast.Module]:
    return [
        ast.parse(path.read_text(), filename=str(path))
        for path in sorted(folder.glob("*.py"))
        if path.stem not in skip and not path.stem.startswith("_")
    ]


def _norms_in(tree: ast.Module) -> list[Entry]:
    constants, out = _constants(tree), []
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef):
            continue
        for decorator in node.decorator_list:
            call = _decorator_name(decorator, "register_norm")
            if call is None:
                continue
            args = node.args
            options = _options(args, args.kwonlyargs, list(args.kw_defaults), constants)
            choices: dict[str, tuple] | None = {}
            for keyword in call.keywords:
                if keyword.arg == "choices":
                    try:
                        choices = {k: tuple(v) for k, v in dict(_literal(keyword.value, constants)).items()}
                    except (_Unreadable, TypeError, ValueError):
                        choices = None
            out.append(Entry(call.args[0].value, options, args.kwarg is not None, choices))
    return out


@functools.cache
def norm_index() -> dict[str, Entry]:
    """norm.kind -> Entry for every entry in bn_repro/norms (the `none` entry is in registry.py)."""
    # In the registry's order: registry.py (the `none` entry) first, then the entry modules by name, as
    # bn_repro/norms/__init__.py imports them.
    registry = ast.parse((PACKAGE / "norms" / "registry.py").read_text())
    trees = [registry, *_modules(PACKAGE / "norms", NORM_INFRASTRUCTURE)]
    return {entry.name: entry for tree in trees for entry in _norms_in(tree)}


def _class_options(cls: ast.ClassDef, classes: Mapping[str, ast.ClassDef], constants) -> tuple[dict, bool]:
    """(options, takes **options) of the class's __init__, looked up through its bases."""
    for node in cls.body:
        if isinstance(node, ast.FunctionDef) and node.name == "__init__":
            args = node.args
            positional = args.posonlyargs + args.args
            defaults: list[ast.expr | None] = [None] * (len(positional) - len(args.defaults)) + list(
                args.defaults
            )
            options = _options(args, positional[1:], defaults[1:], constants)  # without self
            options.update(_options(args, args.kwonlyargs, list(args.kw_defaults), constants))
            return options, args.kwarg is not None
    for base in cls.bases:
        name = base.id if isinstance(base, ast.Name) else base.attr if isinstance(base, ast.Attribute) else ""
        if name == "Measurement":  # the base class defines no __init__: no options
            return {}, False
        if name in classes:
            return _class_options(classes[name], classes, constants)
    raise _Unreadable(cls.name)


@functools.cache
def measure_index() -> dict[str, Entry | None]:
    """measurement name -> Entry for every measurement in bn_repro/measures; None for one whose options
    the source does not declare readably (an __init__ inherited from a class outside the package)."""
    trees = _modules(PACKAGE / "measures", MEASURE_INFRASTRUCTURE)
    classes = {n.name: n for tree in trees for n in tree.body if isinstance(n, ast.ClassDef)}
    out: dict[str, Entry | None] = {}
    for tree in trees:
        constants = _constants(tree)
        for node in tree.body:
            if not isinstance(node, ast.ClassDef):
                continue
            for decorator in node.decorator_list:
                call = _decorator_name(decorator, "register_measurement")
                if call is None:
                    continue
                try:
                    options, open_options = _class_options(node, classes, constants)
                except _Unreadable:
                    out[call.args[0].value] = None
                    continue
                out[call.args[0].value] = Entry(call.args[0].value, options, open_options)
    return out


def measure_names() -> tuple[str, ...]:
    return tuple(measure_index())
