"""Tiny shapes models: tokenizer, velocity conversion, sampling, save/load, pretraining determinism and resume."""

from __future__ import annotations

import random
import time

import pytest
import torch
from safetensors.torch import load_file

from arr.shapes.models import (
    ASSETS_DIR,
    CONFIG_NAME,
    WEIGHTS_NAME,
    ShapesModelConfig,
    build_edit_model,
    build_t2i_model,
    load_pretrained,
    save_pretrained,
)
from arr.shapes.pretrain import PretrainConfig, SceneRenderer, lr_at, main, pretrain, warm_start
from arr.shapes.prompts import CATEGORIES, all_prompts
from arr.shapes.sample import (
    images_to_tensor,
    initial_noise,
    sample,
    sample_tensor,
    tensor_to_images,
    timesteps,
)
from arr.shapes.scene import random_scene, render

TINY = dict(
    patch_size=12,
    num_layers=1,
    num_attention_heads=2,
    attention_head_dim=8,
    text_hidden_size=16,
    text_layers=1,
    text_heads=2,
)


def tiny(task: str = "t2i", **kw) -> ShapesModelConfig:
    return ShapesModelConfig(task=task, **{**TINY, **kw})


def test_tokenizer_covers_every_prompt_word():
    enc = build_t2i_model(tiny()).text_encoder
    for cat in CATEGORIES:
        ids, mask = enc.tokenize([s.text for s in all_prompts(cat)])
        assert (ids != enc.tokenizer.unk_token_id).all(), cat
    ids, mask = enc.tokenize(["a red circle"])
    tok = enc.tokenizer
    assert ids[0, :5].tolist() == [
        tok.bos_token_id,
        *tok.convert_tokens_to_ids(["a", "red", "circle"]),
        tok.eos_token_id,
    ]
    assert mask[0].tolist() == [1] * 5 + [0] * 11
    assert tok.convert_ids_to_tokens(enc.tokenize(["A RED zebra"])[0][0, 1:4].tolist()) == [
        "a",
        "red",
        "[UNK]",
    ]
    with pytest.raises(ValueError, match="longer than 14 words"):
        enc.tokenize(["a " * 15])


def test_encode_shapes_and_pooled_is_eos_state():
    model = build_t2i_model(tiny())
    states, pooled, mask = model.text_encoder.encode(["two blue squares", ""])
    assert states.shape == (2, 16, 16) and pooled.shape == (2, 16) and mask.shape == (2, 16)
    # "[BOS] two blue squares [EOS]": pooled output is the (final-norm) state at [EOS], position 4.
    torch.testing.assert_close(pooled[0], states[0, 4])
    torch.testing.assert_close(pooled[1], states[1, 1])


def test_velocity_is_x_prediction_converted():
    model = build_t2i_model(tiny()).eval()
    x = torch.randn(2, 3, 48, 48)
    t = torch.tensor([0.5, 0.01])
    states, pooled = model.encode_text(["a circle", "a square"])
    with torch.no_grad():
        x0 = model.predict_x0(x, t, states, pooled)
        v = model.velocity(x, t, states, pooled)
    assert v.shape == (2, 3, 48, 48)
    torch.testing.assert_close(v[0], (x[0] - x0[0]) / 0.5)
    torch.testing.assert_close(v[1], (x[1] - x0[1]) / 0.05)  # t clamped at t_min
    with pytest.raises(ValueError, match="takes no source"):
        model.velocity(x, t, states, pooled, source=x)
    with pytest.raises(ValueError, match=r"x_t must be \[B, 3, 48, 48\]"):
        model.velocity(x[:, :, :32, :32], t, states, pooled)


def test_edit_model_needs_source_and_uses_it():
    model = build_edit_model(tiny("edit")).eval()
    assert model.transformer.config.in_channels == 6 and model.transformer.config.out_channels == 3
    x = torch.randn(1, 3, 48, 48)
    states, pooled = model.encode_text(["make the circle red"])
    with pytest.raises(ValueError, match="needs source images"):
        model.velocity(x, 0.5, states, pooled)
    with torch.no_grad():
        a = model.velocity(x, 0.5, states, pooled, source=torch.zeros_like(x))
        b = model.velocity(x, 0.5, states, pooled, source=torch.ones_like(x))
    assert not torch.allclose(a, b)


