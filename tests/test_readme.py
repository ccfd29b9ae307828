"""README.md held to the repository: every result it states equals the committed table it cites, its
preset list is configs/experiment/, every `python -m bn_repro.train` command in it composes, and every
link in it (and in the docs beside the code) resolves.

The numbers: CLAIMS pairs a regex that finds a phrase of the README (whitespace collapsed, code blocks
and HTML comments left out) with where its number comes from: a cell of a committed markdown table
(file, row, column), a line of a committed file, or a value computed from the committed run files
(times, counts). The number the README writes there must be that cell's number, as a whole token. And
every result-like token of the README's prose (a percentage, an interval "a +- b", a ratio "4.7x", a time
"56 s" / "56 minutes") must lie inside one of the claimed numbers, or in NOT_RESULTS with the reason: a
number added to the README without a source fails here.
"""

from __future__ import annotations

import csv
import functools
import glob
import json
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import CONFIG_DIR, REPO, compose_config

README = REPO / "README.md"
RESULTS = REPO / "results"
# The docs whose links are checked besides README.md (the detail moved out of it).
DOCS = [README, RESULTS / "README.md", REPO / "configs" / "README.md",
        *sorted((REPO / "bn_repro").glob("**/README.md"))]  # fmt: skip

F1M = "results/fig1_10seeds_fashion_mnist/figures/momentum/fig1_table_fashion_mnist.md"
F1P = "results/fig1_10seeds_fashion_mnist/figures/plain_sgd/fig1_table_fashion_mnist.md"
F1STEPS = "results/fig1_10seeds_fashion_mnist/figures/plain_sgd_300k/steps_to_accuracy.md"
F3 = "results/fig2cpu_fashion_mnist/figures/fig3_table.md"
KS = "results/fig2cpu_fashion_mnist/figures/kernel_spread.md"
LRT = "results/lr_search_fig1_fashion_mnist/figures/fig1_table_fashion_mnist.md"
LRS = "results/lr_search_fig1_fashion_mnist/search.md"
SM = "results/santurkar_fashion_mnist/figures/santurkar_fig1_mlp_table.md"
SV = "results/santurkar_fashion_mnist/figures/santurkar_vgg_cpu_table.md"
BT = "results/batch_fashion_mnist/figures/batch_tables.md"
CK = "results/bench_checkpoint_cpu.md"
TT = "results/bench_tests_cpu.md"
GA = "results/lr_init_grid_fashion_mnist/figures/lr_init_grid_area.md"
GS = "results/lr_init_grid_fashion_mnist/figures/lr_init_grid_summary.md"

N = r"[+-]?\d[\d,]*(?:\.\d+)?"  # a number as the tables write it: 10,500  88.54  +0.001
PM = rf"{N}%? \+- {N}%?"  # an interval: 88.54% +- 0.28


# ---------------------------------------------------------------------------------------------------
# Reading the committed tables


