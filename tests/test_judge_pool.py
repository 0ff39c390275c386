"""A pool of judge servers: `base_url` names several servers, requests are spread over them, a server that dies is
taken out (its requests move to the others at once) and put back when it answers again.

The servers are in-process fault-injecting judges (arr/testing/faulty_server.py) that answer with BrightnessBackend's
rule, so every verdict is known in advance and a pool must give exactly what one server gives.
"""

from __future__ import annotations

import logging
import threading
import time

import pytest

from arr.backends.base import CriterionQuery, JudgeUnavailableError
from arr.backends.openai import OpenAIBackend
from arr.backends.options import BackendOptionError, backend_kwargs
from arr.backends.pool import Lease, ServerPool, parse_base_urls
from arr.rubrics import Criterion, Rubric
from arr.testing.faulty_server import FaultyJudgeServer
from arr.testing.serve import free_port
from tests.fakes import grey

RUBRIC = Rubric("a bright square", [Criterion("c1", "the square is bright")])
LATENCY = 0.02  # each answer takes this long, so that requests overlap and the pool has a choice to make


def queries(n: int, offset: int = 0) -> list[CriterionQuery]:
    return [CriterionQuery("p", grey((7 * i + offset) % 256), RUBRIC, RUBRIC.criteria[0]) for i in range(n)]


# ---- the list of servers -------------------------------------------------------------------------------------------


def test_base_urls_from_a_list_a_comma_string_or_a_file(tmp_path):
    urls = ["http://127.0.0.1:8000/v1", "http://127.0.0.1:8001/v1", "https://judge.example/v1"]
    assert parse_base_urls(urls) == urls
    assert (
        parse_base_urls(" http://127.0.0.1:8000/v1/, http://127.0.0.1:8001/v1,https://judge.example/v1,")
        == urls
    )
    listing = tmp_path / "judges.txt"
    listing.write_text(
        "# three vllm serve instances\n\nhttp://127.0.0.1:8000/v1\n  http://127.0.0.1:8001/v1  # GPU 1\n"
        "https://judge.example/v1\n"
    )
    assert parse_base_urls(str(listing)) == urls
    assert parse_base_urls("http://127.0.0.1:8000/v1") == urls[:1]


@pytest.mark.parametrize(
    ("value", "named"),
    [
        ("localhost:8000/v1", "localhost:8000/v1"),  # no scheme, and no such file
        ("http://127.0.0.1:8000/v1,ftp://127.0.0.1/v1", "ftp://127.0.0.1/v1"),
        (["http://a:1/v1", "http:///v1"], "http:///v1"),
        (["http://a:1/v1", 8001], "8001"),
        ("http://a:99999/v1", "http://a:99999/v1"),
        ("http://a:1/v1,http://a:1/v1/", "http://a:1/v1 is listed twice"),
        (",", "no server URL"),
    ],
)
def test_a_bad_server_url_is_named_in_one_line(value, named):
    with pytest.raises(ValueError, match="^[^\n]*$") as e:
        parse_base_urls(value)
    assert named in str(e.value)


def test_a_bad_url_in_a_file_or_an_option_names_it_and_the_option(tmp_path):
    listing = tmp_path / "judges.txt"
    listing.write_text("http://127.0.0.1:8000/v1\n127.0.0.1:8001\n")
    with pytest.raises(BackendOptionError) as e:
        backend_kwargs(
            "openai", model="m", base_url=str(listing), spell=lambda name: "--" + name.replace("_", "-")
        )
    assert str(e.value).startswith("--base-url: '127.0.0.1:8001' is not an http(s) URL")
    with pytest.raises(BackendOptionError, match="^judge_base_url: 'nope' is neither"):
        backend_kwargs("openai", model="m", base_url="nope", spell=lambda name: f"judge_{name}")


