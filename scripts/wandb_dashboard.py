"""A wandb workspace and report for one experiment group, defined in code (wandb-workspaces).

    pip install -e ".[dashboards]"
    python scripts/wandb_dashboard.py --entity E --project bn-repro --group fig1_fashion_mnist_sweep
    python scripts/wandb_dashboard.py --entity E --project bn-repro --group G --runs multirun/ --save

What the group's runs logged is read from their local run dirs (`--runs`, default outputs/ and
multirun/): the norms they compare, the fig2_* variants, the probed layers, and the measurements on the
seam (bn_repro/measures/). The workspace and the report hold:
- Fig. 1(a): `test/acc` against `step`, runs grouped by `norm.kind`, mean with a min-max band;
- Fig. 1(b,c): the 15/50/85th-percentile keys of the last hidden layer's first probed unit, one panel
  per norm (in the report, each norm's panel shows that norm's runs only);
- the speedup variants (`test/acc` grouped by `experiment_name`) when the group has fig2_* runs;
- one section per measurement the runs logged, one panel per value column (its `<prefix>/...` keys).

Offline (the default) the specifications are written as JSON next to the runs (OUT/workspace.json and
OUT/report.json; OUT defaults to the first run dir's parent), so nothing needs a network; with --save
and a wandb login they are saved to wandb and their URLs printed. Exit status 2 for usage errors, 1 for
anything else, with a one-line message.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DEFAULT_RUNS = (Path("outputs"), Path("multirun"))
PERCENTILES = ("p15", "p50", "p85")


def group_runs(paths, group: str) -> list[dict]:
    """The summaries (with their run dir) of the runs in `paths` that belong to wandb group `group`."""
    from bn_repro.analysis.speedup import find_run_dirs, read_summary

    runs = []
    for run_dir in find_run_dirs([p for p in paths if Path(p).exists()]):
        summary = read_summary(run_dir)
        logged_group = (summary.get("wandb") or {}).get("group") or summary.get("experiment_name")
        if logged_group == group:
            runs.append({**summary, "run_dir": run_dir})
    return runs


def describe(runs: list[dict]) -> dict:
    """What the dashboard needs to know about the group's runs."""
    from bn_repro import measures, norms
    from bn_repro.records.run_files import read_measurement

    kinds = sorted({r["config"]["norm"]["kind"] for r in runs})
    labels = {
        k: norms.label(next(r["config"]["norm"] for r in runs if r["config"]["norm"]["kind"] == k))
        for k in kinds
    }
    activations = next(
        (
            read_measurement(r["run_dir"], "activations")
            for r in runs
            if (r["run_dir"] / "activations.csv").exists()
        ),
        [],
    )
    layer = list(dict.fromkeys(row["layer"] for row in activations))[-1] if activations else None
    unit = next((row["unit"] for row in activations if row["layer"] == layer), None)
    logged = {name for r in runs for name in r.get("measurements", [])} - {"activations"}
    logged_columns = {}
    for name in sorted(n for n in logged if n in measures.names()):
        cls = measures.get(name)
        rows = next(
            (read_measurement(r["run_dir"], name) for r in runs if read_measurement(r["run_dir"], name)), []
        )
        index = cls.index_columns([{k: v for k, v in row.items() if k != "step"} for row in rows])
        logged_columns[name] = (cls.prefix(), [c for c in cls.columns if c not in index])
    return {
        "norms": labels,
        "variants": sorted({r["experiment_name"] for r in runs if r["experiment_name"].startswith("fig2_")}),
        "probe": (layer, unit),
        "measurements": logged_columns,
    }


def accuracy_plot(wr, title: str, groupby: str):
    """test/acc against step, runs grouped by a config key: the mean with a min-max band."""
    return wr.LinePlot(
        title=title,
        x="step",
        y=["test/acc"],
        groupby=wr.Config(groupby),
        groupby_aggfunc="mean",
        groupby_rangefunc="minmax",
    )


def fig1a_plot(wr):
    return accuracy_plot(wr, "Fig. 1(a): test accuracy", "norm.kind")


def probe_plot(wr, label: str, layer: str, unit: int):
    keys = [f"act/{layer}/{unit}/{p}" for p in PERCENTILES]
    return wr.LinePlot(title=f"Fig. 1(b,c): {label}, {layer} unit {unit}", x="step", y=keys)


def measurement_plots(wr, prefix: str, columns) -> list:
    return [
        wr.LinePlot(title=f"{prefix}: {c}", x="step", metric_regex=f"^{prefix}/.*/{c}$|^{prefix}/{c}$")
        for c in columns
    ]