def _split_row(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def md_tables(path: str) -> list[tuple[list[str], list[list[str]]]]:
    """Every pipe table of a committed markdown file: (header, rows)."""
    return md_tables_in((REPO / path).read_text())


def _header(line: str, columns: int) -> list[str]:
    """A header row; a header that names a quantity |x| (pipes in the name) has more cells than the
    separator has columns: such cells are joined back."""
    cells, out, i = _split_row(line), [], 0
    while i < len(cells):
        if len(cells) > columns and cells[i] == "" and i + 2 < len(cells) and cells[i + 2] == "":
            out.append(f"|{cells[i + 1]}|")
            i += 3
        else:
            out.append(cells[i])
            i += 1
    return out


def md_tables_in(text: str) -> list[tuple[list[str], list[list[str]]]]:
    tables, lines, i = [], text.splitlines(), 0
    while i < len(lines) - 1:
        if lines[i].startswith("|") and re.match(r"^\|[\s|:-]+\|$", lines[i + 1].strip()):
            columns = len(_split_row(lines[i + 1]))
            header, rows, i = _header(lines[i], columns), [], i + 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(_split_row(lines[i]))
                i += 1
            tables.append((header, rows))
        else:
            i += 1
    return tables


def _column(header: list[str], column: str) -> int | None:
    exact = [i for i, h in enumerate(header) if h == column]
    loose = [i for i, h in enumerate(header) if column in h]
    found = exact or loose
    if len(found) > 1:
        raise AssertionError(f"column {column!r} is ambiguous in {header}")
    return found[0] if found else None


def _row_matches(row: list[str], header: list[str], selector: str | dict[str, str]) -> bool:
    if isinstance(selector, str):  # the first cell: exactly, or followed by a bracketed note
        return row[0] == selector or row[0].startswith(selector + " [")
    for column, value in selector.items():
        index = _column(header, column)
        if index is None or row[index] != value:
            return False
    return True


@dataclass(frozen=True)
class Cell:
    """A cell of a committed markdown table: the table with a column `column` (exact header, else a
    unique substring of one) and, with `table`, also a column containing that text; the row whose first
    cell is `row` (or whose cells match a {column: value} dict). It must be exactly one cell."""

    path: str
    row: str | dict[str, str]
    column: str
    table: str | None = None

    def text(self) -> str:
        exact, loose = [], []
        for header, rows in md_tables(self.path):
            index = _column(header, self.column)
            if index is None or (self.table and not any(self.table in h for h in header)):
                continue
            cells = [r[index] for r in rows if _row_matches(r, header, self.row)]
            (exact if header[index] == self.column else loose).extend(cells)
        found = exact or loose  # a column named exactly so wins over one whose name contains it
        assert len(found) == 1, f"{self}: {len(found)} cells match"
        return found[0]

    def agrees(self, stated: str) -> bool:
        return _token_in(stated, self.text())

    def __str__(self) -> str:
        return f"{self.path} [{self.row}] [{self.column}]"


@dataclass(frozen=True)
class Line:
    """A line of a committed file that contains `contains`; the stated number must be a token of it."""

    path: str
    contains: str

    def text(self) -> str:
        lines = [x for x in (REPO / self.path).read_text().splitlines() if self.contains in x]
        assert len(lines) == 1, f"{self}: {len(lines)} lines match"
        return lines[0]

    def agrees(self, stated: str) -> bool:
        return _token_in(stated, self.text())

    def __str__(self) -> str:
        return f"{self.path} line with {self.contains!r}"


@dataclass(frozen=True)
class Computed:
    """A value computed from committed run files (summary.json, summary.csv): the README writes it as is."""

    what: str
    value: Callable[[], str]

    def text(self) -> str:
        return self.value()

    def agrees(self, stated: str) -> bool:
        return stated == self.value()

    def __str__(self) -> str:
        return self.what


def _token_in(stated: str, text: str) -> bool:
    """`stated` is a whole number (or interval) of `text`; a % sign may be the README's where the table
    names the unit in its header."""
    stated, text = stated.replace("%", ""), text.replace("%", "")
    return re.search(rf"(?<![\d.,]){re.escape(stated)}(?![\d])", text) is not None


def _summaries(pattern: str) -> list[dict]:
    paths = sorted(glob.glob(str(REPO / pattern)))
    assert paths, pattern
    return [json.loads(Path(p).read_text()) for p in paths]


def seconds_range(pattern: str, key: str = "wall_time_s") -> Computed:
    def value() -> str:
        times = [s[key] for s in _summaries(pattern)]
        return f"{round(min(times))}-{round(max(times))}"

    return Computed(f"min-max {key} of {pattern}", value)


def run_count(pattern: str) -> Computed:
    return Computed(f"number of {pattern}", lambda: str(len(_summaries(pattern))))


def minutes(pattern: str, key: str = "total_time_s") -> Computed:
    return Computed(f"summed {key} of {pattern}, minutes",
                    lambda: str(round(sum(s[key] for s in _summaries(pattern)) / 60)))  # fmt: skip


def _fig1_pairs() -> list[tuple[bool, int]]:
    """(identical final and best accuracy, |largest difference| in test images) per seed pair of the
    10-seed Fig. 1 runs, custom BN against torch's, both protocols."""
    pairs = []
    for protocol in ("momentum", "plain_sgd"):
        path = RESULTS / "fig1_10seeds_fashion_mnist" / "figures" / protocol / "summary.csv"
        runs = {(r["norm"], r["seed"]): r for r in csv.DictReader(path.open())}
        for (norm, seed), torch_run in runs.items():
            if norm != "builtin":
                continue
            custom = runs[("custom", seed)]
            diffs = [abs(float(custom[k]) - float(torch_run[k])) for k in ("final_test_acc", "best_test_acc")]
            pairs.append((max(diffs) == 0, round(max(diffs) * 10_000)))  # 10,000 test images
    return pairs


def _search_rows(norm_heading: str) -> list[dict[str, str]]:
    """The trials of one search in search.md (the first table after the heading naming the norm)."""
    text = (REPO / LRS).read_text()
    header, rows = md_tables_in(text[text.index(norm_heading) :])[0]
    return [dict(zip(header, r, strict=True)) for r in rows]


def _precise_bn_gain() -> str:
    """PreciseBN (N=1,000) minus the moving averages, final test accuracy at lr 0.01, in points."""
    precise = Cell(BT, "lr 0.01", "PreciseBN N=1,000", table="ema").text()
    ema = Cell(BT, "lr 0.01", "ema").text()
    return f"{float(precise.split()[0]) - float(ema.split()[0]):.1f}"


def _at_chance(row: dict[str, str]) -> bool:
    return row["final test acc"] == "10.00%"


WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}