def test_one_url_is_passed_on_as_before_and_several_as_a_list(tmp_path):
    assert backend_kwargs("openai", model="m", base_url="http://h:1/v1/")["base_url"] == "http://h:1/v1"
    several = backend_kwargs("openai", model="m", base_url="http://h:1/v1,http://h:2/v1")["base_url"]
    assert several == ["http://h:1/v1", "http://h:2/v1"]
    backend = OpenAIBackend("m", base_url=several)
    assert backend.base_urls == several and backend.pool.urls == several
    assert (
        backend.fingerprint() == OpenAIBackend("m", base_url="http://h:3/v1").fingerprint()
    )  # one shared cache
    backend.close()


def test_a_recipe_takes_a_yaml_list_of_servers(tmp_path):
    from arr.rpo.build import build_judge
    from arr.rpo.recipe import parse_recipe

    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "judge_backend: openai\njudge_model: canned\njudge_base_url:\n  - http://127.0.0.1:8000/v1\n"
        "  - http://127.0.0.1:8001/v1\n"
    )
    judge = build_judge(parse_recipe([str(recipe)]).judge, str(tmp_path))
    assert judge.backend.base_urls == ["http://127.0.0.1:8000/v1", "http://127.0.0.1:8001/v1"]
    judge.backend.close()
    overridden = parse_recipe(
        [str(recipe), "--judge_base_url", "http://127.0.0.1:9000/v1,http://127.0.0.1:9001/v1"]
    )
    assert parse_base_urls(overridden.judge.judge_base_url) == [
        "http://127.0.0.1:9000/v1",
        "http://127.0.0.1:9001/v1",
    ]


# ---- the pool's choices, on a clock of its own ---------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_requests_go_to_the_least_loaded_server_in_turn():
    pool = ServerPool(["a", "b", "c"], probe=lambda url: True)
    leases = [pool.acquire() for _ in range(3)]
    assert [lease.url for lease in leases] == ["a", "b", "c"]
    pool.release(leases[1])
    leases[1] = pool.acquire()
    assert leases[1].url == "b"  # the only one with nothing in flight
    for lease in leases:
        pool.release(lease)
    # Equal load: the server that waited longest goes first.
    assert [pool.acquire().url for _ in range(4)] == ["a", "c", "b", "a"]
    assert {url: s["requests"] for url, s in pool.stats().items()} == {"a": 3, "b": 3, "c": 2}


def test_a_failed_server_is_out_until_a_health_check_passes_with_doubling_waits(caplog):
    clock, probes, alive = Clock(), [], [False]

    def probe(url):
        probes.append((url, clock.now))
        return alive[0]

    pool = ServerPool(["a", "b"], probe=probe, clock=clock)
    failing, on_b, late = pool.acquire(), pool.acquire(), pool.acquire()
    assert (failing.url, on_b.url, late.url) == ("a", "b", "a")
    with caplog.at_level(logging.WARNING, logger="arr.backends.pool"):
        assert pool.release(failing, "cannot reach a") is True  # b is up: move there now
    assert "judge server a taken out of the pool (cannot reach a); 1 of 2 servers left" in caplog.text
    pool.release(on_b)
    # An answer a sent before it died, arriving after it was taken out, is no sign of life.
    assert pool.release(late) is False
    assert pool.stats()["a"] == {"requests": 2, "failures": 1, "in_flight": 0, "healthy": False}
    # 200 requests over 200 s: only b serves them, and a is checked at 5, 15, 35, 75, 135 and 195 s.
    for _ in range(200):
        lease = pool.acquire()
        assert lease.url == "b"
        pool.release(lease)
        clock.now += 1.0
    assert probes == [("a", t) for t in (5.0, 15.0, 35.0, 75.0, 135.0, 195.0)]
    alive[0] = True
    clock.now = 255.0
    with caplog.at_level(logging.WARNING, logger="arr.backends.pool"):
        assert pool.acquire().url == "a"  # checked, back, and idle
    assert "judge server a is back in the pool (it answered a health check); 2 of 2 servers up" in caplog.text
    assert pool.healthy_count == 2


