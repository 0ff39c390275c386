"""Batches of judge questions with shared prefixes: the loss the shapes judge trains on, and its choice scores.

Questions about the same images (every criterion of one image; the rubric and the plain question about one pair)
share most of their tokens: system prompt, images, prompt. A batch encodes each such prefix once (vision tower and
language model, left-padded, M-RoPE positions from the model's own `get_rope_index`) into a KV cache, then runs
every question's suffix (the rest of the question and the answer) against its group's rows of that cache, with
positions continuing the prefix's. Gradients flow through the cache, so this is the same computation as running
each question in full, for a third of the tokens.

The loss is on answer tokens only: the decisive token (the first after the request's `answer_prefix`: "yes"/"no",
or the rank of Image 1) with weight 1, and the rest of the answer (the reason, the closing `<|im_end|>`) with weight
`rest_weight` in all, so that the judge also learns to write well-formed answers for the generating paths.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import torch
from jinja2.sandbox import ImmutableSandboxedEnvironment

from arr.backends.chat import ChatRequest, choice_variants
from arr.shapes.judge_data import Question


@cache
def _compiled(template: str) -> Any:
    # transformers renders chat templates in the same sandbox with these options.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template)


def prompt_text(request: ChatRequest, chat_template: str) -> str:
    """The question as the judge reads it: the chat template with the generation prompt (image parts as one pad)."""
    return _compiled(chat_template).render(messages=request.messages, add_generation_prompt=True)


@dataclass
class JudgeBatch:
    """Tensors for one forward pass of grouped questions (see the module docstring). `rows` are questions."""

    prefix_ids: torch.Tensor  # [G, P] left-padded
    prefix_mask: torch.Tensor  # [G, P]
    pixel_values: torch.Tensor | None  # every image of the prefixes, in order
    image_grid_thw: torch.Tensor | None
    group_of_row: torch.Tensor  # [R] prefix row of each question
    suffix_ids: torch.Tensor  # [R, S] right-padded
    suffix_mask: torch.Tensor  # [R, S]
    decisive_at: torch.Tensor  # [R] suffix position whose logits predict the decisive token
    decisive_id: torch.Tensor  # [R] the decisive token of the answer (-1 if the question has no answer)
    rest_weight_mask: torch.Tensor  # [R, S] weights of the other answer tokens, predicted from position s
    rest_target: torch.Tensor  # [R, S] the token predicted at position s (0 where unweighted)
    choice_ids: list[
        tuple[list[int], ...]
    ]  # per row: token ids of each choice (variants), as the hf backend reads
    questions: Sequence[Question]
    images: Sequence[Any] = ()  # the prefixes' images, in the order of pixel_values


def _tokens_per_image(image_processor: Any) -> int:
    """Image tokens the processor makes of a shapes image (all are the same size): patches / merge^2."""
    from PIL import Image

    from arr.shapes.scene import IMAGE_SIZE

    grid = image_processor(images=[Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE))], return_tensors="pt")[
        "image_grid_thw"
    ]
    return int(grid[0].prod()) // image_processor.merge_size**2


class JudgeBatcher:
    """Turns questions (whole groups, consecutive) into `JudgeBatch`es for a judge's processor."""

    def __init__(self, processor: Any, rest_weight: float = 0.3) -> None:
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.rest_weight = rest_weight
        self.chat_template = processor.chat_template
        self.image_token = processor.image_token
        self.image_token_id = self.tokenizer.convert_tokens_to_ids(self.image_token)
        self.pad_id = self.tokenizer.pad_token_id
        self.end = self.tokenizer.eos_token  # "<|im_end|>": closes the assistant turn
        self.tokens_per_image = _tokens_per_image(processor.image_processor)
        self._choice_cache: dict[tuple[str, ...], tuple[list[int], ...]] = {}

    def _ids(self, text: str) -> list[int]:
        expanded = text.replace(self.image_token, self.image_token * self.tokens_per_image)
        return self.tokenizer(expanded, add_special_tokens=False)["input_ids"]

    def choice_ids(self, choices: tuple[str, ...]) -> tuple[list[int], ...]:
        if choices not in self._choice_cache:
            found = []
            for choice in choices:
                ids = []
                for variant in choice_variants(choice):
                    enc = self.tokenizer.encode(variant, add_special_tokens=False)
                    if len(enc) == 1 and enc[0] not in ids:
                        ids.append(enc[0])
                found.append(ids)
            self._choice_cache[choices] = tuple(found)
        return self._choice_cache[choices]

    def encode(self, questions: Sequence[Question], with_answers: bool = True) -> JudgeBatch:
        """Encode `questions`; those of one group must be consecutive and share their images."""
        groups: list[list[int]] = []
        for i, q in enumerate(questions):
            if groups and questions[groups[-1][0]].group == q.group:
                groups[-1].append(i)
            else:
                groups.append([i])
        prompts = [prompt_text(q.request, self.chat_template) for q in questions]
        prompt_ids = [self._ids(p) for p in prompts]
        decisive_len = [
            len(self._ids(p + q.request.answer_prefix)) for p, q in zip(prompts, questions, strict=True)
        ]
        full = [
            self._ids(p + (q.answer + self.end if with_answers else q.request.answer_prefix))
            for p, q in zip(prompts, questions, strict=True)
        ]
        prefixes, images, rows_group, suffixes, cut_at = [], [], [], [], []
        for g, members in enumerate(groups):
            cut = min(len(prompt_ids[i]) for i in members) - 1  # the last prompt token must run in the suffix
            first = full[members[0]]
            for i in members[1:]:
                k = 0
                while k < cut and full[i][k] == first[k]:
                    k += 1
                cut = k
            last_image = max((k for k, t in enumerate(first) if t == self.image_token_id), default=-1)
            if cut <= last_image:
                raise ValueError(
                    f"questions of group {questions[members[0]].group} differ before their last image token; "
                    "a group's questions must show the same images first"
                )
            prefixes.append(first[:cut])
            images.extend(questions[members[0]].request.images)
            for i in members:
                rows_group.append(g)
                suffixes.append(full[i][cut:])
                cut_at.append(cut)
        return self._tensors(
            questions, prefixes, images, rows_group, suffixes, cut_at, prompt_ids, decisive_len, full
        )

    def _tensors(
        self, questions, prefixes, images, rows_group, suffixes, cut_at, prompt_ids, decisive_len, full
    ) -> JudgeBatch:
        width = max(len(p) for p in prefixes)
        prefix_ids = torch.full((len(prefixes), width), self.pad_id, dtype=torch.long)
        prefix_mask = torch.zeros((len(prefixes), width), dtype=torch.long)
        for g, p in enumerate(prefixes):
            prefix_ids[g, width - len(p) :] = torch.tensor(p)
            prefix_mask[g, width - len(p) :] = 1
        s_width = max(len(s) for s in suffixes)
        n = len(suffixes)
        suffix_ids = torch.full((n, s_width), self.pad_id, dtype=torch.long)
        suffix_mask = torch.zeros((n, s_width), dtype=torch.long)
        rest_mask = torch.zeros((n, s_width))
        rest_target = torch.zeros((n, s_width), dtype=torch.long)
        decisive_at = torch.zeros(n, dtype=torch.long)
        decisive_id = torch.full((n,), -1, dtype=torch.long)
        for r, s in enumerate(suffixes):
            suffix_ids[r, : len(s)] = torch.tensor(s)
            suffix_mask[r, : len(s)] = 1
            cut = cut_at[r]
            decisive_at[r] = decisive_len[r] - 1 - cut
            if len(full[r]) > decisive_len[r]:
                decisive_id[r] = full[r][decisive_len[r]]
                rest = [k for k in range(len(prompt_ids[r]), len(full[r])) if k != decisive_len[r]]
                q = questions[r]
                weight = self.rest_weight / len(rest) if q.token_weight is None else q.token_weight
                for k in rest:  # token k of the full sequence is predicted from suffix position k - 1 - cut
                    rest_mask[r, k - 1 - cut] = weight
                    rest_target[r, k - 1 - cut] = full[r][k]
        pixel = None
        if images:
            pixel = self.processor.image_processor(
                images=[im.convert("RGB") for im in images], return_tensors="pt"
            )
        return JudgeBatch(
            prefix_ids=prefix_ids,
            prefix_mask=prefix_mask,
            pixel_values=pixel["pixel_values"] if pixel is not None else None,
            image_grid_thw=pixel["image_grid_thw"] if pixel is not None else None,
            group_of_row=torch.tensor(rows_group, dtype=torch.long),
            suffix_ids=suffix_ids,
            suffix_mask=suffix_mask,
            decisive_at=decisive_at,
            decisive_id=decisive_id,
            rest_weight_mask=rest_mask,
            rest_target=rest_target,
            choice_ids=[self.choice_ids(q.request.choices) for q in questions],
            questions=questions,
            images=images,
        )


