"""Guards around a run: an output directory that holds another run is refused unless overwritten or resumed, and a
non-finite update stops training without a checkpoint of that step (or is skipped and logged, when asked)."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from arr import RubricJudge
from arr.rewards import RubricPairwiseReward
from arr.rpo import ConfigError, RPOTrainer
from arr.rpo.objectives import PolicyGradient
from arr.rpo.trainer import NonFiniteLossError, TrainerCallback
from arr.shapes.training import t2i_records
from tests.conftest import ROOT, TINY_RUN, make_args, read_rows, tiny_policy
from tests.conftest import needs_shipped_t2i as shipped
from tests.conftest import run_arr as arr
from tests.fakes import BrightnessBackend


def _trainer(tmp_path: Path, objective=None, callbacks=(), **kw) -> RPOTrainer:
    args = make_args(tmp_path, **kw)
    reward = RubricPairwiseReward(RubricJudge(BrightnessBackend()))
    return RPOTrainer(
        tiny_policy(), reward, args, t2i_records(16, "train"), objective=objective, callbacks=callbacks
    )


# ---- the run directory ------------------------------------------------------------------------------------------


def test_a_directory_holding_another_run_is_refused_then_overwritten(tmp_path):
    run = tmp_path / "run"
    _trainer(tmp_path, max_steps=3, save_steps=1, save_total_limit=5).train()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_1", "step_2", "step_3"]
    (run / "notes.txt").write_text("mine")  # not the trainer's: kept

    with pytest.raises(ConfigError) as e:
        _trainer(tmp_path, max_steps=1).train()
    message = str(e.value)
    assert "holds another run" in message and "overwrite_output_dir: true" in message and "\n" not in message
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_1", "step_2", "step_3"]

    _trainer(tmp_path, max_steps=1, save_steps=1, overwrite_output_dir=True).train()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_1"]
    assert [r["step"] for r in read_rows(run)] == [1]
    assert (run / "notes.txt").read_text() == "mine"
    # Resuming the new run is allowed without overwriting, and continues it (not the old one).
    _trainer(tmp_path, max_steps=2, save_steps=1, resume_from_checkpoint="latest").train()
    assert [r["step"] for r in read_rows(run)] == [1, 2]


def test_a_judge_cache_alone_is_not_a_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "judge_cache.sqlite").write_bytes(b"")  # written by `arr train` before the trainer starts
    _trainer(tmp_path, max_steps=1).train()
    assert (run / "judge_cache.sqlite").exists() and [r["step"] for r in read_rows(run)] == [1]


# ---- non-finite updates -----------------------------------------------------------------------------------------


@dataclass
class NaNAtStep(PolicyGradient):
    """The paper's update, except that every loss of the rollout sampled at `bad_step` is NaN."""

    bad_step: int = 1

    def loss_terms(self, rollout, advantages, members) -> Iterator[dict[str, torch.Tensor]]:
        for terms in super().loss_terms(rollout, advantages, members):
            if rollout.step == self.bad_step:
                terms = {**terms, "loss": terms["loss"] * float("nan")}
            yield terms


class RecordLoRA(TrainerCallback):
    def __init__(self) -> None:
        self.after: dict[int, list[torch.Tensor]] = {}

    def on_step_end(self, trainer, step, metrics):
        self.after[step] = [p.detach().clone() for p in trainer.params]


def test_a_nan_loss_stops_training_before_the_update_and_its_checkpoint(tmp_path):
    trainer = _trainer(tmp_path, objective=NaNAtStep(), max_steps=3, save_steps=1)
    with pytest.raises(NonFiniteLossError, match=r"step 2, minibatch 0: the loss \(nan.*not finite") as e:
        trainer.train()
    assert "nan_policy: skip_step" in str(e.value) and "\n" not in str(e.value)
    run = Path(trainer.args.output_dir)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_1"]
    assert [r["step"] for r in read_rows(run)] == [1]
    saved = load_file(run / "checkpoints" / "step_1" / "lora.safetensors")
    live = trainer._lora_tensors()
    assert all(torch.equal(saved[k], live[k]) for k in saved), "the NaN update must not have been applied"


def test_skip_step_skips_and_logs_non_finite_updates(tmp_path):
    record = RecordLoRA()
    trainer = _trainer(
        tmp_path, objective=NaNAtStep(), callbacks=[record], max_steps=3, nan_policy="skip_step"
    )
    trainer.train()
    rows = read_rows(Path(trainer.args.output_dir))
    assert [(r["skipped_updates"], r["optimizer_steps"]) for r in rows] == [(0, 2), (2, 0), (0, 2)]
    assert rows[1]["loss"] == 0.0 and rows[1]["grad_norm"] == 0.0  # nothing was applied, nothing averaged
    assert all(math.isfinite(v) for r in rows for v in r.values() if isinstance(v, float))
    assert all(torch.equal(a, b) for a, b in zip(record.after[1], record.after[2], strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(record.after[2], record.after[3], strict=True))


@shipped
@pytest.mark.slow
def test_a_recipe_that_makes_the_loss_nan_exits_non_zero_without_a_nan_checkpoint(tmp_path):
    out = tmp_path / "nan"
    r = arr("train", str(ROOT / "recipes/shapes_t2i_rpo.yaml"), "--output_dir", str(out), *TINY_RUN,
            "--learning_rate", "1e30")  # fmt: skip
    assert r.returncode == 2, r.stderr[-3000:]
    error = [line for line in r.stderr.splitlines() if "not finite" in line]
    assert len(error) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    bad = int(re.search(r"step (\d+), minibatch", error[0]).group(1))
    assert not (out / "checkpoints" / f"step_{bad}").exists()
    assert bad not in [row["step"] for row in read_rows(out)]
    for ckpt in (out / "checkpoints").glob("step_*"):
        for name in ("lora.safetensors", "sampling_lora.safetensors"):
            assert all(bool(t.isfinite().all()) for t in load_file(ckpt / name).values()), (ckpt, name)


@pytest.mark.parametrize(
    ("engine", "fsdp2", "message"),
    [("DEEPSPEED", False, "does not run under DeepSpeed"), ("FSDP", False, "fsdp_version: 2")],
)
def test_engines_the_trainer_does_not_drive_are_refused_with_what_to_launch_instead(engine, fsdp2, message):
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from arr.rpo.trainer import _check_engine

    with pytest.raises(ConfigError, match=message):
        _check_engine(SimpleNamespace(distributed_type=DistributedType[engine], is_fsdp2=fsdp2))
    _check_engine(SimpleNamespace(distributed_type=DistributedType.FSDP, is_fsdp2=True))  # version 2 runs
