"""Cache keys for a batch hash each rubric and each image once, however many questions share them.

Before, every criterion re-serialised its whole rubric and re-hashed its image: scoring one image against a rubric of
N criteria cost O(N^2) (800 criteria took 96 s behind the reward server). The counts below are exact.
"""

from __future__ import annotations

from PIL import Image

import arr.cache
from arr import RubricJudge, load_backend
from arr.cache import JudgmentKeys, judgment_key
from arr.judge import PairItem, ScoreItem
from arr.rubrics import Criterion, Rubric


def _rubric(n: int, prompt: str = "a red circle") -> Rubric:
    return Rubric(prompt, [Criterion(f"c{i}", f"criterion number {i}") for i in range(n)])


def _count_calls(monkeypatch):
    calls = {"to_dict": 0, "image_digest": 0}
    to_dict, digest = Rubric.to_dict, arr.cache.image_digest

    def counted_to_dict(self):
        calls["to_dict"] += 1
        return to_dict(self)

    def counted_digest(image):
        calls["image_digest"] += 1
        return digest(image)

    monkeypatch.setattr(Rubric, "to_dict", counted_to_dict)
    monkeypatch.setattr(arr.cache, "image_digest", counted_digest)
    return calls


def test_scoring_hashes_each_rubric_and_image_once(tmp_path, monkeypatch):
    rubrics = [_rubric(300), _rubric(50, "a blue square")]
    images = [Image.new("RGB", (16, 16), c) for c in ("red", "blue", "green")]
    judge = RubricJudge(load_backend("pixel"), cache=tmp_path / "judge.sqlite")
    calls = _count_calls(monkeypatch)
    # 3 images x 2 rubrics = 6 items and 1050 criterion questions; an image shared by two rubrics is one digest.
    items = [ScoreItem(r.prompt, im, r) for im in images for r in rubrics]
    judge.score_many(items)
    assert calls == {"to_dict": 2, "image_digest": 3}
    assert judge.stats.calls == 3 * 350

    calls.update(to_dict=0, image_digest=0)
    judge.compare_many([PairItem(r.prompt, images[0], images[1], r) for r in rubrics])  # both orders
    assert calls == {"to_dict": 2, "image_digest": 2}


def test_batch_keys_equal_single_keys_and_tell_questions_apart():
    rubric, other = _rubric(3), _rubric(3, "a blue square")
    red, blue = Image.new("RGB", (8, 8), "red"), Image.new("RGB", (8, 8), "blue")
    keys = JudgmentKeys("pixel:v1")
    questions = [
        dict(kind="pair", rubric=rubric, prompt="p", images=[red, blue], source=None),
        dict(kind="pair", rubric=rubric, prompt="p", images=[blue, red], source=None),
        dict(kind="pair", rubric=other, prompt="p", images=[red, blue], source=None),
        dict(kind="pair", rubric=rubric, prompt="p", images=[red, blue], source=red),
        dict(kind="criterion", rubric=rubric, prompt="p", images=[red], source=None, criterion_id="c0"),
        dict(kind="criterion", rubric=rubric, prompt="p", images=[red], source=None, criterion_id="c1"),
        dict(kind="criterion", rubric=rubric, prompt="q", images=[red], source=None, criterion_id="c1"),
    ]
    batch = [keys.key(**q) for q in questions]
    assert batch == [judgment_key(backend_fingerprint="pixel:v1", **q) for q in questions]
    assert len(set(batch)) == len(batch)
    # The same rubric and pixels in new objects give the same key (digests are of content, not identity).
    copy = Rubric.from_dict(rubric.to_dict())
    assert keys.key(**{**questions[0], "rubric": copy, "images": [red.copy(), blue.copy()]}) == batch[0]
    assert judgment_key(backend_fingerprint="other", **questions[0]) != batch[0]
