"""The 1/a law of paper section 3.3 on a trained model: multiply one layer's weights by a and compare.

    python scripts/scale_invariance.py outputs/my_run                      # its checkpoint.pt
    python scripts/scale_invariance.py multirun/scale_jacobian_fig1/1 --scales 0.1 0.5 2 10 --out law.md

With BN, BN((aW)u) = BN(Wu), so the loss does not change and the gradient of the rescaled weights is
1/a times the original: ratio = a ||G(aW)|| / ||G(W)|| is 1. For each weight layer of the run's model
(loaded from the run dir's checkpoint.pt, which the engine's loader checks against its SHA-256 trailer and
the run's config in summary.json), on a training batch (the first --examples training images, the run's
batch size by default), in training mode, one row per layer and a:

    norm           the norm module its output feeds ("": none, so no invariance is expected)
    ratio          a ||G(aW)|| / ||G(W)||
    ratio (eps)    the same against G(W) with the norm's eps divided by a^2: BN_eps((aW)u) equals
                   BN_{eps/a^2}(Wu) exactly, so this is 1 to rounding; ratio's departure from 1 is eps's
                   share, about eps / (a^2 Var[Wu]), large only where a^2 Var[Wu] nears eps
    cos            cos(G(aW), G(W))
    loss change    |L(aW) - L(W)|
    output change  the largest change of the norm's output, relative to its largest value

Exit status 0; 1 when the run dir has no checkpoint or summary.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

COLUMNS = ("layer", "norm", "a", "ratio", "ratio (eps)", "cos", "loss change", "output change")


def fmt(value) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.6f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    return str(value)


def markdown(rows: list[dict]) -> str:
    keys = ("layer", "norm", "a", "ratio", "ratio_eps", "cosine", "loss_change", "output_change")
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(f"{row[k]:g}" if k == "a" else fmt(row[k]) for k in keys) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dir", type=Path, help="a run dir with checkpoint.pt and summary.json")
    parser.add_argument("--scales", nargs="+", type=float, default=[0.1, 0.5, 2.0, 10.0], help="the a's")
    parser.add_argument("--examples", type=int, default=None, help="batch size (default: the run's)")
    parser.add_argument("--out", type=Path, default=None, help="also write the table here (markdown)")
    args = parser.parse_args()
    if any(not a > 0 for a in args.scales):
        parser.error(f"--scales must be > 0, got {args.scales}")

    import json

    import torch

    from bn_repro import norms
    from bn_repro.engine.checkpoint import CHECKPOINT_FILE, load_checkpoint
    from bn_repro.engine.setup import load_data
    from bn_repro.engine.step import loss_fn
    from bn_repro.errors import UserError
    from bn_repro.measures.weight_scale import rescaling_rows
    from bn_repro.models import build_model
    from bn_repro.records.run_files import SUMMARY_FILE

    summary_path, checkpoint_path = args.run_dir / SUMMARY_FILE, args.run_dir / CHECKPOINT_FILE
    for path in (summary_path, checkpoint_path):
        if not path.is_file():
            print(f"scale_invariance: {path} does not exist", file=sys.stderr)
            return 1
    config = json.loads(summary_path.read_text())["config"]
    try:
        state = load_checkpoint(checkpoint_path, config)
    except UserError as error:
        print(f"scale_invariance: {error}", file=sys.stderr)
        return 1
    torch.manual_seed(0)  # the dropout masks and noisy-BN noise of the replayed forwards
    device = torch.device("cpu")
    data = load_data(config, device)
    model = build_model(config["model"], norms.factory(config["norm"]), data.input_shape, data.num_classes)
    model.load_state_dict(state["model"])
    n = args.examples or config["data"]["batch_size"]
    x, y = data.normalize(data.train_x[:n]), data.train_y[:n]
    rows = rescaling_rows(model, x, y, loss_fn, args.scales)
    text = (
        f"{args.run_dir}: step {state['step']}, norm={config['norm']['kind']}, {n} training examples\n\n"
        + markdown(rows)
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
