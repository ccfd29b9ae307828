"""The train/eval discrepancy of BN (Wu & Johnson 2021, "Rethinking 'Batch' in BatchNorm", arXiv
2105.07576): the same weights evaluated on the test set with three kinds of normalization statistics.

    ema      the moving averages (the app's own evaluation)
    precise  population statistics recomputed per Algorithm 2 (PreciseBN) from `n` training examples,
             for each n in `num_examples` (in batches of `batch_size`, drawn without replacement by a
             generator of this measurement's own, so the training batch order is untouched; a ragged
             last batch is dropped when there is a full one)
    batch    the batch statistics of the test batches themselves (train-mode evaluation, what a
             forgotten model.eval() gives), in full test batches of `batch_size`

Columns: `stats` (ema | precise | batch), `n` (training examples behind the statistics; 0 for ema and
batch), `test_loss`, `test_acc`. Every forward runs on a copy of the model; the run's model, its BN
running statistics and the global RNGs are left as they were (the seam checks that as well).
Models without layers that Algorithm 2 applies to (no BN, LayerNorm, GroupNorm) write only the ema row.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from bn_repro.engine.evaluate import copy_model, evaluate
from bn_repro.measures.base import MeasureContext, Measurement, register_measurement
from bn_repro.norms import batch_norm_layers, recompute_population_statistics


@register_measurement(
    "eval_stats",
    specs={"num_examples": "non-empty list of int >= 2", "eval_batch_size": "int >= 1", "seed": "int",
           "batch_size": "int >= 2 | null  # null: data.batch_size"},
)  # fmt: skip
class EvalStats(Measurement):
    columns = ("stats", "n", "test_loss", "test_acc")
    index = ("stats", "n")

    def __init__(
        self,
        num_examples: Sequence[int] = (100, 1000, 10000),
        batch_size: int | None = None,
        eval_batch_size: int = 1000,
        seed: int = 0,
    ):
        counts = list(num_examples)
        if not counts or any(isinstance(n, bool) or not isinstance(n, int) or n < 2 for n in counts):
            raise ValueError(
                f"measure.eval_stats.num_examples={counts!r} is not valid; expected integers >= 2"
            )
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                       or batch_size < 2):  # fmt: skip
            raise ValueError(
                f"measure.eval_stats.batch_size={batch_size!r} is not valid; expected null or an integer >= 2"
            )
        self.num_examples, self.batch_size = counts, batch_size
        self.eval_batch_size, self.seed = eval_batch_size, seed

    @classmethod
    def order_key(cls, row, config) -> tuple:
        """ema, then precise by n, then batch: the order measure() writes them."""
        return (("ema", "precise", "batch").index(row["stats"]), int(row["n"]))

    def measure(self, ctx: MeasureContext) -> list[dict]:
        loss, acc = evaluate(ctx.model, ctx.data, self.eval_batch_size)
        rows = [{"stats": "ema", "n": 0, "test_loss": loss, "test_acc": acc}]
        if not batch_norm_layers(ctx.model):
            return rows
        batch_size = self.batch_size or ctx.config.get("data", {}).get("batch_size", 128)
        for n in self.num_examples:
            loss, acc = self._precise(ctx, min(n, len(ctx.data.train_y)), batch_size)
            rows.append({"stats": "precise", "n": n, "test_loss": loss, "test_acc": acc})
        loss, acc = self._batch_statistics(ctx, batch_size)
        rows.append({"stats": "batch", "n": 0, "test_loss": loss, "test_acc": acc})
        return rows

    def _precise(self, ctx: MeasureContext, n: int, batch_size: int) -> tuple[float, float]:
        """Algorithm 2 from n training examples (full batches; a ragged tail of fewer than 2 is dropped)."""
        generator = torch.Generator().manual_seed(self.seed + ctx.step)
        order = torch.randperm(len(ctx.data.train_y), generator=generator)[:n].to(ctx.data.train_y.device)
        # Full batches only when there is one (a ragged tail is dropped): a ghost-BN layer takes only
        # batches its virtual batch size divides, and the training batches were full too.
        chunks = order.split(batch_size)
        if len(chunks) > 1 and len(chunks[-1]) < batch_size:
            chunks = chunks[:-1]
        chunks = [idx for idx in chunks if len(idx) > 1]
        model = copy_model(ctx.model)
        inputs = (ctx.data.normalize(ctx.data.train_x[idx]) for idx in chunks)
        recompute_population_statistics(model, inputs, len(chunks))
        return evaluate(model, ctx.data, self.eval_batch_size)

    @torch.no_grad()
    def _batch_statistics(self, ctx: MeasureContext, batch_size: int) -> tuple[float, float]:
        model = copy_model(ctx.model).train()
        data = ctx.data
        loss_sum, correct, seen = 0.0, 0, 0
        for start in range(0, len(data.test_y), batch_size):
            x = data.normalize(data.test_x[start : start + batch_size])
            y = data.test_y[start : start + batch_size]
            # BN in training mode needs more than one value per channel; a ragged last batch is left
            # out (ghost BN takes only batches its virtual batch size divides), unless it is the only one.
            if len(y) < 2 or (len(y) < batch_size and start > 0):
                continue
            logits = model(x)
            loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").item()
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
        return loss_sum / seen, correct / seen
