"""The reward server bounds every request before doing its work, keeps `/health` apart from judging, turns a full
queue into 503 + Retry-After and a slow answer into 504, and stops judging what nobody waits for any more.

Requests that would have run for minutes on an unbounded server (10,000 criteria, 5,000 groups, a group of 200,
ten 8000x8000 images in a 100 KB body) are refused at once with an error naming the limit.
"""

from __future__ import annotations

import base64
import io
import threading
import time
import urllib.request

import pytest
from PIL import Image

from arr import RubricJudge, load_backend
from arr.backends.chat import JudgeUnavailableError
from arr.serve import CHUNK_QUESTIONS, ServeLimits, encode_image
from arr.shapes.pairs import make_pairs
from tests.fakes import BrightnessBackend, GatedBackend, grey
from tests.serve_client import get, post

PAIR = make_pairs(1, seed=5, split="heldout", task="t2i")[0]
RUBRIC = PAIR.rubric.to_dict()
ONE_CRITERION = {"prompt": "p", "criteria": [{"id": "c1", "text": "bright"}]}


def _png_1bit(size: int) -> str:
    """A black 1-bit PNG of size x size: a few KB of base64 that decode to size^2 pixels."""
    buf = io.BytesIO()
    Image.new("1", (size, size)).save(buf, format="PNG", optimize=True)
    return base64.b64encode(buf.getvalue()).decode()


def _many_criteria(n: int) -> dict:
    return {"prompt": "p", "criteria": [{"id": f"c{i}", "text": f"criterion {i}"} for i in range(n)]}


def test_oversized_requests_are_refused_before_any_work(reward_server):
    server = reward_server()
    url = f"http://127.0.0.1:{server.port}"
    image = encode_image(PAIR.image_a)
    bomb = _png_1bit(8000)  # 64 Mpx: ten of them were 72 s of decoding and 2.5 GB on an unbounded server
    limits = ServeLimits()
    cases = [
        ("/score", {"images": [image], "rubric": _many_criteria(10_000)}, "max_criteria"),
        ("/score", {"images": [bomb] * 10, "rubric": RUBRIC}, "max_pixels"),
        ("/score", {"images": [image], "rubric": RUBRIC, "sources": [bomb]}, "max_pixels"),
        ("/score", {"images": [image] * (limits.max_items + 1), "rubric": RUBRIC}, "max_items"),
        ("/compare", {"images_a": [bomb] * 5, "images_b": [bomb] * 5, "rubric": RUBRIC}, "max_pixels"),
        ("/group", {"groups": [[image] * 200], "rubric": RUBRIC}, "max_group_size"),
        ("/group", {"groups": [[image, image]] * 5000, "rubric": RUBRIC}, "max_items"),
    ]
    for path, body, limit in cases:
        status, answer = post(url + path, body, timeout=60)
        assert status == 400 and limit in answer["error"], (path, limit, answer)
    health = server.health()
    assert (
        health["judge"]["calls"] == 0 and health["requests"] == 0 and health["rejected"]["bad_request"] == 7
    )


def test_limits_are_configurable_and_the_body_limit_is_413(reward_server):
    server = reward_server(
        max_body_bytes=50_000, max_criteria=3, max_group_size=3, max_items=4, max_pixels=5000
    )
    url = f"http://127.0.0.1:{server.port}"
    image = encode_image(grey(200))  # 8x8 = 64 pixels
    status, answer = post(url + "/score", {"images": [image], "rubric": "x" * 60_000})
    assert status == 413 and "max_body_bytes" in answer["error"]
    assert post(url + "/score", {"images": [image], "rubric": _many_criteria(4)})[1]["error"].endswith(
        "(max_criteria)"
    )
    assert (
        "max_group_size"
        in post(url + "/group", {"groups": [[image] * 4], "rubric": ONE_CRITERION})[1]["error"]
    )
    assert "max_items" in post(url + "/score", {"images": [image] * 5, "rubric": ONE_CRITERION})[1]["error"]
    big = encode_image(Image.new("RGB", (80, 80)))  # 6400 pixels
    assert "max_pixels" in post(url + "/score", {"images": [big], "rubric": ONE_CRITERION})[1]["error"]
    status, answer = post(url + "/group", {"groups": [[image] * 3], "rubric": _many_criteria(3)})
    assert status == 200 and len(answer["rewards"][0]) == 3
    assert get(url + "/health")[1]["limits"]["max_group_size"] == 3
    with pytest.raises(ValueError, match="max_queue must be a positive"):
        ServeLimits(max_queue=0)
    with pytest.raises(ValueError, match="request_timeout must be a positive finite"):
        ServeLimits(request_timeout=float("nan"))
    with pytest.raises(ValueError, match="max_group_size must be >= 2"):
        ServeLimits(max_group_size=1)


def test_scoring_cost_is_linear_in_criteria(reward_server, tmp_path):
    """Behind the server (with a cache), 4x the criteria is about 4x the backend work and key hashing, not 16x."""
    server = reward_server(
        judge=RubricJudge(load_backend("pixel"), cache=tmp_path / "judge.sqlite"), max_criteria=4096
    )
    url = f"http://127.0.0.1:{server.port}/score"
    image = encode_image(PAIR.image_a)
    cpu = []
    for n in (256, 1024):
        rubric = {
            **RUBRIC,
            "criteria": [dict(RUBRIC["criteria"][i % len(RUBRIC["criteria"])], id=f"c{i}") for i in range(n)],
        }
        start = time.process_time()  # this process: client and in-process server together
        status, answer = post(url, {"images": [image], "rubric": rubric}, timeout=120)
        cpu.append(time.process_time() - start)
        assert status == 200 and len(answer["criteria"][0]) == n
    assert cpu[1] / cpu[0] < 8, cpu  # quadratic keys gave ~16x; linear gives ~4x