def test_one_server_is_never_taken_out_and_when_all_are_out_requests_go_round_them():
    single = ServerPool(["a"], probe=lambda url: pytest.fail("one server is never health-checked"))
    assert (
        single.release(single.acquire(), "HTTP 503") is False
    )  # nowhere to move: the caller's retries apply
    assert single.stats()["a"]["healthy"] and single.acquire().url == "a"

    pool = ServerPool(["a", "b"], probe=lambda url: False, clock=Clock())
    assert pool.release(pool.acquire(), "down") is True
    assert pool.release(pool.acquire(), "down") is False  # the last one: no server left to move to
    assert pool.healthy_count == 0
    leases = [pool.acquire() for _ in range(4)]
    assert sorted(lease.url for lease in leases) == ["a", "a", "b", "b"]
    pool.release(leases[0], "down")
    pool.release(leases[1])  # sent while every server was out, and answered: that server is back
    assert {url: s["healthy"] for url, s in pool.stats().items()} == {
        "a": leases[1].url == "a",
        "b": leases[1].url == "b",
    }


# ---- three real servers, one of which dies and comes back ------------------------------------------------------------


class PoolLog:
    """Every pick and release of a pool, in one order: a lock around each call orders them as the pool's own does."""

    def __init__(self, pool: ServerPool) -> None:
        self.events: list[tuple[str, str]] = []
        lock = threading.Lock()
        acquire, release = pool.acquire, pool.release

        def logged_acquire() -> Lease:
            with lock:
                lease = acquire()
                self.events.append(("pick", lease.url))
                return lease

        def logged_release(lease: Lease, failure: str | None = None) -> bool:
            with lock:
                self.events.append(("fail" if failure else "done", lease.url))
                return release(lease, failure)

        pool.acquire, pool.release = logged_acquire, logged_release  # type: ignore[method-assign]


def kill_after(server: FaultyJudgeServer, answers: int) -> threading.Thread:
    """Kill `server` (in another thread) once it has taken `answers` requests."""

    def run() -> None:
        deadline = time.monotonic() + 30
        while server.counts["ok"] < answers and time.monotonic() < deadline:
            time.sleep(0.002)
        server.kill()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_a_pool_spreads_requests_survives_a_dead_server_and_takes_it_back(caplog):
    servers = [FaultyJudgeServer(latency=LATENCY).start() for _ in range(3)]
    dead_port = servers[1].port
    urls = [s.base_url for s in servers]
    try:
        with OpenAIBackend("canned", base_url=urls[0], max_concurrency=6, timeout=2.0, backoff=0.01) as one:
            expected = [v.prob_yes for v in one.judge_criteria(queries(48))]
        for s in servers:
            s.counts.clear()
        backend = OpenAIBackend("canned", base_url=urls, max_concurrency=6, timeout=2.0, backoff=0.01)
        backend.pool.first_probe_after, backend.pool.max_probe_after = 0.2, 0.4
        log = PoolLog(backend.pool)

        # Healthy: every server takes a share, and the answers are one server's.
        first = backend.judge_criteria(queries(48))
        assert [v.prob_yes for v in first] == expected and expected[1] == pytest.approx(7 / 255)
        shares = [s.counts["ok"] for s in servers]
        assert sum(shares) == 48 and min(shares) >= 8, shares

        # Server 1 dies in the middle of a batch: nothing is lost, and it gets nothing once it is out.
        killer = kill_after(servers[1], shares[1] + 4)
        with caplog.at_level(logging.WARNING, logger="arr.backends.pool"):
            second = backend.judge_criteria(queries(48))
        killer.join()
        assert [v.prob_yes for v in second] == expected and not any(v.error for v in second)
        marked_out = log.events.index(("fail", urls[1]))
        assert ("pick", urls[1]) not in log.events[marked_out:]
        assert log.events[marked_out:].count(("done", urls[0])) > 0  # it died mid-batch: others carried on
        assert log.events[marked_out:].count(("done", urls[2])) > 0
        assert f"judge server {urls[1]} taken out of the pool" in caplog.text
        stats = backend.pool.stats()
        assert not stats[urls[1]]["healthy"] and stats[urls[1]]["failures"] >= 1
        assert stats[urls[0]]["healthy"] and stats[urls[2]]["healthy"]
        assert sum(s["in_flight"] for s in stats.values()) == 0

        # Restarted on the same port, it passes a health check and takes requests again.
        servers[1] = FaultyJudgeServer(port=dead_port, latency=LATENCY).start()
        time.sleep(0.5)  # past the next health check (waits are capped at 0.4 s here)
        restart = len(log.events)
        with caplog.at_level(logging.WARNING, logger="arr.backends.pool"):
            third = backend.judge_criteria(queries(48))
        assert [v.prob_yes for v in third] == expected
        assert f"judge server {urls[1]} is back in the pool" in caplog.text
        assert backend.pool.stats()[urls[1]]["healthy"] and backend.pool.healthy_count == 3
        assert ("pick", urls[1]) in log.events[restart:] and servers[1].counts["ok"] > 0
        backend.close()
    finally:
        for s in servers:
            s.kill()


