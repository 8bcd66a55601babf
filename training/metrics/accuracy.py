"""Accuracy as a local `evaluate` module, so training needs no Hub download."""

from __future__ import annotations

import datasets
import evaluate

_DESCRIPTION = "Accuracy: the fraction of predictions equal to their references."
_KWARGS = """
Args:
    predictions (list of int): predicted labels.
    references (list of int): ground-truth labels.
    normalize (bool): return a fraction (True, default) or a count (False).
    sample_weight (list of float): per-example weights; defaults to 1.
Returns:
    accuracy (float): the fraction (or count) of correct predictions.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class Accuracy(evaluate.Metric):
    """Fraction of predictions that equal their references."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {"predictions": datasets.Value("int32"), "references": datasets.Value("int32")}
            ),
        )

    def _compute(
        self,
        predictions: list[int],
        references: list[int],
        normalize: bool = True,
        sample_weight: list[float] | None = None,
    ) -> dict[str, float]:
        total = 0.0
        hits = 0.0
        weights = sample_weight if sample_weight is not None else [1.0] * len(predictions)
        for p, r, w in zip(predictions, references, weights, strict=True):
            total += w
            hits += w * (int(p) == int(r))
        if not normalize:
            return {"accuracy": float(hits)}
        return {"accuracy": float(hits / total) if total else 0.0}