def test_sampling_is_deterministic_per_seed_and_batch_independent():
    model = build_t2i_model(tiny()).eval()
    a = sample_tensor(model, ["a red circle", "two squares"], [3, 4], steps=4)
    b = sample_tensor(model, ["two squares"], [4], steps=4)
    torch.testing.assert_close(a[1:], b, atol=1e-5, rtol=1e-5)
    images = sample(model, ["a red circle"], [3], steps=4)
    assert images[0].size == (48, 48) and images[0].mode == "RGB"
    assert images[0].tobytes() == sample(model, ["a red circle"], [3], steps=4)[0].tobytes()
    with pytest.raises(ValueError, match="one seed per prompt"):
        sample(model, ["a", "b"], [1])


def test_euler_with_exact_velocity_recovers_the_data():
    """With the true velocity of a single data point, Euler integration from noise lands on it exactly."""
    x0 = torch.rand(1, 3, 48, 48) * 2 - 1
    x = initial_noise([0], 48)
    noise = x.clone()
    ts = timesteps(5, shift=3.0)
    assert ts[0] == 1.0 and ts[-1] == 0.0 and (ts[1:] < ts[:-1]).all()
    for t, tn in zip(ts[:-1], ts[1:], strict=True):
        x = x + (tn - t) * (noise - x0)
    torch.testing.assert_close(x, x0)


def test_image_tensor_round_trip_and_fast_renderer():
    rng = random.Random(1)
    scenes = [random_scene(rng) for _ in range(20)]
    images = [render(s) for s in scenes]
    x = images_to_tensor(images, 48)
    assert x.min() >= -1 and x.max() <= 1
    assert torch.equal(SceneRenderer()(scenes), x)
    assert [i.tobytes() for i in tensor_to_images(x)] == [i.tobytes() for i in images]


def test_save_load_round_trip(tmp_path):
    model = build_t2i_model(tiny(), seed=1).eval()
    save_pretrained(model, tmp_path / "m")
    state = load_file(str(tmp_path / "m" / WEIGHTS_NAME))
    assert all(v.dtype == torch.float16 for v in state.values())
    assert (tmp_path / "m" / "tokenizer" / "tokenizer.json").is_file()
    loaded = load_pretrained(tmp_path / "m")
    assert loaded.config == model.config
    for (k, p), (k2, q) in zip(model.named_parameters(), loaded.named_parameters(), strict=True):
        assert k == k2
        torch.testing.assert_close(p.half().float(), q)
    with pytest.raises(FileNotFoundError, match="no shapes model"):
        load_pretrained(tmp_path / "missing")


def test_lr_schedule():
    cfg = PretrainConfig(steps=1100, lr=1e-3, warmup_steps=100)
    assert lr_at(0, cfg) == pytest.approx(1e-5)
    assert lr_at(99, cfg) == pytest.approx(1e-3)
    assert lr_at(1100, cfg) == pytest.approx(1e-4)
    assert lr_at(600, cfg) == pytest.approx(1e-3 * (0.1 + 0.45))


