"""The norm and measurement registries as their source files declare them, read without importing them.

    index = norm_index()            # {"custom": Entry(options={"eps": 1e-05, ...}, choices=...), ...}
    problem = option_problem("norm", "norm.kind=custom", index["custom"], {"eps": 0})
    # "norm.eps=0: expected a number > 0"

The registries (bn_repro/norms/registry.py, bn_repro/measures/base.py) are torch modules: importing
them costs seconds, so a typo in `norm.kind` or a measurement option used to wait for torch. Their
entries are plain decorated definitions (`@register_norm("name", specs=..., choices=...)` on a builder
whose keyword-only parameters are its options; `@register_measurement("name", specs=...)` on a class
whose `__init__` keywords are its options), so `ast` reads the same facts from the files in a few
milliseconds: each option, its default, and what it takes (its spec, bn_repro/schema.py; else its
choices; else its annotation).
config.check_values uses this index before torch; once the real registry is imported (it is the
authority, and code may register entries of its own), the index steps aside. A test holds the index
equal to the real registries, entry by entry.

The option checks' messages live here, shared by the index and the registries, so both say the same.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Mapping
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
    only the real registry can check them). specs: what options take (bn_repro/schema.py syntax), as
    the entry declares them (`specs=`). annotations: the options' annotations as source text; an option
    without a spec or choices takes what its annotation says."""

    name: str
    options: dict[str, Any]
    open: bool = False
    choices: dict[str, tuple] | None = field(default_factory=dict)
    specs: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str | None] = field(default_factory=dict)


# measure.<name>.every
EVERY = "int >= 0  # 0: off"

_TYPES = {"int": "int", "float": "number", "bool": "bool", "str": "str", "None": "null"}
_SEQUENCES = {"Sequence", "MutableSequence", "list", "List", "tuple", "Tuple", "Iterable"}


def annotation_spec(annotation: str | None) -> str:
    """The spec an annotation states ("float | None" -> "number | null", "Sequence[int]" -> "list of
    int"); "any" where it states nothing these specs can say."""
    if not annotation:
        return "any"
    try:
        alts = _annotation_alts(ast.parse(annotation, mode="eval").body)
    except SyntaxError:
        return "any"
    return " | ".join(dict.fromkeys(alts)) if alts else "any"


def _annotation_alts(node: ast.expr) -> list[str] | None:
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        left, right = _annotation_alts(node.left), _annotation_alts(node.right)
        return None if left is None or right is None else left + right
    if isinstance(node, ast.Constant) and node.value is None:
        return ["null"]
    if isinstance(node, ast.Constant) and isinstance(node.value, str):  # a quoted annotation
        return _annotation_alts(ast.parse(node.value, mode="eval").body)
    name = _name(node)
    if name in _TYPES:
        return [_TYPES[name]]
    if isinstance(node, ast.Subscript):
        base, inner = _name(node.value), node.slice
        items = list(inner.elts) if isinstance(inner, ast.Tuple) else [inner]
        if base == "Optional":
            alts = _annotation_alts(items[0])
            return None if alts is None else [*alts, "null"]
        if base == "Union":
            parts = [_annotation_alts(item) for item in items]
            return None if any(p is None for p in parts) else [a for p in parts for a in p]
        if base in _SEQUENCES and items:
            alts = _annotation_alts(items[0])
            return [f"list of {alts[0]}"] if alts is not None and len(alts) == 1 else None
    return None


def _name(node: ast.expr) -> str:
    return node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""


def option_specs(entry: Entry) -> dict[str, str]:
    """option -> what it takes: the entry's spec, else its choices, else its annotation."""
    out = {}
    for option in entry.options:
        if option in entry.specs:
            out[option] = entry.specs[option]
        elif entry.choices and option in entry.choices:
            out[option] = " | ".join(map(str, entry.choices[option]))
        else:
            out[option] = annotation_spec(entry.annotations.get(option))
    return out


def required(entry: Entry) -> list[str]:
    return [name for name, default in entry.options.items() if default is REQUIRED]


def option_problem(
    path: str, owner: str, entry: Entry, given: Mapping[str, Any], extra: Mapping[str, str] | None = None
) -> str | None:
    """What is wrong with the options `given` to an entry (None: nothing), as bn_repro/schema.py says
    it: an unknown option, a missing required one, a value its spec refuses. `path` is the config node
    of the options ("norm", "measure.landscape"), `owner` names the entry ("norm.kind=custom"), `extra`
    the keys the node holds besides the options and their specs (a measurement's `every`)."""
    from bn_repro.schema import options_problems

    return next(options_problems(options_of(entry, owner, extra), given, path), None)


def options_of(entry: Entry, owner: str, extra: Mapping[str, str] | None = None):
    """The entry's options as bn_repro/schema.py checks them."""
    from bn_repro.schema import Options

    return Options(owner, option_specs(entry), frozenset(required(entry)), entry.open, extra)


