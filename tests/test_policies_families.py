"""SD3, FLUX and Qwen-Image policies with tiny configs: exact recomputed log-probabilities, groups, reference, KL.

Each family is also checked against its diffusers pipeline: with eta = 0 and the pipeline's own schedule, the
policy's final latents equal the pipeline's (output_type="latent") for the same components and noise.
"""

import numpy as np
import pytest
import torch
from diffusers import (
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    QwenImagePipeline,
    StableDiffusion3Pipeline,
)
from PIL import Image

from arr.policies import FlowPolicy
from arr.policies.sde import gaussian_kl
from tests.conftest import FAMILIES, build_family_policy

PROMPTS = ["a red circle", "two blue squares"]


def perturb_lora(policy, scale=0.2):
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in policy.trainable_parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("cfg", [1.0, 3.0])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_recomputed_log_probs_give_ratio_one(family, cfg, reduction):
    policy = build_family_policy(family, cfg=cfg, eta=0.7, reduction=reduction)
    assert isinstance(policy, FlowPolicy)
    policy.add_lora(r=4, alpha=8)
    perturb_lora(policy)  # a non-zero LoRA, so the recomputation really goes through it
    traj = policy.sample(policy.encode(PROMPTS), group_size=2, seed=3)
    assert traj.latents.shape[:2] == (4, 4) and traj.log_probs.shape == (4, 3)
    for i in traj.train_steps:
        full = policy.transition(traj, i)
        sub = policy.transition(traj, i, sample_indices=[3, 0])
        assert torch.exp(full.log_prob - traj.log_probs[:, i]).sub(1).abs().max().item() < 1e-5
        # A sub-batch goes through float32 kernels blocked for another batch size: on an AMD EPYC CPU the SD3
        # transition means moved by up to 5e-7, which the summed log-prob of the last step (|log p| ~ 940)
        # turned into a ratio of 1 + 1.6e-5. Wrong indexing would be off by far more than 1e-4.
        assert torch.exp(sub.log_prob - traj.log_probs[[3, 0], i]).sub(1).abs().max().item() < 1e-4
        assert full.log_prob.requires_grad


@pytest.mark.parametrize("family", FAMILIES)
def test_groups_share_initial_noise_and_diverge(family):
    policy = build_family_policy(family)
    traj = policy.sample(policy.encode(PROMPTS), group_size=2, seed=5)
    assert traj.group_ids.tolist() == [0, 0, 1, 1]
    torch.testing.assert_close(traj.noise[0], traj.noise[1], rtol=0, atol=0)
    assert not torch.equal(traj.noise[0], traj.noise[2])
    assert (traj.final[0] - traj.final[1]).abs().max() > 1e-3
    again = policy.sample(policy.encode(PROMPTS), group_size=2, seed=5)
    torch.testing.assert_close(again.latents, traj.latents, rtol=0, atol=0)
    images = policy.decode(traj.final)
    assert len(images) == 4 and images[0].size == (16, 16)


