"""RubricJudge: pairwise, pointwise and listwise rubric judgments on top of any judge backend.

The judge owns what makes rubric rewards trustworthy rather than how a model is asked: it asks pairwise questions in
both image orders (position bias flips about a third of a plain VLM judge's verdicts), turns per-criterion
probabilities into a score, caches every answer, and counts calls and seconds so training can report judge cost.
Backends (arr/backends/) only answer single questions in the order given.

Pointwise scores follow `Rubric.score` (the formula: arr/rubrics/scoring.py). A criterion the judge answers "unknown"
(cannot assess) is scored by `na_policy` and listed in `ScoreJudgment.cannot_assess`; a failed question (a transport
error, an unreadable answer) leaves the sample without a score. With an `EnsembleBackend`, each judgment also holds
every member's own judgment and how much the members agree.

What is judged is an image, or a text (a `str`: a language model's response, judged against the rubric the same
way, in both orders) with a backend that judges texts (hf, openai); the fields keep their image names.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from arr.agreement import fleiss_kappa, krippendorff_alpha, pairwise_agreement
from arr.backends.base import (
    Candidate,
    CriterionQuery,
    CriterionVerdict,
    JudgeBackend,
    PairQuery,
    PairVerdict,
)
from arr.rubrics import Criterion, Rubric
from arr.rubrics.scoring import check_na_policy


@dataclass
class PairJudgment:
    """The verdict on (image_a, image_b).

    `preferred` is 0 (image_a), 1 (image_b) or None (a tie, an order-inconsistent verdict, or a failure: see
    `error`). `prob_a` is P(image_a is better), averaged over the orders asked.
    """

    preferred: int | None
    prob_a: float | None
    consistent: bool
    reasons: list[str] = field(default_factory=list)
    raw: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ScoreJudgment:
    """A pointwise judgment: `score` in [0, 1] and, per criterion id, the probability that it holds (its credit for
    an ordinal criterion; None where there is no value).

    `cannot_assess` lists the criteria the judge answered "unknown" for, scored by the judge's cannot-assess policy.
    `score` is None when a question failed (see `errors`: a partial score would silently change the rubric's
    meaning) or when nothing could be scored (every criterion cannot be assessed, under the "skip" policy).
    `raw_score` is the unnormalised sum of weight * value. Ensembles add `judges`, each member's own judgment by
    member name, and `agreement` between them over this sample's criteria (`"pairwise"`: the fraction of member
    pairs giving the same answer, `"fleiss_kappa"`: the same corrected for chance; answers are compared as yes / no
    / level / unknown).
    """

    score: float | None
    criteria: dict[str, float | None]
    reasons: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    cannot_assess: list[str] = field(default_factory=list)
    raw_score: float | None = None
    judges: dict[str, ScoreJudgment] = field(default_factory=dict)
    agreement: dict[str, float | None] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.score is not None

    @property
    def judge_scores(self) -> dict[str, float | None]:
        """Each ensemble member's own score of this sample (empty for a single judge)."""
        return {name: j.score for name, j in self.judges.items()}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class JudgeStats:
    """Cost counters: backend questions asked, answers served from cache, failures, criteria the judge could not
    assess (answered "unknown", asked or cached), and seconds in the backend."""

    calls: int = 0
    cached: int = 0
    failures: int = 0
    seconds: float = 0.0
    cannot_assess: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PairItem:
    """One comparison for `compare_many` (two images, or two texts)."""

    prompt: str
    image_a: Candidate
    image_b: Candidate
    rubric: Rubric
    source: Image.Image | None = None


@dataclass
class ScoreItem:
    """One pointwise judgment for `score_many` (of an image, or a text)."""

    prompt: str
    image: Candidate
    rubric: Rubric
    source: Image.Image | None = None


def rubric_score(rubric: Rubric, probs: dict[str, float]) -> float | None:
    """Weighted rubric score in [0, 1] (see `Rubric.score`): penalties subtract; edits use sqrt(I * P)."""
    return rubric.score(probs)


def _member_category(criterion: Criterion, judgment: ScoreJudgment) -> float | str | None:
    """A member's answer on `criterion`, as compared for agreement: "unknown", its value snapped to yes (1.0) / no
    (0.0) or to a level's credit (`Criterion.snap`), or None for a failed question."""
    if criterion.id in judgment.cannot_assess:
        return "unknown"
    value = judgment.criteria.get(criterion.id)
    return None if value is None else criterion.snap(value)


