"""The config schema (bn_repro/schema.py): every key has a declared type and range; a bad value is one
line naming the key; legal edge values pass. Property tests over the keys of the composed config."""

from __future__ import annotations

import copy
import inspect
import math

import pytest
from conftest import CONFIG_DIR, compose_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from bn_repro import schema
from bn_repro.config import ConfigError, check_components, check_values
from bn_repro.registry_index import annotation_spec
from bn_repro.schema import Spec, show

# ------------------------------------------------------------------------------------------ specs


@pytest.mark.parametrize(
    ("text", "good", "bad", "expected"),
    [
        ("int >= 1", [1, 2**63 - 1], [0, -1, 1.0, True, "1", None, 2**63], "expected an integer >= 1"),
        ("number in [0, 1]", [0, 1, 0.5, 1e-300], [-1e-9, 1.0000001, math.nan, "0.1", False],
         "expected a number in [0, 1]"),
        ("number in (0, 1]", [1, 1e-30], [0, 0.0, 2], "expected a number in (0, 1]"),
        ("number > 0 | null", [None, 1e-30, 3], [0, -1, math.inf, "big"], "expected a number > 0 or null"),
        ("auto | int >= 1", ["auto", 1], ["Auto", 0, 1.5], "expected auto or an integer >= 1"),
        ("bool | auto", [True, False, "auto"], [0, 1, "yes", None], "valid choices: true, false, auto"),
        ("eval | train", ["eval", "train"], ["sideways", 1], "valid choices: eval, train"),
        ("list of int >= 1", [[], [1, 2]], [[0], [1, -5], 3, ["a"], [True]],
         "expected a list of integers >= 1"),
        ("non-empty list of int >= 0", [[0]], [[], [-1]], "expected a non-empty list of integers >= 0"),
        ("non-empty str", ["x"], ["", 3], "expected a non-empty string"),
        ("int >= 0  # 0: off", [0], [-1], "expected an integer >= 0 (0: off)"),
        ("any", [None, 1, "x", [1]], [], None),
    ],
)  # fmt: skip
def test_a_spec_says_what_it_takes(text, good, bad, expected):
    spec = Spec.parse(text)
    assert all(spec.matches(v) for v in good), [v for v in good if not spec.matches(v)]
    assert not any(spec.matches(v) for v in bad), [v for v in bad if spec.matches(v)]
    if expected:
        assert spec.expected() == expected


@pytest.mark.parametrize("text", ["3", "int >= x", "list of", "number in [0, 1", "a b", "bool > 1"])
def test_a_bad_spec_is_refused(text):
    with pytest.raises(ValueError, match="not"):
        Spec.parse(text)


@pytest.mark.parametrize(
    ("annotation", "spec"),
    [("float", "number"), ("float | None", "number | null"), ("int", "int"), ("str", "str"), ("bool", "bool"),
     ("Sequence[int]", "list of int"), ("Sequence[int] | None", "list of int | null"),
     ("typing.Optional[float]", "number | null"), ("tuple[float, ...]", "list of number"), (None, "any"),
     ("dict[str, int]", "any"), ("Callable", "any")],
)  # fmt: skip
def test_annotations_say_the_type(annotation, spec):
    assert annotation_spec(annotation) == spec


def test_values_show_as_a_command_line_writes_them():
    assert show("abc") == "'abc'" and show(True) == "true" and show(None) == "null"
    assert show([100, -5]) == "[100, -5]" and show(1e-05) == "1e-05" and show({"every": 1}) == "{every: 1}"


# ------------------------------------------------------------------------------------------ the tables


def test_model_options_are_the_classes_keyword_parameters():
    from bn_repro.models import MODELS, OPTIONS, model_class

    assert set(OPTIONS) == set(MODELS)
    for name in MODELS:
        params = list(inspect.signature(model_class(name).__init__).parameters)
        assert params[:4] == ["self", "input_shape", "num_classes", "norm_layer"], name
        assert list(OPTIONS[name]) == params[4:], name
        for text in OPTIONS[name].values():
            Spec.parse(text)


