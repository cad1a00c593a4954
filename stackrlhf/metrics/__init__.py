"""`evaluate` metrics shipped with stackrlhf, loadable offline by path."""

from pathlib import Path

PAIRWISE_ACCURACY = str(Path(__file__).parent / "pairwise_accuracy")

__all__ = ["PAIRWISE_ACCURACY"]