def test_pretrain_is_deterministic_and_resumes_exactly(tmp_path):
    kw = dict(
        batch_size=4, lr=1e-3, seed=7, model_config=tiny(), progress=False, warmup_steps=2, checkpoint_every=2
    )
    a = pretrain("t2i", tmp_path / "a", steps=3, **kw)
    b = pretrain("t2i", tmp_path / "b", steps=3, resume=False, **kw)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)
    # Stop after 2 steps (a checkpoint), then continue to 3: the same weights as the uninterrupted run.
    pretrain("t2i", tmp_path / "c", steps=3, stop_after=2, **kw)
    assert sorted(p.name for p in (tmp_path / "c" / "checkpoints").iterdir()) == ["step_2"]
    assert (tmp_path / "c" / "checkpoints" / "step_2" / "ema" / CONFIG_NAME).is_file()
    c = pretrain("t2i", tmp_path / "c", steps=3, **kw)
    for p, q in zip(a.parameters(), c.parameters(), strict=True):
        assert torch.equal(p, q)
    assert not any(p.name.startswith(".tmp") for p in (tmp_path / "c" / "checkpoints").iterdir())
    # Training moved the weights away from the initialisation.
    init = build_t2i_model(tiny())
    assert any(not torch.equal(p, q) for p, q in zip(a.parameters(), init.parameters(), strict=True))
    assert load_pretrained(tmp_path / "a" / "final").config == tiny()


def test_edit_pretraining_runs_and_samples(tmp_path):
    model = pretrain("edit", tmp_path, steps=2, batch_size=4, model_config=tiny("edit"), progress=False)
    assert model.config.task == "edit"
    source = render(random_scene(random.Random(0)))
    edited = sample(model, ["remove the red circle"], [0], steps=2, source_images=[source])
    assert edited[0].size == (48, 48)


def test_edit_model_warm_started_from_t2i_is_the_t2i_model_at_step_0(tmp_path):
    t2i = build_t2i_model(tiny(), seed=1).eval()
    save_pretrained(t2i, tmp_path / "t2i", dtype=torch.float32)
    edit = build_edit_model(tiny("edit"), seed=2).eval()
    assert warm_start(edit, str(tmp_path / "t2i")) == []
    x = torch.randn(2, 3, 48, 48)
    states, pooled = t2i.encode_text(["a red circle", "make the red circle blue"])
    with torch.no_grad():
        want = t2i.velocity(x, 0.7, states, pooled)
        for source in (torch.zeros_like(x), torch.randn_like(x)):  # source channels start at zero weight
            assert torch.allclose(edit.velocity(x, 0.7, states, pooled, source=source), want, atol=1e-5)
    # A model of another size cannot be warm-started: every mismatched weight is named.
    other = build_edit_model(tiny("edit", text_hidden_size=32))
    assert "text_encoder" in " ".join(warm_start(other, str(tmp_path / "t2i")))


def test_cli_runs(tmp_path):
    model_json = '{"patch_size": 12, "num_layers": 1, "num_attention_heads": 2, "attention_head_dim": 8, "text_hidden_size": 16, "text_layers": 1, "text_heads": 2}'
    assert main(["--out", str(tmp_path), "--steps", "1", "--batch-size", "2", "--model", model_json]) == 0
    assert (tmp_path / "final" / WEIGHTS_NAME).is_file()
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 1
    assert main(["--export", str(tmp_path / "checkpoints" / "step_1"), "--out", str(tmp_path / "exp")]) == 0
    assert (
        load_file(str(tmp_path / "exp" / WEIGHTS_NAME)).keys()
        == load_file(str(tmp_path / "final" / WEIGHTS_NAME)).keys()
    )
    with pytest.raises(FileNotFoundError, match="not a pretraining checkpoint"):
        main(["--export", str(tmp_path), "--out", str(tmp_path / "exp2")])


@pytest.mark.skipif(
    not (ASSETS_DIR / "t2i" / CONFIG_NAME).is_file(), reason="shipped t2i weights not exported yet"
)
def test_shipped_t2i_model_loads_and_samples_fast():
    model = load_pretrained("t2i")
    assert max(p.stat().st_size for p in (ASSETS_DIR / "t2i").rglob("*")) < 20 * 2**20
    torch.set_num_threads(2)
    sample(model, ["a red circle"], [0], steps=2)  # warm-up
    # CPU time, not wall time, with room for a loaded machine (contended caches cost CPU time too): about
    # 1 CPU-s on an idle machine.
    c0 = time.process_time()
    images = sample(model, [f"two {c} squares" for c in ("red", "blue")] * 4, list(range(8)))
    assert len(images) == 8
    assert time.process_time() - c0 < 8.0
