"""The benchmarked architectures: full size from the published configs, tiny the same shapes
scaled down (the tiny checkpoints of fluxserve.embedded.builder and tests/tiny_checkpoints.py)."""

from __future__ import annotations

from typing import Any

# black-forest-labs/FLUX.1-dev transformer/config.json (FLUX.1-Kontext-dev's is the same; schnell's
# has guidance_embeds false). Also diffusers scripts/convert_flux_to_diffusers.py, which builds
# FluxTransformer2DModel(in_channels=64, guidance_embeds=has_guidance) with these defaults, and
# the original flux repo's "flux-dev" params (depth 19, depth_single_blocks 38, hidden 3072,
# 24 heads, context_in_dim 4096, vec_in_dim 768, axes_dim [16, 56, 56]).
FLUX1_TRANSFORMER = dict(
    patch_size=1,
    in_channels=64,
    out_channels=None,
    num_layers=19,
    num_single_layers=38,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=4096,
    pooled_projection_dim=768,
    guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)
# black-forest-labs/FLUX.1-dev vae/config.json: the SD3 VAE config with FLUX's scaling and shift
# (diffusers scripts/convert_flux_to_diffusers.py: AutoencoderKL.from_config(sd3 vae config,
# scaling_factor=0.3611, shift_factor=0.1159); the flux repo's ae_params ch 128, ch_mult
# [1, 2, 4, 4], num_res_blocks 2, z_channels 16).
FLUX1_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[128, 256, 512, 512],
    layers_per_block=2,
    act_fn="silu",
    latent_channels=16,
    norm_num_groups=32,
    sample_size=1024,
    scaling_factor=0.3611,
    shift_factor=0.1159,
    force_upcast=True,
    use_quant_conv=False,
    use_post_quant_conv=False,
    mid_block_add_attention=True,
)
# black-forest-labs/FLUX.1-dev text_encoder/config.json: openai/clip-vit-large-patch14's text model.
CLIP_L = dict(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    projection_dim=768,
    bos_token_id=0,
    eos_token_id=2,
    pad_token_id=1,
)
# black-forest-labs/FLUX.1-dev text_encoder_2/config.json: google/t5-v1_1-xxl's encoder (d_model
# 4096, d_ff 10240, 64 heads of 64, 24 layers, gated-gelu; as T5 1.1 xxl's gin and torchtune's
# t5_v1p1_xxl_encoder). Dropout is 0.1 there; it does nothing in eval mode.
T5_XXL = dict(
    vocab_size=32128,
    d_model=4096,
    d_ff=10240,
    d_kv=64,
    num_layers=24,
    num_heads=64,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    feed_forward_proj="gated-gelu",
    layer_norm_epsilon=1e-6,
    dropout_rate=0.0,
    tie_word_embeddings=False,
    decoder_start_token_id=0,
    pad_token_id=0,
    eos_token_id=1,
)
# black-forest-labs/FLUX.1-dev scheduler/scheduler_config.json (Kontext-dev's is the same).
FLUX1_DEV_SCHEDULER = dict(
    num_train_timesteps=1000,
    shift=3.0,
    use_dynamic_shifting=True,
    base_shift=0.5,
    max_shift=1.15,
    base_image_seq_len=256,
    max_image_seq_len=4096,
)
# black-forest-labs/FLUX.1-schnell scheduler/scheduler_config.json.
FLUX1_SCHNELL_SCHEDULER = dict(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False)
# diffusers scripts/convert_flux2_to_diffusers.py, get_flux2_transformer_config("klein-4b")
# (the config black-forest-labs/FLUX.2-klein-4B's transformer/config.json holds).
KLEIN4B_TRANSFORMER = dict(
    patch_size=1,
    in_channels=128,
    num_layers=5,
    num_single_layers=20,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=7680,
    timestep_guidance_channels=256,
    mlp_ratio=3.0,
    axes_dims_rope=(32, 32, 32, 32),
    rope_theta=2000,
    eps=1e-6,
    guidance_embeds=False,
)
# diffusers scripts/convert_flux2_to_diffusers.py builds the FLUX.2 VAE as AutoencoderKLFlux2()
# with its defaults (block_out_channels 128/256/512/512, latent_channels 32, patch_size 2x2).
FLUX2_VAE: dict[str, Any] = {}
# Qwen/Qwen3-4B config.json, FLUX.2-klein-4B's text encoder (its hidden states 9, 18 and 27 are
# stacked: 3 x 2560 = the transformer's joint_attention_dim 7680).
QWEN3_4B = dict(
    vocab_size=151936,
    hidden_size=2560,
    intermediate_size=9728,
    num_hidden_layers=36,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
    hidden_act="silu",
    max_position_embeddings=40960,
    rope_theta=1000000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
)
# The convert script takes FLUX.1-dev's scheduler for FLUX.2.
KLEIN_SCHEDULER = FLUX1_DEV_SCHEDULER

TINY = {
    "flux1_transformer": dict(
        patch_size=1,
        in_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        guidance_embeds=True,
        axes_dims_rope=(4, 6, 6),
    ),
    "flux1_vae": dict(
        FLUX1_VAE,
        block_out_channels=[8, 8, 16, 16],
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=64,
    ),
    "clip": dict(
        CLIP_L,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        projection_dim=32,
    ),
    "t5": dict(
        T5_XXL, d_model=32, d_ff=64, d_kv=16, num_layers=1, num_heads=2, relative_attention_num_buckets=8
    ),
    "klein_transformer": dict(
        KLEIN4B_TRANSFORMER,
        in_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=48,
        timestep_guidance_channels=32,
        mlp_ratio=2.0,
        axes_dims_rope=(4, 4, 4, 4),
    ),
    "flux2_vae": dict(
        block_out_channels=(8, 8, 16, 16),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=64,
        use_quant_conv=False,
        use_post_quant_conv=False,
    ),
    # 28 layers: the pipeline reads hidden states 9, 18 and 27 (3 x 16 = joint_attention_dim 48).
    "qwen3": dict(
        QWEN3_4B,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=28,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        max_position_embeddings=1024,
        vocab_size=128,  # the word tokenizer's ~90 ids; the full vocabulary's LM head would dominate
    ),
}
FULL = {
    "flux1_transformer": FLUX1_TRANSFORMER,
    "flux1_vae": FLUX1_VAE,
    "clip": CLIP_L,
    "t5": T5_XXL,
    "klein_transformer": KLEIN4B_TRANSFORMER,
    "flux2_vae": FLUX2_VAE,
    "qwen3": QWEN3_4B,
}