def _cache_arg(model: Any) -> str:
    import inspect

    # transformers renamed `past_key_values` to `cache` (5.2x); pass it under the name this version takes.
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def suffix_hidden(model: Any, batch: JudgeBatch) -> torch.Tensor:
    """Last hidden states `[R, S, H]` of every suffix position, through the prefixes' shared KV cache."""
    inner = model.model
    mm_types = (batch.prefix_ids == model.config.image_token_id).int()
    positions, _ = inner.get_rope_index(
        batch.prefix_ids,
        mm_token_type_ids=mm_types,
        image_grid_thw=batch.image_grid_thw,
        attention_mask=batch.prefix_mask,
    )
    out = inner(
        input_ids=batch.prefix_ids,
        attention_mask=batch.prefix_mask,
        position_ids=positions,
        pixel_values=batch.pixel_values,
        image_grid_thw=batch.image_grid_thw,
        mm_token_type_ids=mm_types,
        use_cache=True,
    )
    cache_ = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
    cache_.batch_select_indices(batch.group_of_row)
    # Text positions continue after the prefix's last (text) position; the three M-RoPE axes agree on text.
    start = positions[0, :, -1][batch.group_of_row] + 1
    width = batch.suffix_ids.shape[1]
    suffix_pos = (start[:, None] + torch.arange(width)[None, :]).unsqueeze(0).expand(3, -1, -1)
    mask = torch.cat([batch.prefix_mask[batch.group_of_row], batch.suffix_mask], dim=1)
    inner.rope_deltas = None  # positions are explicit; a stale per-prefix delta must not be broadcast
    return inner(
        input_ids=batch.suffix_ids,
        attention_mask=mask,
        position_ids=suffix_pos,
        use_cache=True,
        **{_cache_arg(inner): cache_},
    ).last_hidden_state