def ensemble_agreement(rubrics: Sequence[Rubric], judgments: Sequence[ScoreJudgment]) -> dict[str, Any]:
    """How much an ensemble's members agree over every criterion of many judgments (one rubric per judgment).

    Answers are compared as yes / no / level / unknown (`Criterion.snap`); failed questions are missing.
    Returns the number of criterion items, the member names, `pairwise` agreement, `fleiss_kappa` (over the items
    every member answered) and nominal `krippendorff_alpha` (missing answers allowed); a statistic is None where it
    is undefined, e.g. when every member always gives the same answer.
    """
    if len(rubrics) != len(judgments):
        raise ValueError(
            f"ensemble_agreement: {len(rubrics)} rubrics for {len(judgments)} judgments; give one each"
        )
    names = list(dict.fromkeys(n for j in judgments for n in j.judges))
    ratings = [
        [_member_category(c, j.judges[n]) if n in j.judges else None for n in names]
        for rubric, j in zip(rubrics, judgments, strict=True)
        for c in rubric.criteria
    ]
    return {
        "items": len(ratings),
        "judges": names,
        "pairwise": pairwise_agreement(ratings),
        "fleiss_kappa": fleiss_kappa(ratings),
        "krippendorff_alpha": krippendorff_alpha(ratings, "nominal"),
    }


def _encode_criterion(v: CriterionVerdict) -> dict[str, Any]:
    data: dict[str, Any] = {"prob_yes": v.prob_yes, "reason": v.reason, "raw": v.raw}
    if v.cannot_assess:
        data["cannot_assess"] = True
    if v.members is not None:
        data["members"] = {
            name: {"prob_yes": m.prob_yes, "cannot_assess": m.cannot_assess, "error": m.error}
            for name, m in v.members.items()
        }
    return data


def _decode_criterion(d: dict[str, Any]) -> CriterionVerdict:
    members = d.get("members")
    return CriterionVerdict(
        d["prob_yes"],
        d.get("reason", ""),
        d.get("raw", ""),
        cannot_assess=bool(d.get("cannot_assess", False)),
        members=None
        if members is None
        else {
            name: CriterionVerdict(
                m["prob_yes"], error=m.get("error"), cannot_assess=bool(m.get("cannot_assess"))
            )
            for name, m in members.items()
        },
    )