def test_health_answers_while_a_long_request_is_judged(reward_server):
    backend = GatedBackend()
    server = reward_server(judge=RubricJudge(backend))
    url = f"http://127.0.0.1:{server.port}"
    answers = []
    long = threading.Thread(
        target=lambda: answers.append(
            post(url + "/score", {"images": [encode_image(grey(9))], "rubric": ONE_CRITERION})
        )
    )
    long.start()
    assert backend.entered.wait(30)
    try:
        for _ in range(3):  # the judge is blocked inside the backend: /health must not wait for it
            status, health = get(url + "/health", timeout=10)
            assert status == 200 and health["queue"]["judging"] is True and health["queue"]["in_flight"] == 1
    finally:
        backend.gate.set()
    long.join(30)
    assert answers[0][0] == 200 and answers[0][1]["scores"] == [pytest.approx(9 / 255)]


def test_a_full_queue_gets_503_with_retry_after(reward_server):
    backend = GatedBackend()
    server = reward_server(judge=RubricJudge(backend), max_queue=2)
    url = f"http://127.0.0.1:{server.port}/score"
    body = {"images": [encode_image(grey(9))], "rubric": ONE_CRITERION}
    answers = []
    first = [threading.Thread(target=lambda: answers.append(post(url, body))) for _ in range(2)]
    for t in first:
        t.start()
    assert backend.entered.wait(30)
    deadline = time.monotonic() + 30
    while server.health()["queue"]["in_flight"] < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    req = urllib.request.Request(url, data=b"{}", headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(req, timeout=10)
    assert caught.value.code == 503 and int(caught.value.headers["Retry-After"]) >= 1
    assert "max_queue 2" in caught.value.read().decode()
    backend.gate.set()
    for t in first:
        t.join(30)
    assert [a[0] for a in answers] == [200, 200]
    assert post(url, body)[0] == 200  # room again
    assert server.health()["rejected"]["busy"] == 1


def test_a_request_over_its_timeout_gets_504_and_stops_being_judged(reward_server):
    backend = GatedBackend()
    server = reward_server(judge=RubricJudge(backend), request_timeout=1.0)
    url = f"http://127.0.0.1:{server.port}/score"
    n = 3 * CHUNK_QUESTIONS  # three chunks of one-criterion items
    status, answer = post(
        url, {"images": [encode_image(grey(i % 256)) for i in range(n)], "rubric": ONE_CRITERION}
    )
    assert status == 504 and "request_timeout" in answer["error"]
    backend.gate.set()  # the first chunk finishes; the other two are never asked
    deadline = time.monotonic() + 30
    while server.health()["queue"]["judging"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert backend.batches == [CHUNK_QUESTIONS]
    assert post(url, {"images": [encode_image(grey(9))], "rubric": ONE_CRITERION})[0] == 200


def test_a_client_that_leaves_stops_its_judging(reward_server):
    backend = GatedBackend()
    server = reward_server(judge=RubricJudge(backend))
    url = f"http://127.0.0.1:{server.port}/score"
    n = 3 * CHUNK_QUESTIONS
    body = {"images": [encode_image(grey(i % 256)) for i in range(n)], "rubric": ONE_CRITERION}
    with pytest.raises(OSError):  # the client gives up (its own timeout) while the first chunk is judged
        post(url, body, timeout=1.0)
    assert backend.entered.is_set()
    deadline = time.monotonic() + 30
    while server.health()["queue"]["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.01)  # the server noticed the disconnect and gave up on the request
    assert server.health()["rejected"]["gone"] == 1
    backend.gate.set()
    deadline = time.monotonic() + 30
    while server.health()["queue"]["judging"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert backend.batches == [CHUNK_QUESTIONS]


class _RaisingBackend(BrightnessBackend):
    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    def judge_criteria(self, queries):
        raise self.error


@pytest.mark.parametrize(
    "error, status",
    [
        (ValueError("editing rubric for 'x' needs the source image; pass `source=`"), 400),
        (JudgeUnavailableError("judge backend 'openai' unreachable: all 1 requests failed"), 503),
        (RuntimeError("backend returned 0 verdicts for 1 queries"), 500),
    ],
)
def test_judge_errors_become_one_line_answers(reward_server, error, status):
    server = reward_server(judge=RubricJudge(_RaisingBackend(error)))
    url = f"http://127.0.0.1:{server.port}"
    got, answer = post(url + "/score", {"images": [encode_image(grey(9))], "rubric": ONE_CRITERION})
    assert got == status and str(error) in answer["error"] and "\n" not in answer["error"]
    assert get(url + "/health")[0] == 200  # still serving
    got, answer = post(
        url + "/score", {"images": [encode_image(grey(9))], "rubric": RUBRIC, "sources": ["%%%"]}
    )
    assert got == 400 and answer["error"] == "sources[0]: not valid base64"


def test_the_command_line_checks_limits_and_the_token_variable(capsys, monkeypatch):
    from arr.cli import main

    monkeypatch.delenv("ARR_TEST_NO_SUCH_TOKEN", raising=False)
    assert main(["serve", "--port", "0", "--token-env", "ARR_TEST_NO_SUCH_TOKEN"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (
        "arr serve: error: --token-env ARR_TEST_NO_SUCH_TOKEN: that environment variable is not set or empty"
    )
    assert main(["serve", "--port", "0", "--max-queue", "0"]) == 2
    assert (
        capsys.readouterr().err.strip()
        == "arr serve: error: --max-queue must be a positive finite number, got 0"
    )
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    help_text = capsys.readouterr().out
    for flag in (
        "--token-env",
        "--max-pixels",
        "--max-group-size",
        "--request-timeout",
        "--shutdown-timeout",
    ):
        assert flag in help_text