def test_choices_in_the_tables_are_their_owners():
    from bn_repro.measures.activations import PROBE_MODES
    from bn_repro.models import OPTIONS
    from bn_repro.models.vgg import CONFIGS
    from bn_repro.records.tracking import LOGGERS, WANDB_MODES

    table = schema.keys()
    assert Spec.parse(table["probe"]["mode"]).expected() == f"valid choices: {', '.join(PROBE_MODES)}"
    assert Spec.parse(OPTIONS["vgg"]["config"]).expected() == f"valid choices: {', '.join(CONFIGS)}"
    assert tuple(schema.LOGGER_OPTIONS) == LOGGERS
    assert (
        Spec.parse(schema.LOGGER_OPTIONS["wandb"]["mode"]).expected()
        == f"valid choices: {', '.join(WANDB_MODES)}"
    )


GROUP_OPTIONS = [
    f"{group}={path.stem}"
    for group in ("data", "model", "norm", "optim", "trainer", "logger", "measure")
    for path in sorted((CONFIG_DIR / group).glob("*.yaml"))
]


@pytest.fixture(scope="module")
def group_configs():
    """Each option of each config group (every key its files hold), composed once."""
    overrides = {"model=vgg": ["model=vgg", "model.width=0.125"],
                 "norm=groupnorm": ["norm=groupnorm", "norm.groups=4"],
                 "norm=ghost_bn": ["norm=ghost_bn", "norm.virtual_batch_size=20"],
                 "model=inception": ["model=inception", "model.width=0.0625"]}  # fmt: skip
    return {
        option: compose_config(["data=synthetic", *overrides.get(option, [option])])
        for option in GROUP_OPTIONS
    }


def test_every_key_of_every_config_file_is_declared(group_configs):
    """A key added to a config file without its spec in bn_repro/schema.py (or its owner's table) fails
    here with the line the app would print."""
    for option, cfg in group_configs.items():
        try:
            check_values(cfg)
        except ConfigError as error:
            pytest.fail(f"{option}: {error}")


# ------------------------------------------------------------------------------------------ properties


def _leaves(node, prefix=""):
    for key, value in node.items():
        if isinstance(value, dict) and value:
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _set(config: dict, key: str, value) -> dict:
    out = copy.deepcopy(config)
    node = out
    *parents, leaf = key.split(".")
    for part in parents:
        node = node[part]
    node[leaf] = value
    return out


@pytest.fixture(scope="module")
def plain_by_option(group_configs):
    return {option: OmegaConf.to_container(cfg, resolve=True) for option, cfg in group_configs.items()}


@pytest.fixture(scope="module")
def plain_configs(plain_by_option):
    return list(plain_by_option.values())


VALUES = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 1, 2, 10**9, 2**32, 2**63, 99999999999999999999]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.5, 0.5, 1.5, 1e-30, 1e9, -1e-9]),
    st.booleans(),
    st.none(),
    st.sampled_from(["abc", "big", "maybe", "yes", "0.1", "", "auto", "none", "eval", "nope"]),
    st.lists(st.one_of(st.integers(-3, 200), st.sampled_from(["a", 1.5, True, None])), max_size=4),
)


def _names_the_key(message: str, key: str) -> bool:
    return message.startswith(f"{key}=") or message.startswith(f"{key}:") or f" {key}=" in message


@settings(max_examples=400, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), value=VALUES)
def test_any_value_of_any_key_passes_or_is_one_line(plain_configs, data, value):
    """Whatever value a key gets, the checks pass or raise one ConfigError line that names a key and its
    value (`<key>=<value>: ...`); nothing else escapes (the app would print a traceback)."""
    config = data.draw(st.sampled_from(plain_configs))
    key, _ = data.draw(st.sampled_from(sorted(_leaves(config))))
    try:
        check_values(_set(config, key, value))
    except ConfigError as error:
        message = str(error)
        assert "\n" not in message
        head = message.partition(": ")[0]
        assert "=" in head or head.endswith("missing"), message


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), value=VALUES)
def test_a_value_the_spec_refuses_is_named(plain_configs, data, value):
    config = data.draw(st.sampled_from(plain_configs))
    key, _ = data.draw(st.sampled_from(sorted(_leaves(config))))
    spec = _spec_of(config, key)
    if spec is None or spec.matches(value):
        return
    with pytest.raises(ConfigError) as error:
        check_values(_set(config, key, value))
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"{key}={show(value)}: "), (key, value, message)


