"""Judgment cache under crashes: two processes write at once and one of them is SIGKILLed mid-stream, several times.

tests/test_cache.py covers two writers that both finish, and one writer killed alone; here a survivor keeps writing
while its neighbour dies (possibly holding the write lock), and every committed entry of both must remain.
"""

from __future__ import annotations

import multiprocessing as mp
import sqlite3
import time

import pytest

from arr.cache import JudgmentCache

BATCH = 10


def _writer(path: str, tag: str, batches: int, go) -> None:
    cache = JudgmentCache(path)
    go.wait()
    for b in range(batches):
        cache.put_many([(f"{tag}{b}-{j}", {"tag": tag, "b": b, "j": j}) for j in range(BATCH)])
    cache.close()


def _endless_writer(path: str, tag: str, go) -> None:
    cache = JudgmentCache(path)
    go.wait()
    b = 0
    while True:
        cache.put_many([(f"{tag}{b}-{j}", {"tag": tag, "b": b, "j": j}) for j in range(BATCH)])
        b += 1


def _count(cache: JudgmentCache, tag: str) -> int:
    return sum(1 for k in cache.keys() if k.startswith(tag))  # noqa: SIM118 - JudgmentCache has no __iter__


def _batches(cache: JudgmentCache, tag: str) -> int:
    """How many whole batches of `tag` are stored; asserts they are a gap-free prefix with intact values."""
    keys = [k for k in cache.keys() if k.startswith(tag)]  # noqa: SIM118 - no __iter__
    assert len(keys) % BATCH == 0, f"{tag}: {len(keys)} entries is not whole batches"
    n = len(keys) // BATCH
    got = cache.get_many([f"{tag}{b}-{j}" for b in range(n) for j in range(BATCH)])
    assert len(got) == len(keys), f"{tag}: batches are not a prefix"
    assert all(got[f"{tag}{b}-{j}"] == {"tag": tag, "b": b, "j": j} for b in range(n) for j in range(BATCH))
    return n


@pytest.mark.slow  # starts child processes
def test_a_writer_killed_beside_a_live_writer_loses_nothing_committed(tmp_path):
    path = str(tmp_path / "judge.sqlite")
    JudgmentCache(path).close()
    ctx = mp.get_context("spawn")
    rounds, survivor_batches = 3, 60
    reader = JudgmentCache(path)
    for r in range(rounds):
        go = ctx.Event()
        victim = ctx.Process(target=_endless_writer, args=(path, f"v{r}-", go))
        survivor = ctx.Process(target=_writer, args=(path, f"s{r}-", survivor_batches, go))
        victim.start()
        survivor.start()
        time.sleep(0.3)
        go.set()
        deadline = time.monotonic() + 60
        while (seen := _count(reader, f"v{r}-")) < 10 * BATCH:
            assert time.monotonic() < deadline and victim.is_alive(), "the victim made no progress"
            time.sleep(0.005)
        victim.kill()  # SIGKILL, most likely inside a transaction or waiting for the lock
        victim.join(30)
        assert victim.exitcode == -9
        survivor.join(120)
        assert survivor.exitcode == 0, "the survivor must finish: no stale lock after its neighbour died"
        assert _batches(reader, f"v{r}-") * BATCH >= seen  # nothing a reader saw committed is gone
        assert _batches(reader, f"s{r}-") == survivor_batches
    reader.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
