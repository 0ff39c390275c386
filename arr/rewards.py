"""Reward adapters: rubric judgments -> per-sample rewards for a group of samples of one prompt.

One contract for every reward (as TRL's reward functions): keyword inputs (`prompts`, `images`, `rubrics`, `source_images`)
-> per-sample values plus extra info, where `None` means "no judgment" (the sample is masked out of the loss).
Images arrive grouped: `images[i]` holds the G samples drawn for `prompts[i]` from the same initial noise. Rewards
for `RPOTrainer` subclass `GroupReward`, which also reports the judge's cost counters, remoteness and cache.

- `RubricPairwiseReward`: RPO's reward. Every pair in a group is judged (both orders when the judge swaps);
  a sample's reward is its mean pairwise outcome: +win for a win, lose (-0.1 in the paper) for a loss, 0 for a
  tie. With G = 2 this is exactly the paper's winner +1.0 / loser -0.1; ties give zero advantage. With
  `mapping="rank"` the group's ranks are mapped instead, as the authors' release does (`rank_rewards`): a pair
  the judge ranks [1, 1] gives both +1, one it ranks [2, 2] both -0.1.
- `RubricPointwiseReward`: rubric scores in [0, 1] per sample (normalise within the group for GRPO).
- `RubricReward`, `RubricPairReward`: the same judgments as TRL reward functions (flat lists, one value per
  completion), for `trl.GRPOTrainer(reward_funcs=[...])` with language models whose completions are texts (judged
  as texts) or are, name or describe images.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

from PIL import Image

from arr.backends.chat import stated_ranks
from arr.images import ImageLoadError, load_image
from arr.judge import PairItem, RubricJudge, ScoreItem
from arr.rubrics import Rubric, as_rubric

logger = logging.getLogger(__name__)


@dataclass
class GroupRewardOutput:
    """`rewards[i][k]` is the reward of sample k of prompt i (None: no judgment); `info` holds logged extras."""

    rewards: list[list[float | None]]
    info: dict[str, Any] = field(default_factory=dict)


class GroupReward(ABC):
    """Base of the rewards `RPOTrainer` takes: called once per batch of groups (the contract above), and asked for
    what the trainer logs and schedules around that call.

    Subclasses implement `__call__`. A reward backed by a `RubricJudge` sets `self.judge`, and its cost counters,
    whether it waits on the network and its cache follow from the judge. A reward without one (a reward model)
    leaves it None: no counters, not remote, no cache, and the trainer then needs an `evaluator`.
    """

    #: The judge behind the reward, if any; the trainer's default held-out score is its pointwise rubric score.
    judge: RubricJudge | None = None

    @abstractmethod
    def __call__(
        self,
        *,
        prompts: Sequence[str],
        images: Sequence[Sequence[Image.Image]],
        rubrics: Sequence[Rubric],
        source_images: Sequence[Image.Image | None] | None = None,
    ) -> GroupRewardOutput: ...

    def stats(self) -> dict[str, float]:
        """Cost counters so far: backend questions asked ("calls"), answers served from the cache ("cached"),
        "failures" and "seconds" spent in the backend; the trainer logs their change per step."""
        return self.judge.stats.to_dict() if self.judge is not None else {}

    def health(self) -> dict[str, int]:
        """Gauges logged as they stand at the end of each step: with several servers behind the judge, how many are
        in its pool ("judge_servers_up", this process's view) of how many ("judge_servers"); empty otherwise."""
        # An optional backend attribute: only the openai backend keeps a pool of servers.
        pool = getattr(self.judge.backend, "pool", None) if self.judge is not None else None
        if pool is None or len(pool) < 2:
            return {}
        return {"judge_servers_up": pool.healthy_count, "judge_servers": len(pool)}

    @property
    def remote(self) -> bool:
        """Whether judging waits on the network, so that the trainer overlaps it with sampling."""
        if self.judge is None:
            return False
        # An optional backend attribute: only backends that talk to a server (openai) declare it.
        return bool(getattr(self.judge.backend, "remote", False))

    @property
    def cache(self) -> Any:
        """The judge's judgment cache (a `JudgmentCache`, or None)."""
        return self.judge.cache if self.judge is not None else None

    @property
    def cache_path(self) -> str | None:
        """Where the judgment cache lives, recorded in checkpoints; None without a file-backed cache."""
        from arr.cache import JudgmentCache

        return str(self.cache.path) if isinstance(self.cache, JudgmentCache) else None


def pairwise_outcome_rewards(
    group_size: int, outcomes: dict[tuple[int, int], int | None | str], win: float = 1.0, lose: float = -0.1
) -> list[float | None]:
    """Per-sample mean pairwise reward from the outcomes of every pair (i < j) in a group.

    `outcomes[(i, j)]` is 0 if i won, 1 if j won, None for a tie, or "failed" when the judge gave no verdict
    (that pair is left out). A sample whose every pair failed gets None.
    """
    totals = [0.0] * group_size
    counts = [0] * group_size
    for (i, j), out in outcomes.items():
        if out == "failed":
            continue
        counts[i] += 1
        counts[j] += 1
        if out == 0:
            totals[i] += win
            totals[j] += lose
        elif out == 1:
            totals[i] += lose
            totals[j] += win
    return [totals[k] / counts[k] if counts[k] else None for k in range(group_size)]


def rank_rewards(ranks: Sequence[float], win: float = 1.0, lose: float = -0.1) -> list[float]:
    """The release's mapping of a group's ranks (1 = best) to rewards: `win` for rank 1, `lose` for the worst rank,
    linear between (1 - 1.1 (rank - 1) / (worst - 1) with the paper's +1 / -0.1); every rank 1 gives all `win`."""
    worst = max(ranks)
    if worst <= 1:
        return [win] * len(ranks)
    fractions = [(r - 1) / (worst - 1) for r in ranks]  # 0 for the best, 1 for the worst
    return [win * (1 - f) + lose * f for f in fractions]


def pairwise_ranks(
    group_size: int,
    outcomes: dict[tuple[int, int], int | None | str],
    tie_ranks: tuple[float, float] | None = None,
) -> list[float | None]:
    """A group's ranks (1 = best, equal wins share a rank) from the outcomes of its pairs (`pairwise_outcome_rewards`'
    encoding); a sample whose every pair failed gets None.

    For a pair (G = 2) that tied, `tie_ranks` are the ranks the judge stated ([1, 1] or [2, 2]); without them a tie
    is [1, 1]. Larger groups rank by wins over the group (a tie counts half to each)."""
    wins = [0.0] * group_size
    counts = [0] * group_size
    for (i, j), out in outcomes.items():
        if out == "failed":
            continue
        counts[i] += 1
        counts[j] += 1
        if out == 0:
            wins[i] += 1.0
        elif out == 1:
            wins[j] += 1.0
        else:
            wins[i] += 0.5
            wins[j] += 0.5
    if group_size == 2 and counts[0] and outcomes.get((0, 1)) is None:
        r = tie_ranks if tie_ranks is not None and tie_ranks[0] == tie_ranks[1] else (1.0, 1.0)
        return [float(r[0]), float(r[1])]
    judged = [k for k in range(group_size) if counts[k]]
    return [
        float(1 + sum(wins[m] > wins[k] for m in judged)) if counts[k] else None for k in range(group_size)
    ]


class RubricPairwiseReward(GroupReward):
    """RPO's pairwise rubric reward (see the module docstring).

    `mapping`: "win_rate" (a sample's mean outcome over its pairs, ties 0) or "rank" (the release: the group's
    ranks through `rank_rewards`). The release judged each pair once, in one order (`RubricJudge(swap=False)`).
    """

    def __init__(
        self,
        judge: RubricJudge,
        win_reward: float = 1.0,
        lose_reward: float = -0.1,
        mapping: str = "win_rate",
    ) -> None:
        if mapping not in ("win_rate", "rank"):
            raise ValueError(f"mapping must be 'win_rate' or 'rank', got {mapping!r}")
        self.judge = judge
        self.win_reward = win_reward
        self.lose_reward = lose_reward
        self.mapping = mapping

    def __call__(self, *, prompts, images, rubrics, source_images=None) -> GroupRewardOutput:
        sources = source_images if source_images is not None else [None] * len(prompts)
        items: list[PairItem] = []
        index: list[tuple[int, int, int]] = []
        for g, (prompt, group, rubric, src) in enumerate(zip(prompts, images, rubrics, sources, strict=True)):
            for i, j in combinations(range(len(group)), 2):
                items.append(PairItem(prompt, group[i], group[j], rubric, src))
                index.append((g, i, j))
        judgments = self.judge.compare_many(items)
        outcomes: list[dict[tuple[int, int], Any]] = [{} for _ in prompts]
        tie_ranks: list[tuple[float, float] | None] = [None for _ in prompts]
        ties = failures = inconsistent = 0
        for (g, i, j), jd in zip(index, judgments, strict=True):
            if not jd.ok:
                outcomes[g][(i, j)] = "failed"
                failures += 1
                continue
            outcomes[g][(i, j)] = jd.preferred
            ties += jd.preferred is None
            inconsistent += not jd.consistent
            if jd.preferred is None and len(jd.raw) == 1:  # one order asked: its stated ranks
                tie_ranks[g] = stated_ranks(jd.raw[0])
        rewards = [
            self._rewards(len(group), out, tr)
            for group, out, tr in zip(images, outcomes, tie_ranks, strict=True)
        ]
        n = max(len(judgments), 1)
        info = {
            "pairs": len(judgments),
            "tie_rate": ties / n,
            "inconsistent_rate": inconsistent / n,
            "judge_failure_rate": failures / n,
        }
        return GroupRewardOutput(rewards, info)

    def _rewards(
        self, group_size: int, outcomes: dict[tuple[int, int], Any], tie_ranks: tuple[float, float] | None
    ) -> list[float | None]:
        if self.mapping == "win_rate":
            return pairwise_outcome_rewards(group_size, outcomes, self.win_reward, self.lose_reward)
        ranks = pairwise_ranks(group_size, outcomes, tie_ranks)
        judged = [r for r in ranks if r is not None]
        if not judged:
            return [None] * group_size
        mapped = iter(rank_rewards(judged, self.win_reward, self.lose_reward))
        return [None if r is None else next(mapped) for r in ranks]


class RubricPointwiseReward(GroupReward):
    """Rubric scores in [0, 1] per sample (the GRPO-style baseline normalises them within each group)."""

    def __init__(self, judge: RubricJudge) -> None:
        self.judge = judge

    def __call__(self, *, prompts, images, rubrics, source_images=None) -> GroupRewardOutput:
        sources = source_images if source_images is not None else [None] * len(prompts)
        items = [
            ScoreItem(prompt, im, rubric, src)
            for prompt, group, rubric, src in zip(prompts, images, rubrics, sources, strict=True)
            for im in group
        ]
        scores = self.judge.score_many(items)
        rewards: list[list[float | None]] = []
        pos = 0
        for group in images:
            rewards.append([s.score for s in scores[pos : pos + len(group)]])
            pos += len(group)
        failures = sum(s.score is None for s in scores)
        return GroupRewardOutput(rewards, {"judge_failure_rate": failures / max(len(scores), 1)})


# ---- TRL reward functions --------------------------------------------------------------------------------------
#
# `trl.GRPOTrainer(reward_funcs=[...])` calls each reward function as
#     f(prompts=[...], completions=[...], completion_ids=[...], <every dataset column>=[...],
#       trainer_state=..., log_extra=..., log_metric=...)
# with one entry per completion (each prompt repeated `num_generations` times in a row), and takes a list of floats,
# None for "no reward" (TRL turns it into NaN and leaves it out). It names the function's metrics after `__name__`.


def _completion_text(completion: Any) -> str | None:
    """The text of a standard (str) or conversational ([{"role": ..., "content": ...}]) completion."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        content = completion[-1].get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            texts = [p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"]
            return "".join(texts)
    return None


def _image_part(completion: Any) -> Any:
    """The image-like part of a completion (a PIL image, {"image": ...}, or a chat message's image part), or None
    when it holds none."""
    if isinstance(completion, Image.Image):
        return completion
    if isinstance(completion, dict) and "image" in completion:
        return completion["image"]
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        content = completion[-1].get("content")
        if isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and part.get("type") == "image" and "image" in part:
                    return part["image"]
    return None


def _names_image_file(text: str) -> bool:
    """Whether a text is a path to an image file by its form: one line ending in an image suffix PIL reads."""
    text = text.strip()
    return _one_line(text) and Path(text).suffix.lower() in {s.lower() for s in Image.registered_extensions()}


def _one_line(text: str) -> bool:
    return bool(text) and "\n" not in text and len(text) < 1024


def image_from_completion(completion: Any) -> Image.Image:
    """The image a completion refers to: a PIL image, a path to an image file, a dict with an "image" key (itself
    any of these), or a conversational completion whose last message holds an {"type": "image", "image": ...} part
    or a path as its text."""
    part = _image_part(completion)
    if part is not None and part is not completion:
        return image_from_completion(part)
    if isinstance(completion, Image.Image):
        return completion
    text = _completion_text(completion)
    if (
        text is not None and not text.strip()
    ):  # a policy that wrote nothing: that sample's failure, not a misuse
        raise ImageLoadError("the completion is empty: it names no image")
    if text is not None:
        path = text.strip()
        if not _names_image_file(path) and not (_one_line(path) and Path(path).is_file()):
            raise ValueError(
                f"the completion is text, not an image or an image path ({text.strip()[:60]!r}); judge it as text "
                "(judge_as='text' or 'auto'), or pass to_image= to make an image of it"
            )
        return load_image(path)
    raise ValueError(
        "cannot find an image in the completion: expected a PIL image, an image path, a dict with an 'image' "
        f"key or a chat message with an image part, got {type(completion).__name__} {str(completion)[:80]!r}; "
        "for text completions that describe an image, pass to_image= (e.g. a renderer)"
    )


#: How a TRL reward function reads completions: as images, as texts, or each by what it is.
JUDGE_AS = ("auto", "image", "text")


def completion_candidate(completion: Any, judge_as: str = "auto") -> Image.Image | str:
    """What the judge sees of one completion: "image" reads an image (`image_from_completion`), "text" the
    completion's text (a string, or a chat message's text), and "auto" an image where the completion holds or names
    one (a PIL image, {"image": ...}, an image part, a one-line path ending in an image suffix) and its text
    otherwise. A completion that is neither raises ValueError."""
    if judge_as not in JUDGE_AS:
        raise ValueError(f"judge_as={judge_as!r}: choose one of {JUDGE_AS}")
    if judge_as == "image":
        return image_from_completion(completion)
    if judge_as == "auto" and _image_part(completion) is not None:
        return image_from_completion(completion)
    text = _completion_text(completion)
    if text is None:
        raise ValueError(
            f"the completion is neither an image nor text: got {type(completion).__name__} "
            f"{str(completion)[:80]!r}; TRL gives strings or chat messages"
        )
    if judge_as == "auto" and _names_image_file(text):
        return image_from_completion(text)
    return text


def completion_candidates(
    prompts: Sequence[Any],
    completions: Sequence[Any],
    kwargs: dict[str, Any],
    *,
    to_image: Any = None,
    image_column: str | None = None,
    source_column: str | None = None,
    judge_as: str = "image",
    name: str = "reward",
) -> tuple[list[dict[str, Any]], list[Image.Image | str | None], list[Image.Image | None], list[str | None]]:
    """What a TRL reward function needs per completion: its dataset row (TRL's extra keywords that are lists of
    length n), what the judge sees (an image or a text; None where an image could not be made: one unrewarded
    sample, not a crashed step), its source image (editing) and the error that left it without one.

    That is `to_image(completion, **row)` when given, else the `image_column` of the row, else the completion itself
    read as `judge_as` says (see `completion_candidate`). A completion of a kind that can never be judged (neither
    an image nor text, or text where an image is expected) raises ValueError: it would otherwise train on no reward
    at all.
    """
    if len(prompts) != len(completions):
        raise ValueError(f"{name}: {len(prompts)} prompts but {len(completions)} completions")
    n = len(completions)
    skip = {"trainer_state", "log_extra", "log_metric", "environments", "completion_ids"}
    columns = {k: v for k, v in kwargs.items() if k not in skip and isinstance(v, list) and len(v) == n}
    rows = [{k: v[i] for k, v in columns.items()} for i in range(n)]
    candidates: list[Image.Image | str | None] = []
    sources: list[Image.Image | None] = []
    errors: list[str | None] = []
    for i, (completion, row) in enumerate(zip(completions, rows, strict=True)):
        error = None
        candidate: Image.Image | str | None = None
        try:
            if to_image is not None:
                candidate = to_image(completion, **row)
            elif image_column is not None:
                candidate = image_from_completion(row[image_column])
            else:
                candidate = completion_candidate(completion, judge_as)
        except ImageLoadError as e:  # a missing or unreadable image file: this sample's failure
            error = f"completion {i}: {e}"
        except (ValueError, OSError) as e:
            if to_image is None and image_column is None:  # a completion of a kind that can never be judged
                raise ValueError(f"{name}: completion {i}: {e}") from None
            error = f"completion {i}: {e}"  # the renderer failed on this completion
        if to_image is not None and candidate is not None and not isinstance(candidate, Image.Image):
            error, candidate = (
                f"completion {i}: to_image returned {type(candidate).__name__}, not a PIL image",
                None,
            )
        candidates.append(candidate)
        errors.append(error)
        src = row.get(source_column) if source_column else None
        sources.append(image_from_completion(src) if src is not None else None)
    return rows, candidates, sources, errors


class _TRLRewardBase:
    """Shared input handling of the TRL reward functions (see `RubricReward` for the arguments)."""

    def __init__(
        self,
        judge: RubricJudge | Any,
        rubrics: Rubric | dict[str, Rubric] | Any = None,
        *,
        to_image: Any = None,
        image_column: str | None = None,
        source_column: str | None = None,
        rubric_column: str = "rubric",
        judge_as: str = "auto",
        name: str | None = None,
        cache: Any = None,
    ) -> None:
        if judge_as not in JUDGE_AS:
            raise ValueError(f"judge_as={judge_as!r}: choose one of {JUDGE_AS}")
        if isinstance(judge, str):
            from arr.backends import load_backend

            judge = load_backend(judge)
        if not isinstance(judge, RubricJudge):
            judge = RubricJudge(judge, cache=cache)
        elif cache is not None:
            raise ValueError("pass cache= to the RubricJudge you give, not to the reward as well")
        if judge_as == "text" and not getattr(judge.backend, "judges_text", False):
            raise ValueError(
                f"judge_as='text': the {judge.backend.name!r} judge judges images only; use a chat judge (hf, openai)"
            )
        self.judge = judge
        self.judge_as = judge_as
        self.rubrics = rubrics
        self.to_image = to_image
        self.image_column = image_column
        self.source_column = source_column
        self.rubric_column = rubric_column
        # TRL logs `rewards/<__name__>/mean`; an instance attribute so two rewards in one trainer differ.
        self.__name__ = name or type(self).__name__
        # Why completions of the last call could not be judged (their reward is None).
        self.last_errors: list[str] = []

    def _rubric(self, i: int, prompt: Any, row: dict[str, Any]) -> Rubric:
        spec = self.rubrics
        if spec is None:
            if self.rubric_column not in row:
                raise ValueError(
                    f"{self.__name__}: no rubrics= given and no {self.rubric_column!r} dataset column; "
                    f"columns are {sorted(row)}"
                )
            return as_rubric(row[self.rubric_column], f"{self.rubric_column}[{i}]")
        if isinstance(spec, Rubric):
            return spec
        if isinstance(spec, dict):
            text = _completion_text(prompt) if not isinstance(prompt, str) else prompt
            if text not in spec:
                raise KeyError(
                    f"{self.__name__}: no rubric for prompt {str(text)[:60]!r} in rubrics= ({len(spec)} keys)"
                )
            return spec[text]
        if callable(spec):
            return as_rubric(spec(prompt, **row), f"rubrics({str(prompt)[:40]!r})")
        raise TypeError(
            f"{self.__name__}: rubrics= must be a Rubric, a dict prompt -> Rubric, a callable or None "
            f"(read the {self.rubric_column!r} column), got {type(spec).__name__}"
        )

    def _inputs(
        self, prompts: Sequence[Any], completions: Sequence[Any], kwargs: dict[str, Any]
    ) -> tuple[list[Rubric], list[Image.Image | str | None], list[Image.Image | None]]:
        """Rubrics, what the judge sees (None where no image could be made) and sources; the errors of the
        completions left without a candidate are kept in `last_errors` and logged."""
        rows, candidates, sources, errors = completion_candidates(
            prompts,
            completions,
            kwargs,
            to_image=self.to_image,
            image_column=self.image_column,
            source_column=self.source_column,
            judge_as=self.judge_as,
            name=self.__name__,
        )
        self.last_errors = [e for e in errors if e]
        if self.last_errors:
            logger.warning(
                "%s: %d of %d completions could not be judged (reward None), e.g. %s",
                self.__name__,
                len(self.last_errors),
                len(completions),
                self.last_errors[0],
            )
        rubrics = [
            self._rubric(i, prompt, row) for i, (prompt, row) in enumerate(zip(prompts, rows, strict=True))
        ]
        return rubrics, candidates, sources

    @staticmethod
    def _log(kwargs: dict[str, Any], name: str, value: float) -> None:
        log_metric = kwargs.get("log_metric")
        if callable(log_metric):
            log_metric(name, value)


class RubricReward(_TRLRewardBase):
    """Rubric scores in [0, 1] as a TRL reward function: `GRPOTrainer(reward_funcs=[RubricReward(...)])`, for
    policies that write text (an LLM's answers, judged as texts) or make images.

    Args:
        judge: a `RubricJudge`, a `JudgeBackend`, or a backend name ("pixel", ...). Texts need a chat judge (hf or
            openai); the pixel judge reads images only.
        rubrics: one `Rubric` for every prompt; a dict prompt text -> Rubric; a callable
            `(prompt, **dataset_row) -> Rubric | dict | JSON`; or None to read the `rubric_column` dataset column
            (a Rubric, a rubric dict or rubric JSON per row).
        judge_as: how completions are read: "text" (each completion's text is the response judged), "image" (each
            completion is or names an image: a PIL image, a path, {"image": ...}, a chat message with an image
            part), or "auto" (default): an image where the completion holds one or is a one-line image path, its
            text otherwise.
        to_image: `(completion, **dataset_row) -> PIL image`, for policies whose completions describe an image
            (a scene program, SVG, a prompt for a generator): the image is judged. Without it the image comes from
            `image_column`, or the completion itself is read as `judge_as` says.
        source_column: dataset column with the source image of editing prompts.
        name: the name TRL logs the reward under (default: the class name).
        cache: a judgment cache (path or `JudgmentCache`) when `judge` is a backend.

    The judge is asked with `rubric.prompt` (the text the response or image must satisfy). A completion that is
    neither an image nor text is an error; one whose image `to_image` cannot make, or whose image file is missing,
    gets None (logged, in `last_errors` and in the logged `<name>/failure_rate`), which TRL leaves out of the
    advantage, as it does a judgment that failed.
    """

    def __call__(
        self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any
    ) -> list[float | None]:
        rubrics, candidates, sources = self._inputs(prompts, completions, kwargs)
        todo = [i for i, c in enumerate(candidates) if c is not None]
        items = [ScoreItem(rubrics[i].prompt, candidates[i], rubrics[i], sources[i]) for i in todo]
        rewards: list[float | None] = [None] * len(completions)
        for i, judgment in zip(todo, self.judge.score_many(items), strict=True):
            rewards[i] = judgment.score
        failed = sum(r is None for r in rewards)
        self._log(kwargs, f"{self.__name__}/failure_rate", failed / max(len(rewards), 1))
        return rewards


class RubricPairReward(_TRLRewardBase):
    """RPO's pairwise rubric reward as a TRL reward function, for group-relative training (GRPO-style), of texts or
    images (see `RubricReward`'s `judge_as`).

    TRL passes each prompt's `num_generations` completions next to each other; every pair within a group is judged
    (both orders when the judge swaps) and a completion's reward is its mean pairwise outcome (`win` for a win,
    `lose` for a loss, 0 for a tie; see `pairwise_outcome_rewards`). Set `group_size` to `num_generations`. In
    multi-process training each process must hold whole groups: make `per_device_train_batch_size *
    steps_per_generation` a multiple of `num_generations`. Other arguments as for `RubricReward`.
    """

    def __init__(
        self,
        judge: RubricJudge | Any,
        rubrics: Any = None,
        *,
        group_size: int,
        win: float = 1.0,
        lose: float = -0.1,
        **kwargs: Any,
    ) -> None:
        super().__init__(judge, rubrics, **kwargs)
        if group_size < 2:
            raise ValueError(f"RubricPairReward group_size (num_generations) must be >= 2, got {group_size}")
        self.group_size = group_size
        self.win = win
        self.lose = lose

    def __call__(
        self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any
    ) -> list[float | None]:
        g = self.group_size
        if len(completions) % g:
            raise ValueError(
                f"{self.__name__}: {len(completions)} completions are not whole groups of group_size={g}; "
                "set group_size to num_generations and give each process whole groups"
            )
        rubrics, images, sources = self._inputs(prompts, completions, kwargs)
        items: list[PairItem] = []
        index: list[tuple[int, int, int]] = []
        outcomes: list[dict[tuple[int, int], Any]] = []
        for start in range(0, len(completions), g):
            if any(repr(prompts[start + k]) != repr(prompts[start]) for k in range(g)):
                raise ValueError(
                    f"{self.__name__}: completions {start}..{start + g - 1} are not one group (their prompts "
                    f"differ); group_size={g} must equal the trainer's num_generations"
                )
            out: dict[tuple[int, int], Any] = {}
            for i, j in combinations(range(g), 2):
                a, b = images[start + i], images[start + j]
                if a is None or b is None:
                    out[(i, j)] = "failed"
                    continue
                rubric = rubrics[start]
                items.append(PairItem(rubric.prompt, a, b, rubric, sources[start]))
                index.append((start // g, i, j))
            outcomes.append(out)
        for (group, i, j), judgment in zip(index, self.judge.compare_many(items), strict=True):
            outcomes[group][(i, j)] = judgment.preferred if judgment.ok else "failed"
        rewards: list[float | None] = []
        for out in outcomes:
            rewards.extend(pairwise_outcome_rewards(g, out, self.win, self.lose))
        ties = sum(v is None for out in outcomes for v in out.values())
        pairs = max(sum(len(out) for out in outcomes), 1)
        self._log(kwargs, f"{self.__name__}/tie_rate", ties / pairs)
        return rewards
