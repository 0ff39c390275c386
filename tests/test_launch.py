"""How `arr demo` picks its number of CPU ranks, and how it starts, watches and stops them."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from arr.rpo.launch import (
    MAX_AUTO_PROCESSES,
    _cgroup_cpu_quota,
    _exit_code,
    _wait_for_ranks,
    auto_num_processes,
)


@pytest.mark.parametrize(
    ("prompts", "cores", "expected"),
    [
        (16, 2, 2),  # the demo on this project's 2-core machines
        (16, 3, 2),  # 3 does not divide 16: the largest divisor that fits
        (16, 1, 1),
        (12, 5, 4),
        (3, 2, 1),  # an odd batch cannot be split in two
        (16, 64, MAX_AUTO_PROCESSES),  # capped: each rank holds a copy of the model
        (1, 8, 1),
    ],
)
def test_auto_num_processes_divides_the_batch_and_fits_the_cores(prompts, cores, expected):
    n = auto_num_processes(prompts, cores=cores)
    assert n == expected and prompts % n == 0 and n <= cores


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"cpu.max": "200000 100000\n"}, 2),  # cgroup v2, docker --cpus=2
        ({"cpu.max": "150000 100000\n"}, 1),  # 1.5 CPUs: one whole core per rank
        ({"cpu.max": "max 100000\n"}, None),  # no quota
        ({"cpu/cpu.cfs_quota_us": "400000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 4),  # cgroup v1
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),
    ],
)
def test_a_cgroup_cpu_quota_limits_the_cores(tmp_path, files, expected):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert _cgroup_cpu_quota(tmp_path) == expected


@pytest.mark.slow  # starts child processes
def test_a_failed_rank_stops_the_others():
    """A rank that crashes would leave the others waiting in a collective: they are terminated."""
    waiting = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    failing = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    t = time.monotonic()
    assert _wait_for_ranks([waiting, failing], poll_seconds=0.05) == 3
    assert waiting.wait(timeout=10) != 0 and time.monotonic() - t < 30


@pytest.mark.slow  # starts child processes
def test_after_a_signal_every_rank_is_waited_for():
    """Stopping ranks checkpoint first: the slowest one is waited for, not terminated."""
    fast = subprocess.Popen([sys.executable, "-c", "raise SystemExit(130)"])
    slow = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1.5)"])
    assert _wait_for_ranks([fast, slow], poll_seconds=0.05, stopping=[15]) == 130
    assert slow.returncode == 0  # it finished on its own


def test_exit_codes_are_shell_style():
    assert (_exit_code(0), _exit_code(130), _exit_code(-15), _exit_code(-9)) == (0, 130, 143, 137)


def test_the_fsdp_launch_config_gives_the_engine_the_trainer_is_tested_under(monkeypatch):
    """recipes/accelerate/8gpu_fsdp.yaml, read as `accelerate launch` reads it, sets up FSDP version 2 with the
    settings of the CPU tests' FSDP engine (tests/test_distributed.py): per-block wrapping, resharding after forward,
    sharded checkpoints."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env
    from torch.distributed.fsdp import StateDictType
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    from tests.conftest import ROOT

    config = ROOT / "recipes" / "accelerate" / "8gpu_fsdp.yaml"
    args = launch_command_parser().parse_args(["--config_file", str(config), "train.py"])
    args, _, _ = _validate_launch_command(args)
    assert args.use_fsdp and args.num_processes == 8
    for key, value in prepare_multi_gpu_env(args).items():
        monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2
    assert plugin.auto_wrap_policy is transformer_auto_wrap_policy
    assert plugin.reshard_after_forward is True
    assert plugin.state_dict_type == StateDictType.SHARDED_STATE_DICT
