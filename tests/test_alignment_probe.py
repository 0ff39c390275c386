"""AlignmentProbe on a tiny shapes policy: rows get align/* keys, values are the max over layer pairs of the
metrics of the features it reads, measurements are repeatable, and the probe leaves training untouched."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from arr import RubricJudge, load_backend
from arr.diagnostics import alignment as al
from arr.diagnostics.probe import AlignmentProbe, backend_features, judge_layers, transformer_blocks
from arr.rewards import RubricPairwiseReward
from arr.rpo import RPOTrainer
from arr.shapes.training import t2i_records
from tests.conftest import TIMING, brightness_eval, build_family_policy, make_args, read_rows, tiny_policy
from tests.fakes import BrightnessBackend


def colour_features(images) -> np.ndarray:
    """A judge's view that varies with the image: per-channel means and spreads over a 4x4 grid."""
    rows = []
    for im in images:
        a = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
        h, w = a.shape[0] // 4, a.shape[1] // 4
        cells = a[: 4 * h, : 4 * w].reshape(4, h, 4, w, 3)
        rows.append(np.concatenate([cells.mean(axis=(1, 3)).ravel(), cells.std(axis=(1, 3)).ravel()]))
    return np.stack(rows)


def make_trainer(tmp_path: Path, callbacks=(), **kw) -> RPOTrainer:
    args = make_args(tmp_path, **kw)
    reward = RubricPairwiseReward(RubricJudge(BrightnessBackend()))
    return RPOTrainer(
        tiny_policy(),
        reward,
        args,
        t2i_records(16, "train"),
        t2i_records(12, "heldout"),
        brightness_eval,
        callbacks=callbacks,
    )


def test_rows_carry_alignment_every_interval_and_at_step_zero(tmp_path):
    probe = AlignmentProbe(
        num_prompts=12, align_every=2, topk=3, metrics=["mutual_knn", "cknna"], judge_features=colour_features
    )
    trainer = make_trainer(tmp_path, [probe], max_steps=4, learning_rate=3e-2)
    trainer.train()
    rows = read_rows(Path(trainer.args.output_dir))
    aligned = [r["step"] for r in rows if "align/mutual_knn" in r]
    assert aligned == [0, 2, 4]
    for r in rows:
        if "align/mutual_knn" in r:
            assert 0.0 <= r["align/mutual_knn"] <= 1.0
            assert -1.0 <= r["align/cknna"] <= 1.0
            block, judge = r["align/cknna_layer"].split("|")
            assert block.startswith("transformer_blocks.") and judge == "judge"
            assert r["align_seconds"] > 0
    # Hooks are gone after each measurement.
    assert all(not b._forward_hooks for b in transformer_blocks(trainer.policy.transformer).values())


def test_value_is_the_max_over_layer_pairs_and_repeatable(tmp_path):
    probe = AlignmentProbe(num_prompts=12, topk=3, metrics="all", judge_features=colour_features)
    trainer = make_trainer(tmp_path)
    first = probe.measure(trainer)
    again = probe.measure(trainer)
    for m in al.METRICS:
        assert first[f"align/{m}"] == again[f"align/{m}"]  # fixed prompts, seeds and read-out noise
    policy_layers, images = probe.policy_features(trainer)
    assert set(policy_layers) == {"transformer_blocks.0", "transformer_blocks.1"}
    assert all(v.shape == (12, 32) for v in policy_layers.values())  # 2 heads x 16 dims, mean over tokens
    judge = colour_features(images)
    for m in al.METRICS:
        fn = getattr(al, m)
        kw = {"topk": 3} if m in al.KNN_METRICS else {}
        values = {name: fn(f, judge, **kw) for name, f in policy_layers.items()}
        best = max(values, key=values.get)
        assert first[f"align/{m}"] == pytest.approx(values[best], abs=1e-9), m
        assert first[f"align/{m}_layer"] == f"{best}|judge"


def test_layer_choice_and_errors(tmp_path):
    trainer = make_trainer(tmp_path)
    probe = AlignmentProbe(num_prompts=12, topk=3, layers=[1], judge_features=colour_features)
    layers, _ = probe.policy_features(trainer)
    assert list(layers) == ["transformer_blocks.1"]
    with pytest.raises(
        ValueError, match="layer 7 is not a block.*transformer_blocks.0, transformer_blocks.1"
    ):
        AlignmentProbe(num_prompts=12, topk=3, layers=[7], judge_features=colour_features).measure(trainer)
    with pytest.raises(TypeError, match=r"BrightnessBackend\) has no features"):
        AlignmentProbe(num_prompts=12, topk=3).measure(trainer)
    with pytest.raises(ValueError, match="more than topk=10 probe prompts"):
        AlignmentProbe(num_prompts=8)
    with pytest.raises(ValueError, match="wants 40 probe prompts.*eval set has 12"):
        AlignmentProbe(num_prompts=40, judge_features=colour_features).measure(trainer)


