"""LoRA files in diffusers' format: a LoRA saved by an SD3, FLUX or Qwen-Image policy, loaded by the family's
diffusers pipeline with `load_lora_weights(folder)`, samples exactly what the policy samples with it (same noise,
same embeddings, the pipeline's own schedule), at full strength (alpha 8 on rank 4: loaded at alpha = rank it would
be half as strong), and differs from the pipeline without it. A fresh policy that loads the same folder samples the
same latents too.
"""

import json

import pytest
import torch

from arr.policies.lora import LORA_METADATA_KEY, LORA_WEIGHTS_NAME, read_lora_weights
from tests.conftest import FAMILIES, build_family_policy, family_pipeline, nonzero_lora

PROMPTS = ["a red circle", "two blue squares"]


def run_pipeline(family, pipe, cond, noise, cfg):
    """Final latents of the pipeline for the policy's embeddings and initial noise."""
    e, n = cond.embeds, cond.negative
    common = dict(num_inference_steps=3, height=16, width=16, latents=noise, output_type="latent")
    if family == "sd3":
        return pipe(
            prompt_embeds=e["prompt_embeds"],
            pooled_prompt_embeds=e["pooled_prompt_embeds"],
            negative_prompt_embeds=n["prompt_embeds"],
            negative_pooled_prompt_embeds=n["pooled_prompt_embeds"],
            guidance_scale=cfg,
            **common,
        ).images
    if family == "flux":
        return pipe(
            prompt_embeds=e["prompt_embeds"],
            pooled_prompt_embeds=e["pooled_prompt_embeds"],
            guidance_scale=3.5,
            **common,
        ).images
    return pipe(
        prompt_embeds=e["prompt_embeds"],
        prompt_embeds_mask=e["prompt_embeds_mask"],
        negative_prompt_embeds=n["prompt_embeds"],
        negative_prompt_embeds_mask=n["prompt_embeds_mask"],
        true_cfg_scale=cfg,
        **common,
    ).images


def base_policy(family, cfg):
    # The pipeline's own schedule (shift from the scheduler config); the same random base weights every call.
    return build_family_policy(family, cfg, shift=None, scheduler_config={"shift": 3.0})


@pytest.mark.parametrize("family", FAMILIES)
def test_diffusers_pipeline_loads_the_lora_at_full_strength(family, tmp_path):
    cfg = 1.0 if family == "flux" else 3.0
    trained = base_policy(family, cfg)
    trained.add_lora(r=4, alpha=8)
    nonzero_lora(trained)
    cond = trained.encode(PROMPTS)
    noise = trained._initial_noise(2, 16, 16, torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = trained.sample(cond, eta=0.0, noise=noise).final
    file = trained.save_lora_weights(tmp_path, base_model="tiny/" + family)
    assert file == tmp_path / LORA_WEIGHTS_NAME

    # The file is diffusers' own: transformer-prefixed peft keys, the LoraConfig in its header.
    from safetensors import safe_open

    with safe_open(str(file), "pt") as f:
        keys, header = list(f.keys()), f.metadata()
    assert keys and all(k.startswith("transformer.") and ".lora_" in k for k in keys)
    meta = json.loads(header[LORA_METADATA_KEY])
    assert meta["transformer.r"] == 4 and meta["transformer.lora_alpha"] == 8.0

    base = base_policy(family, cfg)
    pipe = family_pipeline(family, base)
    with torch.no_grad():
        without = run_pipeline(family, pipe, cond, noise, cfg)
        pipe.load_lora_weights(str(tmp_path))
        with_lora = run_pipeline(family, pipe, cond, noise, cfg)
    torch.testing.assert_close(with_lora.float(), expected, atol=2e-5, rtol=1e-4)
    assert (without.float() - expected).abs().max() > 1e-3  # the LoRA changes the sample: the test can fail

    fresh = base_policy(family, cfg)
    weights = fresh.load_lora_weights(tmp_path)
    assert (weights.rank, weights.alpha, weights.base_model) == (4, 8.0, "tiny/" + family)
    with torch.no_grad():
        again = fresh.sample(fresh.encode(PROMPTS), eta=0.0, noise=noise).final
    torch.testing.assert_close(again, expected, atol=1e-6, rtol=1e-6)


def test_lora_files_without_alpha_and_errors(tmp_path):
    from safetensors.torch import save_file

    trained = base_policy("sd3", 1.0)
    trained.add_lora(r=2, alpha=6)
    nonzero_lora(trained)
    state = {k: v.contiguous() for k, v in trained.lora_state_dict().items()}
    # A diffusers file written without the header: diffusers loads it at alpha = rank, and so does arr.
    save_file({f"transformer.{k}": v for k, v in state.items()}, tmp_path / "bare.safetensors")
    bare = read_lora_weights(tmp_path / "bare.safetensors")
    assert (bare.rank, bare.alpha) == (2, 2.0)
    assert read_lora_weights(tmp_path / "bare.safetensors", alpha=6).alpha == 6.0
    assert set(bare.state) == set(state)

    with pytest.raises(ValueError, match="no pytorch_lora_weights.safetensors"):
        read_lora_weights(tmp_path / "missing")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        read_lora_weights(tmp_path / "junk.safetensors")
    # A LoRA of another model (other widths) is refused with one line, not a stack of shape errors.
    trained.save_lora_weights(tmp_path / "sd3")
    flux = build_family_policy("flux")
    with pytest.raises(ValueError, match="LoRA"):
        flux.load_lora_weights(tmp_path / "sd3")
