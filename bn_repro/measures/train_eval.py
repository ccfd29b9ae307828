"""The fit to the training set in eval mode (paper section 3.4, "BN regularizes the model"): loss and
accuracy on the first `num_examples` training images (null: all), unaugmented, with the model as it is
evaluated on the test set (eval mode: running statistics, dropout off).

    rows: one per measured step, with train_loss, train_acc

metrics.csv's train_loss/train_acc are those of the training batches as they were trained (training mode:
batch statistics, dropout on, augmentation), which is not comparable with the test accuracy; the
train-test gap of a regularisation study is this measurement's train_acc minus the same step's test_acc.
"""

from __future__ import annotations

from bn_repro.engine.evaluate import evaluate
from bn_repro.measures.base import MeasureConfigError, MeasureContext, Measurement, register_measurement


@register_measurement(
    "train_eval",
    specs={"num_examples": "int >= 1 | null  # null: the whole training set", "eval_batch_size": "int >= 1"},
)
class TrainEval(Measurement):
    columns = ("train_loss", "train_acc")

    def __init__(self, num_examples: int | None = None, eval_batch_size: int = 1000):
        bad = isinstance(num_examples, bool) or not isinstance(num_examples, int) or num_examples < 1
        if num_examples is not None and bad:
            raise MeasureConfigError(
                f"measure.train_eval.num_examples={num_examples!r} is not valid; "
                "expected null or an integer >= 1"
            )
        self.num_examples, self.eval_batch_size = num_examples, eval_batch_size

    def measure(self, ctx: MeasureContext) -> list[dict]:
        loss, acc = evaluate(
            ctx.model, ctx.data, self.eval_batch_size, limit=self.num_examples, split="train"
        )
        return [{"train_loss": loss, "train_acc": acc}]
