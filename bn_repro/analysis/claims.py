"""The ledger: every claim we test, its effect over seeds, and a verdict by one stated rule.

    python scripts/claims.py --out results/CLAIMS.md

A claim is a `Claim`: the paper and its words in short, our setup, the run dirs under results/ it reads,
a `measure` from those runs to an `Effect` (one number per seed, oriented so that the paper predicts its
sign), the command that draws the study's figure and the figure. The measures reuse the numbers the
study's own tables compute (bn_repro/analysis/<study>.py), read from the runs table where the table is
the natural source. A claim whose run dirs are absent is listed as pending; adding one is one entry in
`CLAIMS` (e.g. a study that lands later: its dirs appear, its rows follow).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

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


def finished(runs):
    return runs[runs["status"] == "finished"]


def by_seed(rows, column: str) -> dict[int, float]:
    return runs_table.per_seed(rows, column)


def paired(
    a: dict[int, float], b: dict[int, float], scale: float = 1.0, paper: float | None = None
) -> Effect:
    """a - b per seed (the seeds in both), times `scale` (100: accuracy in points)."""
    seeds = sorted(set(a) & set(b))
    return Effect({s: scale * (a[s] - b[s]) for s in seeds}, len(set(a) | set(b)), paper)


def final_acc_gain(test: dict, control: dict, column: str = "summary.final_test_acc"):
    """The measure: final test accuracy (points) of the runs matching `test` minus `control`, by seed."""

    def measure(study: Study) -> Effect:
        runs = finished(study.runs)
        a, b = (by_seed(runs_table.select(runs, **where), column) for where in (test, control))
        return paired(a, b, 100.0)

    return measure


def last_metric_gain(test: dict, control: dict, metric: str = "test_acc", file: str = runs_table.METRICS):
    """Like final_acc_gain, from the metric's last row in its CSV (the batch papers' tables read it so)."""

    def measure(study: Study) -> Effect:
        last = finished(runs_table.last_values(study.table(file), metric, file))
        a, b = (by_seed(runs_table.select(last, **where), "value") for where in (test, control))
        return paired(a, b, 100.0)

    return measure


# ---------------------------------------------------------------------------------------------- Fig. 1


def steps_to_no_bn_best(no_bn_from_first_dir: bool = False):
    """Each seed's steps to the no-BN curve's best (the Fig. 1 table's target): no BN's minus BN's.
    A seed where BN reaches it and no BN never does is on the paper's side without a value.
    `no_bn_from_first_dir`: the no-BN runs are those of the claim's first dir only (a longer run of them)."""

    def measure(study: Study) -> Effect:
        first = study.dirs[0].resolve()

        def wanted(run):
            if run.norm_kind == "none":
                return not no_bn_from_first_dir or first in run.run.run_dir.resolve().parents
            return run.norm_kind == "builtin"

        runs = [r for r in study.data if wanted(r)]
        target = figures.fig1_rows(runs)[0]["target_acc"]
        rows = crossings.crossing_rows(crossings.split_curves(runs, lambda r: r.norm_kind), [target])
        steps = {row["curve"].split(" [")[0]: row["per_seed"] for row in rows}
        none, bn = steps["none"], steps["builtin"]
        both = {s: float(none[s] - bn[s]) for s in set(none) & set(bn) if none[s] and bn[s]}
        agree = sum(bn.get(s) is not None and (none[s] is None or none[s] > bn[s]) for s in none)
        return Effect(both, len(none), agree=agree)

    return measure


def activation_drift(study: Study) -> Effect:
    """Fig. 1(b,c): the range over training of the probed unit's median input (the unit the figure draws,
    last probed layer), no BN's minus BN's, per seed."""
    table = study.table("activations")
    rows = table[(table["metric"] == "p50") & table["norm.kind"].isin(["none", "builtin"])]
    rows = rows[(rows["layer"] == rows["layer"].max()) & (rows["unit"] == rows["unit"].min())]
    span = rows.groupby(["norm.kind", "seed"])["value"].agg(lambda v: v.max() - v.min())
    return paired(span["none"].to_dict(), span["builtin"].to_dict())


# ---------------------------------------------------------------------------------------------- Fig. 2/3


def _variants(study: Study):
    runs = speedup.load_runs(study.dirs)
    rows = {row["variant"]: row for row in speedup.fig3_table(runs)}
    groups = speedup.group_by_variant(runs)
    return rows, {name: [r for r in group if r.status == "finished"] for name, group in groups.items()}


def _family(study: Study) -> str:
    return speedup.family_of(speedup.load_runs(study.dirs)[0].experiment_name)


def speedup_over_inception(variant: str):
    """Each seed's speedup (the Fig. 3 table's: the baseline curve's steps to its best over the seed's
    own) minus 1; the paper's ImageNet speedup minus 1 beside it."""

    def measure(study: Study) -> Effect:
        rows, groups = _variants(study)
        name = _family(study) + variant
        target, base = rows[name]["target_acc"], rows[next(iter(rows))]["steps_to_target"]
        steps = {r.seed: speedup.steps_to_target(r.steps, r.test_acc, target) for r in groups[name]}
        values = {s: base / v - 1 for s, v in steps.items() if v}
        paper = speedup.paper_speedup(name)
        return Effect(values, len(steps), None if paper is None else paper - 1)

    return measure


def _paper_max_acc(name: str) -> float | None:
    text = speedup.PAPER_IMAGENET.get(speedup.variant_of(name), ("", ""))[1]
    return float(text.rstrip("%")) if text.rstrip("%").replace(".", "", 1).isdigit() else None


def variant_gain(test: str, control: str, what: str):
    """Per seed, `what` of variant `test` minus `control`: best (each seed's best accuracy, points) or
    steps (to the Fig. 3 target; a seed that never reaches it has no value)."""

    def measure(study: Study) -> Effect:
        rows, groups = _variants(study)
        family = _family(study)
        target = next(iter(rows.values()))["target_acc"]

        def per_seed(name):
            if what == "best":
                return {r.seed: 100 * max(r.test_acc) for r in groups[family + name]}
            steps = {
                r.seed: speedup.steps_to_target(r.steps, r.test_acc, target) for r in groups[family + name]
            }
            return {s: float(v) for s, v in steps.items() if v is not None}

        paper = None
        if what == "best" and None not in (_paper_max_acc(test), _paper_max_acc(control)):
            paper = _paper_max_acc(test) - _paper_max_acc(control)
        return paired(per_seed(test), per_seed(control), paper=paper)

    return measure


def diverges(variant: str):
    """1 per seed that diverged, 0 per seed that did not."""

    def measure(study: Study) -> Effect:
        runs = [r for r in speedup.load_runs(study.dirs) if r.experiment_name == _family(study) + variant]
        return Effect({r.seed: float(r.diverged) for r in runs}, len(runs))

    return measure


# ---------------------------------------------------------------------------------------------- Santurkar


def santurkar_gain(experiment: str, key: str, test: str, control: str):
    """santurkar's table number `key` (its per-run numbers) of norm `test` minus `control`, at the
    experiment's lowest learning rate (its preset's), by seed; accuracies in points."""

    def measure(study: Study) -> Effect:
        runs = [r for r in study.data if r.experiment_name == experiment and not r.stopped_early]
        lr = min(santurkar._lr(r) for r in runs)
        numbers = {(r.norm_kind, r.seed): santurkar._run_numbers(r) for r in runs if santurkar._lr(r) == lr}
        a, b = ({s: n[key] for (k, s), n in numbers.items() if k == norm and n[key] is not None}
                for norm in (test, control))  # fmt: skip
        return paired(a, b, 100.0 if key.endswith("acc") else 1.0)

    return measure


# ---------------------------------------------------------------------------------------------- section 3.3


def _grid_per_seed(study: Study, momentum: float) -> dict[str, dict[int, list[dict]]]:
    """{norm: {seed: [{init_std, lr, final}]}} of one protocol of the LR x init grid."""
    out: dict[str, dict[int, list[dict]]] = {}
    for row in lr_init_grid.cell_rows(lr_init_grid.grid_cells(study.data)):
        if row["momentum"] == momentum:
            for seed, final in zip(row["seeds"], row["final_acc_per_seed"], strict=True):
                cell = {"init_std": row["init_std"], "lr": row["lr"], "final": final}
                out.setdefault(row["norm"], {}).setdefault(seed, []).append(cell)
    return out


def grid_cells_trained(momentum: float):
    """Per seed, the grid cells (init std x lr) whose run trains (final accuracy >= the grid's level),
    BN's count minus no BN's."""

    def measure(study: Study) -> Effect:
        level = lr_init_grid.AREA_LEVELS[0]
        grid = _grid_per_seed(study, momentum)
        count = {n: {s: sum(c["final"] >= level for c in cells) for s, cells in seeds.items()}
                 for n, seeds in grid.items()}  # fmt: skip
        return paired(count["builtin"], count["none"])

    return measure


def grid_init_spread(momentum: float):
    """Per seed, the spread (max - min) of the final accuracy across init stds at one lr, averaged over
    the lrs (the grid's init_spread table, seed by seed): no BN's minus BN's, in points."""

    def measure(study: Study) -> Effect:
        def spread(cells):
            lrs = sorted({c["lr"] for c in cells})
            finals = [[c["final"] for c in cells if c["lr"] == lr] for lr in lrs]
            return float(np.mean([max(f) - min(f) for f in finals]))

        grid = _grid_per_seed(study, momentum)
        none, bn = ({s: spread(c) for s, c in grid[n].items()} for n in ("none", "builtin"))
        return paired(none, bn, 100.0)

    return measure


def _scale_rows(study: Study, file: str, metric: str):
    table = study.table(file)
    return table[(table["metric"] == metric) & (table["status"] == "finished")]


def weight_gradient_orthogonality(study: Study) -> Effect:
    """|cos(W, dL/dW)| of the hidden layers (those a BN follows), mean over layers and measured steps:
    no BN's minus BN's, per seed."""
    rows = _scale_rows(study, "scale", "cos_weight_grad")
    rows = rows[rows["layer"].str.startswith("hidden")]
    mean = rows.assign(value=rows["value"].abs()).groupby(["norm.kind", "seed"])["value"].mean()
    return paired(mean["none"].to_dict(), mean["builtin"].to_dict())


def jacobian_towards_one(study: Study) -> Effect:
    """log10 of the hidden layers' median Jacobian singular value at the last step (mean over layers),
    BN's minus no BN's, per seed. The paper's size: BN's at 1, i.e. minus no BN's mean log10."""
    rows = _scale_rows(study, "jacobian", "p50")
    rows = rows[rows["step"] == rows["step"].max()]
    logs = rows.assign(value=np.log10(rows["value"])).groupby(["norm.kind", "seed"])["value"].mean()
    effect = paired(logs["builtin"].to_dict(), logs["none"].to_dict())
    return Effect(effect.values, effect.seeds, paper=-float(logs["none"].mean()))


def jacobian_distance_to_one(study: Study) -> Effect:
    """|log10| of the hidden layers' median Jacobian singular value at the last step (mean over layers):
    no BN's minus BN's, per seed (positive: BN's singular values are nearer 1, from either side)."""
    rows = _scale_rows(study, "jacobian", "p50")
    rows = rows[rows["step"] == rows["step"].max()]
    logs = rows.assign(value=np.log10(rows["value"]).abs()).groupby(["norm.kind", "seed"])["value"].mean()
    return paired(logs["none"].to_dict(), logs["builtin"].to_dict())


# ---------------------------------------------------------------------------------------------- section 3.4


def dropout_need(rate: float):
    """Dropout's gain in final test accuracy (rate `rate` minus none) without BN minus with BN, points."""

    def measure(study: Study) -> Effect:
        last = finished(runs_table.last_values(study.table(), "test_acc"))

        def gain(norm):
            rows = runs_table.select(last, norm__kind=norm)
            with_rate, without = (
                by_seed(runs_table.select(rows, model__dropout=p), "value") for p in (rate, 0.0)
            )
            return paired(with_rate, without).values

        return paired(gain("none"), gain("builtin"), 100.0)

    return measure


def overfitting_gap(study: Study) -> Effect:
    """Without dropout: the train-test gap (eval-mode train accuracy, train_eval.csv, minus test accuracy,
    at the last evaluation) of no BN minus BN, points."""
    table = study.table(runs_table.METRICS, "train_eval")
    gaps = {}
    for norm in ("none", "builtin"):
        rows = runs_table.select(finished(table), norm__kind=norm, model__dropout=0.0)
        train = by_seed(runs_table.last_values(rows, "train_acc", "train_eval"), "value")
        test = by_seed(runs_table.last_values(rows, "test_acc"), "value")
        gaps[norm] = paired(train, test).values
    return paired(gaps["none"], gaps["builtin"], 100.0)


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


BN = "Ioffe & Szegedy 2015"
FIG1 = "Fashion-MNIST, Fig. 1 MLP (3 x 100 sigmoid), batch 60, 50k steps"
F10 = "fig1_10seeds_fashion_mnist"
MAKE_FIGURES = "python scripts/make_figures.py"
FIG1_A = "fig1a_test_accuracy_fashion_mnist.png"
ACC_GAIN = "final test acc, BN - no BN (points)"
BN_VS_NONE = final_acc_gain({"norm__kind": "builtin"}, {"norm__kind": "none"})


def speedup_claims(folder: str, setup: str, command: str, figure: str, control: bool) -> list[Claim]:
    """The section 4.2 claims on one family of fig2 runs (fig2_* or fig2cpu_*)."""

    def claim(words, measure, effect):
        return Claim(BN, words, setup, (folder,), measure, effect, command, figure)

    claims = [
        claim("BN-Baseline reaches Inception's best in fewer steps (Fig. 3: 2.3x)",
              speedup_over_inception("bn_baseline"), "speedup per seed - 1"),
        claim("BN-x5 needs far fewer steps still (Fig. 3: 14.8x)", speedup_over_inception("bn_x5"),
              "speedup per seed - 1"),
        claim("BN-x30 is also much faster than Inception (Fig. 3: 11.5x)", speedup_over_inception("bn_x30"),
              "speedup per seed - 1"),
        claim("BN-x30 is slower than BN-x5 to reach Inception's best (Fig. 3)",
              variant_gain("bn_x30", "bn_x5", "steps"), "steps to the target, BN-x30 - BN-x5"),
        claim("BN-x30 reaches a higher accuracy than BN-x5 (74.8% vs 73.0%)",
              variant_gain("bn_x30", "bn_x5", "best"), "max test acc, BN-x30 - BN-x5 (points)"),
        claim("with BN the sigmoid net trains (69.8%); without, never above 0.1%",
              variant_gain("bn_x5_sigmoid", "sigmoid", "best"),
                  "max test acc, BN-x5-Sigmoid - Sigmoid (points)"),
    ]  # fmt: skip
    if control:
        claims.append(claim("Inception at BN-x5's learning rate diverges (section 4.2.2)",
                            diverges("inception_x5"), "seeds diverged (1 each)"))  # fmt: skip
    return claims


SANTURKAR = "Santurkar et al. 2018"
S_DIR = "santurkar_fashion_mnist"
S_CMD = f"python scripts/santurkar_figures.py results/{S_DIR} --out results/{S_DIR}/figures"
S_SETUPS = {
    "santurkar_dln": "deep linear net 25 x 100, Fashion-MNIST, batch 128, SGD lr 0.01, 5k steps",
    "santurkar_vgg_cpu": "VGG-11 at 1/8 width, Fashion-MNIST, batch 128, SGD lr 0.1, 3k steps",
    "santurkar_fig1_mlp": f"{FIG1}, SGD + momentum 0.9",
}


def santurkar_claims() -> list[Claim]:
    def claim(exp, words, key, test, control, effect, figure):
        return Claim(SANTURKAR, words, S_SETUPS[exp] + ", 3 seeds", (f"{S_DIR}/{exp}",),
                     santurkar_gain(exp, key, test, control), effect, S_CMD,
                         f"{S_DIR}/figures/{exp}_{figure}.png")  # fmt: skip

    # Fig. 2's claim on both nets that ran noisy BN: it trains (training mode, noise on) better than no
    # BN, while its layer inputs shift far more than BN's.
    claims = []
    for exp, key, what in (
        ("santurkar_fig1_mlp", "final_acc", "final test acc"),
        ("santurkar_vgg_cpu", "final_train_acc", "final train acc (training mode)"),
    ):
        claims += [
            claim(exp, "noisy BN (unstable layer inputs) still trains better than no BN (Fig. 2)", key,
                  "noisy_bn", "none", f"{what}, noisy BN - no BN (points)", "curves"),
            claim(exp, "noisy BN's layer inputs shift far more than BN's (Fig. 2)", "dist_wasserstein_late",
                  "noisy_bn", "builtin", "Wasserstein-1 shift (2nd half), noisy BN - BN", "ics_distribution"),
        ]  # fmt: skip
    for exp in S_SETUPS:
        claims += [
            claim(exp, "BN does not reduce the gradient ICS; it may increase it (Fig. 3)", "ics_l2_late",
                  "builtin", "none", "gradient ICS ||G - G'|| (2nd half), BN - no BN", "ics_gradient"),
            claim(exp, "BN makes the loss change less along the gradient (Fig. 4a)", "loss_band_late",
                  "none", "builtin", "loss band (2nd half), no BN - BN", "landscape"),
            claim(exp, "BN makes the gradient more predictive: lower beta-smoothness (Fig. 4c)", "beta_late",
                  "none", "builtin", "effective beta (2nd half), no BN - BN", "landscape"),
        ]  # fmt: skip
    return claims


B_DIR = "batch_fashion_mnist"
B_CMD = f"python scripts/batch_effects.py results/{B_DIR} --out results/{B_DIR}/figures"
B_VGG = "VGG-11 at 1/8 width, Fashion-MNIST, 30k examples, lr 0.0016 x batch"


def gn_error_gap(test: dict, control: dict, paper: float):
    """Final test error (points) of `test` minus `control` (the batch table's: last metrics row)."""
    acc = last_metric_gain(control, test)  # error difference = accuracy difference the other way

    def measure(study: Study) -> Effect:
        effect = acc(study)
        return Effect(effect.values, effect.seeds, paper)

    return measure


def batch_claims() -> list[Claim]:
    def claim(paper, words, setup, exp, measure, effect, figure):
        return Claim(
            paper, words, setup, (f"{B_DIR}/{exp}",), measure, effect, B_CMD, f"{B_DIR}/figures/{figure}"
        )

    gn, brn = "Wu & He 2018", "Ioffe 2017"
    hoffer, precise = "Hoffer et al. 2017", "Wu & Johnson 2021"
    ghost = "Fig. 1 MLP with BN, Fashion-MNIST, batch 1024 = 8 x 128 (lr x sqrt 8) vs 128"
    precise_setup = "Fig. 1 MLP with BN, Fashion-MNIST, batch 60, 20k steps"

    def renorm(test_where, control_where):
        return last_metric_gain(
            {"norm__kind": "batch_renorm", **test_where}, {"norm__kind": "builtin", **control_where}
        )

    def precise_gain(lr):
        def measure(study):
            table = study.table("eval_stats")
            rows = runs_table.select(finished(table), optim__lr=lr)
            rows = rows[(rows["metric"] == "test_acc") & (rows["step"] == rows["step"].max())]
            top = rows.loc[rows["stats"] == "precise", "n"].max()
            a, b = (
                by_seed(rows[(rows["stats"] == k) & (rows["n"] == n)], "value")
                for k, n in (("precise", top), ("ema", 0))
            )
            return paired(a, b, 100.0)

        return measure

    return [
        claim(gn, "at batch 2, BN's error is far above GroupNorm's (34.7% vs 24.1%)", f"{B_VGG}, 3 seeds",
              "gn_batch_size", gn_error_gap({"norm__kind": "builtin", "data__batch_size": 2},
                                            {"norm__kind": "groupnorm", "data__batch_size": 2},
                                            GN_PAPER["builtin"][2] - GN_PAPER["groupnorm"][2]),
              "final test error at batch 2, BN - GN (points)", "gn_batch_size_error.png"),
        claim(gn, "BN's error grows as the batch shrinks (batch 32 -> 4: 23.6% -> 27.3%)",
            f"{B_VGG}, 3 seeds",
              "gn_batch_size", gn_error_gap({"norm__kind": "builtin", "data__batch_size": 4},
                                            {"norm__kind": "builtin", "data__batch_size": 32},
                                            GN_PAPER["builtin"][4] - GN_PAPER["builtin"][32]),
              "final test error of BN, batch 4 - batch 32 (points)", "gn_batch_size_error.png"),
        claim(brn, "on microbatches of 4, Batch Renorm beats BN",
            f"{B_VGG.split(',')[0]}, batch 4, 1 epoch, 3 seeds",
              "brn_small_batch", renorm({}, {}), "final test acc, Batch Renorm - BN (points)",
              "brn_small_batch_curves.png"),
        claim(brn, "on non-i.i.d. batches, Batch Renorm beats BN",
              f"{B_VGG.split(',')[0]}, batches of 32 from 2 classes, 3 seeds", "brn_non_iid",
              renorm({"data__sampler": "few_classes"}, {"data__sampler": "few_classes"}),
              "final test acc, Batch Renorm - BN (points)", "brn_non_iid_curves.png"),
        claim(hoffer, "ghost batches narrow a large batch's generalization gap",
            f"{ghost}, 10 epochs, 3 seeds",
              "ghost_large_batch", last_metric_gain({"norm__kind": "ghost_bn", "epochs": 10},
                                                    {"norm__kind": "builtin", "data__batch_size": 1024,
                                                        "epochs": 10}),
              "final test acc at batch 1024, Ghost BN - BN (points)", "ghost_large_batch_curves.png"),
        claim(hoffer, "ghost BN with regime adaptation (8x the steps) matches or beats the small batch",
              f"{ghost}, 80 vs 10 epochs, 3 seeds", "ghost_large_batch",
              last_metric_gain({"norm__kind": "ghost_bn", "epochs": 80}, {"data__batch_size": 128}),
              "final test acc, Ghost BN 1024 (80 ep.) - BN 128 (10 ep.) (points)",
                  "ghost_large_batch_curves.png"),
        claim(precise, "PreciseBN's statistics beat the moving averages (EMA)",
            f"{precise_setup}, lr 0.1, 3 seeds",
              "precise_bn", precise_gain(0.1), "final test acc, PreciseBN (largest N) - EMA (points)",
              "precise_bn_vs_n.png"),
        claim(precise, "PreciseBN's statistics beat the moving averages (EMA)",
            f"{precise_setup}, lr 0.01, 3 seeds",
              "precise_bn", precise_gain(0.01), "final test acc, PreciseBN (largest N) - EMA (points)",
              "precise_bn_vs_n.png"),
    ]  # fmt: skip


G_DIR = "lr_init_grid_fashion_mnist"
G_CMD = f"python scripts/lr_init_grid.py results/{G_DIR}/runs --out results/{G_DIR}/figures"
G_SETUP = "Fig. 1 MLP, Fashion-MNIST, 10k steps, 7 lrs x 4 init stds, 5 seeds"
J_DIR = "scale_jacobian_fashion_mnist"
J_CMD = f"python scripts/scale_jacobian.py results/{J_DIR}/runs --out results/{J_DIR}/figures"
J_PRE_CMD = (
    f"python scripts/scale_jacobian.py results/{J_DIR}/pre_activation/runs "
    f"--out results/{J_DIR}/pre_activation/figures"
)
D_DIR = "dropout_fig1_fashion_mnist"
D_SETUP = f"{FIG1}, dropout after each hidden layer, 5 seeds"
D_CMD = f"python scripts/dropout_table.py results/{D_DIR}/runs --out results/{D_DIR}/figures"


def section_3_claims() -> list[Claim]:
    claims = []
    for momentum, tag, name in ((0.9, "momentum0.9", "momentum 0.9"), (0.0, "plain_sgd", "plain SGD")):
        figure = f"{G_DIR}/figures/lr_init_grid_final_acc_{tag}.png"
        claims += [
            Claim(BN, "BN allows higher learning rates (section 3.3)", f"{G_SETUP}, {name}",
                (f"{G_DIR}/runs",),
                  grid_cells_trained(momentum), "grid cells a seed trains in (>= 80%), BN - no BN",
                      G_CMD, figure),
            Claim(BN, "BN reduces the dependence on the initial weights' scale (section 3.3)",
                  f"{G_SETUP}, {name}", (f"{G_DIR}/runs",), grid_init_spread(momentum),
                  "final acc spread across init stds at one lr, no BN - BN (points)", G_CMD, figure),
        ]  # fmt: skip
    figure = f"{J_DIR}/figures/scale_jacobian.png"
    setup = f"{FIG1}, momentum 0.9, 5 seeds"
    claims += [
        Claim(BN,
            "scale invariance: a BN layer's weights get gradients orthogonal to them (section 3.3)", setup,
              (f"{J_DIR}/runs",), weight_gradient_orthogonality, "|cos(W, dL/dW)|, no BN - BN", J_CMD,
                  figure),
        Claim(BN, "BN may lead the layer Jacobians to have singular values close to 1 (section 3.3)", setup,
              (f"{J_DIR}/runs",), jacobian_towards_one, "log10 median singular value, BN - no BN", J_CMD,
                  figure),
        Claim(BN, "... close to 1, for the map between normalised vectors u -> BN(Wu) (section 3.3)", setup,
              (f"{J_DIR}/pre_activation/runs",), jacobian_distance_to_one,
              "|log10 median singular value| of dBN(Wu)/du, no BN - BN", J_PRE_CMD,
              f"{J_DIR}/pre_activation/figures/scale_jacobian.png"),
    ]  # fmt: skip
    for rate in (0.2, 0.5):
        claims.append(Claim(BN, "BN reduces the need for dropout (section 3.4)", D_SETUP, (D_DIR,),
            dropout_need(rate),
                            f"dropout {rate}'s test acc gain, no BN - BN (points)", D_CMD,
                                f"{D_DIR}/figures/dropout.png"))  # fmt: skip
    claims.append(Claim(BN, "BN regularizes: less overfitting without dropout (section 3.4)", D_SETUP,
        (D_DIR,),
                        overfitting_gap, "train (eval mode) - test acc gap, no BN - BN (points)", D_CMD,
                        f"{D_DIR}/figures/dropout.png"))  # fmt: skip
    return claims


def fig1_claims() -> list[Claim]:
    def cmd(folder):
        study, protocol = folder.split("/")
        return f"{MAKE_FIGURES} results/{folder} --out results/{study}/figures/{protocol}"

    words = "BN trains faster and reaches a higher test accuracy (Fig. 1(a))"
    lr_search = "lr_search_fig1_fashion_mnist"
    return [
        Claim(BN, words, f"{FIG1}, SGD + momentum 0.9, 10 seeds", (f"{F10}/momentum",), BN_VS_NONE, ACC_GAIN,
              cmd(f"{F10}/momentum"), f"{F10}/figures/momentum/{FIG1_A}"),
        Claim(BN, words, f"{FIG1}, SGD + momentum 0.9, 10 seeds", (f"{F10}/momentum",), steps_to_no_bn_best(),
              "steps to the no-BN best, no BN - BN", cmd(f"{F10}/momentum"),
                  f"{F10}/figures/momentum/{FIG1_A}"),
        Claim(BN, words, f"{FIG1}, plain SGD, 10 seeds", (f"{F10}/plain_sgd",), BN_VS_NONE, ACC_GAIN,
              cmd(f"{F10}/plain_sgd"), f"{F10}/figures/plain_sgd/{FIG1_A}"),
        Claim(BN, words, f"{FIG1} (no BN: 300k), plain SGD, 10 seeds",
              (f"{F10}/plain_sgd_300k", f"{F10}/plain_sgd"), steps_to_no_bn_best(no_bn_from_first_dir=True),
              "steps to the no-BN best, no BN - BN", cmd(f"{F10}/plain_sgd_300k"),
              f"{F10}/figures/plain_sgd_300k/{FIG1_A}"),
        Claim(BN, words, f"{FIG1}, SGD + momentum 0.9, 3 seeds", ("fig1_fashion_mnist",), BN_VS_NONE,
            ACC_GAIN,
              MAKE_FIGURES, f"figures/{FIG1_A}"),
        Claim(BN, words + ", also against a tuned no-BN lr",
            f"{FIG1}, plain SGD, each at its best lr, 3 seeds",
              (f"{lr_search}/best_lr_none", f"{lr_search}/best_lr_builtin"), BN_VS_NONE, ACC_GAIN,
              f"{MAKE_FIGURES} results/{lr_search}/best_lr_* --out results/{lr_search}/figures",
              f"{lr_search}/figures/{FIG1_A}"),
        Claim(BN, "BN keeps a unit's input distribution stable over training (Fig. 1(b,c))",
              f"{FIG1}, SGD + momentum 0.9, 10 seeds", (f"{F10}/momentum",), activation_drift,
              "range of the probed unit's median input, no BN - BN", cmd(f"{F10}/momentum"),
              f"{F10}/figures/momentum/fig1bc_activations_fashion_mnist.png"),
    ]  # fmt: skip


CLAIMS: tuple[Claim, ...] = (
    *fig1_claims(),
    *speedup_claims("fig2cpu_fashion_mnist",
        "inception at 1/16 width, Fashion-MNIST, whole schedules in 3k steps",
                    "python scripts/speedup_table.py results/fig2cpu_fashion_mnist"
                    " --out results/fig2cpu_fashion_mnist/figures",
                    "fig2cpu_fashion_mnist/figures/fig2_speedup_cpu_scale_fashion_mnist.png", control=True),
    *speedup_claims("fig2_cpu_fashion_mnist",
        "full presets at 1/4 width, Fashion-MNIST, first 3k of 60k steps, 1 seed",
                    MAKE_FIGURES, "figures/fig2_speedup_fashion_mnist.png", control=False),
    *section_3_claims(),
    *santurkar_claims(),
    *batch_claims(),
)  # fmt: skip


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


def markdown(rows: Sequence[Row], regenerate: str) -> str:
    done = [r for r in rows if r.effect is not None]
    counts = ", ".join(f"{sum(r.verdict == v for r in done)} {v}" for v in VERDICTS)
    lines = [
        "# Claims we test, and what the committed runs say",
        "",
        f"Generated by `{regenerate}` from the run dirs under results/ (do not edit by hand).",
        "",
        f"**{len(done)} claims: {counts}**"
        + (
            f"; {len(rows) - len(done)} pending (their runs are not committed yet)."
            if len(done) < len(rows)
            else "."
        ),
        "",
        "## The verdict rule",
        "",
        RULE,
        "",
        "## Claims",
        "",
        "| # | paper | claim (the paper's words, in short) | our setup "
        "| effect: mean +- 95% t-interval (seeds) | paper's size | verdict | command | figure |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for i, row in enumerate(done, 1):
        c, e = row.claim, row.effect
        paper = "-" if e.paper is None else _number(e.paper)
        lines.append(
            f"| {i} | {c.paper} | {_cell(c.words)} | {_cell(c.setup)} | {_cell(c.effect)}: {effect_text(e)} "
            f"| {paper} | **{row.verdict}** | `{c.command}` | [{Path(c.figure).name}]({c.figure}) |"
        )
    pending = [r for r in rows if r.effect is None]
    if pending:
        lines += [
            "",
            "## Pending",
            "",
            "| paper | claim | our setup | effect | runs expected in |",
            "|---|---|---|---|---|",
        ]
        for row in pending:
            c = row.claim
            where = ", ".join(f"results/{d}" for d in c.dirs)
            lines.append(f"| {c.paper} | {_cell(c.words)} | {_cell(c.setup)} | {_cell(c.effect)} | {where} |")
    return "\n".join(lines) + "\n"
