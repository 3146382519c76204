"""Moderation at safety_tolerance 0 (strictest) .. 6 (most permissive).

Prompts are checked before a job is queued (-> ``Request Moderated``), input images too, and
generated images after generation (-> ``Content Moderated``). Every decision records the
category, score and tolerance; what the API shows names the category only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from PIL import Image

from fluxserve.safety.image import ImageClassifier, OpenNSFWClassifier
from fluxserve.safety.terms import CATEGORIES, DEFAULT_IMAGE_THRESHOLDS, DEFAULT_THRESHOLDS
from fluxserve.safety.text import match_terms

if TYPE_CHECKING:
    from fluxserve.settings import Settings

SEXUAL = ("sexual_explicit", "sexual_suggestive")

__all__ = [
    "CATEGORIES",
    "DEFAULT_IMAGE_THRESHOLDS",
    "DEFAULT_THRESHOLDS",
    "Decision",
    "ImageClassifier",
    "Moderator",
    "OpenNSFWClassifier",
]


@dataclass(frozen=True)
class Decision:
    """The outcome of one moderation check, with what it was based on (for the audit trail)."""

    allowed: bool
    source: str  # "prompt", "input_image" or "output_image"
    tolerance: int
    category: str | None = None
    score: float = 0.0
    threshold: float | None = None
    rule: str | None = None

    def audit(self) -> dict[str, Any]:
        """Everything, for the job row."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    def public(self) -> dict[str, Any]:
        """What the API may show: the category and where, never the offending text."""
        return {"category": self.category, "source": self.source, "tolerance": self.tolerance}


class Moderator:
    """Prompt and image moderation with per-category thresholds for each tolerance 0..6.

    Whatever the thresholds, a prompt that pairs a minor (a ``minors`` term or a stated age
    under 18) with anything sexual is refused at every tolerance."""

    def __init__(
        self,
        enabled: bool = True,
        thresholds: dict[str, list[float]] | None = None,
        image_thresholds: list[float] | None = None,
        classifier: ImageClassifier | None = None,
    ) -> None:
        self.enabled = enabled
        self.thresholds = {**DEFAULT_THRESHOLDS, **(thresholds or {})}
        self.image_thresholds = image_thresholds or list(DEFAULT_IMAGE_THRESHOLDS)
        self.classifier = classifier

    @classmethod
    def from_settings(cls, settings: Settings) -> Moderator:
        """The deployment's moderator: its switch, thresholds and (when on) the image classifier."""
        return cls(
            enabled=settings.moderation_enabled,
            thresholds=settings.moderation_thresholds,
            image_thresholds=settings.moderation_image_thresholds,
            classifier=OpenNSFWClassifier() if settings.moderation_enabled else None,
        )

    def check_prompt(self, prompt: str, tolerance: int) -> Decision:
        """Decide on a prompt at ``tolerance`` (0 strictest .. 6). Linear in the prompt's length
        and never raises for any ``str``, lone surrogates included."""
        if not self.enabled:
            return Decision(True, "prompt", tolerance)
        matches = match_terms(prompt)
        cats = {m.category for m in matches}
        if "minors" in cats and cats & set(SEXUAL):
            score = max(m.severity for m in matches if m.category in SEXUAL)
            return Decision(
                False,
                "prompt",
                tolerance,
                "minors",
                score,
                0.0,
                rule="minors with sexual content: blocked at every tolerance",
            )
        worst: Decision | None = None
        for m in matches:
            threshold = self.thresholds[m.category][tolerance]
            if m.severity >= threshold and (worst is None or m.severity > worst.score):
                worst = Decision(False, "prompt", tolerance, m.category, m.severity, threshold)
        if worst is not None:
            return worst
        top = max(matches, key=lambda m: m.severity, default=None)
        return Decision(
            True, "prompt", tolerance, top.category if top else None, top.severity if top else 0.0
        )

    def check_images(self, images: list[Image.Image], tolerance: int, source: str) -> Decision:
        """Decide on images (``source``: "input_image" or "output_image") by the classifier's
        highest NSFW score; allowed when no classifier is configured."""
        if not self.enabled or self.classifier is None or not images:
            return Decision(True, source, tolerance)
        score = max(self.classifier.nsfw_scores(images))
        threshold = self.image_thresholds[tolerance]
        return Decision(score < threshold, source, tolerance, "sexual_explicit", round(score, 4), threshold)
