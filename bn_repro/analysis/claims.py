"""The ledger: every claim we test, its effect over seeds, and a verdict by one stated rule.

    python scripts/claims.py --out results/CLAIMS.md

A claim is a `Claim`: the paper and its words in short, our setup, the run dirs under results/ it reads,
a `measure` from those runs to an `Effect` (one number per seed, oriented so that the paper predicts its
sign), the command that draws the study's figure and the figure. The measures reuse the numbers the
study's own tables compute (bn_repro/analysis/<study>.py), read from the runs table where the table is
the natural source. A claim whose run dirs are absent is listed as pending; adding one is one row in its
family's table below (e.g. a study that lands later: its dirs appear, its rows follow).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from functools import cached_property, wraps
from pathlib import Path

import numpy as np
import pandas as pd

from bn_repro.analysis import crossings, figures, lr_init_grid, runs_table, santurkar, speedup
from bn_repro.analysis.batch_effects import GN_PAPER
from bn_repro.analysis.stats import CONFIDENCE, t_interval

HOLDS, IN_KIND, NOT_REPRODUCED, OPPOSITE = "holds", "holds in kind", "not reproduced", "opposite"
VERDICTS = (HOLDS, IN_KIND, NOT_REPRODUCED, OPPOSITE)
RULE = f"""\
Each claim's effect is one number per seed, signed so that the paper predicts it positive (e.g. BN's
final test accuracy minus no BN's, paired by seed). Over the seeds: the mean and the half-width h of its
{CONFIDENCE:.0%} Student t-interval (bn_repro/analysis/stats.py); n = seeds with a value / seeds run.
- **holds**: the interval lies above 0 (mean > h), and where the paper states a size, the interval
  reaches it (mean + h >= the paper's size).
- **holds in kind**: the mean is positive but the claim does not hold: the interval lies above 0 but
  below the paper's size, or it includes 0 (or there is one seed) while most seeds (more than half of
  those run) are positive.
- **opposite**: the interval lies below 0 (mean < -h).
- **not reproduced**: everything else (the interval includes 0 and at most half the seeds are
  positive, or no seed has a value)."""


@dataclass(frozen=True)
class Effect:
    """Per-seed values of a claim's effect; `seeds`: the seeds run (some may have no value, e.g. a seed
    that never reaches a target); `agree`: seeds on the paper's side when it is not the positive values
    (a seed that never reaches the target the other side reaches); `paper`: the size the paper states."""

    values: dict[int, float]
    seeds: int
    paper: float | None = None
    agree: int | None = None

    @property
    def n(self) -> int:
        return len(self.values)

    @cached_property
    def interval(self) -> tuple[float | None, float | None]:
        return t_interval(self.values.values())

    @property
    def positive(self) -> int:
        return self.agree if self.agree is not None else sum(v > 0 for v in self.values.values())


def verdict(effect: Effect) -> str:
    """The rule of RULE, applied to the effect."""
    mean, half = effect.interval
    if mean is None:
        return NOT_REPRODUCED
    if half is not None and mean < -half:
        return OPPOSITE
    if half is not None and mean > half:
        reaches = effect.paper is None or mean + half >= effect.paper
        return HOLDS if reaches else IN_KIND
    return IN_KIND if mean > 0 and effect.positive > effect.seeds / 2 else NOT_REPRODUCED


# ---------------------------------------------------------------------------------------------- runs


class Study:
    """The run dirs of a claim, read on first use: as the runs table, or as the figures' RunData."""

    def __init__(self, dirs: Sequence[Path]):
        self.dirs = list(dirs)

    @cached_property
    def runs(self):
        """One row per run: config and summary columns (runs_table.run_table)."""
        return runs_table.run_table(self.dirs)

    def table(self, *files: str):
        return runs_table.load_runs(self.dirs, files=files or (runs_table.METRICS,))

    @cached_property
    def data(self) -> list[figures.RunData]:
        return figures.load_all(self.dirs)


def parametrized(measure: Callable[..., Effect]):
    """`measure(study, *args)` as the maker of a claim's measure: `measure(*args)` is the measure."""

    @wraps(measure)
    def with_args(*args, **kwargs) -> Callable[[Study], Effect]:
        return lambda study: measure(study, *args, **kwargs)

    return with_args


def finished(runs):
    return runs[runs["status"] == "finished"]


