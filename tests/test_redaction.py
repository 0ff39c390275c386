"""API keys never leave a judge backend: not whole, not cut in half by a shortened message, not inside an answer.

The key is placed at every position around the point where server messages are shortened, and inside judge answers
(parseable, unparseable, and in the raw text kept in verdicts and the cache). No run of 8 of its characters may
appear in any verdict field, log line or error.
"""

from __future__ import annotations

import logging
import random
import string

import httpx
import pytest
from PIL import Image

from arr import RubricJudge
from arr.backends.base import CriterionQuery, PairQuery
from arr.backends.chat import redact
from arr.backends.openai import _MESSAGE_CHARS, OpenAIBackend
from arr.rubrics import Criterion, Rubric

KEY = "sk-test-" + "".join(random.Random(7).choices(string.ascii_letters + string.digits, k=24))
RUBRIC = Rubric("a red circle", [Criterion("c1", "there is a red circle")])
RED = Image.new("RGB", (8, 8), "red")
BLUE = Image.new("RGB", (8, 8), "blue")


def leaked(text: str, key: str = KEY, n: int = 8) -> list[str]:
    """Every n-character piece of `key` found in `text`."""
    return [key[i : i + n] for i in range(len(key) - n + 1) if key[i : i + n] in text]


def _backend(handler, monkeypatch, **kwargs) -> OpenAIBackend:
    monkeypatch.setenv("ARR_TEST_REDACT_KEY", KEY)
    kwargs = {
        "max_retries": 0,
        "backoff": 0.0,
        "timeout": 2.0,
        "api_key_env": "ARR_TEST_REDACT_KEY",
        **kwargs,
    }
    return OpenAIBackend(
        "judge", base_url="http://judge.test/v1", transport=httpx.MockTransport(handler), **kwargs
    )


def _completion(text: str) -> dict:
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None}]}


def test_redact_matches_a_character_by_character_reference():
    def reference(text: str, secret: str) -> str:
        n = min(8, len(secret))
        covered = [False] * len(text)
        for i in range(len(text) - n + 1):
            if text[i : i + n] in secret:
                covered[i : i + n] = [True] * n
        out, i = [], 0
        while i < len(text):
            if covered[i]:
                while i < len(text) and covered[i]:
                    i += 1
                out.append("***")
            else:
                out.append(text[i])
                i += 1
        return "".join(out)

    rng = random.Random(0)
    for _ in range(5000):
        secret = "".join(rng.choices("ab", k=rng.randint(1, 12)))
        text = "".join(rng.choices("ab*c", k=rng.randint(0, 30)))
        assert redact(text, secret) == reference(text, secret), (text, secret)
    assert redact(f"key={KEY}.", KEY) == "key=***."
    assert redact(f"cut: {KEY[:13]}", KEY) == "cut: ***"  # a key cut short by the server
    assert redact(f"{KEY[-9:]} tail", KEY) == "*** tail"
    assert redact("nothing here", KEY) == "nothing here" and redact("x", None) == "x"


@pytest.mark.parametrize("status", [401, 500])
def test_a_key_at_every_cut_position_never_shows(status, monkeypatch, caplog):
    """HTTP errors quote the server's message shortened to _MESSAGE_CHARS: the key straddles that cut at every
    offset (4xx fails at once; 5xx goes through the retry path and its warning)."""
    start = max(0, _MESSAGE_CHARS - len(KEY) - 2)
    offsets = range(start, _MESSAGE_CHARS + 2)
    message = {"text": ""}

    def handler(request):
        return httpx.Response(status, json={"error": {"message": message["text"]}})

    backend = _backend(handler, monkeypatch)
    query = [CriterionQuery(RUBRIC.prompt, RED, RUBRIC, RUBRIC.criteria[0])]
    with caplog.at_level(logging.DEBUG):
        for offset in offsets:
            message["text"] = "x" * offset + KEY + " was rejected"
            (v,) = backend.judge_criteria(query)
            assert v.prob_yes is None and f"HTTP {status}" in v.error
            assert leaked(v.error) == [], (offset, v.error[-60:])
    assert leaked(caplog.text) == []
    assert len(offsets) > len(KEY)


def test_a_key_in_an_unexpected_body_never_shows(monkeypatch):
    for offset in range(160, 205):
        text = "<html>" + "x" * offset + KEY + "</html>"
        backend = _backend(lambda request, text=text: httpx.Response(200, text=text), monkeypatch)
        (v,) = backend.judge_criteria([CriterionQuery(RUBRIC.prompt, RED, RUBRIC, RUBRIC.criteria[0])])
        assert "unexpected response" in v.error and leaked(v.error) == [], offset


@pytest.mark.parametrize(
    "answer",
    [
        f"I cannot judge this; the key {KEY} is not mine",  # unparseable: quoted in the error
        f'{{"rank": [1, 2], "reason": "because {KEY}"}}',  # parseable: in reason and raw
        "x" * 100 + KEY,  # unparseable, with the key across the 120-character quote
    ],
)
def test_a_key_inside_a_judge_answer_never_shows(answer, monkeypatch, tmp_path):
    backend = _backend(lambda request: httpx.Response(200, json=_completion(answer)), monkeypatch)
    pair = backend.judge_pairs([PairQuery(RUBRIC.prompt, (RED, BLUE), RUBRIC)])[0]
    crit = backend.judge_criteria([CriterionQuery(RUBRIC.prompt, RED, RUBRIC, RUBRIC.criteria[0])])[0]
    for v in (pair, crit):
        for field in (v.reason, v.raw, v.error or ""):
            assert leaked(field) == [], field
    judge = RubricJudge(backend, cache=tmp_path / "judge.sqlite", swap=False)
    jd = judge.compare(RUBRIC.prompt, RED, BLUE, RUBRIC)
    assert all(leaked(s) == [] for s in [*jd.reasons, *jd.raw, jd.error or ""])
    judge.cache.close()
    assert leaked((tmp_path / "judge.sqlite").read_bytes().decode("latin-1")) == []
