"""Training and evaluation questions for the shapes judge, labelled by the pixel judge.

Every question is rendered by the real judge templates (`arr.backends.chat.render_criterion` / `render_pair`: the
very text the hf and openai backends send), so the judge learns the questions it will be asked:
- `criterion_t2i` / `criterion_edit`: does one rubric criterion hold for an image (an edit)? "yes" or "no", a colon
  and the pixel judge's reason;
- `pair_t2i` / `pair_edit`: which of two images (edits) is better, as `{"rank": [r1, r2], "reason": ...}`, asked
  twice per pair: with the prompt's rubric and plainly, without one ("- (no criteria: judge by the prompt alone)",
  as `PlainJudgeReward` asks). Both are labelled by the pixel judge's rubric score; equal scores are a tie, answered
  [1, 1] when both images satisfy the whole rubric and [2, 2] when both fall short (the release's rank rewards
  tell these apart);
- `describe_t2i` (pretraining only): which objects an image shows, with their grid cells, as the pixel detector
  reads them. It is not a judging question; it teaches the language model to read the image tokens.

Images are what the judge meets while training policies: the shipped models' own samples at the RPO recipes'
settings (`SamplePool`, drawn once per split), exact renders of scenes that satisfy the prompt (the edit), the
adversarial corruptions of arr/shapes/pairs.py, and generation-like perturbations of both. The splits follow the
prompt (instruction) splits: training questions use training prompts only.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from arr.backends.base import CriterionQuery, PairQuery
from arr.backends.chat import ChatRequest, render_criterion, render_pair
from arr.backends.pixel import PixelBackend
from arr.reward_models.plain_judge import plain_rubric
from arr.rubrics import Rubric
from arr.shapes.edits import EditSpec, rubric_for_edit, sample_edit
from arr.shapes.pairs import EDIT_CORRUPTIONS, T2I_CORRUPTIONS, add_fragments, corrupt_edit, corrupt_t2i
from arr.shapes.pairs import perturb_image as _perturb
from arr.shapes.prompts import CATEGORY_WEIGHTS, PromptSpec, prompts_for_split, scene_for_prompt
from arr.shapes.scene import SHAPES, render

QUESTION_KINDS: tuple[str, ...] = ("criterion_t2i", "criterion_edit", "pair_t2i", "pair_edit", "describe_t2i")
# A pretraining-only question: list what the image shows, object by object with its grid cell, as the pixel
# detector reads it. Every token of the answer depends on the image, which teaches the language model to read the
# image tokens; yes/no answers alone give it one bit per question, and their text priors are found first.
DESCRIBE_QUESTION = (
    "Which objects does this image show? Name each with its colour, shape and grid cell (row, column)."
)
DESCRIBE_WEIGHT = 1.0  # loss weight of each answer token of a describe question
IMAGE_SOURCES: tuple[str, ...] = ("model", "render", "corrupt")
# How a question's image is drawn: a model sample most often (what RPO shows the judge), else an exact render of
# a correct scene or a corrupted one (the cases a policy may find that its base model rarely draws).
SOURCE_WEIGHTS: dict[str, float] = {"model": 0.6, "render": 0.2, "corrupt": 0.2}
PERTURB_PROB = 0.5  # renders get generation-like damage this often
DECISIVE_PAIR_PROB = 0.8  # a pair is redrawn (a few times) until its pixel scores differ, this often


@dataclass
class JudgedImage:
    """An image with what the pixel judge says of it against `rubric` (per criterion, and the score)."""

    image: Image.Image
    source: str  # "model", "render" or "corrupt"
    holds: list[bool]
    reasons: list[str]
    score: float


@dataclass
class Item:
    """A prompt (or edit) a question is about: its text, rubric, category and, for edits, the source image."""

    prompt: str
    rubric: Rubric
    category: str
    source_image: Image.Image | None = None


@dataclass
class Question:
    """One judge question and its answer. `label`: 1/0 (criterion holds), or for pairs 1/0/0.5 (Image 1 better,
    Image 2 better, tie). `group` ties together questions about the same images, which share a prompt prefix."""

    kind: str
    request: ChatRequest
    answer: str
    label: float
    group: int
    plain: bool = False
    category: str = ""
    image_source: str = ""
    query: CriterionQuery | PairQuery | None = None  # what a judge backend is asked (`request` renders it)
    meta: dict[str, Any] = field(default_factory=dict)
    # Loss weight of each answer token after the first (None: the batcher's `rest_weight`, shared out).
    token_weight: float | None = None


# ---- pools of model samples ---------------------------------------------------------------------------------------


@dataclass
class SamplePool:
    """The shipped models' samples: per text-to-image prompt, and per edit (its seed regenerates the `EditSpec`)."""

    t2i: dict[str, list[Image.Image]]
    edits: list[tuple[int, list[Image.Image]]]
    split: str

    def save(self, path: str | Path) -> None:
        prompts = sorted(self.t2i)
        arrays: dict[str, np.ndarray] = {
            "t2i_images": _stack([im for p in prompts for im in self.t2i[p]]),
            "t2i_counts": np.array([len(self.t2i[p]) for p in prompts], dtype=np.int64),
            "t2i_prompts": np.array(prompts),
            "edit_seeds": np.array([s for s, _ in self.edits], dtype=np.int64),
            "edit_counts": np.array([len(ims) for _, ims in self.edits], dtype=np.int64),
            "edit_images": _stack([im for _, ims in self.edits for im in ims]),
            "split": np.array(self.split),
        }
        tmp = Path(str(path) + ".tmp.npz")
        np.savez_compressed(tmp, **arrays)
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> SamplePool:
        data = np.load(path)
        images = [Image.fromarray(a) for a in data["t2i_images"]]
        t2i: dict[str, list[Image.Image]] = {}
        at = 0
        for prompt, n in zip(data["t2i_prompts"].tolist(), data["t2i_counts"].tolist(), strict=True):
            t2i[prompt] = images[at : at + n]
            at += n
        edit_images = [Image.fromarray(a) for a in data["edit_images"]]
        edits = []
        at = 0
        for seed, n in zip(data["edit_seeds"].tolist(), data["edit_counts"].tolist(), strict=True):
            edits.append((int(seed), edit_images[at : at + n]))
            at += n
        return cls(t2i, edits, str(data["split"]))