def paired(a: dict, b: dict, scale: float = 1.0, paper: float | None = None) -> Effect:
    """a - b per seed (the seeds in both), times `scale` (100: accuracy in points)."""
    seeds = sorted(set(a) & set(b))
    return Effect({s: scale * (a[s] - b[s]) for s in seeds}, len(set(a) | set(b)), paper)


def where_gain(rows, test: dict, control: dict, column="value", scale=1.0, paper=None) -> Effect:
    """Per seed, `column` of the rows matching `test` (runs_table.select's keywords) minus `control`'s."""
    a, b = (runs_table.per_seed(runs_table.select(rows, **where), column) for where in (test, control))
    return paired(a, b, scale, paper)


def norm_gap(rows, test: str = "none", control: str = "builtin", agg="mean", scale: float = 1.0) -> Effect:
    """Per seed, `agg` of the `value`s of norm `test`'s rows minus that of `control`'s."""
    values = rows.groupby(["norm.kind", "seed"])["value"].agg(agg)
    return paired(values[test].to_dict(), values[control].to_dict(), scale)


# ---------------------------------------------------------------------------------------------- measures


@parametrized
def final_acc_gain(study: Study, test: dict, control: dict) -> Effect:
    """Final test accuracy (points) of the runs matching `test` minus `control`, by seed."""
    return where_gain(finished(study.runs), test, control, "summary.final_test_acc", 100.0)


@parametrized
def last_metric_gain(study: Study, test: dict, control: dict, paper: float | None = None) -> Effect:
    """Like final_acc_gain, from test_acc's last row in metrics.csv (the batch papers' tables read it so)."""
    last = finished(runs_table.last_values(study.table(), "test_acc"))
    return where_gain(last, test, control, scale=100.0, paper=paper)


# Fig. 1
@parametrized
def steps_to_no_bn_best(study: Study, no_bn_from_first_dir: bool = False) -> Effect:
    """Each seed's steps to the no-BN curve's best (the Fig. 1 table's target): no BN's minus BN's.
    A seed where BN reaches it and no BN never does is on the paper's side without a value.
    `no_bn_from_first_dir`: the no-BN runs are those of the claim's first dir only (a longer run of them)."""
    first = study.dirs[0].resolve()

    def wanted(run):
        if run.norm_kind == "none":
            return not no_bn_from_first_dir or first in run.run.run_dir.resolve().parents
        return run.norm_kind == "builtin"

    runs = [r for r in study.data if wanted(r)]
    target = figures.fig1_rows(runs)[0]["target_acc"]
    rows = crossings.crossing_rows(figures.split_curves(runs, lambda r: r.norm_kind), [target])
    steps = {row["curve"].split(" [")[0]: row["per_seed"] for row in rows}
    none, bn = steps["none"], steps["builtin"]
    both = {s: float(none[s] - bn[s]) for s in set(none) & set(bn) if none[s] and bn[s]}
    agree = sum(bn.get(s) is not None and (none[s] is None or none[s] > bn[s]) for s in none)
    return Effect(both, len(none), agree=agree)


def activation_drift(study: Study) -> Effect:
    """Fig. 1(b,c): the range over training of the probed unit's median input (the unit the figure draws,
    last probed layer), no BN's minus BN's, per seed."""
    table = study.table("activations")
    rows = table[(table["metric"] == "p50") & table["norm.kind"].isin(["none", "builtin"])]
    rows = rows[(rows["layer"] == rows["layer"].max()) & (rows["unit"] == rows["unit"].min())]
    return norm_gap(rows, agg=lambda v: v.max() - v.min())


# Fig. 2 and 3 (section 4.2)
def _variant_runs(study: Study, variant: str):
    """The Fig. 3 table's first row (the baseline's: the target, its steps to it) and the runs of `variant`
    in the runs' family (fig2_ or fig2cpu_)."""
    runs = speedup.load_runs(study.dirs)
    name = speedup.family_of(runs[0].experiment_name) + variant
    return speedup.fig3_table(runs)[0], [r for r in runs if r.experiment_name == name]


def _steps(runs, target: float) -> dict[int, int | None]:
    """Each finished run's steps to `target` (None: never), by seed."""
    return {
        r.seed: speedup.steps_to_target(r.steps, r.test_acc, target) for r in runs if r.status == "finished"
    }


