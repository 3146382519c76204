"""The settings of one training run of the embedded model.

Every field is a flag of ``python -m training.embedded.train`` (``vae_steps`` is
``--vae-steps``), and the exported checkpoint records them all in its ``fluxserve.json``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Config:
    """Seeds, data, model sizes, schedules and the sampling defaults written at export."""

    seed: int = 0
    native_area: int = 64 * 64
    multiple: int = 8  # VAE factor 4 x 2x2 packing
    latent_channels: int = 8
    vae_blocks: str = "16,32,64"  # autoencoder channels per level; n levels = 2^(n-1)x down
    vae_layers: int = 1  # resnet layers per autoencoder level
    vae_steps: int = 2000
    vae_batch: int = 32
    decoder_steps: int = 1500
    pool_t2i: int = 66_000
    pool_edit: int = 33_000
    steps: int = 3500
    batch: int = 256
    lr: float = 8e-4
    warmup: int = 100
    edit_fraction: float = 0.4
    edit_batch: int = 128  # batch of an edit step (0 = --batch); edit steps carry twice the tokens
    curriculum: float = 0.3  # share of the steps, at the start, on single-object scenes only
    uniform_t: float = 0.2  # share of timesteps drawn uniformly instead of logit-normal
    text_steps: int = 1000  # caption-parsing pre-training steps of the text encoder (stage 2b)
    text_aux: float = 0.5  # weight of the caption-parsing loss while the transformer trains
    caption_dropout: float = 0.1
    object_weight: float = 5.0
    edge_weight: float = 0.0  # extra loss weight of tokens an object's outline crosses
    ema: float = 0.999
    width: int = 128
    heads: int = 4
    double_blocks: int = 2
    single_blocks: int = 2
    text_dim: int = 64
    text_layers: int = 2
    max_text: int = 32
    default_steps: int = 16
    default_guidance: float = 4.0
    # --- used by the streaming GPU trainer (``training.embedded.gpu_train``) only ---
    vae_object_weight: float = 5.0  # autoencoder loss weight of object pixels (+1)
    vae_edge_weight: float = 0.0  # extra weight of pixels on an object's outline
    vae_refine: float = 0.25  # share of the autoencoder's time with the encoder frozen
    wild_captions: float = 0.0  # share of captions with out-of-grammar words (``data.wild_caption``)
    reuse: int = 1  # transformer steps: each drawn scene at this many noise levels (batch x reuse)
