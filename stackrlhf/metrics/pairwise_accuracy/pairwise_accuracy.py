"""Pairwise accuracy of a reward model: the share of pairs whose preferred answer scores higher.

An `evaluate` metric shipped with stackrlhf so that reward evaluation runs offline:
`evaluate.load(stackrlhf.metrics.PAIRWISE_ACCURACY)` then `compute(chosen_scores=[...], rejected_scores=[...])`.
"""

import datasets
import evaluate

_DESCRIPTION = "Share of preference pairs where the reward of the chosen answer is strictly above the rejected one."
_KWARGS_DESCRIPTION = """
Args:
    chosen_scores (`list[float]`): reward of the preferred answer of each pair.
    rejected_scores (`list[float]`): reward of the rejected answer of each pair, in the same order.
Returns:
    accuracy (`float`): fraction of pairs with chosen_score > rejected_score, in [0, 1].
    mean_margin (`float`): mean of chosen_score - rejected_score, in reward units.
    num_pairs (`int`): number of pairs scored.
"""
_CITATION = (
    "Ouyang et al. 2022, Training language models to follow instructions with human feedback (reward model accuracy)."
)


class PairwiseAccuracy(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"chosen_scores": datasets.Value("float64"), "rejected_scores": datasets.Value("float64")}
            ),
        )

    def _compute(self, chosen_scores: list[float], rejected_scores: list[float]) -> dict:
        margins = [chosen - rejected for chosen, rejected in zip(chosen_scores, rejected_scores, strict=True)]
        return {
            "accuracy": sum(margin > 0 for margin in margins) / len(margins),
            "mean_margin": sum(margins) / len(margins),
            "num_pairs": len(margins),
        }
