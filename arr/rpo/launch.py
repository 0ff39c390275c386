"""Run a CPU job as several local processes (ranks over gloo) by re-executing it under `accelerate launch`.

Why: on a small CPU model torch's intra-op threads scale badly (two threads: 1.3x one thread on the demo), while
two ranks that each take half of a step's prompts scale almost linearly (1.98x; bench/RESULTS.md section 11).
The ranks produce the same losses and scores as one process, up to float rounding (tests/test_rpo.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence

MAX_AUTO_PROCESSES = 8  # each rank holds its own copy of the model and judge (~0.6 GB for the demo)


def usable_cores() -> int:
    """CPU cores this process may run on (the affinity mask, which containers and `taskset` narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def launched_by_a_launcher() -> bool:
    """True inside a rank started by accelerate/torchrun (which set WORLD_SIZE): never launch again from there."""
    return "WORLD_SIZE" in os.environ


def auto_num_processes(prompts_per_step: int, cores: int | None = None) -> int:
    """The most ranks (one core each, at most MAX_AUTO_PROCESSES) that split a step's prompts evenly."""
    cores = usable_cores() if cores is None else cores
    limit = max(1, min(cores, MAX_AUTO_PROCESSES, prompts_per_step))
    return max(n for n in range(1, limit + 1) if prompts_per_step % n == 0)


def launch_cpu_processes(num_processes: int, module_args: Sequence[str], cores: int | None = None) -> int:
    """Run `python -m arr MODULE_ARGS...` as `num_processes` CPU ranks on this machine; returns the exit code.

    Each rank gets cores // num_processes OpenMP threads. SIGTERM sent to this process is passed on, so the ranks
    checkpoint and stop together as a single-process run would; Ctrl-C reaches them through the terminal.
    """
    cores = usable_cores() if cores is None else cores
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(max(1, cores // num_processes)),
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
    }
    # --multi_gpu selects accelerate's torchrun launcher, the one that starts several local processes; on a
    # machine without GPUs (and with the recipe's `cpu: true`) the ranks run on CPU over gloo. A config file
    # with `distributed_type: MULTI_CPU` instead starts a single process unless mpirun is used.
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
        "--num_processes", str(num_processes), "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", "0",  # a free port: two runs on one machine must not collide
        "-m", "arr", *module_args,
    ]  # fmt: skip
    child = subprocess.Popen(cmd, env=env)

    def forward(signum, frame):
        child.send_signal(signum)

    previous = signal.signal(signal.SIGTERM, forward)
    # The terminal already delivers Ctrl-C to every rank (one process group); forwarding it again would be a
    # second interrupt.
    previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return child.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