# (README phrase with one group per stated number, its sources in group order)
def ledger_count(what: str) -> Computed:
    """A count of results/CLAIMS.md's summary line: `what` is "claims" or a verdict."""

    def count() -> str:
        line = Line("results/CLAIMS.md", " claims: ").text()
        found = re.search(rf"(\d+) {re.escape(what)}(?:[,;.*: ]|$)", line)
        assert found, f"no count of {what!r} in {line!r}"
        return found.group(1)

    return Computed(f"results/CLAIMS.md: the count of {what}", count)


CLAIMS: list[tuple[str, tuple]] = [
    # the claims ledger's summary line
    (r"\*\* (\d+) claims of the BN paper and its follow-ups tested on the committed runs",
     (ledger_count("claims"),)),
    (r"rule stated at its top: (\d+) hold, (\d+) hold in kind, (\d+) not reproduced, (\d+) opposite",
     (ledger_count("holds"), ledger_count("holds in kind"), ledger_count("not reproduced"),
      ledger_count("opposite"))),
    # the headline (Fig. 1, momentum, 10 seeds)
    (rf"ends at ({PM}) test accuracy against ({PM}) without",
     (Cell(F1M, "BN (builtin)", "final test acc"), Cell(F1M, "no BN", "final test acc"))),
    (rf"best in ({N}x) fewer steps \(({N}) against ({N});",
     (Cell(F1M, "BN (builtin)", "speedup"), Cell(F1M, "BN (builtin)", "mean curve"),
      Cell(F1M, "no BN", "mean curve"))),
    # quick start: the Fig. 1 run's time
    (r"One 50,000-step Fig\. 1 run took (\d+-\d+) s on",
     (seconds_range("results/fig1_fashion_mnist/*/summary.json"),)),
    (r"and (\d+-\d+) s with a second run beside it",
     (seconds_range("results/lr_search_fig1_fashion_mnist/best_lr_*/*/summary.json"),)),
    # Fig. 1
    (r"the no-BN and BN groups took (\d+-\d+) s",
     (seconds_range("results/fig1_10seeds_fashion_mnist/momentum/[nb]*_seed*/summary.json"),)),
    (rf"stays at chance \(({N}%)\) for all 50,000 steps on every seed, while BN ends at ({PM})\.",
     (Cell(F1P, "no BN", "final test acc"), Cell(F1P, "BN (builtin)", "final test acc"))),
    (rf"Run on, it leaves chance after ({PM}) steps",
     (Cell(F1STEPS, {"curve": "fig1_fashion_mnist_plain_sgd_300k, norm=none", "test acc level": "20.00%"},
           "steps, mean"),)),
    (rf"differs from torch's BN by ({PM}) points with momentum and ({PM}) without",
     (Cell(F1M, "BN (custom, explicit)", "final test acc difference"),
      Cell(F1P, "BN (custom, explicit)", "final test acc difference"))),
    (r"(\d+) of the (\d+) pairs have the same final and best accuracy, and (\w+) differ by (\w+) test image",
     (Computed("seed pairs with identical accuracies", lambda: str(sum(same for same, _ in _fig1_pairs()))),
      Computed("seed pairs", lambda: str(len(_fig1_pairs()))),
      Computed("seed pairs that differ (in words)",
               lambda: WORDS[sum(not same for same, _ in _fig1_pairs())]),
      Computed("their largest difference in test images (in words)",
               lambda: WORDS[max(images for _, images in _fig1_pairs())]))),
    # section 3.3: the learning rate x init scale grid
    (r"BN trains \(mean final accuracy at least 80%\) in (\d+) of the grid's (\d+) cells with momentum "
     r"against (\d+) without, and in (\d+) against (\d+) with plain SGD",
     tuple(Cell(GA, {"protocol": protocol, "norm": norm, "init std": "all"}, "cells >= 80%")
           for protocol, norm in (("SGD with momentum 0.9", "BN"), ("SGD with momentum 0.9", "BN"),
                                  ("SGD with momentum 0.9", "no BN"), ("plain SGD (momentum 0)", "BN"),
                                  ("plain SGD (momentum 0)", "no BN")))),
    (rf"its accuracy varies across init scales by ({N}) points on average against ({N}) without",
     (Line(GS, "**SGD with momentum 0.9**"), Line(GS, "**SGD with momentum 0.9**"))),
    # speedup at CPU scale
    (r"(\d+) runs, (\d+) minutes\. BN-x5 reaches",
     (run_count("results/fig2cpu_fashion_mnist/*/summary.json"),
      minutes("results/fig2cpu_fashion_mnist/*/summary.json"))),
    (rf"BN-x5 reaches the no-BN net's best ({N}x) sooner \(the paper: ({N}x)\), BN-x30 ({N}x) sooner and "
     rf"ends highest \(({PM}) best accuracy, mean \+- std over 10 seeds",
     (Cell(F3, "fig2cpu_bn_x5", "speedup (mean curve)"), Cell(F3, "fig2cpu_bn_x5", "paper (ImageNet)"),
      Cell(F3, "fig2cpu_bn_x30", "speedup (mean curve)"), Cell(F3, "fig2cpu_bn_x30", "max acc per seed"))),
    (rf"BN-x5-Sigmoid trains \(({PM})\) where the sigmoid net without BN stays at chance \(({PM})\)",
     (Cell(F3, "fig2cpu_bn_x5_sigmoid", "max acc per seed"),
      Cell(F3, "fig2cpu_sigmoid", "max acc per seed"))),
    (rf"BN-Baseline is only a little faster \(({N}x); the paper: ({N}x)\)",
     (Cell(F3, "fig2cpu_bn_baseline", "speedup (mean curve)"),
      Cell(F3, "fig2cpu_bn_baseline", "paper (ImageNet)"))),
    (rf"it is ({N}x) faster and reaches ({PM})\.",
     (Cell(F3, "fig2cpu_inception_x5", "speedup (mean curve)"),
      Cell(F3, "fig2cpu_inception_x5", "max acc per seed"))),
    (r"steps to the target by (\d+) against a standard deviation of (\d+) over seeds",
     (Line(KS, "| fig2cpu_bn_x5 | 4 | 10 |"), Line(KS, "| fig2cpu_bn_x5 | 4 | 10 |"))),
    # learning-rate search
    (rf"Without BN the best rate is ({N}) \(({N}%) at 50,000 steps\), with BN ({N}) \(({N}%)\)",
     (Line(LRS, "**no BN:"), Cell(LRT, "no BN", "final test acc"),
      Line(LRS, "**BN (builtin):"), Cell(LRT, "BN (builtin)", "final test acc"))),
    (rf"BN still reaches the no-BN net's best ({N}x) sooner", (Cell(LRT, "BN (builtin)", "speedup"),)),
    (rf"Without BN, (\d+) of (\d+) searched rates \(every one up to ({N})\) leave the net at chance",
     (Computed("no-BN trials at chance", lambda: str(sum(map(_at_chance, _search_rows("**no BN:"))))),
      Computed("no-BN trials", lambda: str(len(_search_rows("**no BN:")))),
      Computed("the largest no-BN rate at chance",
               lambda: max((r for r in _search_rows("**no BN:") if _at_chance(r)),
                           key=lambda r: float(r["optim.lr"]))["optim.lr"]))),
    (rf"with BN every rate from ({N}) to ({N}) trains",
     (Computed("the smallest BN rate", lambda: min((r["optim.lr"] for r in _search_rows("**BN (builtin):")),
                                                 key=float)),
      Computed("the largest BN rate", lambda: max((r["optim.lr"] for r in _search_rows("**BN (builtin):")),
                                                key=float)))),
    (r"Search and runs: (\d+) trials in (\d+) minutes, (\d+) runs in (\d+) minutes",
     (run_count("results/lr_search_fig1_fashion_mnist/search_*/*/summary.json"),
      minutes("results/lr_search_fig1_fashion_mnist/search_*/*/summary.json"),
      run_count("results/lr_search_fig1_fashion_mnist/best_lr_*/*/summary.json"),
      minutes("results/lr_search_fig1_fashion_mnist/best_lr_*/*/summary.json"))),
    # Santurkar et al.
    (rf"\(Wasserstein-1 shift ({N}), no BN ({N}), BN ({N})\) yet tests like BN \(({N}%) against ({N}%)\)",
     (Cell(SM, "noisy BN", "Wasserstein-1"), Cell(SM, "no BN", "Wasserstein-1"),
      Cell(SM, "BN (builtin)", "Wasserstein-1"), Cell(SM, "noisy BN", "final test acc"),
      Cell(SM, "BN (builtin)", "final test acc"))),
    (rf"noisy BN reaches ({N}%) with population statistics recomputed without the noise \(BN ({N}%)\)",
     (Cell(SV, "noisy BN, lr 0.1", "test acc, population stats"),
      Cell(SV, "BN (builtin), lr 0.1", "test acc, population stats"))),
    (r"(\d+) runs, (\d+) minutes \(all (\d+) runs: (\d+) minutes\)",
     (run_count("results/santurkar_fashion_mnist/santurkar_fig1_mlp/*/summary.json"),
      minutes("results/santurkar_fashion_mnist/santurkar_fig1_mlp/*/summary.json"),
      run_count("results/santurkar_fashion_mnist/*/*/summary.json"),
      minutes("results/santurkar_fashion_mnist/*/*/summary.json"))),
    # the batch papers
    (rf"At batch 2 BN does not train \(({PM})% test error\) while GroupNorm \(({PM})%\) and LayerNorm "
     rf"\(({PM})%\) do",
     (Cell(BT, "BN (builtin)", "batch 2"), Cell(BT, "GroupNorm (4 groups)", "batch 2"),
      Cell(BT, "LayerNorm", "batch 2"))),
    (rf"batches of 2 classes \(({N}%) against ({N}%) final accuracy\) but stays far below i\.i\.d\. "
     rf"batches \(({N}%)\)",
     (Cell(BT, "Batch Renorm, few_classes batches", "final test acc"),
      Cell(BT, "BN (builtin), few_classes batches", "final test acc"),
      Cell(BT, "Batch Renorm, iid batches", "final test acc"))),
    (rf"pass the batch-128 baseline \(({N}%) against ({N}%)\)",
     (Cell(BT, "batch 1024, Ghost BN (128), 80 epochs, lr 0.2828", "final test acc"),
      Cell(BT, "batch 128, BN (builtin), 10 epochs, lr 0.1", "final test acc"))),
    (rf"PreciseBN beats the moving averages by ({N}) points \(({N}%) against ({N}%) at lr 0\.01\)",
     (Computed("PreciseBN N=1,000 - EMA at lr 0.01, points", _precise_bn_gain),
      Cell(BT, "lr 0.01", "PreciseBN N=1,000", table="ema"), Cell(BT, "lr 0.01", "ema"))),
    (r"On the same VM shared with other jobs a run took (\d+)-(\d+) s",
     (Cell(CK, "default: every 120 s and at the end", "run wall time (s)"),
      Cell(CK, "also every 2,500 steps", "run wall time (s)"))),
    (r"test run \(`pytest -q`\) took (\d+) s on a fresh clone, and (\d+) s again with ATen's portable",
     (Cell(TT, "native kernels", "wall time (s)"), Cell(TT, "portable kernels", "wall time (s)"))),
    # when runs die: the default cadence (a setting, held to its config) and the checkpoints' cost
    (r"into its run dir every (\d+) s of training",
     (Line("configs/trainer/default.yaml", "checkpoint_every_s:"),)),
    (rf"a checkpoint takes ({N}) ms, ({N}%) of the run's wall time at the default cadence",
     (Cell(CK, "default: every 120 s and at the end", "ms per checkpoint"),
      Cell(CK, "default: every 120 s and at the end", "overhead"))),
    (r"(\d+) runs, (\d+) minutes\. Numbers and the other commands",
     (run_count("results/batch_fashion_mnist/gn_batch_size/*/summary.json"),
      minutes("results/batch_fashion_mnist/gn_batch_size/*/summary.json"))),
]  # fmt: skip