def _spec_of(config: dict, key: str) -> Spec | None:
    """The spec the schema holds for `key` of `config` (None: a key the test leaves to the others)."""
    from bn_repro.models import OPTIONS

    first, _, rest = key.partition(".")
    if first == "model":
        return None if rest == "name" else Spec.parse(OPTIONS[config["model"]["name"]][rest])
    if first == "norm":
        if rest == "kind":
            return None
        return Spec.parse(schema._norm_options(config["norm"]["kind"]).specs[rest])
    if first == "measure":
        name, _, option = rest.partition(".")
        options = schema._measure_options(name)
        return Spec.parse({**(options.extra or {}), **options.specs}[option])
    if first == "logger":
        return None if rest == "name" else Spec.parse(schema.LOGGER_OPTIONS[config["logger"]["name"]][rest])
    node = schema.keys()
    for part in key.split("."):
        node = node.get(part, node.get(f"{part}?")) if isinstance(node, dict) else None
    return Spec.parse(node) if isinstance(node, str) else None


# (group option, {key: value}): legal edge values, each on the config of that group option.
LEGAL = [
    ("optim=sgd", {"optim.lr": 0}),  # the control of the ICS measurements: no update, gradient ICS exactly 0
    ("norm=builtin", {"norm.momentum": 0}), ("norm=builtin", {"norm.momentum": 1}),
    ("norm=builtin", {"norm.momentum": None}), ("norm=builtin", {"norm.eps": 1e-30}),
    ("norm=builtin", {"norm.eps": 1}),
    ("optim=sgd", {"optim.momentum": 0}), ("optim=sgd", {"optim.momentum": 1}),
    ("optim=sgd", {"optim.momentum": 0.9, "optim.nesterov": True}), ("optim=sgd", {"optim.weight_decay": 0}),
    ("optim=sgd", {"optim.schedule.name": "exponential", "optim.schedule.decay_rate": 1}),
    ("optim=sgd", {"seed": 0}), ("optim=sgd", {"seed": 4294967295}),
    ("trainer=default", {"trainer.threads": "auto"}), ("trainer=default", {"trainer.threads": 1}),
    ("trainer=default", {"trainer.checkpoint_every": 0, "trainer.population_stats_batches": 0}),
    ("trainer=default", {"trainer.eval_examples": None}), ("trainer=default", {"trainer.eval_examples": 1}),
    ("trainer=default", {"trainer.channels_last": "auto"}),
    ("measure=default", {"measure.landscape.every": 0}),
    ("data=synthetic", {"data.batch_size": 1}), ("data=mnist", {"data.batch_size": 60000}),
    ("norm=groupnorm", {"norm.groups": 1}), ("norm=groupnorm", {"norm.groups": 100}),
    ("norm=custom", {"norm.momentum": 0}), ("norm=custom", {"norm.momentum": 1}),
    ("norm=noisy_bn", {"norm.ramp_steps": 0, "norm.shift": 0, "norm.scale": 1, "norm.seed": -3}),
    ("norm=batch_renorm", {"norm.r_max": 1, "norm.d_max": 0, "norm.start_steps": 0}),
    ("norm=ghost_bn", {"norm.virtual_batch_size": 60}), ("norm=ghost_bn", {"norm.virtual_batch_size": 1}),
    ("model=inception", {"model.dropout": 0}), ("model=mlp", {"model.hidden": []}),
    ("model=mlp", {"model.init_std": None}), ("model=vgg", {"model.head": []}),
    ("model=linear_deep", {"model.depth": 1}),
    ("data=synthetic", {"data.sampler": "few_classes", "data.classes_per_batch": 10}),
]  # fmt: skip


