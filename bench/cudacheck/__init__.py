"""The parts of ``bench/cuda_check.py`` (issue 29): architectures and random-weight checkpoints
(:mod:`.models`), the JSON report (:mod:`.report`), the engine checks (:mod:`.checks`) and the
server check (:mod:`.serving`)."""
