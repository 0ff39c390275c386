"""Run a CPU job as several local processes (ranks over gloo): `arr demo` starts its own ranks.

Why: on a small CPU model torch's intra-op threads scale badly (two threads: 0.75x the time of one on the demo),
while two ranks that each take half of a step's prompts nearly halve it (bench/RESULTS.md section 11). The ranks
produce the same losses and scores as one process, up to float rounding (tests/test_rpo.py).

The ranks are started here rather than through `accelerate launch` (torchrun): its agent kills workers 30 s after
passing on a signal, which can cut a checkpoint short during an evaluation. Here a signal is passed on to every
rank and they are waited for without a deadline; a rank that fails brings the others down.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

MAX_AUTO_PROCESSES = 8  # each rank holds its own copy of the model and judge (~0.6 GB for the demo)
RANK_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def usable_cores() -> int:
    """CPU cores this process may use: the affinity mask, narrowed by a cgroup CPU quota (containers, CI)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    return max(1, min(cores, quota)) if quota else cores


def _cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """Whole CPUs allowed by a cgroup quota (`docker --cpus`, Kubernetes limits), or None without one."""
    try:
        # cgroup v2: "max 100000" (no quota) or "200000 100000" (2 CPUs)
        quota, period = (root / "cpu.max").read_text().split()[:2]
        if quota != "max":
            return max(1, int(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu/cpu.cfs_quota_us").read_text())  # cgroup v1; -1 means no quota
        period_us = int((root / "cpu/cpu.cfs_period_us").read_text())
        if quota_us > 0 and period_us > 0:
            return max(1, quota_us // period_us)
    except (OSError, ValueError):
        pass
    return None


def launched_as_a_rank() -> bool:
    """True inside a rank started by this module, accelerate or torchrun (they set WORLD_SIZE)."""
    return "WORLD_SIZE" in os.environ


def can_launch_ranks() -> bool:
    """Local ranks need torch.distributed and POSIX signals (on Windows a SIGTERM cannot be caught)."""
    import torch.distributed

    return os.name == "posix" and torch.distributed.is_available()


def auto_num_processes(prompts_per_step: int, cores: int | None = None) -> int:
    """The most ranks (one core each, at most MAX_AUTO_PROCESSES) that split a step's prompts evenly."""
    cores = usable_cores() if cores is None else cores
    limit = max(1, min(cores, MAX_AUTO_PROCESSES, prompts_per_step))
    return max(n for n in range(1, limit + 1) if prompts_per_step % n == 0)


def launch_cpu_processes(
    num_processes: int, module_args: Sequence[str], cores: int | None = None, poll_seconds: float = 0.2
) -> int:
    """Run `python -m arr MODULE_ARGS...` as `num_processes` CPU ranks on this machine; returns an exit code.

    Each rank gets cores // num_processes OpenMP threads unless OMP_NUM_THREADS is set. SIGTERM, SIGINT and SIGHUP
    sent to this process (Ctrl-C included: the ranks run in their own process groups, so the terminal signals
    only this one) are passed on to every rank, which checkpoint and stop together as one process would.
    """
    cores = usable_cores() if cores is None else cores
    env = {k: v for k, v in os.environ.items() if k not in RANK_ENV}
    env.setdefault("OMP_NUM_THREADS", str(max(1, cores // num_processes)))
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env.update(
        WORLD_SIZE=str(num_processes),
        LOCAL_WORLD_SIZE=str(num_processes),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(_free_port()),
    )
    children: list[subprocess.Popen] = []
    received: list[int] = []

    def forward(signum, frame):
        received.append(signum)
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signum)

    handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    previous = {}
    if threading.current_thread() is threading.main_thread():  # signals can only be caught on the main thread
        previous = {sig: signal.signal(sig, forward) for sig in handled}
    try:
        for rank in range(num_processes):
            children.append(
                subprocess.Popen(
                    [sys.executable, "-m", "arr", *module_args],
                    env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
                    start_new_session=True,  # out of the terminal's process group: signals come from us, once
                    preexec_fn=_die_with_parent,
                )
            )
            if received:  # a signal arrived while the ranks were starting
                children[-1].send_signal(received[-1])
        return _wait_for_ranks(children, poll_seconds, stopping=received)
    finally:
        for child in children:  # on an error here (or a failed rank), leave nothing running
            if child.poll() is None:
                child.terminate()
        for child in children:
            try:
                child.wait(timeout=60)
            except subprocess.TimeoutExpired:
                child.kill()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _wait_for_ranks(
    children: Sequence[subprocess.Popen], poll_seconds: float, stopping: Sequence[int] = ()
) -> int:
    """Wait for every rank; if one fails, stop the others (they would wait for it in a collective forever).

    After a signal (`stopping` non-empty) every rank is stopping on its own, each after its checkpoint: wait for
    all of them, however long the slowest takes.
    """
    while True:
        codes = [c.poll() for c in children]
        failed = [rc for rc in codes if rc not in (None, 0)]
        if stopping and all(rc is not None for rc in codes):
            return _exit_code(failed[0]) if failed else 0
        if failed and not stopping:
            for child in children:
                if child.poll() is None:
                    child.terminate()
            return _exit_code(failed[0])
        if all(rc == 0 for rc in codes):
            return 0
        time.sleep(poll_seconds)


def _exit_code(returncode: int) -> int:
    """A shell-style exit status: a rank killed by signal N gives 128 + N."""
    return returncode if returncode >= 0 else 128 - returncode


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """On Linux, SIGTERM the rank if the launching process dies (even by kill -9), so no rank is orphaned."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