def test_when_every_server_is_down_the_batch_is_unavailable_as_with_one():
    urls = [f"http://127.0.0.1:{free_port()}/v1" for _ in range(2)]
    opts = dict(max_retries=1, backoff=0.0, timeout=1.0, max_concurrency=1)
    with OpenAIBackend("canned", base_url=urls, **opts) as backend:
        with pytest.raises(JudgeUnavailableError, match="gave up after 2 attempts"):
            backend.judge_criteria(queries(3))
        assert backend.pool.healthy_count == 0
        # The first request fails on both servers (moving on is free) and once more; the others, with every server
        # out, make the two attempts that one server would get.
        assert sum(s["requests"] for s in backend.pool.stats().values()) == 3 + 2 + 2


@pytest.mark.parametrize(
    ("fault", "taken_out"),
    [("http_500", False), ("timeout", False), ("http_503", True), ("drop", True)],
)
def test_only_a_server_that_looks_down_is_taken_out(fault, taken_out):
    """A slow answer or HTTP 500 may be the request's own trouble: retried, the server stays in the pool. A cut
    connection or HTTP 503 says the server is down: it is taken out."""
    bad = FaultyJudgeServer(fault_rate=1.0, faults=[fault], hang_seconds=1.0).start()
    good = FaultyJudgeServer().start()
    try:
        with OpenAIBackend("canned", base_url=[bad.base_url, good.base_url], max_concurrency=1, timeout=0.5,
                           backoff=0.0, max_retries=1) as backend:  # fmt: skip
            backend.pool.first_probe_after = 60.0  # no health check puts it back during the test
            backend.judge_criteria(queries(2))
            assert backend.pool.stats()[bad.base_url.rstrip("/")]["healthy"] is not taken_out
    finally:
        bad.stop()
        good.stop()


def test_training_logs_how_many_judge_servers_are_up(tmp_path):
    """A training run with two judge servers, one of them dead from the start: every sample is still judged, and
    each metrics row says 1 of 2 servers is up."""
    from arr import RubricJudge
    from arr.rewards import RubricPairwiseReward
    from arr.rpo import RPOTrainer
    from arr.shapes.training import t2i_records
    from tests.conftest import make_args, read_rows, tiny_policy

    live, dead = FaultyJudgeServer().start(), FaultyJudgeServer().start()
    dead.kill()
    try:
        backend = OpenAIBackend("canned", base_url=[dead.base_url, live.base_url], timeout=1.0, backoff=0.01)
        backend.pool.first_probe_after = 600.0  # not probed again during the run
        args = make_args(tmp_path, max_steps=2)
        RPOTrainer(
            tiny_policy(), RubricPairwiseReward(RubricJudge(backend)), args, t2i_records(8, "train")
        ).train()
        rows = read_rows(tmp_path / "run")
        assert [(r["judge_servers_up"], r["judge_servers"]) for r in rows] == [(1, 2), (1, 2)]
        assert all(r["masked_frac"] == 0 for r in rows)
    finally:
        live.stop()
        dead.stop()
