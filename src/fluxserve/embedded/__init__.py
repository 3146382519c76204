"""The embedded model: a tiny FLUX Kontext checkpoint trained here on procedural scenes.

What the server needs of it, and nothing more:

- ``checkpoint/``: the shipped weights, found by :func:`embedded_checkpoint`;
- ``vocabulary``: the grammar's words (colours, shapes, sizes, positions); imports nothing;
- ``builder``: a tiny random checkpoint of the same layout (tests; a build without weights).

Its training, evaluation and GPU trainer live outside the package, in the repository's
``training/embedded/`` (``python -m training.embedded.train``); the wheel does not ship them.
"""

from pathlib import Path

CHECKPOINT_DIR = Path(__file__).parent / "checkpoint"


def embedded_checkpoint() -> Path | None:
    """The shipped checkpoint directory, or None when this build has none."""
    return CHECKPOINT_DIR if (CHECKPOINT_DIR / "model_index.json").is_file() else None
