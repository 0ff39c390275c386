"""RPO as the authors' release runs it (`rpo_preset: paper`): the real-model recipes resolve to its values, its loss
and gradient equal a hand computation on a tiny linear policy, its rank rewards, and its per-sample timestep subsets.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from arr import RubricJudge
from arr.policies.base import FlowMatchingPolicy
from arr.policies.sde import flow_sigmas
from arr.rewards import RubricPairwiseReward, pairwise_ranks, rank_rewards
from arr.rpo import ConfigError, RPOConfig, RPOTrainer
from arr.rpo.presets import PAPER, apply_preset, preset_values
from arr.rpo.recipe import parse_recipe
from arr.shapes.training import t2i_records
from tests.fakes import BrightnessBackend, ScriptedVLM

# ---- the recipes ---------------------------------------------------------------------------------------------------

# What the release runs (fastvideo/train_rpo_flux.py and train_rpo_qwen_edit.py with their published launchers).
RELEASE = {
    "sde_convention": "dance_grpo",
    "eta": 0.3,
    "shift": 3.0,
    "stochastic_last_step": False,
    "train_timestep_fraction": 1.0,
    "timestep_sample_fraction": 1.0,
    "group_size": 2,
    "shared_noise": True,
    "integer_timesteps": True,
    "true_cfg_scale": 1.0,
    "judge_swap": False,
    "pairwise_reward": "rank",
    "win_reward": 1.0,
    "lose_reward": -0.1,
    "center_rewards": False,
    "adv_clip": 5.0,
    "objective": "policy_gradient",
    "clip_range": 0.2,
    "logprob_reduction": "mean",
    "kl_estimator": "sample",
    "num_minibatches": 1,
    "num_inner_epochs": 1,
    "max_grad_norm": 1.0,
    "lora_target_modules": "to_q,to_k,to_v,to_out.0",
    "weight_decay": 1e-4,
    "warmup_steps": 0,
}
PER_MODEL = {
    "flux_dev_t2i_rpo": {
        "policy": "flux",
        "guidance_scale": 3.5,  # FLUX.1-dev's embedded guidance, FluxPipeline's guidance_scale
        "num_sampling_steps": 8,
        "prompts_per_step": 16,  # x 2 = the paper's batch of 32
        "beta": 0.01,
        "learning_rate": 5e-5,
        "lora_rank": 16,
        "lora_alpha": 32,
        "max_steps": 300,
    },
    "qwen_image_edit_rpo": {
        "policy": "qwen_image",
        "guidance_scale": 1.0,  # no guidance embedding; and no CFG (true_cfg_scale 1)
        "num_sampling_steps": 10,
        "prompts_per_step": 8,  # x 2 = the paper's batch of 16
        "beta": 0.02,
        "learning_rate": 1e-5,
        "lora_rank": 32,
        "lora_alpha": 64,
        "max_steps": 300,
    },
}


@pytest.mark.parametrize("name", sorted(PER_MODEL))
def test_real_model_recipes_resolve_to_the_releases_values(name):
    resolved = parse_recipe([f"recipes/{name}.yaml"]).to_dict()
    assert resolved["rpo_preset"] == "paper"
    expected = {**RELEASE, **PER_MODEL[name]}
    assert {k: resolved[k] for k in expected} == expected


def test_the_preset_fills_only_what_the_recipe_and_command_line_leave_unset(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("rpo_preset: paper\neta: 0.7\njudge_swap: true\n")
    resolved = parse_recipe([str(recipe), "--kl-estimator", "analytic", "--num_minibatches=2"]).to_dict()
    assert (resolved["eta"], resolved["judge_swap"]) == (0.7, True)  # the recipe wins
    assert (resolved["kl_estimator"], resolved["num_minibatches"]) == ("analytic", 2)  # the command line wins
    assert (
        resolved["sde_convention"] == "dance_grpo" and resolved["pairwise_reward"] == "rank"
    )  # the preset fills
    # Without the preset the same recipe keeps arr's defaults; the preset can also come from the command line.
    plain = tmp_path / "plain.yaml"
    plain.write_text("eta: 0.7\n")
    assert parse_recipe([str(plain)]).to_dict()["sde_convention"] == "flow_grpo"
    assert parse_recipe([str(plain), "--rpo_preset", "paper"]).to_dict()["logprob_reduction"] == "mean"
    with pytest.raises(ConfigError, match=r"rpo_preset='papers' is not a preset; choose one of \['paper'\]"):
        parse_recipe([str(plain), "--rpo_preset", "papers"])
    assert apply_preset("paper", {"eta": 1.0})["eta"] == 1.0 and preset_values("paper") == PAPER


def test_print_config_prints_every_resolved_value(run_cli):
    import yaml

    code, out, _ = run_cli("train", "recipes/flux_dev_t2i_rpo.yaml", "--print_config", "--beta", "0.05")
    assert code == 0
    printed = yaml.safe_load(out)
    assert printed == parse_recipe(["recipes/flux_dev_t2i_rpo.yaml", "--beta", "0.05"]).to_dict()
    assert printed["beta"] == 0.05 and printed["kl_estimator"] == "sample" and len(printed) > 80


# ---- rank rewards ----------------------------------------------------------------------------------------------------


def test_rank_rewards_map_as_the_release_does():
    assert rank_rewards([1, 2]) == [1.0, -0.1]
    assert rank_rewards([2, 1]) == [-0.1, 1.0]
    assert rank_rewards([1, 1]) == [1.0, 1.0]
    assert rank_rewards([2, 2]) == pytest.approx([-0.1, -0.1])
    assert rank_rewards([1, 3, 2, 3]) == pytest.approx(
        [1.0, -0.1, 0.45, -0.1]
    )  # 1 - 1.1 (rank - 1) / (worst - 1)
    # Group ranks from pair outcomes (0: i won, 1: j won, None: tie): equal wins share a rank.
    assert pairwise_ranks(3, {(0, 1): 1, (0, 2): None, (1, 2): 0}) == [2.0, 1.0, 2.0]
    assert pairwise_ranks(2, {(0, 1): None}, tie_ranks=(2.0, 2.0)) == [2.0, 2.0]
    assert pairwise_ranks(2, {(0, 1): None}, tie_ranks=(1.0, 2.0)) == [1.0, 1.0]
    assert pairwise_ranks(2, {(0, 1): "failed"}) == [None, None]


def test_one_order_rank_reward_reads_the_judges_stated_ranks():
    answers = iter(
        ['{"rank": [2, 1], "reason": "b"}', '{"rank": [2, 2], "reason": "both bad"}', '{"rank": [1, 1]}']
    )
    judge = RubricJudge(ScriptedVLM(lambda request: next(answers)), swap=False)
    reward = RubricPairwiseReward(judge, mapping="rank")
    grey = [Image.new("RGB", (8, 8), (k, k, k)) for k in (10, 20, 30, 40, 50, 60)]
    rubric = t2i_records(1, "train")[0].rubric
    out = reward(prompts=["p"] * 3, images=[grey[0:2], grey[2:4], grey[4:6]], rubrics=[rubric] * 3)
    assert out.rewards[0] == [-0.1, 1.0]
    assert out.rewards[1] == pytest.approx([-0.1, -0.1])
    assert out.rewards[2] == [1.0, 1.0]
    assert out.info["tie_rate"] == pytest.approx(2 / 3)
    # arr's default keeps a tie at 0 for both.
    answers = iter(['{"rank": [2, 2]}'])
    default = RubricPairwiseReward(RubricJudge(ScriptedVLM(lambda request: next(answers)), swap=False))
    assert default(prompts=["p"], images=[grey[0:2]], rubrics=[rubric]).rewards == [[0.0, 0.0]]


# ---- the release's loss on a tiny linear policy, by hand -----------------------------------------------------------

D = 4  # latent dimensions


class LinearFlow(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(D, D, bias=False)


class LinearPolicy(FlowMatchingPolicy):
    """v(x, sigma, prompt) = W x + sigma * e(prompt), in float64; LoRA on W; images are grey levels of mean(x)."""

    def __init__(self, **kw) -> None:
        gen = torch.Generator().manual_seed(0)
        net = LinearFlow().double()
        with torch.no_grad():
            net.lin.weight.copy_(0.3 * torch.randn(D, D, generator=gen, dtype=torch.float64))
        super().__init__(net, height=1, width=D, **kw)

    def _embed(self, prompts, images):
        return {
            "e": torch.stack([torch.linspace(-1, 1, D, dtype=torch.float64) * len(p) / 10 for p in prompts])
        }

    def decode(self, latents, height=None, width=None):
        levels = (128 + 100 * latents.mean(dim=1)).clamp(0, 255).round().int().tolist()
        return [Image.new("RGB", (8, 8), (v, v, v)) for v in levels]

    def _sigmas(self, num_steps, height, width):
        return flow_sigmas(num_steps, self.shift)

    def _initial_noise(self, n, height, width, generator):
        return torch.randn((n, D), generator=generator, dtype=torch.float32)

    def _forward(self, latents, sigma, embeds, extras):
        return self.transformer.lin(latents.double()) + sigma.double()[:, None] * embeds["e"]

    def add_lora(self, r, alpha, target_modules=None, **kw):
        from peft import LoraConfig, inject_adapter_in_model

        inject_adapter_in_model(
            LoraConfig(r=r, lora_alpha=alpha, target_modules=["lin"], init_lora_weights="gaussian"),
            self.transformer,
        )
        for p in self.transformer.parameters():
            if p.requires_grad:
                p.data = p.data.double()


def paper_args(tmp_path, **kw) -> RPOConfig:
    fields = RPOConfig.__dataclass_fields__
    values = apply_preset(
        "paper",
        {
            "output_dir": str(tmp_path / "run"),
            "prompts_per_step": 1,
            "num_sampling_steps": 4,
            "guidance_scale": 1.0,
            "beta": 0.05,
            "lora_rank": 2,
            "lora_alpha": 4,
            "learning_rate": 1e-3,
            "report_to": "none",
            "eval_steps": 0,
            "save_steps": 100,
            "sample_steps": 100,
            "cpu": True,
            **kw,
        },
    )
    return RPOConfig(**{k: v for k, v in values.items() if k in fields})


def release_log_prob(w_eff, x, x_next, e, s, s_next, eta) -> torch.Tensor:
    """log p(x_next | x) of the release's SDE step for the linear policy, averaged over dimensions; the network sees
    the timestep int(1000 sigma) / 1000 (in float32, as torch computes it for a float32 sigma), the step uses
    sigma."""
    t_in = float(np.floor(np.float32(s) * np.float32(1000)) / np.float32(1000))
    v = w_eff @ x + t_in * e
    x0 = x - s * v
    score = -(x - (1 - s) * x0) / s**2
    mean = x + (s_next - s) * v + (s_next - s) * (-0.5 * eta**2 * score)
    std = eta * math.sqrt(s - s_next)
    per_dim = -((x_next - mean) ** 2) / (2 * std**2) - math.log(std) - 0.5 * math.log(2 * math.pi)
    return per_dim.mean()


def hand_loss(traj, lora, weight, advantages, args, embeds) -> torch.Tensor:
    """The release's loss, written out: per sample and trained transition j (all but the last, the deterministic
    one), ratio exp(log p - old) of `release_log_prob`, PPO clip, + beta (log p - log p_ref); the mean over
    (sample, transition)."""
    a, b = lora
    w_eff = weight + args.lora_alpha / args.lora_rank * b @ a
    sig = [float(s) for s in traj.sigmas.tolist()]
    terms = []
    for n in range(traj.latents.shape[0]):
        for j in range(args.num_sampling_steps - 1):
            x, x_next = traj.latents[n, j].double(), traj.latents[n, j + 1].double()
            step = (x, x_next, embeds[n], sig[j], sig[j + 1], args.eta)
            new = release_log_prob(w_eff, *step)
            ref = release_log_prob(weight, *step).detach()
            ratio = torch.exp(new - traj.log_probs[n, j].double())
            clipped = torch.clamp(ratio, 1 - args.clip_range, 1 + args.clip_range)
            adv = advantages[n]
            terms.append(torch.maximum(-adv * ratio, -adv * clipped) + args.beta * (new - ref))
    return torch.stack(terms).mean()


def test_paper_loss_and_gradient_equal_a_hand_computation(tmp_path):
    args = paper_args(tmp_path)
    policy = LinearPolicy(integer_timesteps=True)
    reward = RubricPairwiseReward(RubricJudge(BrightnessBackend(), swap=False), mapping="rank")
    trainer = RPOTrainer(policy, reward, args, t2i_records(4, "train"))
    with torch.no_grad():  # a LoRA away from zero, so that the policy differs from its reference
        gen = torch.Generator().manual_seed(1)
        for p in trainer.params:
            p.copy_(0.3 * torch.randn(p.shape, generator=gen, dtype=torch.float64))
    rollout, rewards, _, _ = trainer.sample_and_judge(0)
    traj = rollout.trajectory
    # Two samples from one initial noise; SDE steps 0-2, the last an Euler step to x - sigma v (no noise).
    assert len(rollout) == 2 and torch.equal(traj.noise[0], traj.noise[1])
    assert traj.stochastic.tolist() == [True, True, True, False] and traj.convention == "dance_grpo"
    torch.testing.assert_close(traj.sigmas, torch.tensor([1.0, 0.9, 0.75, 0.5, 0.0]), atol=1e-6, rtol=0)
    # The judge prefers the brighter image: [1, 2] -> (+1, -0.1).
    bright = [im.getpixel((0, 0))[0] for im in rollout.images]
    assert bright[0] != bright[1]
    assert rewards == ([1.0, -0.1] if bright[0] > bright[1] else [-0.1, 1.0])
    advantages, mask = trainer.compute_advantages(rewards, 2)

    members = torch.arange(2)
    stats = trainer.backward_batch(rollout, advantages, members, 1.0 / 2)
    assert stats.count == 6  # 2 samples x 3 trained transitions
    lin = policy.transformer.lin
    a = lin.lora_A["default"].weight.detach().clone().requires_grad_(True)
    b = lin.lora_B["default"].weight.detach().clone().requires_grad_(True)
    embeds = policy.encode([r.prompt for r in rollout.records]).embeds["e"].repeat_interleave(2, dim=0)
    loss = hand_loss(traj, (a, b), lin.base_layer.weight.detach(), advantages.double(), args, embeds)
    loss.backward()
    assert stats.totals["loss"] / stats.count == pytest.approx(loss.item(), rel=1e-9, abs=1e-12)
    torch.testing.assert_close(lin.lora_A["default"].weight.grad, a.grad, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(lin.lora_B["default"].weight.grad, b.grad, rtol=1e-9, atol=1e-12)
    assert a.grad.abs().max() > 1e-4 and b.grad.abs().max() > 1e-4
    # One optimizer step per batch: the update the trainer applies is a single AdamW step.
    trainer.optimizer.zero_grad(set_to_none=True)
    out = trainer.optimize(rollout, advantages, mask)
    assert out["optimizer_steps"] == 1 and out["clip_frac"] == 0.0 and out["ratio_max"] == pytest.approx(1.0)


def test_timestep_sample_fraction_trains_a_random_subset_per_sample(tmp_path):
    args = paper_args(tmp_path, num_sampling_steps=7, timestep_sample_fraction=0.5, prompts_per_step=2)
    policy = LinearPolicy()
    reward = RubricPairwiseReward(RubricJudge(BrightnessBackend(), swap=False), mapping="rank")
    trainer = RPOTrainer(policy, reward, args, t2i_records(4, "train"))
    rollout, rewards, _, _ = trainer.sample_and_judge(0)
    assert trainer.objective.timesteps(rollout) == 3  # int(6 x 0.5) of the 6 stochastic transitions
    chosen = trainer.objective.trained_steps(rollout, torch.arange(4))
    assert chosen.sum(dim=1).tolist() == [3, 3, 3, 3]
    assert len({tuple(row.tolist()) for row in chosen}) > 1  # drawn per sample
    # Per sample, not per micro-batch: a sample's subset is the same whichever members it is asked with.
    torch.testing.assert_close(trainer.objective.trained_steps(rollout, torch.tensor([2, 0])), chosen[[2, 0]])
    advantages, _ = trainer.compute_advantages(rewards, 2)
    stats = trainer.backward_batch(rollout, advantages, torch.arange(4), 1.0 / 4)
    assert stats.count == 12


def test_the_sample_estimate_kl_has_no_expected_gradient_on_policy():
    """Why arr's default KL is the analytic one: at the stored transition, log p_theta(x') - log p_ref(x') has
    gradient (x' - mean) / std^2 d(mean), and x' was drawn around the policy's own mean, so while the update is
    on-policy (the release's one step per batch) its expectation is 0, whatever the reference: the term adds noise
    and no pull. The analytic KL's gradient, (mean - mean_ref) / std^2 d(mean), pulls towards the reference."""
    from arr.policies.sde import gaussian_kl, sde_step

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(20000, 8, generator=gen, dtype=torch.float64)
    theta = torch.tensor(
        0.5, dtype=torch.float64, requires_grad=True
    )  # the policy's v = theta x; the reference's 0
    s, s_next = 0.75, 0.5
    with torch.no_grad():
        drawn = sde_step(theta * x, x, s, s_next, 0.7, generator=gen, convention="dance_grpo").prev_latents
    new = sde_step(
        theta * x, x, s, s_next, 0.7, prev_latents=drawn, reduction="mean", convention="dance_grpo"
    )
    ref = sde_step(0 * x, x, s, s_next, 0.7, prev_latents=drawn, reduction="mean", convention="dance_grpo")
    (sample_grad,) = torch.autograd.grad((new.log_prob - ref.log_prob).mean(), theta, retain_graph=True)
    (analytic_grad,) = torch.autograd.grad(gaussian_kl(new.mean, ref.mean, new.std, "mean").mean(), theta)
    assert (new.log_prob - ref.log_prob).mean().item() > 0  # the estimate itself is the KL on average
    assert analytic_grad.item() > 0.1
    assert abs(sample_grad.item()) < 0.05 * analytic_grad.item()
