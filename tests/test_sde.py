"""The flow SDE step against hand-computed Gaussian densities, the diffusers schedules and exact marginals."""

import math

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from arr.policies.sde import flow_sigmas, flux_mu, gaussian_kl, gaussian_log_prob, ode_step, sde_std, sde_step


def test_one_dimensional_step_matches_hand_computed_gaussian():
    x, v, s, s_next, eta, x_prev = 0.7, -0.4, 0.6, 0.45, 0.5, 0.9
    dt = s_next - s
    g = eta * math.sqrt(s / (1 - s))
    mean = x * (1 + g * g / (2 * s) * dt) + v * (1 + g * g * (1 - s) / (2 * s)) * dt
    std = g * math.sqrt(-dt)
    expected = -((x_prev - mean) ** 2) / (2 * std**2) - math.log(std) - 0.5 * math.log(2 * math.pi)
    out = sde_step(
        torch.tensor([[v]]), torch.tensor([[x]]), s, s_next, eta, prev_latents=torch.tensor([[x_prev]])
    )
    assert out.mean.item() == pytest.approx(mean, abs=1e-6)
    assert out.std.item() == pytest.approx(std, abs=1e-6)
    assert out.log_prob.item() == pytest.approx(expected, abs=1e-5)
    assert out.log_prob.shape == (1,)


def test_sampling_uses_the_given_noise_and_reductions_relate_by_dimension_count():
    torch.manual_seed(0)
    x, v, noise = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    s_next = torch.tensor([0.5, 0.4, 0.3])
    out = sde_step(v, x, 0.8, s_next, 0.3, noise=noise, reduction="sum")
    torch.testing.assert_close(out.prev_latents, out.mean + out.std * noise)
    mean_red = sde_step(v, x, 0.8, s_next, 0.3, prev_latents=out.prev_latents, reduction="mean")
    torch.testing.assert_close(mean_red.log_prob * 32, out.log_prob)
    # The per-sample log-density of the drawn point is the standard-normal density of the noise, shifted by log std.
    expected = (-0.5 * noise**2 - 0.5 * math.log(2 * math.pi)).flatten(1).sum(
        1
    ).double() - 32 * out.std.flatten().log().double()
    torch.testing.assert_close(out.log_prob, expected, atol=1e-4, rtol=0)


def test_first_step_std_is_eta_whatever_the_schedule():
    like = torch.zeros(2, 3)
    for s1 in (0.95, 0.8, 0.5):
        assert sde_std(1.0, s1, 0.3, like).flatten().tolist() == pytest.approx([0.3, 0.3], abs=1e-6)


def test_invalid_inputs_are_rejected():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="eta"):
        sde_step(x, x, 0.5, 0.4, 0.0)
    with pytest.raises(ValueError, match="sigma_next"):
        sde_step(x, x, 0.5, 0.6, 0.3)
    with pytest.raises(ValueError, match="shape"):
        sde_step(x, torch.zeros(2, 4), 0.5, 0.4, 0.3)
    with pytest.raises(ValueError, match="reduction"):
        gaussian_log_prob(x, x, torch.ones(2, 1), reduction="max")


def test_sum_log_prob_keeps_ratio_precision_over_many_dimensions():
    # 65,536 dims (a 512 px FLUX latent): the sum is ~1e5, where float32 spacing alone would shift ratios by ~1%.
    torch.manual_seed(0)
    x, v, noise = torch.randn(2, 16, 64, 64), torch.randn(2, 16, 64, 64), torch.randn(2, 16, 64, 64)
    out = sde_step(v, x, 0.7, 0.6, 0.3, noise=noise)
    again = sde_step(v.clone(), x, 0.7, 0.6, 0.3, prev_latents=out.prev_latents)
    assert out.log_prob.dtype == torch.float64
    assert torch.exp(again.log_prob - out.log_prob).sub(1).abs().max().item() < 1e-9


def test_kl_is_the_scaled_squared_mean_distance_and_zero_for_equal_means():
    m = torch.tensor([[1.0, 2.0]])
    std = torch.tensor([[0.5]])
    assert gaussian_kl(m, m, std).item() == 0.0
    assert gaussian_kl(m, m + torch.tensor([[0.1, -0.2]]), std).item() == pytest.approx(
        (0.01 + 0.04) / (2 * 0.25), rel=1e-5
    )


def test_ode_step_is_euler():
    x, v = torch.ones(2, 3), torch.full((2, 3), 2.0)
    torch.testing.assert_close(ode_step(v, x, 0.5, 0.25), torch.full((2, 3), 0.5))