@parametrized
def speedup_over_inception(study: Study, variant: str) -> Effect:
    """Each seed's speedup (the Fig. 3 table's: the baseline curve's steps to its best over the seed's
    own) minus 1; the paper's ImageNet speedup minus 1 beside it."""
    baseline, runs = _variant_runs(study, variant)
    steps = _steps(runs, baseline["target_acc"])
    paper = speedup.paper_speedup(runs[0].experiment_name)
    values = {s: baseline["steps_to_target"] / v - 1 for s, v in steps.items() if v}
    return Effect(values, len(steps), None if paper is None else paper - 1)


def _paper_max_acc(variant: str) -> float | None:
    """The paper's max accuracy of a variant, in percent; None where it gives none ("diverged")."""
    text = speedup.PAPER_IMAGENET.get(variant, ("", ""))[1].rstrip("%")
    return float(text) if text.replace(".", "", 1).isdigit() else None


@parametrized
def variant_gain(study: Study, test: str, control: str, what: str) -> Effect:
    """Per seed, `what` of variant `test` minus `control`: best (each seed's best accuracy, points) or
    steps (to the Fig. 3 target; a seed that never reaches it has no value)."""

    def per_seed(variant):
        baseline, runs = _variant_runs(study, variant)
        if what == "best":
            return {r.seed: 100 * max(r.test_acc) for r in runs if r.status == "finished"}
        return {s: float(v) for s, v in _steps(runs, baseline["target_acc"]).items() if v is not None}

    papers = [_paper_max_acc(test), _paper_max_acc(control)]
    paper = papers[0] - papers[1] if what == "best" and None not in papers else None
    return paired(per_seed(test), per_seed(control), paper=paper)


@parametrized
def diverges(study: Study, variant: str) -> Effect:
    """1 per seed that diverged, 0 per seed that did not."""
    runs = _variant_runs(study, variant)[1]
    return Effect({r.seed: float(r.diverged) for r in runs}, len(runs))


# Santurkar et al. 2018
@parametrized
def santurkar_gain(study: Study, experiment: str, key: str, test: str, control: str) -> Effect:
    """santurkar's table number `key` (its per-run numbers) of norm `test` minus `control`, at the
    experiment's lowest learning rate (its preset's), by seed; accuracies in points."""
    runs = [r for r in study.data if r.experiment_name == experiment and not r.stopped_early]
    lr = min(santurkar._lr(r) for r in runs)
    numbers = {(r.norm_kind, r.seed): santurkar._run_numbers(r) for r in runs if santurkar._lr(r) == lr}
    a, b = (
        {seed: n[key] for (norm, seed), n in numbers.items() if norm == kind and n[key] is not None}
        for kind in (test, control)
    )
    return paired(a, b, 100.0 if key.endswith("acc") else 1.0)


# Section 3.3: the LR x init grid, the weights' scale and the layer Jacobians
def _grid(study: Study, momentum: float) -> pd.DataFrame:
    """One row per norm.kind x seed x init std x lr of one protocol of the LR x init grid, its final
    accuracy as `value`."""
    cells = lr_init_grid.cell_rows(lr_init_grid.grid_cells(study.data))
    return pd.DataFrame(
        {"norm.kind": row["norm"], "seed": seed, "lr": row["lr"], "value": final}
        for row in cells
        if row["momentum"] == momentum
        for seed, final in zip(row["seeds"], row["final_acc_per_seed"], strict=True)
    )


@parametrized
def grid_cells_trained(study: Study, momentum: float) -> Effect:
    """Per seed, the grid cells (init std x lr) whose run trains (final accuracy >= the grid's level),
    BN's count minus no BN's."""
    grid = _grid(study, momentum)
    trains = grid.assign(value=grid["value"] >= lr_init_grid.AREA_LEVELS[0])
    return norm_gap(trains, "builtin", "none", agg="sum")


@parametrized
def grid_init_spread(study: Study, momentum: float) -> Effect:
    """Per seed, the spread (max - min) of the final accuracy across init stds at one lr, averaged over
    the lrs (the grid's init_spread table, seed by seed): no BN's minus BN's, in points."""
    by_lr = _grid(study, momentum).groupby(["norm.kind", "seed", "lr"])["value"]
    spread = by_lr.agg(lambda v: v.max() - v.min()).reset_index()
    # np.mean over the lrs: a groupby mean sums them differently, in the last bits
    return norm_gap(spread, agg=lambda v: np.mean(v.to_numpy()), scale=100.0)


