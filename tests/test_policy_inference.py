"""Passes without gradients are the same function, computed faster: LoRA folded into the weights for sampling, and
the shapes model's tanh GELU in its sigmoid form."""

from __future__ import annotations

import contextlib

import pytest
import torch

from arr.policies.base import FlowMatchingPolicy
from arr.shapes.models import CPUTanhGELU
from tests.conftest import tiny_policy


def trained_lora_policy():
    """A tiny policy whose LoRA has moved off its zero initialisation, so that folding it changes the weights."""
    policy = tiny_policy(eta=0.0)
    torch.manual_seed(0)
    policy.add_lora(4, 8)
    with torch.no_grad():
        for p in policy.trainable_parameters():
            p.add_(0.05 * torch.randn_like(p))
    return policy


def sample(policy, prompts):
    generators = [torch.Generator().manual_seed(i) for i in range(len(prompts))]
    return policy.sample(policy.encode(prompts), generators=generators).final


def test_folded_lora_samples_what_the_adapter_samples_and_restores_the_weights(monkeypatch):
    policy = trained_lora_policy()
    prompts = ["a red circle", "two blue squares", "a green triangle"]
    before = {n: p.detach().clone() for n, p in policy.transformer.named_parameters()}
    trainable = {n for n, p in policy.transformer.named_parameters() if p.requires_grad}
    folded = sample(policy, prompts)
    monkeypatch.setattr(FlowMatchingPolicy, "folded_lora", lambda self: contextlib.nullcontext())
    unfolded = sample(policy, prompts)
    with torch.no_grad(), policy.reference():
        base = sample(policy, prompts)
    torch.testing.assert_close(folded, unfolded, rtol=0, atol=1e-5)
    assert (folded - base).abs().max() > 1e-2  # the LoRA matters, so the agreement above means something
    for name, p in policy.transformer.named_parameters():
        assert torch.equal(p, before[name]), name  # the very same values: nothing drifts from fold to fold
        assert p.requires_grad == (name in trainable), name


def test_folding_acts_only_without_gradients_and_nests():
    policy = trained_lora_policy()
    lora_layers = [m for m in policy.transformer.modules() if hasattr(m, "lora_A")]
    weight = lora_layers[0].get_base_layer().weight
    original = weight.data_ptr()  # the storage the weight holds
    with policy.folded_lora():  # gradients on: a no-op
        assert weight.data_ptr() == original and not lora_layers[0].merged
    with torch.no_grad():
        with policy.folded_lora():
            assert weight.data_ptr() != original and all(m.merged for m in lora_layers)
            folded = weight.data_ptr()
            with policy.folded_lora():  # nested: every layer is merged already, nothing changes
                assert weight.data_ptr() == folded
            assert lora_layers[0].merged
        assert weight.data_ptr() == original and not any(m.merged for m in lora_layers)
        with policy.reference(), policy.folded_lora():  # the reference keeps its plain weights
            assert weight.data_ptr() == original


def test_the_reference_inside_a_fold_is_the_reference():
    policy = trained_lora_policy()
    prompts = ["a red circle", "two blue squares"]
    with torch.no_grad():
        with policy.reference():
            reference = sample(policy, prompts)
        with policy.folded_lora():
            with policy.reference():  # peft unfolds the layers it disables
                inside = sample(policy, prompts)
            after = sample(policy, prompts)  # still the LoRA policy, unfolded or not
        lora = sample(policy, prompts)
    torch.testing.assert_close(inside, reference, rtol=0, atol=1e-5)
    torch.testing.assert_close(after, lora, rtol=0, atol=1e-5)
    assert (lora - reference).abs().max() > 1e-2


def test_half_precision_weights_are_not_folded():
    policy = trained_lora_policy()
    policy.transformer.to(torch.bfloat16)
    layers = [m for m in policy.transformer.modules() if hasattr(m, "lora_A")]
    weight = layers[0].get_base_layer().weight
    original = weight.data_ptr()
    with torch.no_grad(), policy.folded_lora():
        # A LoRA update would round away against bf16 weights: the adapters stay on, the weights untouched.
        assert weight.data_ptr() == original and weight.dtype == torch.bfloat16
        assert not any(m.merged for m in layers)


@pytest.mark.parametrize("shape", [(2, 7, 64), (3, 5)])
def test_cpu_tanh_gelu_is_torch_tanh_gelu_with_its_gradient(shape):
    act = CPUTanhGELU(shape[-1], 16, approximate="tanh")
    x = (4 * torch.randn(shape)).requires_grad_()
    expected = torch.nn.functional.gelu(act.proj(x), approximate="tanh")
    with torch.no_grad():
        torch.testing.assert_close(act(x), expected, rtol=0, atol=2e-6)
    out = act(x)
    torch.testing.assert_close(out, expected, rtol=0, atol=2e-6)
    upstream = torch.randn_like(out)
    got = torch.autograd.grad(out, [x, act.proj.weight], upstream)
    want = torch.autograd.grad(expected, [x, act.proj.weight], upstream)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)
    double = CPUTanhGELU(shape[-1], 3, approximate="tanh").double()
    assert torch.autograd.gradcheck(double, torch.randn(shape, dtype=torch.float64, requires_grad=True))


def test_shapes_model_uses_the_cpu_gelu_and_keeps_its_weight_names():
    from arr.shapes.models import build_t2i_model
    from tests.conftest import tiny_shapes_config

    model = build_t2i_model(tiny_shapes_config(), seed=0)
    acts = [m for m in model.transformer.modules() if isinstance(m, CPUTanhGELU)]
    assert acts and all(a.approximate == "tanh" for a in acts)
    assert any(k.endswith("ff.net.0.proj.weight") for k in model.state_dict())