def build(entity: str, project: str, group: str, info: dict):
    """(workspace, report) objects of wandb-workspaces for the group."""
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws

    in_group = f"Group == '{group}'"
    layer, unit = info["probe"]
    sections = [ws.Section(name="Fig. 1(a)", panels=[fig1a_plot(wr)], is_open=True)]
    blocks = [
        wr.H1(f"{group}"),
        wr.H2("Fig. 1(a)"),
        wr.PanelGrid(
            runsets=[wr.Runset(entity, project, filters=in_group, groupby=["config.norm.kind"])],
            panels=[fig1a_plot(wr)],
        ),
    ]
    if layer is not None:
        sections.append(
            ws.Section(
                name="Fig. 1(b,c)",
                panels=[probe_plot(wr, lab, layer, unit) for lab in info["norms"].values()],
            )
        )
        blocks.append(wr.H2("Fig. 1(b,c)"))
        for kind, label in info["norms"].items():
            runset = wr.Runset(
                entity, project, name=label, filters=f"{in_group} and Config('norm.kind') == '{kind}'"
            )
            blocks.append(wr.PanelGrid(runsets=[runset], panels=[probe_plot(wr, label, layer, unit)]))
    if info["variants"]:
        speedup = accuracy_plot(wr, "Fig. 2: speedup variants", "experiment_name")
        sections.append(ws.Section(name="Fig. 2", panels=[speedup]))
        blocks += [
            wr.H2("Fig. 2"),
            wr.PanelGrid(runsets=[wr.Runset(entity, project, filters=in_group)], panels=[speedup]),
        ]
    for name, (prefix, columns) in info["measurements"].items():
        sections.append(ws.Section(name=f"measure: {name}", panels=measurement_plots(wr, prefix, columns)))
        blocks += [
            wr.H2(f"measure: {name}"),
            wr.PanelGrid(
                runsets=[wr.Runset(entity, project, filters=in_group, groupby=["config.norm.kind"])],
                panels=measurement_plots(wr, prefix, columns),
            ),
        ]
    workspace = ws.Workspace(
        entity=entity,
        project=project,
        name=f"bn-repro: {group}",
        sections=sections,
        runset_settings=ws.RunsetSettings(filters=in_group),
    )
    report = wr.Report(project=project, entity=entity, title=f"bn-repro: {group}", blocks=blocks)
    return workspace, report


def specification(obj) -> dict:
    """The JSON form of a wandb-workspaces object, made without a network."""
    from pydantic import TypeAdapter

    return TypeAdapter(type(obj)).dump_python(obj, mode="json")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--entity", required=True)
    parser.add_argument("--project", default="bn-repro")
    parser.add_argument("--group", required=True, help="the wandb group (an experiment_name by default)")
    parser.add_argument(
        "--runs", nargs="+", type=Path, default=list(DEFAULT_RUNS), help="local run dirs or folders"
    )
    parser.add_argument("--out", type=Path, default=None, help="where the JSON specifications go")
    parser.add_argument("--save", action="store_true", help="save to wandb (needs a login)")
    args = parser.parse_args(argv)
    try:
        import wandb_workspaces  # noqa: F401 - the optional extra
    except ImportError:
        print("wandb_dashboard: needs wandb-workspaces: pip install -e '.[dashboards]'", file=sys.stderr)
        return 1
    runs = group_runs(args.runs, args.group)
    if not runs:
        print(
            f"wandb_dashboard: no runs of group {args.group!r} in {', '.join(map(str, args.runs))}",
            file=sys.stderr,
        )
        return 1
    workspace, report = build(args.entity, args.project, args.group, describe(runs))
    if args.save:
        try:
            saved_workspace, saved_report = workspace.save(), report.save()
        except Exception as error:  # noqa: BLE001 - one line, not wandb's traceback
            print(
                f"wandb_dashboard: saving failed ({type(error).__name__}: {error}); run `wandb login`, or "
                f"leave out --save to write the specifications locally",
                file=sys.stderr,
            )
            return 1
        print(f"workspace: {saved_workspace.url}\nreport: {saved_report.url}")
        return 0
    out = args.out or Path(runs[0]["run_dir"]).parent
    out.mkdir(parents=True, exist_ok=True)
    for name, obj in (("workspace.json", workspace), ("report.json", report)):
        (out / name).write_text(json.dumps(specification(obj), indent=1) + "\n")
    print(
        f"{len(runs)} runs of {args.group}: wrote {out / 'workspace.json'} and {out / 'report.json'} "
        f"(offline; --save to save them to wandb)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
