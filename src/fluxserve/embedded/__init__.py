"""The embedded model: a tiny FLUX Kontext checkpoint trained here on procedural scenes.

- ``scenes``: the scene grammar (colours, shapes, sizes, positions), rendering, captions, edits.
- ``evaluate``: scores images against scenes without a neural network; contact sheets.
- ``train``: trains the checkpoint from nothing (``python -m fluxserve.embedded.train``).
"""

from pathlib import Path

CHECKPOINT_DIR = Path(__file__).parent / "checkpoint"


def embedded_checkpoint() -> Path | None:
    """The shipped checkpoint directory, or None when this build has none."""
    return CHECKPOINT_DIR if (CHECKPOINT_DIR / "model_index.json").is_file() else None