def _stack(images: Sequence[Image.Image]) -> np.ndarray:
    if not images:
        return np.zeros((0, 48, 48, 3), dtype=np.uint8)
    return np.stack([np.asarray(im.convert("RGB"), dtype=np.uint8) for im in images])


def seed_of(*parts: Any) -> int:
    """A 64-bit seed from any repr-able parts (stable across runs and machines)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "big")


def edit_for_seed(seed: int, split: str) -> EditSpec:
    """The edit a pool stores by seed."""
    return sample_edit(random.Random(seed), split)


def build_sample_pool(
    split: str,
    t2i_per_prompt: int,
    n_edits: int,
    per_edit: int,
    seed: int = 0,
    steps: int = 8,
    guidance: float = 1.0,
    edit_guidance: float = 1.5,
    batch_size: int = 64,
    progress: bool = False,
) -> SamplePool:
    """Sample the shipped t2i model for every prompt of `split` and the edit model for `n_edits` edits.

    Settings default to the RPO recipes' sampling (8 Euler steps; guidance 1.0 text-to-image, 1.5 editing), since
    that is what a judge sees while training. Seeds derive from (`seed`, split, prompt, index), so a pool is the same
    whenever it is rebuilt.
    """
    from tqdm.auto import tqdm

    from arr.shapes.models import load_pretrained
    from arr.shapes.sample import sample

    specs = prompts_for_split(split)
    jobs = [(s.text, i) for s in specs for i in range(t2i_per_prompt)]
    t2i: dict[str, list[Image.Image]] = {s.text: [] for s in specs}
    model = load_pretrained("t2i")
    bar = tqdm(total=len(jobs) + n_edits * per_edit, desc=f"sampling the {split} pool", disable=not progress)
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        seeds = [seed_of(seed, split, p, i) % 2**31 for p, i in chunk]
        images = sample(model, [p for p, _ in chunk], seeds, steps=steps, guidance=guidance)
        for (p, _), im in zip(chunk, images, strict=True):
            t2i[p].append(im)
        bar.update(len(chunk))
    edit_model = load_pretrained("edit") if n_edits else None
    edits: list[tuple[int, list[Image.Image]]] = []
    per_batch = max(1, batch_size // max(per_edit, 1))
    edit_seeds = [seed_of(seed, split, "edit", k) % 2**31 for k in range(n_edits)]
    for start in range(0, n_edits, per_batch):
        chunk = edit_seeds[start : start + per_batch]
        specs_ = [edit_for_seed(s, split) for s in chunk]
        texts = [e.text for e in specs_ for _ in range(per_edit)]
        sources = [render(e.source) for e in specs_ for _ in range(per_edit)]
        seeds = [seed_of(s, i) % 2**31 for s in chunk for i in range(per_edit)]
        images = sample(edit_model, texts, seeds, steps=steps, guidance=edit_guidance, source_images=sources)
        for k, s in enumerate(chunk):
            edits.append((s, images[k * per_edit : (k + 1) * per_edit]))
        bar.update(len(texts))
    bar.close()
    return SamplePool(t2i, edits, split)


# ---- drawing labelled images ----------------------------------------------------------------------------------------


class QuestionFactory:
    """Draws labelled questions of a split from a pool, deterministically for an `rng`."""

    def __init__(self, pool: SamplePool, split: str) -> None:
        if pool.split != split:
            raise ValueError(f"a {pool.split!r} sample pool cannot make {split!r} questions")
        self.pool = pool
        self.split = split
        self.pixel = PixelBackend()
        self.specs = [s for s in prompts_for_split(split) if pool.t2i.get(s.text)]
        if not self.specs:
            raise ValueError(f"the sample pool has no text-to-image samples for the {split!r} prompts")
        self.weights = [CATEGORY_WEIGHTS[s.category] / _category_size(s.category, split) for s in self.specs]
        self._groups = 0

    # -- items and images

    def t2i_item(self, rng: random.Random) -> tuple[Item, PromptSpec]:
        spec = rng.choices(self.specs, self.weights)[0]
        from arr.shapes.rubrics import rubric_for_prompt

        return Item(spec.text, rubric_for_prompt(spec), spec.category), spec

    def t2i_image(
        self, rng: random.Random, item: Item, spec: PromptSpec, source: str | None = None
    ) -> JudgedImage:
        source = source or _pick_source(rng)
        if source == "model":
            image = rng.choice(self.pool.t2i[spec.text])
        else:
            scene = scene_for_prompt(spec, rng)
            image = _drawn(scene, source, T2I_CORRUPTIONS, lambda c: corrupt_t2i(spec, scene, c, rng), rng)
        return self._judged(image, source, item)

    def edit_item(self, rng: random.Random) -> tuple[Item, EditSpec, list[Image.Image]]:
        seed, samples = rng.choice(self.pool.edits)
        edit = edit_for_seed(seed, self.split)
        source = render(edit.source)
        if rng.random() < PERTURB_PROB:
            source = _perturb(source, rng)
        return Item(edit.text, rubric_for_edit(edit), edit.kind, source), edit, samples

    def edit_image(
        self,
        rng: random.Random,
        item: Item,
        edit: EditSpec,
        samples: list[Image.Image],
        source: str | None = None,
    ) -> JudgedImage:
        source = source or _pick_source(rng)
        if source == "model" and samples:
            image = rng.choice(samples)
        else:
            source = "render" if source == "model" else source
            image = _drawn(edit.target, source, EDIT_CORRUPTIONS, lambda c: corrupt_edit(edit, c, rng), rng)
        return self._judged(image, source, item)

    def _judged(self, image: Image.Image, source: str, item: Item) -> JudgedImage:
        details = self.pixel.score_details(image, item.rubric, item.source_image)
        holds = [bool(c["holds"]) for c in details["criteria"]]
        reasons = [str(c["reason"]) for c in details["criteria"]]
        return JudgedImage(image, source, holds, reasons, float(details["score"]))

    # -- questions

    def criterion_questions(self, rng: random.Random, task: str) -> list[Question]:
        """Every criterion of one item's rubric, asked about one image (one group: they share a prefix)."""
        if task == "t2i":
            item, spec = self.t2i_item(rng)
            judged = self.t2i_image(rng, item, spec)
        else:
            item, edit, samples = self.edit_item(rng)
            judged = self.edit_image(rng, item, edit, samples)
        group = self._next_group()
        out = []
        for c, holds, reason in zip(item.rubric.criteria, judged.holds, judged.reasons, strict=True):
            query = CriterionQuery(item.prompt, judged.image, item.rubric, c, item.source_image)
            out.append(
                Question(
                    kind=f"criterion_{task}",
                    request=render_criterion(query),
                    answer=f"{'yes' if holds else 'no'}: {reason}",
                    label=1.0 if holds else 0.0,
                    group=group,
                    category=item.category,
                    image_source=judged.source,
                    query=query,
                    meta={"criterion": c.id},
                )
            )
        return out

    def pair_questions(self, rng: random.Random, task: str) -> list[Question]:
        """One ordered pair of images for one item, asked with its rubric and plainly (one group)."""
        if task == "t2i":
            item, spec = self.t2i_item(rng)
            draw = lambda: self.t2i_image(rng, item, spec)  # noqa: E731
        else:
            item, edit, samples = self.edit_item(rng)
            draw = lambda: self.edit_image(rng, item, edit, samples)  # noqa: E731
        first, second = draw(), draw()
        if rng.random() < DECISIVE_PAIR_PROB:
            for _ in range(4):
                if first.score != second.score:
                    break
                second = draw()
        group = self._next_group()
        return [
            self._pair_question(rng, task, item, first, second, group, plain=False),
            self._pair_question(rng, task, item, first, second, group, plain=True),
        ]

    def _pair_question(
        self,
        rng: random.Random,
        task: str,
        item: Item,
        first: JudgedImage,
        second: JudgedImage,
        group: int,
        plain: bool,
    ) -> Question:
        rubric = plain_rubric(item.prompt, item.rubric.task) if plain else item.rubric
        query = PairQuery(item.prompt, (first.image, second.image), rubric, item.source_image)
        if first.score > second.score:
            rank, label = [1, 2], 1.0
        elif first.score < second.score:
            rank, label = [2, 1], 0.0
        else:  # equal ranks, as the template asks: [1, 1] when both are right, [2, 2] when both fall short
            rank, label = ([1, 1] if first.score == 1.0 else [2, 2]), 0.5
        reason = _pair_reason(item.rubric, first, second, plain, edit=task == "edit")
        return Question(
            kind=f"pair_{task}",
            request=render_pair(query),
            answer=f'{{"rank": [{rank[0]}, {rank[1]}], "reason": "{reason}"}}',
            label=label,
            group=group,
            plain=plain,
            category=item.category,
            image_source=f"{first.source}/{second.source}",
            query=query,
        )

    def describe_questions(self, rng: random.Random) -> list[Question]:
        """One image of a text-to-image item, asked what it shows (`DESCRIBE_QUESTION`); one group."""
        item, spec = self.t2i_item(rng)
        judged = self.t2i_image(rng, item, spec)
        request = ChatRequest(
            "text",
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "image", "image": judged.image},
                        {"type": "text", "text": DESCRIBE_QUESTION},
                    ],
                }
            ],
            (),
            "",
        )
        return [
            Question(
                kind="describe_t2i",
                request=request,
                answer=describe_answer(judged.image),
                label=float("nan"),
                group=self._next_group(),
                category=item.category,
                image_source=judged.source,
                token_weight=DESCRIBE_WEIGHT,
            )
        ]

    def questions(self, rng: random.Random, kind: str) -> list[Question]:
        """One group of questions of `kind` (one of `QUESTION_KINDS`)."""
        if kind not in QUESTION_KINDS:
            raise ValueError(f"unknown question kind {kind!r}; expected one of {QUESTION_KINDS}")
        if kind == "describe_t2i":
            return self.describe_questions(rng)
        what, task = kind.split("_")
        return self.criterion_questions(rng, task) if what == "criterion" else self.pair_questions(rng, task)

    def stream(self, rng: random.Random, kind: str) -> Iterator[list[Question]]:
        while True:
            yield self.questions(rng, kind)

    def _next_group(self) -> int:
        self._groups += 1
        return self._groups