@pytest.mark.parametrize("num_steps", [3, 8, 10])
def test_flow_sigmas_match_the_diffusers_scheduler(num_steps):
    sd3 = FlowMatchEulerDiscreteScheduler(shift=3.0)
    sd3.set_timesteps(num_steps)
    ours = flow_sigmas(num_steps, 3.0, last=float(sd3.sigma_min))
    torch.testing.assert_close(ours, sd3.sigmas.float(), atol=1e-6, rtol=0)

    flux = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15)
    mu = flux_mu(1024)
    flux.set_timesteps(
        sigmas=[1.0 - i * (1 - 1 / num_steps) / max(num_steps - 1, 1) for i in range(num_steps)], mu=mu
    )
    torch.testing.assert_close(flow_sigmas(num_steps, mu=mu), flux.sigmas.float(), atol=1e-6, rtol=0)

    plain = flow_sigmas(num_steps, 3.0)
    assert plain[0] == 1.0 and plain[-1] == 0.0 and bool((plain[1:] < plain[:-1]).all())


@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_sde_and_ode_keep_the_data_marginal_of_a_gaussian(eta):
    # For x0 ~ N(0, c^2) the exact velocity is v(x, s) = (s - (1 - s) c^2) / ((1 - s)^2 c^2 + s^2) * x. Both the
    # ODE and the SDE with the same drift correction must end with variance c^2.
    c = 0.5
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(40000, 1, generator=gen)
    sig = flow_sigmas(200, shift=1.0)
    for i in range(200):
        s, s_next = float(sig[i]), float(sig[i + 1])
        v = (s - (1 - s) * c * c) / ((1 - s) ** 2 * c * c + s * s) * x
        x = (
            ode_step(v, x, s, s_next)
            if eta == 0
            else sde_step(v, x, s, s_next, eta, generator=gen).prev_latents
        )
    assert x.std().item() == pytest.approx(c, rel=0.04)


def test_float64_inputs_compute_in_float64_and_everything_else_in_float32():
    x, v, s, s_next, eta, x_prev = 0.7, -0.4, 0.6, 0.45, 0.5, 0.9
    dt = s_next - s
    g = eta * math.sqrt(s / (1 - s))
    mean = x * (1 + g * g / (2 * s) * dt) + v * (1 + g * g * (1 - s) / (2 * s)) * dt
    std = g * math.sqrt(-dt)
    expected = -((x_prev - mean) ** 2) / (2 * std**2) - math.log(std) - 0.5 * math.log(2 * math.pi)

    def t(value, dtype):
        return torch.tensor([[value]], dtype=dtype)

    out = sde_step(
        t(v, torch.float64), t(x, torch.float64), s, s_next, eta, prev_latents=t(x_prev, torch.float64)
    )
    assert out.mean.dtype == out.std.dtype == out.prev_latents.dtype == torch.float64
    # float64 agreement with the hand computation, far below float32's ~1e-7.
    assert abs(out.mean.item() - mean) < 1e-14 and abs(out.std.item() - std) < 1e-14
    assert abs(out.log_prob.item() - expected) < 1e-12
    # A float64 model's first step starts from float32 noise: the float64 velocity decides.
    assert sde_step(t(v, torch.float64), t(x, torch.float32), s, s_next, eta).mean.dtype == torch.float64
    ode = ode_step(t(v, torch.float64), t(x, torch.float32), s, s_next)
    x32 = t(x, torch.float32).item()  # the latents' value, exactly
    assert ode.dtype == torch.float64 and abs(ode.item() - (x32 + dt * v)) < 1e-15
    kl = gaussian_kl(t(0.3, torch.float64), t(0.1, torch.float64), t(0.5, torch.float64))
    assert abs(kl.item() - 0.04 / 0.5) < 1e-15
    # Half precision is upcast to float32, never computed in; float32 stays float32.
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        step = sde_step(t(v, dtype), t(x, torch.float32), s, s_next, eta, prev_latents=t(x_prev, dtype))
        assert step.mean.dtype == step.std.dtype == step.prev_latents.dtype == torch.float32
        assert ode_step(t(v, dtype), t(x, dtype), s, s_next).dtype == torch.float32