@pytest.mark.parametrize(("option", "values"), LEGAL, ids=[f"{o} {v}" for o, v in LEGAL])
def test_legal_edge_values_pass(plain_by_option, option, values):
    config = plain_by_option[option]
    for key, value in values.items():
        config = _set(config, key, value)
    check_values(config)
    check_components(config, device=False)


def test_legal_edge_values_pass_on_the_command_line():
    from bn_repro.cli import preflight

    preflight(["optim.lr=0", "norm.momentum=1", "norm.eps=1e-30", "trainer.eval_examples=null"])
    preflight(["norm=custom", "norm.momentum=0", "norm.momentum=null"])


# The issue's examples: each one line naming the key.
ISSUE = [
    (["model.hidden=[100,-5]"], "model.hidden=[100, -5]: expected a list of integers >= 1"),
    (["optim.lr=abc"], "optim.lr='abc': expected a number >= 0"),
    (["model.init_std=big"], "model.init_std='big': expected a number > 0 or null"),
    (["norm.momentum='0.1'"], "norm.momentum='0.1': expected a number in [0, 1] or null"),
    (["trainer.deterministic=maybe"], "trainer.deterministic='maybe': valid choices: true, false"),
    (["seed=99999999999999999999"], "seed=99999999999999999999: expected an integer in [0, 4294967295]"),
    (["norm.eps=0"], "norm.eps=0: expected a number > 0"),
    (["norm.momentum=2"], "norm.momentum=2: expected a number in [0, 1]"),
    (["norm.momentum=1e9"], "norm.momentum=1000000000.0: expected a number in [0, 1]"),
    (["+trainer.foo=1"], "trainer.foo=1: trainer has no key foo"),
    (["+optim.betas=[0.9,0.99]"], "optim.betas=[0.9, 0.99]: optim has no key betas"),
    (["optim.nesterov=2"], "optim.nesterov=2: valid choices: true, false"),
    (["optim.schedule.staircase=yes"], "optim.schedule.staircase='yes': valid choices: true, false"),
    (["experiment=fig1_fashion_mnist", "model=inception"],
     "model.hidden=[100, 100, 100]: model=inception takes no option 'hidden'"),
    (["+model.hiden=3"], "model.hiden=3: model=mlp takes no option 'hiden'; did you mean model.hidden?"),
    (["norm=groupnorm", "+norm.grops=3"],
     "norm.grops=3: norm.kind=groupnorm takes no option 'grops'; did you mean norm.groups?"),
    (["optim.momentum=0", "optim.nesterov=true"], "optim.nesterov=true: needs optim.momentum > 0"),
    (["norm=ghost_bn", "norm.virtual_batch_size=7"], "norm.virtual_batch_size=7: does not divide the batch"),
    (["data.batch_size=100000"], "data.batch_size=100000: more than the 60000 training examples"),
    (["experiment=gn_batch_size", "data.batch_size=0"], "data.batch_size=0: expected an integer >= 1"),
    (["trainer.max_steps=${nope}"], "trainer.max_steps='${nope}': does not resolve"),
    (["measure.eval_stats.eval_batch_size=[1,2]"],
     "measure.eval_stats.eval_batch_size=[1, 2]: expected an integer"),
    (["+measure.nope.every=1"],
     "measure.nope={every: 1}: unknown measurement 'nope'; valid choices: activations"),
]  # fmt: skip


@pytest.mark.parametrize(("overrides", "message"), ISSUE, ids=[" ".join(o) for o, _ in ISSUE])
def test_the_issue_examples_are_one_line_naming_the_key(overrides, message):
    with pytest.raises(ConfigError) as error:
        check_values(compose_config(overrides))  # the DictConfig, resolved key by key
    assert str(error.value).startswith(message) and "\n" not in str(error.value)
