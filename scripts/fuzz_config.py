"""Random bad overrides against the real command line: how many are answered by one line naming the key?

    python scripts/fuzz_config.py                      # 40 cases, seed 0
    python scripts/fuzz_config.py -n 100 --seed 3 -v   # each case's override and first line of stderr
    python scripts/fuzz_config.py --repo /tmp/pristine # another checkout (e.g. `git worktree add`)

Each case is one bad override (a wrong type, a negative or zero count, a value out of its range, a huge
integer, an unknown `+key`, a typo in a key, an unknown preset or option, a combination a model cannot
take, a device that is not there, bad override syntax), drawn from the keys of the composed config with
a seeded RNG, and run as `python -m bn_repro.train data=synthetic trainer.max_steps=20 ... OVERRIDE` in
a fresh process with a short timeout. Outcomes:

    one line    exit code != 0, one line on stderr, no traceback (`named`: the line names the key)
    traceback   "Traceback" on stderr
    lines       exit code != 0, several lines, no traceback (e.g. Hydra's own error report)
    accepted    exit code 0, or still running at the timeout: the bad value ran silently

The case list depends only on the seed, N and the checkout's default config (its keys); to run the same
cases on two checkouts whose keys differ, draw them once (`--save cases.json`) and replay (`--cases`).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BASE = ["data=synthetic", "trainer.max_steps=20", "trainer.progress=false", "trainer.eval_every=10",
        "trainer.population_stats_batches=2", "probe.num_examples=50", "trainer.device=cpu"]  # fmt: skip
# Group choices under which the keys are drawn (norm and model options depend on them).
VARIANTS = [[], [], [], ["norm=custom"], ["norm=groupnorm", "norm.groups=10"], ["norm=batch_renorm"],
            ["norm=noisy_bn"], ["norm=ghost_bn", "norm.virtual_batch_size=20"],
            ["model=vgg", "model.width=0.125"], ["model=linear_deep", "model.depth=3"]]  # fmt: skip
# Keys the fuzzer leaves alone: they name files and dirs, or are already set by BASE.
SKIP = {"data.root", "data.name", "data.download", "experiment_name", "trainer.max_steps", "trainer.device",
        "trainer.progress", "trainer.eval_every", "trainer.population_stats_batches", "probe.num_examples",
        "logger.name"}  # fmt: skip
# Keys where 0 is not a legal value (counts, sizes, scales).
ZERO_BAD = {"data.batch_size", "trainer.log_every", "trainer.eval_batch_size", "norm.eps",
            "model.init_std", "data.synthetic.num_train", "data.synthetic.num_test", "data.classes_per_batch",
            "optim.schedule.decay_steps", "model.width", "model.depth", "model.hidden_width",
            "norm.groups", "norm.virtual_batch_size", "data.download_timeout_s"}  # fmt: skip
# Keys with an upper bound well below 1e9.
BOUNDED = {"norm.momentum", "optim.momentum", "optim.schedule.decay_rate", "model.dropout", "norm.r_max",
           "norm.scale"}  # fmt: skip
TYPOS_OF_GROUPS = ["experiment=fig1_mnst", "experiment=nope", "norm=batchnorm", "norm=nope", "model=resnet",
                   "data=imagenet", "optim=adam", "logger=tensorboard", "measure=all"]  # fmt: skip
COMBINATIONS = [
    ["experiment=fig1_fashion_mnist", "model=inception"],
    ["norm=groupnorm"],  # 32 groups do not divide the MLP's 100 units
    ["data.sampler=few_classes", "data.classes_per_batch=7"],
    ["model=linear_deep", "model.activation=relu"],
    ["model=inception", "model.activation=identity"],
    ["trainer.device=cuda"],
    ["norm=ghost_bn", "norm.virtual_batch_size=7"],
]
SYNTAX = ["optim.lr=[1,", "model.hidden=[100,", "=3", "optim.lr==0.1", "trainer.max_steps=1 0", "+=1"]
WORDS = ["abc", "big", "maybe", "yes", "'0.1'", "none", "tanh"]


def flat(node, prefix: str = "") -> dict:
    out = {}
    for key, value in node.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flat(value, path + "."))
        else:
            out[path] = value
    return out


def composed(repo: Path) -> list[dict]:
    """The flattened config of each variant, from `repo`'s own compose."""
    code = (
        "import json, sys\nfrom omegaconf import OmegaConf\nfrom bn_repro.config import compose\n"
        "variants = json.loads(sys.argv[1])\n"
        "print(json.dumps([OmegaConf.to_container(compose(v), resolve=True) for v in variants]))\n"
    )
    variants = [[*BASE, *v] for v in VARIANTS]
    out = subprocess.run([sys.executable, "-c", code, json.dumps(variants)], cwd=repo, env=_env(repo),
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    return [flat(cfg) for cfg in json.loads(out)]


def _typo(key: str, rng: random.Random) -> str:
    head, _, leaf = key.rpartition(".")
    if len(leaf) < 4:
        leaf = leaf + "s"
    else:
        i = rng.randrange(len(leaf) - 1)
        leaf = (
            leaf[:i] + leaf[i + 1] + leaf[i] + leaf[i + 2 :]
            if rng.random() < 0.5
            else leaf[:i] + leaf[i + 1 :]
        )
    return f"{head}.{leaf}" if head else leaf


def _bad_value(key: str, value, rng: random.Random) -> str | None:
    """A value of the wrong type or out of range for `key` (default `value`); None: none to offer."""
    kinds = []
    if isinstance(value, bool):
        kinds += [str(rng.choice([0, 1, 2])), rng.choice(WORDS)]
    elif isinstance(value, int | float):
        kinds += [rng.choice(WORDS), "[1,2]", "true", str(-abs(value) - rng.choice([1, 0.5]))]
        if isinstance(value, int) and not key.endswith("_s"):  # seconds may be fractional
            kinds += ["2.5", "99999999999999999999"]
        if key in ZERO_BAD:
            kinds.append("0")
        if key in BOUNDED:
            kinds += ["1e9", "2"]
    elif isinstance(value, list):
        kinds += [rng.choice(WORDS), "3", "[abc]", "[1,-5]"]
    elif isinstance(value, str):
        kinds += ["nope", "[1]"] + ([] if value == "auto" else ["3"])  # auto | a count takes 3
    elif value is None:
        kinds += [rng.choice(WORDS), "-1"]
    return rng.choice(kinds) if kinds else None


def cases(n: int, seed: int, configs: list[dict]) -> list[tuple[list[str], str]]:
    """(overrides, the key a good answer names) for each case."""
    rng, out = random.Random(seed), []
    while len(out) < n:
        variant_index = rng.randrange(len(VARIANTS))
        variant, config = VARIANTS[variant_index], configs[variant_index]
        keys = sorted(k for k in config if k not in SKIP and not any(k.startswith(s + ".") for s in SKIP))
        kind = rng.choices(["value", "unknown", "typo", "group", "combination", "syntax"],
                           weights=[10, 2, 2, 1, 1, 1])[0]  # fmt: skip
        if kind == "value":
            key = rng.choice(keys)
            bad = _bad_value(key, config[key], rng)
            if bad is None:
                continue
            out.append(([*variant, f"{key}={bad}"], key))
        elif kind == "unknown":
            node = rng.choice(sorted({k.rpartition(".")[0] for k in keys if "." in k}))
            key = f"{node}.{rng.choice(['foo', 'betas', 'lr_decay', 'units', 'amsgrad'])}"
            out.append(([*variant, f"+{key}={rng.choice(['1', '[0.9,0.99]', 'true'])}"], key))
        elif kind == "typo":
            key = _typo(rng.choice(keys), rng)
            out.append(([*variant, f"{key}=3"], key))
        elif kind == "group":
            choice = rng.choice(TYPOS_OF_GROUPS)
            out.append(([choice], choice.partition("=")[0]))
        elif kind == "combination":
            combination = rng.choice(COMBINATIONS)
            out.append((list(combination), combination[-1].partition("=")[0]))
        else:
            syntax = rng.choice(SYNTAX)
            out.append(([syntax], syntax.partition("=")[0].lstrip("+") or syntax))
    return out


def _env(repo: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(repo), OMP_NUM_THREADS="1", WANDB_MODE="disabled")
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def run_case(repo: Path, overrides: list[str], timeout: float) -> tuple[int | None, str]:
    with tempfile.TemporaryDirectory() as run_dir:
        command = [sys.executable, "-m", "bn_repro.train", *BASE, f"hydra.run.dir={run_dir}", *overrides]
        try:
            done = subprocess.run(command, cwd=repo, env=_env(repo), capture_output=True, text=True,
                                  timeout=timeout)  # fmt: skip
        except subprocess.TimeoutExpired as expired:
            stderr = expired.stderr.decode() if isinstance(expired.stderr, bytes) else (expired.stderr or "")
            return None, stderr
        return done.returncode, done.stderr


def outcome(code: int | None, stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    if code is None or code == 0:
        return "accepted"
    if "Traceback" in stderr:
        return "traceback"
    return "one line" if len(lines) == 1 else "lines"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", type=int, default=40, help="how many cases")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds a case may run")
    parser.add_argument("--repo", type=Path, default=REPO, help="the checkout to run (default: this one)")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every case")
    parser.add_argument("--list", action="store_true", help="print the cases, run none")
    parser.add_argument("--save", type=Path, help="write the drawn cases to this JSON file")
    parser.add_argument("--cases", type=Path, help="run the cases of a --save file instead of drawing them")
    args = parser.parse_args()
    repo = args.repo.resolve()
    if args.cases:
        drawn = [(list(o), k) for o, k in json.loads(args.cases.read_text())]
    else:
        drawn = cases(args.n, args.seed, composed(repo))
    if args.save:
        args.save.write_text(json.dumps(drawn, indent=1))
    if args.list:
        for i, (overrides, key) in enumerate(drawn):
            print(f"{i:3d} {' '.join(overrides)}   [{key}]")
        return
    counts, named = Counter(), 0
    for i, (overrides, key) in enumerate(drawn):
        code, stderr = run_case(repo, overrides, args.timeout)
        result = outcome(code, stderr)
        counts[result] += 1
        lines = [line for line in stderr.splitlines() if line.strip()]
        names_key = result == "one line" and key in lines[0]
        named += names_key
        if args.verbose:
            last = lines[-1] if lines else ""
            tag = result + (" (named)" if names_key else "")
            print(f"{i:3d} {tag:<17} {' '.join(overrides)}\n      -> {last[:200]}", flush=True)
    total = sum(counts.values())
    print(f"{total} cases in {repo}: " + ", ".join(
        f"{name} {counts[name]}" for name in ("one line", "traceback", "lines", "accepted")
    ) + f"; one line naming the key: {named}")  # fmt: skip


if __name__ == "__main__":
    main()