def test_dance_grpo_step_matches_the_release_formula_by_hand():
    # The release's step, written its own way with plain floats: the predicted clean sample, the score, the mean
    # with the score term, std = eta * sqrt(sigma - sigma'), and the log-density averaged over dimensions.
    xs = [[0.7, -1.2, 0.3], [0.1, 0.5, -0.4]]
    vs = [[-0.4, 0.9, 1.1], [0.2, -0.3, 0.6]]
    prevs = [[0.75, -1.1, 0.2], [0.05, 0.6, -0.5]]
    s, s_next, eta = 0.6, 0.45, 0.3
    ds = s_next - s
    std = eta * math.sqrt(s - s_next)
    means, log_probs = [], []
    for x_row, v_row, p_row in zip(xs, vs, prevs, strict=True):
        row_means, row_lp = [], []
        for x, v, x_prev in zip(x_row, v_row, p_row, strict=True):
            x0 = x - s * v
            score = -(x - (1 - s) * x0) / s**2
            mean = x + ds * v + ds * (-0.5 * eta**2 * score)
            row_means.append(mean)
            row_lp.append(
                -((x_prev - mean) ** 2) / (2 * std**2) - math.log(std) - 0.5 * math.log(2 * math.pi)
            )
        means.append(row_means)
        log_probs.append(sum(row_lp) / len(row_lp))
    out = sde_step(
        torch.tensor(vs),
        torch.tensor(xs),
        s,
        s_next,
        eta,
        prev_latents=torch.tensor(prevs),
        reduction="mean",
        convention="dance_grpo",
    )
    torch.testing.assert_close(out.mean, torch.tensor(means), atol=1e-6, rtol=0)
    assert out.std.flatten().tolist() == pytest.approx([std, std], abs=1e-7)
    assert out.log_prob.tolist() == pytest.approx(log_probs, abs=1e-5)


def test_flow_grpo_step_on_a_tensor_matches_its_formula_by_hand():
    # flow_grpo's sde_step_with_logprob: std_dev_t = eta * sqrt(sigma / (1 - sigma)), the mean with its correction
    # terms, std = std_dev_t * sqrt(-dt); here summed over the dimensions (arr's default reduction).
    xs = [[0.7, -1.2], [0.1, 0.5]]
    vs = [[-0.4, 0.9], [0.2, -0.3]]
    prevs = [[0.55, -1.3], [0.2, 0.4]]
    s, s_next, eta = 0.75, 0.5, 0.7
    dt = s_next - s
    g = eta * math.sqrt(s / (1 - s))
    std = g * math.sqrt(-dt)
    expected = []
    for x_row, v_row, p_row in zip(xs, vs, prevs, strict=True):
        total = 0.0
        for x, v, x_prev in zip(x_row, v_row, p_row, strict=True):
            mean = x * (1 + g**2 / (2 * s) * dt) + v * (1 + g**2 * (1 - s) / (2 * s)) * dt
            total += -((x_prev - mean) ** 2) / (2 * std**2) - math.log(std) - 0.5 * math.log(2 * math.pi)
        expected.append(total)
    out = sde_step(torch.tensor(vs), torch.tensor(xs), s, s_next, eta, prev_latents=torch.tensor(prevs))
    assert out.log_prob.tolist() == pytest.approx(expected, abs=1e-5)
    assert out.std.flatten().tolist() == pytest.approx([std, std], abs=1e-7)


def test_what_eta_means_in_each_convention_on_the_paper_grid():
    # 8 steps on sigma = 3t / (1 + 2t), t = linspace(1, 0, 9), eta 0.3: flow_grpo's std over dance_grpo's, step by
    # step (the first step's sigma = 1 uses the step length in place of 1 - sigma).
    sigmas = [3 * t / (1 + 2 * t) for t in (1 - k / 8 for k in range(9))]
    torch.testing.assert_close(flow_sigmas(8, 3.0), torch.tensor(sigmas), atol=1e-6, rtol=0)
    like = torch.zeros(1, 4)
    ratios = [
        (
            sde_std(sigmas[i], sigmas[i + 1], 0.3, like)
            / sde_std(sigmas[i], sigmas[i + 1], 0.3, like, "dance_grpo")
        ).item()
        for i in range(8)
    ]
    assert ratios == pytest.approx([4.69, 4.58, 3.00, 2.24, 1.73, 1.34, 1.00, 0.65], abs=0.006)
    dance = [sde_std(sigmas[i], sigmas[i + 1], 0.3, like, "dance_grpo").item() for i in range(8)]
    assert dance == pytest.approx([0.3 * math.sqrt(sigmas[i] - sigmas[i + 1]) for i in range(8)], abs=1e-7)
    with pytest.raises(ValueError, match="convention"):
        sde_std(0.5, 0.4, 0.3, like, "ddim")


def test_dance_grpo_keeps_the_data_marginal_of_a_gaussian():
    # Its drift is the same reverse-time SDE with g(sigma) = eta, so it too must end with the data variance.
    c = 0.5
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(40000, 1, generator=gen)
    sig = flow_sigmas(200, shift=1.0)
    for i in range(200):
        s, s_next = float(sig[i]), float(sig[i + 1])
        v = (s - (1 - s) * c * c) / ((1 - s) ** 2 * c * c + s * s) * x
        x = sde_step(v, x, s, s_next, 0.8, generator=gen, convention="dance_grpo").prev_latents
    assert x.std().item() == pytest.approx(c, rel=0.04)