def _scale_rows(study: Study, file: str, metric: str, last_step: bool = False):
    """The finished runs' rows of `metric` in the measurement file `file` (at the last step only)."""
    table = study.table(file)
    rows = table[(table["metric"] == metric) & (table["status"] == "finished")]
    return rows[rows["step"] == rows["step"].max()] if last_step else rows


def weight_gradient_orthogonality(study: Study) -> Effect:
    """|cos(W, dL/dW)| of the hidden layers (those a BN follows), mean over layers and measured steps:
    no BN's minus BN's, per seed."""
    rows = _scale_rows(study, "scale", "cos_weight_grad")
    rows = rows[rows["layer"].str.startswith("hidden")]
    return norm_gap(rows.assign(value=rows["value"].abs()))


def jacobian_towards_one(study: Study) -> Effect:
    """log10 of the hidden layers' median Jacobian singular value at the last step (mean over layers),
    BN's minus no BN's, per seed. The paper's size: BN's at 1, i.e. minus no BN's mean log10."""
    rows = _scale_rows(study, "jacobian", "p50", last_step=True)
    logs = rows.assign(value=np.log10(rows["value"]))
    none = logs[logs["norm.kind"] == "none"].groupby("seed")["value"].mean()
    return replace(norm_gap(logs, "builtin", "none"), paper=-float(none.mean()))


def jacobian_distance_to_one(study: Study) -> Effect:
    """|log10| of the hidden layers' median Jacobian singular value at the last step (mean over layers):
    no BN's minus BN's, per seed (positive: BN's singular values are nearer 1, from either side)."""
    rows = _scale_rows(study, "jacobian", "p50", last_step=True)
    return norm_gap(rows.assign(value=np.log10(rows["value"]).abs()))


# Section 3.4: dropout
@parametrized
def dropout_need(study: Study, rate: float) -> Effect:
    """Dropout's gain in final test accuracy (rate `rate` minus none) without BN minus with BN, points."""
    last = finished(runs_table.last_values(study.table(), "test_acc"))
    gain = {}
    for norm in ("none", "builtin"):
        with_rate, without = ({"norm__kind": norm, "model__dropout": p} for p in (rate, 0.0))
        gain[norm] = where_gain(last, with_rate, without).values
    return paired(gain["none"], gain["builtin"], 100.0)


def overfitting_gap(study: Study) -> Effect:
    """Without dropout: the train-test gap (eval-mode train accuracy, train_eval.csv, minus test accuracy,
    at the last evaluation) of no BN minus BN, points."""
    table = finished(study.table(runs_table.METRICS, "train_eval"))
    gaps = {}
    for norm in ("none", "builtin"):
        rows = runs_table.select(table, norm__kind=norm, model__dropout=0.0)
        train = runs_table.per_seed(runs_table.last_values(rows, "train_acc", "train_eval"))
        test = runs_table.per_seed(runs_table.last_values(rows, "test_acc"))
        gaps[norm] = paired(train, test).values
    return paired(gaps["none"], gaps["builtin"], 100.0)


# The batch papers (Wu & He, Ioffe, Hoffer et al., Wu & Johnson)
@parametrized
def precise_gain(study: Study, lr: float) -> Effect:
    """Final test accuracy (points, at the last step) with PreciseBN's statistics over the most batches
    minus with the moving averages (EMA), at learning rate `lr`."""
    rows = runs_table.select(finished(study.table("eval_stats")), optim__lr=lr)
    rows = rows[(rows["metric"] == "test_acc") & (rows["step"] == rows["step"].max())]
    top = rows.loc[rows["stats"] == "precise", "n"].max()
    return where_gain(rows, {"stats": "precise", "n": top}, {"stats": "ema", "n": 0}, scale=100.0)


# ---------------------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Claim:
    paper: str
    words: str  # the paper's claim in short
    setup: str  # ours: data, net, steps, seeds
    dirs: tuple[str, ...]  # under results/
    measure: Callable[[Study], Effect] = field(repr=False)
    effect: str  # what the number is, with its unit
    command: str
    figure: str  # under results/


def claims_of(rows: Sequence[tuple], **shared) -> list[Claim]:
    """A family of claims: `shared` gives the fields they all have, each row the others in Claim's order."""
    names = [f.name for f in fields(Claim) if f.name not in shared]
    return [Claim(**shared, **dict(zip(names, row, strict=True))) for row in rows]


def drawn(script: str, runs: str, out: str, figure: str) -> dict[str, str]:
    """A claim's command and figure: scripts/`script` draws the runs in results/`runs` into results/`out`."""
    return {
        "command": f"python scripts/{script}.py results/{runs} --out results/{out}",
        "figure": f"{out}/{figure}",
    }


