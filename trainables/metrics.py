"""The validation metrics trials report, the direction each is optimised in, and the names derived from them.

Every evaluation scores the validation split (``val_…``, what every choice reads) and the test split
(``test_…``, read by no choice). This module owns the score keys: ``Metric.VAL_ACCURACY.test`` is the same score
on the test split (``test_accuracy``), ``.best`` the key of a run's best validation value (``best_val_accuracy``),
``.final`` the key of its last one.
"""

from __future__ import annotations

from enum import StrEnum

VALIDATION_PREFIX, TEST_PREFIX = "val_", "test_"


class Metric(StrEnum):
    VAL_ACCURACY = "val_accuracy"
    VAL_MACRO_F1 = "val_macro_f1"
    VAL_ROUGE_L = "val_rougeL"
    VAL_LOSS = "val_loss"

    @property
    def mode(self) -> str:
        """``max`` or ``min``: the direction a search optimises this metric in."""
        return "min" if self is Metric.VAL_LOSS else "max"

    @property
    def best(self) -> str:
        return f"best_{self.value}"

    @property
    def final(self) -> str:
        return f"final_{self.value}"

    @property
    def test(self) -> str:
        return TEST_PREFIX + self.value.removeprefix(VALIDATION_PREFIX)

    def better(self, value: float, than: float) -> bool:
        return value > than if self.mode == "max" else value < than

    @property
    def bounds(self) -> tuple[float, float]:
        """The values the score can take."""
        return (0.0, float("inf")) if self is Metric.VAL_LOSS else (0.0, 1.0)

    def failed(self, value: float, threshold: float) -> bool:
        """Whether a run whose best validation score is ``value`` failed, by ``threshold``."""
        return value <= threshold if self.mode == "max" else value >= threshold

    @property
    def worst(self) -> float:
        return float("-inf") if self.mode == "max" else float("inf")


def on_test(scores: dict[str, float]) -> dict[str, float]:
    """Validation-named scores (``val_accuracy``) renamed as the same scores on the test split (``test_accuracy``)."""
    return {TEST_PREFIX + name.removeprefix(VALIDATION_PREFIX): value for name, value in scores.items()}