def describe_answer(image: Image.Image) -> str:
    """What the pixel detector reads in `image`: "red circle at (1, 3); blue square at (4, 2)" (rows and columns
    counted from 1, objects in reading order), "fragment" for a piece too small to be an object, "unclear shape"
    for a blob of no clear shape, "nothing" if empty."""
    from arr.shapes.detect import analyze

    parts = []
    for det in analyze(image).detections:
        shape = det.shape if det.shape in (*SHAPES, "fragment") else "unclear shape"
        parts.append(f"{det.color} {shape} at ({det.cell[0] + 1}, {det.cell[1] + 1})")
    return "; ".join(parts) or "nothing"


def _category_size(category: str, split: str) -> int:
    return len(prompts_for_split(split, category))


def _pick_source(rng: random.Random) -> str:
    return rng.choices(IMAGE_SOURCES, [SOURCE_WEIGHTS[s] for s in IMAGE_SOURCES])[0]


def _drawn(scene, source: str, corruptions, corrupt, rng: random.Random) -> Image.Image:
    """The image of `scene` ("render"), or of the first of `corruptions`, tried in random order, that applies to it
    ("corrupt"; `corrupt(name)` returns the corrupted scene or None); then a generation-like perturbation at times."""
    fragments = False
    if source == "corrupt":
        for corruption in rng.sample(corruptions, len(corruptions)):
            if (bad := corrupt(corruption)) is not None:
                scene, fragments = bad, corruption == "fragments"
                break
    image = render(scene)
    if fragments:
        image = add_fragments(image, scene, rng)
    if rng.random() < PERTURB_PROB:
        image = _perturb(image, rng)
    return image