# Result-like tokens of the README's prose that are not results, each with why.
NOT_RESULTS = [
    r"at least 80%",  # a threshold: what counts as trained (scripts/lr_init_grid.py --target)
    r"95% t-interval",  # the confidence level of the intervals, not a result
    r"the 5x learning rate",  # a setting: BN-x5's multiple of the base rate (configs/experiment/)
    r"trained 8x longer",  # a setting: 80 epochs against 10 (configs/experiment/ghost_large_batch.yaml)
]

RESULT_TOKEN = re.compile(
    rf"{N}%?\s\+-\s{N}%?"  # an interval
    rf"|{N}%"  # a percentage
    rf"|\b\d+(?:\.\d+)?x\b"  # a ratio
    r"|\b\d[\d,]*(?:-\d[\d,]*)?\s(?:s|minutes)\b"  # a time
)


def split_fences(text: str) -> tuple[str, list[tuple[str, str]]]:
    """(the text without its fenced code blocks, [(language, code), ...])."""
    outside, blocks, lang, code = [], [], None, []
    for line in text.splitlines():
        fence = re.match(r"^\s*```(\w*)", line)
        if fence and lang is None:
            lang, code = fence.group(1), []
        elif fence:
            blocks.append((lang, "\n".join(code) + "\n"))
            lang = None
        elif lang is None:
            outside.append(line)
        else:
            code.append(line)
    return "\n".join(outside) + "\n", blocks