BN = "Ioffe & Szegedy 2015"
FIG1 = "Fashion-MNIST, Fig. 1 MLP (3 x 100 sigmoid), batch 60, 50k steps"
MAKE_FIGURES = "python scripts/make_figures.py"
FIG1_A = "fig1a_test_accuracy_fashion_mnist.png"
D_DIR = "dropout_fig1_fashion_mnist"


def fig1_claims() -> list[Claim]:
    words = "BN trains faster and reaches a higher test accuracy (Fig. 1(a))"
    momentum, plain = f"{FIG1}, SGD + momentum 0.9", f"{FIG1}, plain SGD"
    gain = final_acc_gain({"norm__kind": "builtin"}, {"norm__kind": "none"})
    acc, steps = "final test acc, BN - no BN (points)", "steps to the no-BN best, no BN - BN"
    f10, search = "fig1_10seeds_fashion_mnist", "lr_search_fig1_fashion_mnist"

    def ten_seeds(protocol, setup, measure, effect, words=words, also=(), figure=FIG1_A):
        """A claim on one protocol of the 10-seed study (its runs, and the dirs `also` names)."""
        runs = f"{f10}/{protocol}"
        return Claim(BN, words, f"{setup}, 10 seeds", (runs, *also), measure, effect,
                     **drawn("make_figures", runs, f"{f10}/figures/{protocol}", figure))  # fmt: skip

    return [
        ten_seeds("momentum", momentum, gain, acc),
        ten_seeds("momentum", momentum, steps_to_no_bn_best(), steps),
        ten_seeds("plain_sgd", plain, gain, acc),
        ten_seeds("plain_sgd_300k", f"{FIG1} (no BN: 300k), plain SGD", steps_to_no_bn_best(True), steps,
                  also=(f"{f10}/plain_sgd",)),
        Claim(BN, words, f"{momentum}, 3 seeds", ("fig1_fashion_mnist",), gain, acc, MAKE_FIGURES,
              f"figures/{FIG1_A}"),
        Claim(BN, f"{words}, also against a tuned no-BN lr", f"{plain}, each at its best lr, 3 seeds",
              (f"{search}/best_lr_none", f"{search}/best_lr_builtin"), gain, acc,
              **drawn("make_figures", f"{search}/best_lr_*", f"{search}/figures", FIG1_A)),
        ten_seeds("momentum", momentum, activation_drift,
                  "range of the probed unit's median input, no BN - BN",
                  "BN keeps a unit's input distribution stable over training (Fig. 1(b,c))",
                  figure="fig1bc_activations_fashion_mnist.png"),
    ]  # fmt: skip


def speedup_claims() -> list[Claim]:
    """Section 4.2's claims on both families of fig2 runs: fig2cpu_* (and Inception at BN-x5's lr), fig2_*."""
    faster = "speedup per seed - 1"
    rows = [
        ("BN-Baseline reaches Inception's best in fewer steps (Fig. 3: 2.3x)",
         speedup_over_inception("bn_baseline"), faster),
        ("BN-x5 needs far fewer steps still (Fig. 3: 14.8x)", speedup_over_inception("bn_x5"), faster),
        ("BN-x30 is also much faster than Inception (Fig. 3: 11.5x)", speedup_over_inception("bn_x30"),
         faster),
        ("BN-x30 is slower than BN-x5 to reach Inception's best (Fig. 3)",
         variant_gain("bn_x30", "bn_x5", "steps"), "steps to the target, BN-x30 - BN-x5"),
        ("BN-x30 reaches a higher accuracy than BN-x5 (74.8% vs 73.0%)",
         variant_gain("bn_x30", "bn_x5", "best"), "max test acc, BN-x30 - BN-x5 (points)"),
        ("with BN the sigmoid net trains (69.8%); without, never above 0.1%",
         variant_gain("bn_x5_sigmoid", "sigmoid", "best"), "max test acc, BN-x5-Sigmoid - Sigmoid (points)"),
    ]  # fmt: skip
    control = ("Inception at BN-x5's learning rate diverges (section 4.2.2)", diverges("inception_x5"),
               "seeds diverged (1 each)")  # fmt: skip
    cpu, figure = "fig2cpu_fashion_mnist", "fig2_speedup_cpu_scale_fashion_mnist.png"
    return [
        *claims_of([*rows, control], paper=BN, dirs=(cpu,),
                   setup="inception at 1/16 width, Fashion-MNIST, whole schedules in 3k steps",
                   **drawn("speedup_table", cpu, f"{cpu}/figures", figure)),
        *claims_of(rows, paper=BN, dirs=("fig2_cpu_fashion_mnist",),
                   setup="full presets at 1/4 width, Fashion-MNIST, first 3k of 60k steps, 1 seed",
                   command=MAKE_FIGURES, figure="figures/fig2_speedup_fashion_mnist.png"),
    ]  # fmt: skip