def test_pixel_backend_features_are_found_through_the_judge(tmp_path):
    args = make_args(tmp_path)
    trainer = RPOTrainer(
        tiny_policy(),
        RubricPairwiseReward(RubricJudge(load_backend("pixel"))),
        args,
        t2i_records(12, "train"),
    )
    fn = backend_features(trainer)
    assert fn.__self__ is trainer.reward.judge.backend
    out = AlignmentProbe(num_prompts=12, topk=3).measure(trainer)  # the train set is the probe set here
    assert 0.0 <= out["align/mutual_knn"] <= 1.0


def test_judge_layers_shapes():
    x = np.zeros((5, 3))
    assert list(judge_layers(x)) == ["judge"]
    assert list(judge_layers(np.zeros((2, 5, 3)))) == ["judge.0", "judge.1"]
    assert list(judge_layers({"vision.4": x})) == ["vision.4"]
    assert list(judge_layers([x, x])) == ["judge.0", "judge.1"]
    with pytest.raises(TypeError, match=r"shape \(5,\)"):
        judge_layers(np.zeros(5))


def test_probe_does_not_change_training(tmp_path):
    plain = make_trainer(tmp_path / "a", max_steps=3, output_dir=str(tmp_path / "a" / "run"))
    plain.train()
    probe = AlignmentProbe(num_prompts=12, align_every=1, topk=3, judge_features=colour_features)
    probed = make_trainer(tmp_path / "b", [probe], max_steps=3, output_dir=str(tmp_path / "b" / "run"))
    probed.train()
    a, b = read_rows(Path(plain.args.output_dir)), read_rows(Path(probed.args.output_dir))
    for ra, rb in zip(a, b, strict=True):
        for k in ra:
            if k not in TIMING:
                assert ra[k] == rb[k], (ra["step"], k)
    for pa, pb in zip(plain.params, probed.params, strict=True):
        assert torch.equal(pa, pb)


@pytest.mark.parametrize("family", ["sd3", "flux", "qwen_image"])
def test_policy_features_of_every_family(family):
    import contextlib
    from types import SimpleNamespace

    policy = build_family_policy(family)
    trainer = SimpleNamespace(
        policy=policy,
        args=SimpleNamespace(num_sampling_steps=2, sample_batch_size=3, guidance_scale=1.0),
        accelerator=SimpleNamespace(autocast=contextlib.nullcontext),
        eval_records=[],
        train_records=[],
    )
    prompts = ["a red circle", "two blue squares", "a green triangle", "a cat", "a dog"]
    probe = AlignmentProbe(prompts, topk=2, judge_features=colour_features)
    layers, images = probe.policy_features(trainer)
    expected = {"transformer_blocks.0"} | ({"single_transformer_blocks.0"} if family == "flux" else set())
    assert set(layers) == expected
    assert len(images) == 5 and all(v.shape[0] == 5 and v.dim() == 2 for v in layers.values())
    # Different prompts and seeds give different features (the hooks read the image stream, not a constant).
    for v in layers.values():
        assert torch.cdist(v, v).max() > 0
    out = probe.measure(trainer)
    assert out["align/mutual_knn_layer"].split("|")[0] in expected


def test_a_judge_without_image_features_trains_without_the_probe_and_says_so(tmp_path, caplog):
    """A judge behind an OpenAI-compatible server shows no image features: the recipe still builds (no probe, a
    warning naming align_every), where the probe would otherwise fail at the first evaluation."""
    import logging

    from arr.rpo.build import build_trainer
    from arr.rpo.recipe import parse_recipe

    argv = ["--policy", "shapes", "--model_name_or_path", "t2i", "--dataset", "shapes", "--num_train_prompts", "8",
            "--judge_backend", "openai", "--judge_model", "m", "--judge_base_url", "http://127.0.0.1:9/v1",
            "--align_every", "2", "--output_dir", str(tmp_path / "run"), "--cpu", "true"]  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="arr.rpo.build"):
        trainer = build_trainer(parse_recipe(argv))
    assert not any(isinstance(cb, AlignmentProbe) for cb in trainer.callbacks)
    assert "align_every 2" in caplog.text and "no image features" in caplog.text

    pixel = build_trainer(parse_recipe([*argv[:8], "--judge_backend", "pixel", *argv[14:]]))
    assert any(isinstance(cb, AlignmentProbe) for cb in pixel.callbacks)