class RubricJudge:
    """Judge images against rubrics with any `JudgeBackend`.

    Args:
        backend: a backend instance, e.g. `arr.load_backend("pixel")`.
        cache: a `JudgmentCache`, a path to one (created if missing), or None for no caching.
        swap: ask pairwise questions in both orders; an order-inconsistent verdict becomes a tie.
        na_policy: how a criterion the judge cannot assess counts in pointwise scores: "skip" (left out), "zero",
            "partial" (`partial_credit` for a positive weight) or "fail" (the worst outcome for its sign); see
            arr/rubrics/scoring.py.
        partial_credit: the value "partial" gives, in [0, 1].
    """

    def __init__(
        self,
        backend: JudgeBackend,
        cache: Any = None,
        swap: bool = True,
        na_policy: str = "skip",
        partial_credit: float = 0.5,
    ) -> None:
        if not isinstance(backend, JudgeBackend):
            raise TypeError(
                f"RubricJudge needs a JudgeBackend (name, fingerprint(), judge_pairs(), judge_criteria()), "
                f"got {type(backend).__name__}"
            )
        self.backend = backend
        if isinstance(cache, (str, Path)):
            from arr.cache import JudgmentCache

            cache = JudgmentCache(cache)
        self.cache = cache
        self.swap = swap
        check_na_policy(na_policy, partial_credit)
        self.na_policy = na_policy
        self.partial_credit = float(partial_credit)
        self.stats = JudgeStats()

    # ---- pairwise -------------------------------------------------------------------------------------------

    def compare(
        self,
        prompt: str,
        image_a: Candidate,
        image_b: Candidate,
        rubric: Rubric,
        source: Image.Image | None = None,
    ) -> PairJudgment:
        return self.compare_many([PairItem(prompt, image_a, image_b, rubric, source)])[0]

    def compare_many(self, items: Sequence[PairItem]) -> list[PairJudgment]:
        """Judge many pairs with one batched backend call (two questions per pair when swapping)."""
        self._check_candidates(c for it in items for c in (it.image_a, it.image_b))
        queries: list[PairQuery] = []
        for it in items:
            queries.append(PairQuery(it.prompt, (it.image_a, it.image_b), it.rubric, it.source))
            if self.swap:
                queries.append(PairQuery(it.prompt, (it.image_b, it.image_a), it.rubric, it.source))
        verdicts = self._cached(
            queries,
            kind="pair",
            key_of=lambda keys, q: keys.key(
                kind="pair", rubric=q.rubric, prompt=q.prompt, images=q.images, source=q.source
            ),
            ask=self.backend.judge_pairs,
            encode=lambda v: {"prob_first": v.prob_first, "reason": v.reason, "raw": v.raw},
            decode=lambda d: PairVerdict(d["prob_first"], d.get("reason", ""), d.get("raw", "")),
            failed=lambda v: v.prob_first is None,
        )
        per_item = 2 if self.swap else 1
        return [self._combine(verdicts[i * per_item : (i + 1) * per_item]) for i in range(len(items))]

    @staticmethod
    def _combine(verdicts: list[PairVerdict]) -> PairJudgment:
        reasons = [v.reason for v in verdicts]
        raw = [v.raw for v in verdicts]
        errors = [v.error or "backend gave no probability" for v in verdicts if v.prob_first is None]
        if errors:
            return PairJudgment(None, None, False, reasons, raw, error="; ".join(errors))
        # Express every verdict as P(image_a is better): in the swapped order image_a was shown second.
        probs_a = [verdicts[0].prob_first]
        if len(verdicts) == 2:
            probs_a.append(1.0 - verdicts[1].prob_first)
        picks = {_pick(p) for p in probs_a}
        consistent = len(picks) == 1
        preferred = picks.pop() if consistent else None
        return PairJudgment(preferred, sum(probs_a) / len(probs_a), consistent, reasons, raw)

    # ---- pointwise ------------------------------------------------------------------------------------------

    def score(
        self, prompt: str, image: Candidate, rubric: Rubric, source: Image.Image | None = None
    ) -> ScoreJudgment:
        return self.score_many([ScoreItem(prompt, image, rubric, source)])[0]

    def score_many(self, items: Sequence[ScoreItem]) -> list[ScoreJudgment]:
        """Judge every criterion of every item with one batched backend call."""
        self._check_candidates(it.image for it in items)
        queries = [
            CriterionQuery(it.prompt, it.image, it.rubric, c, it.source)
            for it in items
            for c in it.rubric.criteria
        ]
        verdicts = self._cached(
            queries,
            kind="criterion",
            key_of=lambda keys, q: keys.key(
                kind="criterion",
                rubric=q.rubric,
                prompt=q.prompt,
                images=[q.image],
                source=q.source,
                criterion_id=q.criterion.id,
            ),
            ask=self.backend.judge_criteria,
            encode=_encode_criterion,
            decode=_decode_criterion,
            failed=lambda v: v.failed,
        )
        self.stats.cannot_assess += sum(v.cannot_assess for v in verdicts)
        out: list[ScoreJudgment] = []
        pos = 0
        for it in items:
            mine = verdicts[pos : pos + len(it.rubric.criteria)]
            pos += len(it.rubric.criteria)
            out.append(self._judgment(it, mine))
        return out

    def _judgment(self, item: ScoreItem, verdicts: Sequence[CriterionVerdict]) -> ScoreJudgment:
        """One sample's verdicts -> its judgment, with every ensemble member's own judgment and their agreement."""
        judgment = self._scored(item, verdicts)
        names = list(dict.fromkeys(n for v in verdicts if v.members for n in v.members))
        if not names:
            return judgment
        missing = CriterionVerdict(None, error="this member gave no verdict")
        for name in names:
            own = [v.members.get(name, missing) if v.members else missing for v in verdicts]
            judgment.judges[name] = self._scored(item, own)
        ratings = [[_member_category(c, judgment.judges[n]) for n in names] for c in item.rubric.criteria]
        judgment.agreement = {"pairwise": pairwise_agreement(ratings), "fleiss_kappa": fleiss_kappa(ratings)}
        return judgment

    def _scored(self, item: ScoreItem, verdicts: Sequence[CriterionVerdict]) -> ScoreJudgment:
        rubric = item.rubric
        probs: dict[str, float | None] = {}
        reasons: dict[str, str] = {}
        errors: dict[str, str] = {}
        unknown: list[str] = []
        for c, v in zip(rubric.criteria, verdicts, strict=True):
            probs[c.id] = v.prob_yes
            if v.reason:
                reasons[c.id] = v.reason
            if v.cannot_assess:
                unknown.append(c.id)
            elif v.prob_yes is None:
                errors[c.id] = v.error or "backend gave no probability"
        if not rubric.criteria:
            errors["rubric"] = f"rubric for {item.prompt[:60]!r} has no criteria"
        if errors:
            return ScoreJudgment(None, probs, reasons, errors, unknown)
        values = {k: p for k, p in probs.items() if p is not None}
        policy = {"na_policy": self.na_policy, "partial_credit": self.partial_credit}
        score = rubric.score(values, unknown, **policy)
        raw = rubric.score(values, unknown, **policy, normalize=False)
        return ScoreJudgment(score, probs, reasons, errors, unknown, raw)

    # ---- listwise -------------------------------------------------------------------------------------------

    def rank(
        self, prompt: str, images: Sequence[Candidate], rubric: Rubric, source: Image.Image | None = None
    ) -> list[float | None]:
        """Listwise judgment as a round robin: each image's win rate over all others (ties count half).

        Every pair is judged (in both orders when swapping), so the result does not depend on list order.
        """
        n = len(images)
        pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
        judgments = self.compare_many(
            [PairItem(prompt, images[i], images[j], rubric, source) for i, j in pairs]
        )
        wins = [0.0] * n
        games = [0] * n
        for (i, j), jd in zip(pairs, judgments, strict=True):
            if not jd.ok:
                continue
            games[i] += 1
            games[j] += 1
            if jd.preferred is None:
                wins[i] += 0.5
                wins[j] += 0.5
            else:
                wins[i if jd.preferred == 0 else j] += 1.0
        return [wins[k] / games[k] if games[k] else None for k in range(n)]

    def _check_candidates(self, candidates: Iterable[Any]) -> None:
        """Images, or texts where the backend judges texts; anything else is an error before any question."""
        for i, c in enumerate(candidates):
            if isinstance(c, str):
                # An optional backend attribute: the chat backends (hf, openai) declare that they judge texts.
                if not getattr(self.backend, "judges_text", False):
                    raise ValueError(
                        f"judge backend {self.backend.name!r} judges images only, and candidate {i} is a text "
                        f"({c[:40]!r}); judge texts with a chat backend (hf or openai)"
                    )
            elif not isinstance(c, Image.Image):
                raise TypeError(f"candidate {i} must be a PIL image or a text (str), got {type(c).__name__}")

    # ---- caching --------------------------------------------------------------------------------------------

    def _cached(self, queries, *, kind, key_of, ask, encode, decode, failed):
        """Serve what the cache holds, ask the backend for the rest in one batch, store the successes.

        `key_of(key_maker, query)` gives a query's cache key; one `JudgmentKeys` serves the whole batch, so each
        rubric and image is hashed once however many questions share it.
        """
        results: list[Any] = [None] * len(queries)
        todo = list(range(len(queries)))
        keys: list[str] = []
        if self.cache is not None and queries:
            from arr.cache import JudgmentKeys

            key_maker = JudgmentKeys(self.backend.fingerprint())
            keys = [key_of(key_maker, q) for q in queries]
            hits = self.cache.get_many(keys)
            todo = []
            for i, k in enumerate(keys):
                if k in hits:
                    results[i] = decode(hits[k])
                else:
                    todo.append(i)
            self.stats.cached += len(queries) - len(todo)
        if todo:
            start = time.perf_counter()
            answers = ask([queries[i] for i in todo])
            self.stats.seconds += time.perf_counter() - start
            self.stats.calls += len(todo)
            if len(answers) != len(todo):
                raise RuntimeError(
                    f"backend {self.backend.name!r} returned {len(answers)} {kind} verdicts for {len(todo)} queries"
                )
            store = []
            for i, v in zip(todo, answers, strict=True):
                results[i] = v
                if failed(v):
                    self.stats.failures += 1
                elif self.cache is not None:
                    store.append((keys[i], encode(v)))
            if store:
                self.cache.put_many(store)
        return results


def _pick(prob_a: float) -> int | None:
    """0 if image_a wins, 1 if image_b wins, None for an exact tie."""
    if prob_a > 0.5:
        return 0
    if prob_a < 0.5:
        return 1
    return None