def section_3_claims() -> list[Claim]:
    grid, jac = "lr_init_grid_fashion_mnist", "scale_jacobian_fashion_mnist"
    claims = []
    for momentum, name in ((0.9, "momentum 0.9"), (0.0, "plain SGD")):
        rows = [
            ("BN allows higher learning rates (section 3.3)", grid_cells_trained(momentum),
             "grid cells a seed trains in (>= 80%), BN - no BN"),
            ("BN reduces the dependence on the initial weights' scale (section 3.3)",
             grid_init_spread(momentum), "final acc spread across init stds at one lr, no BN - BN (points)"),
        ]  # fmt: skip
        figure = f"lr_init_grid_final_acc_{lr_init_grid.protocol_tag(momentum)}.png"
        setup = f"Fig. 1 MLP, Fashion-MNIST, 10k steps, 7 lrs x 4 init stds, 5 seeds, {name}"
        claims += claims_of(rows, paper=BN, setup=setup, dirs=(f"{grid}/runs",),
                            **drawn("lr_init_grid", f"{grid}/runs", f"{grid}/figures", figure))  # fmt: skip

    # A row: (the study under jac, words, measure, effect); pre_activation/'s Jacobians are of u -> BN(Wu).
    pre = "pre_activation/"
    jacobian = [
        ("", "scale invariance: a BN layer's weights get gradients orthogonal to them (section 3.3)",
         weight_gradient_orthogonality, "|cos(W, dL/dW)|, no BN - BN"),
        ("", "BN may lead the layer Jacobians to have singular values close to 1 (section 3.3)",
         jacobian_towards_one, "log10 median singular value, BN - no BN"),
        (pre, "... close to 1, for the map between normalised vectors u -> BN(Wu) (section 3.3)",
         jacobian_distance_to_one, "|log10 median singular value| of dBN(Wu)/du, no BN - BN"),
    ]  # fmt: skip
    for under, words, measure, effect in jacobian:
        runs, out = f"{jac}/{under}runs", f"{jac}/{under}figures"
        claims.append(Claim(BN, words, f"{FIG1}, momentum 0.9, 5 seeds", (runs,), measure, effect,
                            **drawn("scale_jacobian", runs, out, "scale_jacobian.png")))  # fmt: skip
    rows = [
        *(("BN reduces the need for dropout (section 3.4)", dropout_need(rate),
           f"dropout {rate}'s test acc gain, no BN - BN (points)") for rate in (0.2, 0.5)),
        ("BN regularizes: less overfitting without dropout (section 3.4)", overfitting_gap,
         "train (eval mode) - test acc gap, no BN - BN (points)"),
    ]  # fmt: skip
    dropout = drawn("dropout_table", f"{D_DIR}/runs", f"{D_DIR}/figures", "dropout.png")
    return claims + claims_of(rows, paper=BN, setup=f"{FIG1}, dropout after each hidden layer, 5 seeds",
                              dirs=(D_DIR,), **dropout)  # fmt: skip


