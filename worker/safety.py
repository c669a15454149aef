"""The image safety checker (CONTRACT 3c): any Hugging Face image-classification model (a hub id
or a local directory, loaded like a checkpoint: HF cache, offline with HF_HUB_OFFLINE=1) scores
every output before it is stored; an output whose score for one of SDXL_SAFETY_LABELS reaches
SDXL_SAFETY_THRESHOLD blocks its request.

transformers' image-classification pipeline does the model's own preprocessing and its own
activation (softmax, or sigmoid for a multi-label model), so any such model works unchanged."""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence

from PIL import Image

log = logging.getLogger("sdxl.worker.safety")


class SafetyCheckerError(RuntimeError):
    """The classifier cannot be loaded, or does not know a label it is asked to watch."""


class SafetyChecker:
    def __init__(
        self, source: str, labels: Sequence[str], threshold: float, *, device: str, cache_dir: str | None
    ) -> None:
        from transformers import pipeline

        try:
            self.pipeline = pipeline(
                "image-classification", model=source, device=device, model_kwargs={"cache_dir": cache_dir}
            )
        except Exception as exc:  # any loading failure (missing files, offline, not a classifier)
            raise SafetyCheckerError(f"SDXL_SAFETY_CHECKER={source!r} could not be loaded: {exc}") from exc
        known = {name.lower(): name for name in self.pipeline.model.config.id2label.values()}
        missing = [label for label in labels if label.lower() not in known]
        if missing:
            raise SafetyCheckerError(
                f"SDXL_SAFETY_LABELS {missing} are not labels of {source!r} (it has {sorted(known.values())})"
            )
        self.labels = {known[label.lower()] for label in labels}
        self.threshold = threshold
        self.source = source

    def scores(self, images: Sequence[Image.Image]) -> list[float]:
        """Per image, its highest score among the watched labels."""
        answers = self.pipeline(list(images), top_k=None)
        return [
            max((a["score"] for a in answer if a["label"] in self.labels), default=0.0) for answer in answers
        ]

    def flags(self, encoded_images: Sequence[bytes]) -> bool:
        """Whether any of these (encoded) outputs is flagged."""
        images = [Image.open(io.BytesIO(data)).convert("RGB") for data in encoded_images]
        scores = self.scores(images)
        flagged = any(score >= self.threshold for score in scores)
        if flagged:
            log.warning("output flagged", extra={"scores": [round(s, 4) for s in scores]})
        return flagged
