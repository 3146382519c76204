"""The embedded model: a tiny FLUX Kontext checkpoint trained here on procedural scenes.

- ``vocabulary``: the grammar's words (colours, shapes, sizes, positions); imports nothing.
- ``scenes``: scenes of those words, rendering, captions, edit instructions.
- ``evaluate``: scores images against scenes without a neural network; contact sheets.
- ``builder``: a tiny random checkpoint of the same layout (tests; a build without weights).
- ``train``: trains the checkpoint from nothing (``python -m fluxserve.embedded.train``), with
  its settings in ``config``, the components in ``model``, the data pool and caption labels in
  ``data``, and progress lines from ``progress``.
- ``gpu_train``: the streaming trainer for a GPU (``python -m fluxserve.embedded.gpu_train``):
  batches drawn by worker processes (``stream``), rendered on the GPU (``gpu_scenes``), stages
  on a time budget, its state in parts a lent machine can return (``state``).
"""

from pathlib import Path

CHECKPOINT_DIR = Path(__file__).parent / "checkpoint"


def embedded_checkpoint() -> Path | None:
    """The shipped checkpoint directory, or None when this build has none."""
    return CHECKPOINT_DIR if (CHECKPOINT_DIR / "model_index.json").is_file() else None