@pytest.mark.parametrize("family", FAMILIES)
def test_reference_is_the_base_model_and_kl_has_a_gradient(family):
    policy = build_family_policy(family, eta=0.5)
    cond = policy.encode(PROMPTS)
    base = policy.sample(cond, seed=1)
    base_mean = policy.transition(base, 1).mean.detach()
    policy.add_lora(r=4, alpha=8)
    perturb_lora(policy)
    with policy.reference(), torch.no_grad():
        ref = policy.transition(base, 1)
    torch.testing.assert_close(ref.mean, base_mean, rtol=0, atol=1e-6)
    new = policy.transition(base, 1)
    assert (new.mean - base_mean).abs().max() > 1e-4  # the adapter is back on outside the context
    kl = gaussian_kl(new.mean, ref.mean, new.std).mean()
    kl.backward()
    assert kl.item() > 0
    # Every image-stream adapter gets a gradient (the last block's text-stream queries/outputs feed nothing).
    named = [(n, p) for n, p in policy.transformer.named_parameters() if p.requires_grad]
    assert named and all(
        p.grad is not None and p.grad.abs().sum() > 0
        for n, p in named
        if ".add_" not in n and "to_add_out" not in n
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_sde_on_a_subset_of_steps(family):
    policy = build_family_policy(family, num_steps=4)
    traj = policy.sample(policy.encode(PROMPTS[:1]), sde_steps=[1, 2], seed=0)
    assert traj.train_steps == [1, 2]
    assert traj.log_probs[0, 0] == 0 and traj.log_probs[0, 3] == 0 and traj.log_probs[0, 1] != 0
    with pytest.raises(ValueError, match="ODE step"):
        policy.transition(traj, 0)


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_state_round_trips(family):
    policy = build_family_policy(family)
    policy.add_lora(r=2, alpha=2)
    perturb_lora(policy)
    state = {k: v.clone() for k, v in policy.lora_state_dict().items()}
    assert state and all("lora" in k for k in state)
    perturb_lora(policy, scale=1.0)
    policy.load_lora_state_dict(state)
    for k, v in policy.lora_state_dict().items():
        torch.testing.assert_close(v, state[k])


@pytest.mark.parametrize("family", ["flux", "qwen_image"])
def test_editing_with_source_images(family):
    policy = build_family_policy(family, cfg=2.0)
    policy.add_lora(r=2, alpha=2)
    perturb_lora(policy)
    sources = [Image.new("RGB", (16, 16), (200, 30, 30)), Image.new("RGB", (16, 16), (30, 30, 200))]
    cond = policy.encode(PROMPTS, source_images=sources)
    assert "image_latents" in cond.embeds
    traj = policy.sample(cond, group_size=2, seed=2)
    plain = policy.sample(policy.encode(PROMPTS), group_size=2, seed=2)
    assert (traj.final - plain.final).abs().max() > 1e-4  # the source image conditions the sample
    out = policy.transition(traj, 2, sample_indices=[1, 2])
    assert torch.exp(out.log_prob - traj.log_probs[[1, 2], 2]).sub(1).abs().max().item() < 1e-5


def pipeline_latents(family, policy, cond, noise, cfg):
    """The diffusers pipeline's own result for the same components, embeddings and initial noise."""
    e = cond.embeds
    if family == "sd3":
        pipe = StableDiffusion3Pipeline(
            transformer=policy.transformer,
            scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
            vae=policy.vae,
            text_encoder=None,
            tokenizer=None,
            text_encoder_2=None,
            tokenizer_2=None,
            text_encoder_3=None,
            tokenizer_3=None,
        )
        n = cond.negative
        return pipe(
            prompt_embeds=e["prompt_embeds"],
            pooled_prompt_embeds=e["pooled_prompt_embeds"],
            negative_prompt_embeds=n["prompt_embeds"],
            negative_pooled_prompt_embeds=n["pooled_prompt_embeds"],
            guidance_scale=cfg,
            num_inference_steps=3,
            height=16,
            width=16,
            latents=noise,
            output_type="latent",
        ).images
    sched = FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, shift=3.0
    )
    if family == "flux":
        pipe = FluxPipeline(
            scheduler=sched,
            vae=policy.vae,
            text_encoder=None,
            tokenizer=None,
            text_encoder_2=None,
            tokenizer_2=None,
            transformer=policy.transformer,
        )
        return pipe(
            prompt_embeds=e["prompt_embeds"],
            pooled_prompt_embeds=e["pooled_prompt_embeds"],
            guidance_scale=3.5,
            num_inference_steps=3,
            height=16,
            width=16,
            latents=noise,
            output_type="latent",
        ).images
    pipe = QwenImagePipeline(
        scheduler=sched, vae=policy.vae, text_encoder=None, tokenizer=None, transformer=policy.transformer
    )
    n = cond.negative
    return pipe(
        prompt_embeds=e["prompt_embeds"],
        prompt_embeds_mask=e["prompt_embeds_mask"],
        negative_prompt_embeds=n["prompt_embeds"],
        negative_prompt_embeds_mask=n["prompt_embeds_mask"],
        true_cfg_scale=cfg,
        num_inference_steps=3,
        height=16,
        width=16,
        latents=noise,
        output_type="latent",
    ).images


@pytest.mark.parametrize("family", FAMILIES)
def test_ode_sampling_matches_the_diffusers_pipeline(family):
    cfg = 1.0 if family == "flux" else 3.0
    policy = build_family_policy(family, cfg=cfg, shift=None, scheduler_config={"shift": 3.0})
    cond = policy.encode(PROMPTS)
    noise = policy._initial_noise(2, 16, 16, torch.Generator().manual_seed(0))
    traj = policy.sample(cond, eta=0.0, noise=noise)
    expected = pipeline_latents(family, policy, cond, noise, cfg)
    torch.testing.assert_close(traj.final, expected.float(), atol=2e-5, rtol=1e-4)