def prose(text: str) -> str:
    """The README as read: no fenced code, no HTML comments, link targets dropped, whitespace collapsed."""
    text = split_fences(text)[0]
    text = re.sub(r"<!--.*?-->", " ", text, flags=re.S)
    text = re.sub(r"\]\([^)]*\)", "]", text)
    return re.sub(r"\s+", " ", text)


PROSE = prose(README.read_text())


@pytest.mark.parametrize(("pattern", "sources"), CLAIMS, ids=[p[:40] for p, _ in CLAIMS])
def test_each_number_equals_the_committed_table_it_cites(pattern, sources):
    matches = list(re.finditer(pattern, PROSE))
    assert len(matches) == 1, f"README phrase {pattern!r} found {len(matches)} times (expected once)"
    stated = matches[0].groups()
    assert len(stated) == len(sources), pattern
    for number, source in zip(stated, sources, strict=True):
        assert source.agrees(number), f"README says {number!r}; {source} says {source.text()!r}"


def test_every_result_in_the_readme_has_a_source():
    covered = [m.span(g) for p, _ in CLAIMS for m in re.finditer(p, PROSE) for g in range(1, m.re.groups + 1)]
    covered += [m.span() for p in NOT_RESULTS for m in re.finditer(p, PROSE)]

    def is_covered(i: int) -> bool:
        return any(a <= i < b for a, b in covered)

    def is_sourced(token: re.Match) -> bool:  # each of its digits lies in a claimed number (its unit may not)
        return all(is_covered(token.start() + k) for k, c in enumerate(token.group()) if c.isdigit())

    orphans = [m.group() for m in RESULT_TOKEN.finditer(PROSE) if not is_sourced(m)]
    assert not orphans, f"numbers in README.md without a source in tests/test_readme.py CLAIMS: {orphans}"


