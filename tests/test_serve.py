"""The reward server: a real `python -m arr serve` process on 127.0.0.1, driven by concurrent clients.

Checks that answers equal direct library calls, that repeated questions come from the judgment cache, that bad
input gets a 400 naming the field, that SIGTERM shuts the server down cleanly (exit code 0), and that a SIGTERM
during a batch longer than --shutdown-timeout still exits by the deadline.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from arr import RubricJudge, load_backend
from arr.judge import PairItem, ScoreItem
from arr.rewards import RubricPairwiseReward
from arr.serve import encode_image
from arr.shapes.pairs import make_pairs
from tests.fakes import grey

pytestmark = pytest.mark.slow  # every test here starts a server process
REPO = Path(__file__).resolve().parents[1]


def post(url: str, body: dict, timeout: float = 30.0) -> tuple[int, dict]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    cache = tmp_path_factory.mktemp("serve") / "judge.sqlite"
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "arr", "serve", "--backend", "pixel", "--port", "0", "--cache", str(cache)],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    line = proc.stderr.readline()
    assert "listening on http://127.0.0.1:" in line, line
    url = line.split("listening on ")[1].split()[0]
    deadline = time.monotonic() + 20
    while True:
        try:
            get(url + "/health")
            break
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.1)
    yield url, proc, cache
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def pairs():
    return make_pairs(12, seed=5, split="heldout", task="t2i")


def test_concurrent_requests_match_library_calls(server, pairs):
    url, _, _ = server
    judge = RubricJudge(load_backend("pixel"))
    images = [p.image_a for p in pairs] + [p.image_b for p in pairs]
    rubrics = [p.rubric for p in pairs] * 2
    want_scores = [
        r.score
        for r in judge.score_many([ScoreItem(r.prompt, im, r) for im, r in zip(images, rubrics, strict=True)])
    ]
    want_pairs = judge.compare_many([PairItem(p.prompt, p.image_a, p.image_b, p.rubric) for p in pairs])
    groups = [[p.image_a, p.image_b, p.chosen] for p in pairs[:4]]
    want_group = RubricPairwiseReward(judge)(
        prompts=[p.prompt for p in pairs[:4]], images=groups, rubrics=[p.rubric for p in pairs[:4]]
    ).rewards

    score_body = {"images": [encode_image(im) for im in images], "rubrics": [r.to_dict() for r in rubrics]}
    compare_body = {
        "images_a": [encode_image(p.image_a) for p in pairs],
        "images_b": [encode_image(p.image_b) for p in pairs],
        "rubrics": [p.rubric.to_dict() for p in pairs],
    }
    group_body = {
        "groups": [[encode_image(im) for im in g] for g in groups],
        "rubrics": [p.rubric.to_dict() for p in pairs[:4]],
    }
    # flow_grpo style: images + per-image meta_datas, posted to the root URL.
    flow_body = {
        "images": [encode_image(im) for im in images[:6]],
        "meta_datas": [{"prompt": r.prompt, "rubric": r.to_dict()} for r in rubrics[:6]],
    }
    jobs = [("/score", score_body), ("/compare", compare_body), ("/group", group_body), ("/", flow_body)] * 4
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda job: post(url + job[0], job[1]), jobs))
    for (path, _), (status, body) in zip(jobs, answers, strict=True):
        assert status == 200, body
        if path == "/score":
            assert body["scores"] == want_scores and body["rewards"] == want_scores
            assert all(e is None for e in body["errors"])
        elif path == "/compare":
            assert body["preferred"] == [v.preferred for v in want_pairs]
            assert body["prob_a"] == [v.prob_a for v in want_pairs]
        elif path == "/group":
            assert body["rewards"] == want_group
        else:
            assert body["scores"] == want_scores[:6]
    # The labels are right by construction and the pixel judge is exact.
    assert [v.preferred for v in want_pairs] == [0 if p.winner == "A" else 1 for p in pairs]

    health = get(url + "/health")
    assert health["status"] == "ok" and health["backend"] == "pixel"
    judge_stats = health["judge"]
    # Each body was sent 4 times: at least the last 3 copies of /score were answered from the cache, and the
    # backend saw each distinct question about once (the cache sits behind the server's lock).
    questions = sum(len(r.criteria) for r in rubrics)
    assert judge_stats["cached"] >= 3 * questions
    assert judge_stats["calls"] <= questions + 2 * len(pairs) + 2 * 3 * len(groups)
    assert health["requests"] == len(jobs)


def test_bad_requests_get_400_with_the_field(server, pairs):
    url, _, _ = server
    rubric = pairs[0].rubric.to_dict()
    cases = [
        ("/score", {"images": ["not base64!"], "rubric": rubric}, "images[0]: not valid base64"),
        ("/score", {"images": [encode_image(pairs[0].image_a)]}, "no rubric"),
        (
            "/score",
            {"images": [encode_image(pairs[0].image_a)], "rubrics": [rubric, rubric]},
            "expected 1 entries",
        ),
        (
            "/compare",
            {"images_a": [], "images_b": [encode_image(pairs[0].image_a)], "rubric": rubric},
            "images_a has 0",
        ),
        ("/score", {"images": [encode_image(pairs[0].image_a)], "rubric": {"criteria": 5}}, "rubrics[0]"),
    ]
    for path, body, message in cases:
        status, answer = post(url + path, body)
        assert status == 400 and message in answer["error"], answer
    status, answer = post(url + "/nowhere", {})
    assert status == 404


def test_sigterm_shuts_down_cleanly(server):
    url, proc, cache = server
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0
    assert "stopped after" in proc.stderr.read()
    with pytest.raises(OSError):
        get(url + "/health")
    # The judgments survive the server: a new judge on the same cache answers without asking the backend.
    from arr.cache import JudgmentCache

    with JudgmentCache(cache) as c:
        assert len(c) > 0


def test_sigterm_during_a_long_batch_exits_by_the_deadline(tmp_path):
    """A batch of ~50 s of judging, SIGTERM a moment in: the server waits --shutdown-timeout (2 s) for it, abandons it
    at the next chunk boundary and exits 0. Without a deadline the process would judge the whole batch first."""
    env = {
        **os.environ,
        "OMP_WAIT_POLICY": "PASSIVE",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "arr", "serve", "--backend", "tests.fakes:SlowBackend", "--port", "0",
         "--shutdown-timeout", "2", "--cache", str(tmp_path / "judge.sqlite")],
        stderr=subprocess.PIPE, text=True, env=env, cwd=REPO,
    )  # fmt: skip
    try:
        url = proc.stderr.readline().split("listening on ")[1].split()[0]
        body = {
            "images": [encode_image(grey(i % 256)) for i in range(1000)],
            "rubric": {"prompt": "p", "criteria": [{"id": "c", "text": "bright"}]},
        }
        outcome = []

        def client():
            try:
                outcome.append(post(url + "/score", body, timeout=120)[0])
            except OSError as e:
                outcome.append(type(e).__name__)

        t = threading.Thread(target=client)
        t.start()
        deadline = time.monotonic() + 60
        while not get(url + "/health")["queue"]["judging"]:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0  # 2 s of grace plus the step in hand (<= 13 s), not the ~50 s batch
        assert "abandoned" in proc.stderr.read()
        t.join(30)
        assert outcome == [503]  # the abandoned request was told the server is going away, not left hanging
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_load_bench_runs_and_loses_nothing(tmp_path):
    out = tmp_path / "serve_load.json"
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "bench/serve_load.py", "--label", "t", "--clients", "20", "--long-groups", "1",
           "--long-group-size", "6", "--out", str(out)]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    row = json.loads(out.read_text())
    assert row["server_code"] == str(REPO / "arr" / "__init__.py")
    assert row["burst"]["answered"] == {"200": 20} and row["burst"]["lost_total"] == 0
    assert row["health_during_long_request"]["long_request_status"] == 200 and row["server_exit_code"] == 0