def judge_loss(model: Any, batch: JudgeBatch) -> tuple[torch.Tensor, dict[str, float]]:
    """The training loss (module docstring) and the decisive-token accuracy of the batch.

    Logits are computed only where a token is predicted (the decisive and the other answer positions): the output
    layer over every suffix position would cost a tenth of the step for nothing."""
    hidden = suffix_hidden(model, batch)
    rows = torch.arange(len(batch.questions))
    has = batch.decisive_id >= 0
    decisive_logits = model.lm_head(hidden[rows, batch.decisive_at]).float()
    decisive = torch.nn.functional.cross_entropy(
        decisive_logits[has], batch.decisive_id[has], reduction="sum"
    )
    r, pos = torch.nonzero(batch.rest_weight_mask, as_tuple=True)
    rest_logp = torch.log_softmax(model.lm_head(hidden[r, pos]).float(), dim=-1)
    rest_nll = -rest_logp.gather(-1, batch.rest_target[r, pos].unsqueeze(-1)).squeeze(-1)
    rest = (rest_nll * batch.rest_weight_mask[r, pos]).sum()
    n = max(int(has.sum()), 1)
    loss = (decisive + rest) / n
    with torch.no_grad():
        correct = (decisive_logits[has].argmax(-1) == batch.decisive_id[has]).float().mean().item()
    return loss, {"decisive_loss": decisive.item() / n, "rest_loss": rest.item() / n, "decisive_acc": correct}


@torch.no_grad()
def choice_probs(model: Any, batch: JudgeBatch) -> list[tuple[float, ...]]:
    """Per question, the probability of each of its choices at the decisive position (as the hf backend reads)."""
    hidden = suffix_hidden(model, batch)
    rows = torch.arange(len(batch.questions))
    probs = torch.softmax(model.lm_head(hidden[rows, batch.decisive_at]).float(), dim=-1)
    return [
        tuple(float(p[ids].sum()) for ids in choice)
        for p, choice in zip(probs, batch.choice_ids, strict=True)
    ]


__all__ = ["JudgeBatch", "JudgeBatcher", "choice_probs", "judge_loss", "prompt_text", "suffix_hidden"]
