"""The embedded model's training, evaluation and GPU trainer.

The server needs only the shipped checkpoint, its lookup, the tiny-checkpoint builder and the
grammar's words, which live in :mod:`fluxserve.embedded`; everything here makes and measures
the checkpoint:

- ``scenes``: scenes of the grammar's words, rendering, captions, edit instructions.
- ``evaluate``: scores images against scenes without a neural network; contact sheets
  (``python -m training.embedded.evaluate``).
- ``train``: trains the checkpoint from nothing (``python -m training.embedded.train``), with
  its settings in ``config``, the components in ``model``, the data pool and caption labels in
  ``data``, and progress lines from ``progress``.
- ``gpu_train``: the streaming trainer for a GPU (``python -m training.embedded.gpu_train``):
  batches drawn by worker processes (``stream``), rendered on the GPU (``gpu_scenes``), stages
  on a time budget (the transformer's in ``gpu_transformer``), where a run stands in
  ``gpu_run``, its state in parts a lent machine can return (``state``); ``gpu_session.sh`` and
  ``gpu_wheels.sh`` are the GPU session plan's scripts.
"""