def test_flux_recipe_guidance_is_the_embedded_guidance_of_the_flux_pipeline():
    """The FLUX.1-dev recipe's guidance (guidance_scale 3.5, true_cfg_scale 1 from the paper preset) samples what
    FluxPipeline(guidance_scale=3.5) samples: one transformer call per step with the embedded guidance, no CFG."""
    from arr.rpo.build import policy_settings
    from arr.rpo.recipe import parse_recipe

    recipe = parse_recipe(["recipes/flux_dev_t2i_rpo.yaml", "--num_sampling_steps", "3"])
    settings = policy_settings(recipe)
    assert (settings["guidance_scale"], settings["true_cfg_scale"]) == (3.5, 1.0)
    # The pipeline feeds sigma itself; integer timesteps (the release's) are checked separately.
    settings["integer_timesteps"] = False
    policy = build_family_policy("flux", **settings)
    assert policy.guidance_scale == 3.5 and policy.cfg_scale(policy.guidance_scale) == 1.0
    cond = policy.encode(PROMPTS)
    assert cond.negative is None  # no negative prompt is encoded: there is no second call
    noise = policy._initial_noise(2, 16, 16, torch.Generator().manual_seed(0))
    ours = policy.sample(cond, eta=0.0, noise=noise, guidance_scale=recipe.rpo.guidance_scale).final
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=recipe.rpo.shift),
        vae=policy.vae,
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=None,
        tokenizer_2=None,
        transformer=policy.transformer,
    )
    expected = pipe(
        prompt_embeds=cond.embeds["prompt_embeds"],
        pooled_prompt_embeds=cond.embeds["pooled_prompt_embeds"],
        guidance_scale=3.5,
        num_inference_steps=3,
        height=16,
        width=16,
        latents=noise,
        output_type="latent",
    ).images
    torch.testing.assert_close(ours, expected.float(), atol=2e-5, rtol=1e-4)
    # True CFG is its own key: with true_cfg_scale 3.5 the sample is another one.
    with_cfg = build_family_policy("flux", **{**settings, "true_cfg_scale": 3.5})
    other = with_cfg.sample(with_cfg.encode(PROMPTS), eta=0.0, noise=noise, guidance_scale=3.5).final
    assert (other - expected.float()).abs().max() > 1e-2


@pytest.mark.parametrize("family", FAMILIES)
def test_integer_timesteps_feed_the_transformer_the_releases_timesteps(family, monkeypatch):
    policy = build_family_policy(family, num_steps=4, shift=3.0, integer_timesteps=True)
    seen = []
    forward = policy._forward

    def spy(latents, sigma, embeds, extras):
        seen.append(sigma.tolist())
        return forward(latents, sigma, embeds, extras)

    monkeypatch.setattr(policy, "_forward", spy)
    traj = policy.sample(policy.encode(PROMPTS[:1]), seed=0, eta=0.3, convention="dance_grpo")
    # int(1000 sigma) / 1000 of the float32 grid, as the release computes it; the SDE itself uses sigma.
    expected = [float(np.floor(np.float32(s) * np.float32(1000))) / 1000 for s in traj.sigmas[:4].tolist()]
    assert [row[0] for row in seen] == pytest.approx(expected, abs=1e-7)
    if family != "sd3":  # SD3's grid ends at the scheduler's sigma_min instead of 1 / T
        assert expected == pytest.approx([1.0, 0.9, 0.75, 0.5])
    assert traj.convention == "dance_grpo"


def test_qwen_image_refuses_a_guidance_scale_it_cannot_apply():
    with pytest.raises(ValueError, match="no guidance embedding.*true_cfg_scale"):
        build_family_policy("qwen_image", guidance_scale=4.0)
    policy = build_family_policy("qwen_image")
    with pytest.raises(ValueError, match="guidance_scale=3.5"):
        policy.sample(policy.encode(PROMPTS), guidance_scale=3.5)


def test_sd3_takes_no_true_cfg_scale():
    with pytest.raises(ValueError, match="classifier-free guidance is guidance_scale"):
        build_family_policy("sd3", true_cfg_scale=2.0)