def santurkar_claims() -> list[Claim]:
    folder = "santurkar_fashion_mnist"
    nets = {
        "santurkar_dln": "deep linear net 25 x 100, Fashion-MNIST, batch 128, SGD lr 0.01, 5k steps",
        "santurkar_vgg_cpu": "VGG-11 at 1/8 width, Fashion-MNIST, batch 128, SGD lr 0.1, 3k steps",
        "santurkar_fig1_mlp": f"{FIG1}, SGD + momentum 0.9",
    }
    # A row: (net, words, santurkar's number, test norm, control norm, effect, figure). Fig. 2's claim on
    # both nets that ran noisy BN: it trains (training mode, noise on) better than no BN, while its layer
    # inputs shift far more than BN's. Then each net's claims on the gradients and the loss landscape.
    noisy = (("santurkar_fig1_mlp", "final_acc", "final test acc"),
             ("santurkar_vgg_cpu", "final_train_acc", "final train acc (training mode)"))  # fmt: skip
    rows = [row for net, key, what in noisy for row in (
        (net, "noisy BN (unstable layer inputs) still trains better than no BN (Fig. 2)", key, "noisy_bn",
         "none", f"{what}, noisy BN - no BN (points)", "curves"),
        (net, "noisy BN's layer inputs shift far more than BN's (Fig. 2)", "dist_wasserstein_late",
         "noisy_bn", "builtin", "Wasserstein-1 shift (2nd half), noisy BN - BN", "ics_distribution"),
    )]  # fmt: skip
    rows += [row for net in nets for row in (
        (net, "BN does not reduce the gradient ICS; it may increase it (Fig. 3)", "ics_l2_late", "builtin",
         "none", "gradient ICS ||G - G'|| (2nd half), BN - no BN", "ics_gradient"),
        (net, "BN makes the loss change less along the gradient (Fig. 4a)", "loss_band_late", "none",
         "builtin", "loss band (2nd half), no BN - BN", "landscape"),
        (net, "BN makes the gradient more predictive: lower beta-smoothness (Fig. 4c)", "beta_late", "none",
         "builtin", "effective beta (2nd half), no BN - BN", "landscape"),
    )]  # fmt: skip
    return [
        Claim("Santurkar et al. 2018", words, f"{nets[net]}, 3 seeds", (f"{folder}/{net}",),
              santurkar_gain(net, key, test, control), effect,
              **drawn("santurkar_figures", folder, f"{folder}/figures", f"{net}_{figure}.png"))
        for net, words, key, test, control, effect, figure in rows
    ]  # fmt: skip


def batch_claims() -> list[Claim]:
    folder, vgg = "batch_fashion_mnist", "VGG-11 at 1/8 width"
    gn_setup = f"{vgg}, Fashion-MNIST, 30k examples, lr 0.0016 x batch, 3 seeds"
    ghost = "Fig. 1 MLP with BN, Fashion-MNIST, batch 1024 = 8 x 128 (lr x sqrt 8) vs 128"
    precise = "Fig. 1 MLP with BN, Fashion-MNIST, batch 60, 20k steps"
    bn, gn, brn, ghost_bn = ({"norm__kind": k} for k in ("builtin", "groupnorm", "batch_renorm", "ghost_bn"))
    few, paper_bn, paper_gn = {"data__sampler": "few_classes"}, GN_PAPER["builtin"], GN_PAPER["groupnorm"]
    brn_gain = "final test acc, Batch Renorm - BN (points)"

    def batch(size, **where):
        return {"data__batch_size": size, **where}

    # A row: (paper, words, setup, dir under folder, measure, effect, figure under folder/figures). The
    # error claims measure the accuracy difference the other way (control's minus test's).
    rows = [
        ("Wu & He 2018", "at batch 2, BN's error is far above GroupNorm's (34.7% vs 24.1%)", gn_setup,
         "gn_batch_size", last_metric_gain(gn | batch(2), bn | batch(2), paper_bn[2] - paper_gn[2]),
         "final test error at batch 2, BN - GN (points)", "gn_batch_size_error.png"),
        ("Wu & He 2018", "BN's error grows as the batch shrinks (batch 32 -> 4: 23.6% -> 27.3%)", gn_setup,
         "gn_batch_size", last_metric_gain(bn | batch(32), bn | batch(4), paper_bn[4] - paper_bn[32]),
         "final test error of BN, batch 4 - batch 32 (points)", "gn_batch_size_error.png"),
        ("Ioffe 2017", "on microbatches of 4, Batch Renorm beats BN", f"{vgg}, batch 4, 1 epoch, 3 seeds",
         "brn_small_batch", last_metric_gain(brn, bn), brn_gain, "brn_small_batch_curves.png"),
        ("Ioffe 2017", "on non-i.i.d. batches, Batch Renorm beats BN",
         f"{vgg}, batches of 32 from 2 classes, 3 seeds", "brn_non_iid",
         last_metric_gain(brn | few, bn | few), brn_gain, "brn_non_iid_curves.png"),
        ("Hoffer et al. 2017", "ghost batches narrow a large batch's generalization gap",
         f"{ghost}, 10 epochs, 3 seeds", "ghost_large_batch",
         last_metric_gain(ghost_bn | {"epochs": 10}, bn | batch(1024, epochs=10)),
         "final test acc at batch 1024, Ghost BN - BN (points)", "ghost_large_batch_curves.png"),
        ("Hoffer et al. 2017",
         "ghost BN with regime adaptation (8x the steps) matches or beats the small batch",
         f"{ghost}, 80 vs 10 epochs, 3 seeds", "ghost_large_batch",
         last_metric_gain(ghost_bn | {"epochs": 80}, batch(128)),
         "final test acc, Ghost BN 1024 (80 ep.) - BN 128 (10 ep.) (points)", "ghost_large_batch_curves.png"),
    ]  # fmt: skip
    rows += [
        ("Wu & Johnson 2021", "PreciseBN's statistics beat the moving averages (EMA)",
         f"{precise}, lr {lr}, 3 seeds", "precise_bn", precise_gain(lr),
         "final test acc, PreciseBN (largest N) - EMA (points)", "precise_bn_vs_n.png")
        for lr in (0.1, 0.01)
    ]  # fmt: skip
    return [
        Claim(paper, words, setup, (f"{folder}/{exp}",), measure, effect,
              **drawn("batch_effects", folder, f"{folder}/figures", figure))
        for paper, words, setup, exp, measure, effect, figure in rows
    ]  # fmt: skip


