"""Sentiment rewards for the quick start: texts in, one float per text out.

* `VaderSentimentReward`: VADER's compound sentiment in [-1, 1], offline (lexicon shipped in the `vaderSentiment`
  wheel); the quick start's reward;
* `ClassifierSentimentReward`: the positive-class logit of any transformers sentiment classifier, as TRL's
  gpt2-sentiment example read `lvwerra/distilbert-imdb`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from stackrlhf.errors import ConfigError, one_line


class VaderSentimentReward:
    """VADER's compound sentiment of each text, in [-1, 1] (negative to positive); no model, no network.

    Hutto and Gilbert, "VADER: A Parsimonious Rule-based Model for Sentiment Analysis of Social Media Text" (ICWSM
    2014); `vaderSentiment` is MIT-licensed and ships its lexicon.
    """

    name = "vader"

    def __init__(self) -> None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self.analyzer = SentimentIntensityAnalyzer()

    def __call__(self, texts: Sequence[str]) -> list[float]:
        return [self.analyzer.polarity_scores(text)["compound"] for text in texts]


class ClassifierSentimentReward:
    """The raw logit of the positive class of a transformers sequence classifier (no softmax).

    Args:
        model_name_or_path: e.g. `lvwerra/distilbert-imdb` (labels NEGATIVE/POSITIVE).
        batch_size: texts per forward pass.
        device: where the classifier runs.

    Raises:
        ConfigError: the model cannot be loaded or has no label that reads as positive.
    """

    def __init__(self, model_name_or_path: str, batch_size: int = 16, device: str | torch.device = "cpu") -> None:
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model_name_or_path)
            self.model = AutoModelForSequenceClassification.from_pretrained(model_name_or_path).to(device).eval()
        except (OSError, ValueError) as err:
            raise ConfigError(f"--reward_model {model_name_or_path!r}: cannot load it ({one_line(err)})") from err
        labels = {index: label.lower() for index, label in self.model.config.id2label.items()}
        positive = [index for index, label in labels.items() if label.startswith("pos") or label == "label_1"]
        if len(positive) != 1:
            raise ConfigError(
                f"--reward_model {model_name_or_path!r}: no single positive label among {sorted(labels.values())}."
            )
        self.positive_index = positive[0]
        self.name = model_name_or_path
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, texts: Sequence[str]) -> list[float]:
        scores: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                list(texts[start : start + self.batch_size]), padding=True, truncation=True, return_tensors="pt"
            ).to(self.model.device)
            scores.extend(self.model(**batch).logits[:, self.positive_index].float().tolist())
        return scores