# ---------------------------------------------------------------------------------------------------
# The preset list


def test_the_preset_list_is_configs_experiment():
    text = README.read_text()
    block = text[text.index("<!-- presets") : text.index("<!-- /presets -->")]
    listed = re.findall(r"`([a-z0-9_]+)`", block)
    public = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml") if not p.stem.startswith("_"))
    assert len(listed) == len(set(listed)), "a preset is listed twice"
    assert sorted(listed) == public


# ---------------------------------------------------------------------------------------------------
# The commands


def train_commands(path: Path = README) -> list[list[str]]:
    """The arguments of every `python -m bn_repro.train` (or `torchrun ... -m bn_repro.train`) command in
    the file's fenced code blocks, comments and shell quoting removed."""
    commands = []
    for lang, block in split_fences(path.read_text())[1]:
        if lang not in ("bash", "sh", ""):
            continue
        for line in block.replace("\\\n", " ").splitlines():
            if "bn_repro.train" not in line:
                continue
            words = shlex.split(line, comments=True)
            if "bn_repro.train" in words:
                commands.append(words[words.index("bn_repro.train") + 1 :])
    return commands


def _jobs(args: list[str]) -> list[list[str]]:
    """The override lists to compose for one command: a single run as is; a multirun once with the first
    value of every sweep, then each other value of each swept config group (and the last of other keys)
    with the first values of the rest, including the sweeps a preset sets in hydra.sweeper.params."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    multirun = "-m" in args or "--multirun" in args
    overrides = [a for a in args if not a.startswith("-")]
    if not multirun:
        return [overrides]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
            parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
            parsed = parser.parse_overrides(overrides)
            fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
            sweeps = {o.get_key_element(): list(o.sweep_string_iterator())
                      for o in parsed if o.is_sweep_override()}  # fmt: skip
            first = [f"{k}={v[0]}" for k, v in sweeps.items()]
            cfg = compose_config(fixed + first, return_hydra_config=True)
            if "BasicSweeper" in cfg.hydra.sweeper._target_:
                for key, value in (cfg.hydra.sweeper.get("params") or {}).items():
                    if key not in sweeps:
                        (o,) = parser.parse_overrides([f"{key}={value}"])
                        swept = o.is_sweep_override()
                        sweeps[key] = list(o.sweep_string_iterator()) if swept else [o.value()]
    finally:
        GlobalHydra.instance().clear()
    jobs = [fixed + [f"{k}={v[0]}" for k, v in sweeps.items()]]
    for key, values in sweeps.items():
        others = [f"{k}={v[0]}" for k, v in sweeps.items() if k != key]
        group = "/" in key or (CONFIG_DIR / key).is_dir()  # a config group: every choice composes
        for value in values[1:] if group else values[1:][-1:]:  # a value (seed, lr): the last one too
            jobs.append(fixed + others + [f"{key}={value}"])
    return jobs


@functools.cache
def _compose_and_check_once(overrides: tuple[str, ...]) -> None:
    _compose_and_check(list(overrides))


def _compose_and_check(overrides: list[str]) -> None:
    from omegaconf import OmegaConf

    import bn_repro.config as config

    cfg = compose_config(overrides, return_hydra_config=True)  # hydra/launcher=... must exist too
    job = OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)
    check = getattr(config, "check_values", None)  # the value checks the app runs before torch
    if check is not None:
        check(job)


# README.md's commands, then those of the docs beside the code that are not already in it (results/README.md
# records the commands as they were run, with shell variables and scratch paths, and is left out).
COMMANDS: list[list[str]] = []
for _doc in [d for d in DOCS if d != RESULTS / "README.md"]:
    COMMANDS += [c for c in train_commands(_doc) if c not in COMMANDS]


def test_the_readme_has_the_commands_of_its_studies():
    commands = train_commands()
    experiments = {a.split("=", 1)[1] for c in commands for a in c if a.startswith("experiment=")}
    assert {"fig1_fashion_mnist", "glob(fig2cpu_*)", "santurkar_fig1_mlp"} <= experiments
    assert any("hparams_search=fig1_lr" in c for c in commands)


@pytest.mark.parametrize("args", COMMANDS, ids=[" ".join(c)[:60] for c in COMMANDS])
def test_every_command_composes(args):
    for overrides in _jobs(args):
        try:
            _compose_and_check_once(tuple(overrides))  # the same job in two commands composes once
        except Exception as error:  # noqa: BLE001  (say which job of which command)
            command = "python -m bn_repro.train " + " ".join(args)
            raise AssertionError(f"{command}\n  job {overrides}: {error}") from error


def test_a_broken_command_would_be_caught():
    with pytest.raises(Exception):  # noqa: B017  (Hydra's or the app's error, whichever comes first)
        for overrides in _jobs(["-m", "experiment=fig1_fashion_mnist", "norm=none,bulitin"]):
            _compose_and_check(overrides)
    with pytest.raises(Exception):  # noqa: B017
        _compose_and_check(["experiment=fig1_fashion_mnist", "hydra/launcher=no_such_launcher"])


# ---------------------------------------------------------------------------------------------------
# The links


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = split_fences(path.read_text())[0]
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#+ (.+)$", text, flags=re.M):
        base = slug(heading)
        out.add(base if base not in seen else f"{base}-{seen[base]}")
        seen[base] = seen.get(base, 0) + 1
    return out


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(REPO)) for d in DOCS])
def test_links_resolve(doc):
    text = split_fences(doc.read_text())[0]
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target):
            continue
        file, _, anchor = target.partition("#")
        path = (doc.parent / file).resolve() if file else doc
        if not path.exists():
            broken.append(target)
        elif anchor and (path.suffix != ".md" or anchor not in anchors(path)):
            broken.append(target)
    assert not broken, f"{doc.relative_to(REPO)}: links that do not resolve: {broken}"