CLAIMS: tuple[Claim, ...] = (
    *fig1_claims(),
    *speedup_claims(),
    *section_3_claims(),
    *santurkar_claims(),
    *batch_claims(),
)


# ---------------------------------------------------------------------------------------------- the file


@dataclass(frozen=True)
class Row:
    claim: Claim
    effect: Effect | None  # None: pending (its run dirs are absent)

    @property
    def verdict(self) -> str:
        return "pending" if self.effect is None else verdict(self.effect)


def evaluate(results: Path, claims: Sequence[Claim] = CLAIMS) -> list[Row]:
    rows, studies = [], {}
    for claim in claims:
        dirs = tuple(results / d for d in claim.dirs)
        if not all(d.is_dir() for d in dirs):
            rows.append(Row(claim, None))
            continue
        study = studies.setdefault(dirs, Study(dirs))  # claims on the same dirs read them once
        rows.append(Row(claim, claim.measure(study)))
    return rows


def _number(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 100 else f"{x:,.0f}"


def effect_text(effect: Effect) -> str:
    mean, half = effect.interval
    if mean is None:
        return f"- (0/{effect.seeds})"
    interval = "" if half is None else f" +- {_number(half)}"
    return f"{'+' if mean > 0 else ''}{_number(mean)}{interval} ({effect.n}/{effect.seeds})"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


HEADER = """\
# Claims we test, and what the committed runs say

Generated by `{regenerate}` from the run dirs under results/ (do not edit by hand).

**{claims} claims: {counts}**{end}

## The verdict rule

{rule}

## Claims

| # | paper | claim (the paper's words, in short) | our setup | effect: mean +- 95% t-interval (seeds) \
| paper's size | verdict | command | figure |
|---|---|---|---|---|---|---|---|---|"""
PENDING_HEADER = """
## Pending

| paper | claim | our setup | effect | runs expected in |
|---|---|---|---|---|"""


def markdown(rows: Sequence[Row], regenerate: str) -> str:
    done = [r for r in rows if r.effect is not None]
    pending = [r for r in rows if r.effect is None]
    counts = ", ".join(f"{sum(r.verdict == v for r in done)} {v}" for v in VERDICTS)
    end = f"; {len(pending)} pending (their runs are not committed yet)." if pending else "."
    lines = [HEADER.format(regenerate=regenerate, claims=len(done), counts=counts, end=end, rule=RULE)]
    for i, row in enumerate(done, 1):
        c, e = row.claim, row.effect
        paper = "-" if e.paper is None else _number(e.paper)
        lines.append(
            f"| {i} | {c.paper} | {_cell(c.words)} | {_cell(c.setup)} | {_cell(c.effect)}: {effect_text(e)} "
            f"| {paper} | **{row.verdict}** | `{c.command}` | [{Path(c.figure).name}]({c.figure}) |"
        )
    if pending:
        lines.append(PENDING_HEADER)
        for row in pending:
            c = row.claim
            where = ", ".join(f"results/{d}" for d in c.dirs)
            lines.append(f"| {c.paper} | {_cell(c.words)} | {_cell(c.setup)} | {_cell(c.effect)} | {where} |")
    return "\n".join(lines) + "\n"