def every_problem(name: str, every: Any) -> str | None:
    """`measure.<name>.every` must be an integer >= 0 (0: off)."""
    from bn_repro.schema import show, spec

    problem = spec(EVERY).problem(every)
    return None if problem is None else f"measure.{name}.every={show(every)}: {problem}"


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


def _constants(tree: ast.Module, imported: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The module's literal constants; `imported`: those of another module, for the names this one
    imports from it (`from bn_repro.norms.registry import EPS`)."""
    out: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and imported is not None:
            for alias in node.names:
                if alias.name in imported:
                    out[alias.asname or alias.name] = imported[alias.name]
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, ast.AnnAssign) and node.value is not None else []  # fmt: skip
        for target in targets:
            if isinstance(target, ast.Name):
                try:
                    out[target.id] = _literal(node.value, out)
                except _Unreadable:
                    out.pop(target.id, None)
    return out


def _options(names: list[ast.arg], defaults: list[ast.expr | None], constants) -> tuple[dict, dict]:
    """({option: default}, {option: annotation source}) of parameters."""
    out, annotations = {}, {}
    for arg, default in zip(names, defaults, strict=True):
        annotations[arg.arg] = None if arg.annotation is None else ast.unparse(arg.annotation)
        if default is None:
            out[arg.arg] = REQUIRED
        else:
            try:
                out[arg.arg] = _literal(default, constants)
            except _Unreadable:
                out[arg.arg] = None  # a default the config may leave out, its value not a literal
    return out, annotations


def _decorator_name(call: ast.expr, decorator: str) -> ast.Call | None:
    if isinstance(call, ast.Call):
        func = call.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        if name == decorator and call.args and isinstance(call.args[0], ast.Constant):
            return call
    return None


def _keyword(call: ast.Call, name: str, constants) -> Any:
    """The literal value of the decorator's keyword `name` ({} when absent); _Unreadable otherwise."""
    for keyword in call.keywords:
        if keyword.arg == name:
            return _literal(keyword.value, constants)
    return {}


def _modules(folder: Path, skip: frozenset[str]) -> list[ast.Module]:
    return [
        ast.parse(path.read_text(), filename=str(path))
        for path in sorted(folder.glob("*.py"))
        if path.stem not in skip and not path.stem.startswith("_")
    ]


def _norms_in(tree: ast.Module, registry_constants: Mapping[str, Any]) -> list[Entry]:
    constants, out = _constants(tree, registry_constants), []
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef):
            continue
        for decorator in node.decorator_list:
            call = _decorator_name(decorator, "register_norm")
            if call is None:
                continue
            args = node.args
            options, annotations = _options(args.kwonlyargs, list(args.kw_defaults), constants)
            choices: dict[str, tuple] | None
            try:
                choices = {k: tuple(v) for k, v in dict(_keyword(call, "choices", constants)).items()}
            except (_Unreadable, TypeError, ValueError):
                choices = None
            specs = dict(_keyword(call, "specs", constants))  # a spec that is no literal: a bug, raise
            out.append(
                Entry(call.args[0].value, options, args.kwarg is not None, choices, specs, annotations)
            )
    return out


@functools.cache
def norm_index() -> dict[str, Entry]:
    """norm.kind -> Entry for every entry in bn_repro/norms (the `none` entry is in registry.py)."""
    # In the registry's order: registry.py (the `none` entry) first, then the entry modules by name, as
    # bn_repro/norms/__init__.py imports them.
    registry = ast.parse((PACKAGE / "norms" / "registry.py").read_text())
    shared = _constants(registry)  # the specs the entries share (EPS, MOMENTUM)
    trees = [registry, *_modules(PACKAGE / "norms", NORM_INFRASTRUCTURE)]
    return {entry.name: entry for tree in trees for entry in _norms_in(tree, shared)}


def _class_options(
    cls: ast.ClassDef, classes: Mapping[str, ast.ClassDef], constants
) -> tuple[dict, dict, bool]:
    """(options, annotations, takes **options) of the class's __init__, looked up through its bases."""
    for node in cls.body:
        if isinstance(node, ast.FunctionDef) and node.name == "__init__":
            args = node.args
            positional = args.posonlyargs + args.args
            defaults: list[ast.expr | None] = [None] * (len(positional) - len(args.defaults)) + list(
                args.defaults
            )
            options, annotations = _options(positional[1:], defaults[1:], constants)  # without self
            more, more_annotations = _options(args.kwonlyargs, list(args.kw_defaults), constants)
            return {**options, **more}, {**annotations, **more_annotations}, args.kwarg is not None
    for base in cls.bases:
        name = base.id if isinstance(base, ast.Name) else base.attr if isinstance(base, ast.Attribute) else ""
        if name == "Measurement":  # the base class defines no __init__: no options
            return {}, {}, False
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
                name = call.args[0].value
                try:
                    options, annotations, open_options = _class_options(node, classes, constants)
                except _Unreadable:
                    out[name] = None
                    continue
                specs = dict(_keyword(call, "specs", constants))
                out[name] = Entry(name, options, open_options, {}, specs, annotations)
    return out


def measure_names() -> tuple[str, ...]:
    return tuple(measure_index())
