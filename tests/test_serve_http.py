"""The reward server at the HTTP layer, tried as an attacker and as a careless client would: malformed framing,
chunked bodies and request smuggling, hostile JSON, query strings, slow clients, missing tokens and a burst of
200 connections. Each case gets one JSON answer (or a clean disconnect) and leaves the server serving.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time

from arr import RubricJudge, load_backend
from arr.serve import RewardServer, encode_image, is_loopback
from arr.shapes.pairs import make_pairs
from tests.serve_client import get, post, raw_exchange, responses

PAIR = make_pairs(1, seed=5, split="heldout", task="t2i")[0]
SCORE_BODY = {"images": [encode_image(PAIR.image_a)], "rubric": PAIR.rubric.to_dict()}
WANT_SCORE = RubricJudge(load_backend("pixel")).score(PAIR.rubric.prompt, PAIR.image_a, PAIR.rubric).score


def _request(method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    head = [f"{method} {path} HTTP/1.1", "Host: test", "Connection: close"]
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def _chunked(data: bytes, size: int = 100) -> bytes:
    parts = [
        b"%x\r\n%s\r\n" % (len(data[i : i + size]), data[i : i + size]) for i in range(0, len(data), size)
    ]
    return b"".join(parts) + b"0\r\n\r\n"


def _healthy(server: RewardServer) -> None:
    status, health = get(f"http://127.0.0.1:{server.port}/health")
    assert status == 200 and health["status"] == "ok"


def test_malformed_framing_gets_one_json_400(reward_server):
    server = reward_server()
    body = json.dumps(SCORE_BODY).encode()
    cases = {
        "non-numeric Content-Length": _request("POST", "/score", body, {"Content-Length": "abc"}),
        "negative Content-Length": _request("POST", "/score", body, {"Content-Length": "-5"}),
        "two different Content-Lengths": _request(
            "POST", "/score", body, {"Content-Length": str(len(body)), "Content-length": "3"}
        ),
        "broken chunk size": _request(
            "POST", "/score", b"zz\r\nabc\r\n0\r\n\r\n", {"Transfer-Encoding": "chunked"}
        ),
        "garbage request line": b"\x16\x03\x01 hello\r\n\r\n",
    }
    for name, data in cases.items():
        got = responses(raw_exchange(server.port, data))
        assert len(got) == 1, (name, got)
        status, answer = got[0]
        assert status == 400 and isinstance(answer, dict) and answer["error"], (name, got)
    _healthy(server)


def test_chunked_bodies_are_read_as_bodies_not_as_requests(reward_server):
    server = reward_server()
    body = json.dumps(SCORE_BODY).encode()
    got = responses(
        raw_exchange(
            server.port, _request("POST", "/score", _chunked(body), {"Transfer-Encoding": "chunked"})
        )
    )
    assert [s for s, _ in got] == [200] and got[0][1]["scores"] == [WANT_SCORE]
    # Smuggling: a request hidden in a chunked body (and one with both framings) must never run on its own.
    hidden = b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n"
    got = responses(
        raw_exchange(
            server.port, _request("POST", "/score", _chunked(hidden), {"Transfer-Encoding": "chunked"})
        )
    )
    assert [s for s, _ in got] == [400] and "not JSON" in got[0][1]["error"]
    both = _request(
        "POST", "/score", _chunked(hidden), {"Transfer-Encoding": "chunked", "Content-Length": "5"}
    )
    got = responses(raw_exchange(server.port, both))
    assert len(got) == 1 and got[0][0] == 400 and "status" not in (got[0][1] or {})
    assert server.health()["requests"] == 1


HOSTILE_JSON = [
    (b"[" * 100_000 + b"]" * 100_000, "nests deeper"),
    (b'{"images": [], "rubric": {"prompt": "p", "x": ' + b"[" * 40 + b"]" * 40 + b"}}", "nests deeper"),
    (b'{"images": [], "rubric": NaN}', "NaN"),
    (b'{"groups": [["a", "b"]], "rubric": {}, "win": Infinity}', "Infinity"),
    (b'{"groups": [["a", "b"]], "rubric": {}, "win": 1e999}', "finite"),
    (b'{"images": [], "rubric": {}, "x": ' + b"9" * 5000 + b"}", "not usable JSON"),
    (b"\xff\xfe\x00garbage", "JSON"),
    (b"[1, 2]", "expected a JSON object"),
]


def test_hostile_json_gets_400_naming_the_problem(reward_server):
    server = reward_server()
    for body, message in HOSTILE_JSON:
        request = _request("POST", "/score", body, {"Content-Length": str(len(body))})
        got = responses(raw_exchange(server.port, request))
        assert len(got) == 1 and got[0][0] == 400 and message in got[0][1]["error"], (body[:50], got)
    _healthy(server)


def test_non_finite_and_non_numeric_rewards_are_refused(reward_server):
    server = reward_server()
    url = f"http://127.0.0.1:{server.port}/group"
    group = {
        "groups": [[encode_image(PAIR.image_a), encode_image(PAIR.image_b)]],
        "rubric": PAIR.rubric.to_dict(),
    }
    for value in ("nan", "inf", True, None, [1]):
        status, answer = post(url, {**group, "win": value})
        assert status == 400 and answer["error"].startswith("win: expected"), (value, answer)
    status, answer = post(url, {**group, "lose": 10**400})
    assert status == 400 and "lose" in answer["error"]
    status, answer = post(url, {**group, "win": 2, "lose": -1})
    assert status == 200 and sorted(answer["rewards"][0]) == [-1.0, 2.0]


def test_query_strings_and_trailing_slashes_are_ignored(reward_server):
    server = reward_server()
    base = f"http://127.0.0.1:{server.port}"
    assert get(base + "/health?verbose=1")[0] == 200
    status, answer = post(base + "/score/?debug=true&x=%00", SCORE_BODY)
    assert status == 200 and answer["scores"] == [WANT_SCORE]
    assert get(base + "/score")[0] == 405 and post(base + "/nowhere?x=1", {})[0] == 404


def test_a_slow_client_is_cut_off_and_others_are_served(reward_server):
    server = reward_server(read_timeout=1.0)
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as slow:
        slow.sendall(b"POST /score HTTP/1.1\r\nHost: test\r\nContent-Length: 1000\r\n\r\n{")  # then nothing
        _healthy(server)  # served while the slow client holds its connection
        reply = b""
        while chunk := slow.recv(4096):  # the server closes the connection; a timeout here fails the test
            reply += chunk
    assert [s for s, _ in responses(reply)] == [408]
    slowloris = b"GET /health HTTP/1.1\r\nHost: test\r\nX-Pad: " + b"a" * 400  # one byte at a time
    sent = 0
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as slow:
        try:
            for byte in slowloris:
                slow.sendall(bytes([byte]))
                sent += 1
                time.sleep(0.02)
        except OSError:  # the server closed the connection: what should happen, after read_timeout
            pass
    assert sent < len(slowloris)
    _healthy(server)


def test_bearer_token_is_required_and_never_shown(reward_server, caplog):
    token = "tok-" + "q7" * 16
    with caplog.at_level(logging.DEBUG):
        server = reward_server(token=token)
        base = f"http://127.0.0.1:{server.port}"
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": token},
            {"Authorization": f"Basic {token}"},
        ):
            status, answer = post(base + "/score", SCORE_BODY, headers=headers)
            assert status == 401 and "bearer token" in answer["error"] and token not in json.dumps(answer)
            assert get(base + "/health", headers=headers)[0] == 401
        auth = {"Authorization": f"Bearer {token}"}
        status, answer = post(base + "/score", SCORE_BODY, headers=auth)
        assert status == 200 and answer["scores"] == [WANT_SCORE]
        status, health = get(base + "/health", headers=auth)
        assert status == 200 and health["rejected"]["unauthorized"] == 8
    assert token not in json.dumps(health) and token not in repr(server.app) and token not in caplog.text


def test_binding_beyond_loopback_without_a_token_warns(caplog):
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3") and not is_loopback("example.org")
    for token, warned in ((None, True), ("secret-token", False)):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="arr.serve"):
            server = RewardServer(RubricJudge(load_backend("pixel")), "0.0.0.0", 0, token=token)
            server.start()
            server.shutdown()
        assert ("without a token" in caplog.text) is warned, caplog.text


def test_200_clients_at_once_are_all_answered(reward_server):
    server = reward_server()
    n = 200
    barrier = threading.Barrier(n)
    results: list[object] = [None] * n

    def client(i: int) -> None:
        barrier.wait()
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                reply = b""
                while chunk := sock.recv(65536):
                    reply += chunk
            results[i] = responses(reply)[0][0]
        except OSError as e:  # connection refused or reset: what a 5-connection backlog did
            results[i] = type(e).__name__

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200] * n, {r: results.count(r) for r in set(map(str, results))}