def _pair_reason(rubric: Rubric, first: JudgedImage, second: JudgedImage, plain: bool, edit: bool) -> str:
    """A short reason the judge learns to give: which image fails which criteria (by id), or who follows better."""
    what = "edit" if edit else "image"
    if plain:
        if first.score == second.score:
            return f"Both {what}s follow the {'instruction' if edit else 'prompt'} equally well."
        better = 1 if first.score > second.score else 2
        return f"Image {better} follows the {'instruction' if edit else 'prompt'} better."
    failed = [[c.id for c, h in zip(rubric.criteria, j.holds, strict=True) if not h] for j in (first, second)]
    if first.score == second.score:
        if failed[0] != failed[1]:
            return "Both satisfy the criteria equally well."
        return f"Both fail {', '.join(failed[0])}." if failed[0] else "Both satisfy every criterion."
    worse = 2 if first.score > second.score else 1
    return f"Image {worse} fails {', '.join(failed[worse - 1]) or 'more'}."


def fixed_questions(pool: SamplePool, split: str, kind: str, n: int, seed: int = 0) -> list[Question]:
    """The first `n` questions of `kind` drawn with `seed`: a fixed evaluation set (whole groups; may exceed `n`
    by less than one group, then cut to `n`)."""
    factory = QuestionFactory(pool, split)
    rng = random.Random(seed_of("fixed", kind, seed))
    out: list[Question] = []
    while len(out) < n:
        out.extend(factory.questions(rng, kind))
    return out[:n]


__all__ = [
    "DESCRIBE_QUESTION",
    "IMAGE_SOURCES",
    "QUESTION_KINDS",
    "describe_answer",
    "Item",
    "JudgedImage",
    "Question",
    "QuestionFactory",
    "SamplePool",
    "build_sample_pool",
    "edit_for_seed",
    "fixed_questions",
    "seed_of",
]
