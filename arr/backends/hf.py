"""Local VLM judge through transformers: `load_backend("hf", model="Qwen/Qwen2.5-VL-7B-Instruct")`.

Two ways to answer, chosen by `mode`:
- "probs" (default): one forward pass per question, batched with left padding. The answer is teacher-forced up to
  the choice token (`{"rank": [` for pairs, nothing for yes/no and ratings) after the chat template's generation
  prompt, and the verdict is read from the last position's logits: the probability of the first choice token
  against the second, or for an ordinal criterion (choices "1".."N") the expected credit (level - 1) / (N - 1)
  under the N digits' renormalised probabilities. Fast (no decoding) and calibrated rather than a vote; gives no
  reason text.
  Questions about the same image(s) (pointwise scoring asks one per rubric criterion) share a long prefix: system
  prompt, image tokens, prompt. With `share_prefix=True` that prefix is encoded once (vision tower and language
  model) into a KV cache, and only each question's short suffix (criterion, answer instructions) runs per question,
  batched against copies of the cache: the same tokens at the same positions, so the same probabilities.
- "generate": greedy `generate()` of up to `max_new_tokens`, parsed as text; slower, but with a reason.

A text-only language model (any `AutoModelForCausalLM` with a chat template, its processor a tokenizer) judges
texts the same way; image questions to it are answered with an error.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from arr.backends.chat import (
    CANNOT_ASSESS_ANSWER,
    TEMPLATE_VERSION,
    ChatBackend,
    ChatRequest,
    ChatResult,
    choice_variants,
)

logger = logging.getLogger(__name__)

_MODES = ("probs", "generate")


def _resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _resolve_dtype(dtype: Any, device: str) -> Any:
    import torch

    if dtype == "auto":
        # bf16 where it is fast and safe (CUDA with bf16 support), float32 elsewhere: CPU bf16 matmuls are slow
        # and half precision changes the choice probabilities enough to matter for near-ties.
        if device.startswith("cuda") and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and isinstance(getattr(torch, dtype, None), torch.dtype):
        return getattr(torch, dtype)
    raise ValueError(
        f"HFBackend dtype must be 'auto', a torch dtype or its name (e.g. 'bfloat16'), got {dtype!r}"
    )


def _weights_stamp(path: str) -> str:
    """For a local model folder: a short hash of the weight files' names, sizes and modification times.

    A judge re-saved to the same folder (e.g. after fine-tuning) must not reuse cached judgments of the old weights;
    hashing the bytes of multi-GB files on every start would be too slow, so size + mtime stand in for them.
    """
    folder = Path(path)
    if not folder.is_dir():
        return ""
    h = hashlib.sha256()
    for f in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:12]


def _shipped_judge(name: str) -> tuple[str, Any] | None:
    """(folder, processor) of arr's shapes judge (by its name "shapes-judge", or a folder it was saved to), else None.

    Its processor is arr's own class, built here rather than through `AutoProcessor`, so loading it runs no code
    from the model folder."""
    from arr.shapes.judge_model import load_judge_processor, resolve_judge

    folder = resolve_judge(name)
    if folder is None:
        return None
    if not (folder / "config.json").is_file():
        raise ValueError(
            f"judge model {name!r} is not installed (no {folder / 'config.json'}); train one with "
            "`arr shapes pretrain-judge` and export it there"
        )
    return str(folder), load_judge_processor(folder)


def _load_model(name: str, dtype: Any, *, trust_remote_code: bool = False) -> Any:
    """A VLM by name, or, for a model whose config names no vision-language class, a text-only LM."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    kwargs = {"dtype": dtype, "use_safetensors": True, "trust_remote_code": trust_remote_code}
    try:
        return AutoModelForImageTextToText.from_pretrained(name, **kwargs)
    except ValueError as e:  # "Unrecognized configuration class ... for AutoModelForImageTextToText"
        if "Unrecognized configuration class" not in str(e):
            raise
    return AutoModelForCausalLM.from_pretrained(name, **kwargs)


class HFBackend(ChatBackend):
    """A transformers VLM (any `AutoModelForImageTextToText` with a chat template) as a judge, or a text-only LM
    (`AutoModelForCausalLM`) as a judge of texts.

    Args:
        model: a Hub id or local folder, "shapes-judge" (the shapes world's judge shipped with arr), or an already
            loaded `PreTrainedModel` (then `processor` is required).
        processor: the model's processor; loaded from `model` when None.
        dtype: "auto" (bf16 on CUDA, float32 on CPU), a torch dtype or its name.
        device: "auto", "cpu", "cuda", "cuda:1", ... (ignored for an already loaded model).
        batch_size: questions per forward pass.
        mode: "probs" (one forward pass, choice-token probabilities) or "generate" (greedy text, with reasons).
        max_new_tokens: generation budget in "generate" mode.
        trust_remote_code: allow custom code from the model folder; off unless the model needs it.
        share_prefix: in "probs" mode, encode the common prefix of questions about the same images once and reuse
            its KV cache (see the module docstring); False runs every question in full.
    """

    name = "hf"

    def __init__(
        self,
        model: Any,
        processor: Any = None,
        dtype: Any = "auto",
        device: str = "auto",
        batch_size: int = 8,
        mode: str = "probs",
        max_new_tokens: int = 128,
        trust_remote_code: bool = False,
        share_prefix: bool = True,
    ) -> None:
        import torch
        from transformers import AutoProcessor, PreTrainedModel

        if mode not in _MODES:
            raise ValueError(f"HFBackend mode must be one of {_MODES}, got {mode!r}")
        if batch_size < 1:
            raise ValueError(f"HFBackend batch_size must be >= 1, got {batch_size}")
        if max_new_tokens < 1:
            raise ValueError(f"HFBackend max_new_tokens must be >= 1, got {max_new_tokens}")
        self.mode = mode
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.share_prefix = share_prefix

        if isinstance(model, PreTrainedModel):
            if processor is None:
                raise ValueError(
                    f"HFBackend got a loaded {type(model).__name__} but no processor; pass processor= as well"
                )
            self.model = model
            self.model_name = str(getattr(model.config, "_name_or_path", "") or type(model).__name__)
            self.device = str(model.device)
            self.dtype = model.dtype
        elif isinstance(model, (str, Path)):
            self.model_name = str(model)
            path = self.model_name
            shipped = _shipped_judge(self.model_name)
            if shipped is not None:
                path, processor = shipped
            self.device = _resolve_device(device)
            self.dtype = _resolve_dtype(dtype, self.device)
            try:
                self.model = _load_model(path, self.dtype, trust_remote_code=trust_remote_code)
            except OSError as e:
                raise ValueError(
                    f"HFBackend could not load judge model {self.model_name!r} (a Hub id or a folder with "
                    f"config.json and *.safetensors was expected): {e}"
                ) from None
            self.model.to(self.device)
        else:
            raise TypeError(
                f"HFBackend model must be a name, a path or a PreTrainedModel, got {type(model).__name__}"
            )
        self.model.eval()

        if processor is None:
            try:
                processor = AutoProcessor.from_pretrained(
                    self.model_name, trust_remote_code=trust_remote_code
                )
            except OSError as e:
                raise ValueError(
                    f"HFBackend could not load the processor of {self.model_name!r}: {e}"
                ) from None
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        # A processor that is only a tokenizer belongs to a text-only model: it judges texts, not images.
        self.text_only = getattr(processor, "image_processor", None) is None
        # Left padding keeps every sequence's last real token at position -1, where the choice logits are read
        # and where generation continues.
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self._stamp = _weights_stamp(path if isinstance(model, (str, Path)) else self.model_name)
        self._choice_ids: dict[tuple[str, ...], tuple[list[int], ...]] = {}
        self._torch = torch

    def __repr__(self) -> str:
        return f"HFBackend(model={self.model_name!r}, mode={self.mode!r}, dtype={self.dtype}, device={self.device!r})"

    def fingerprint(self) -> str:
        parts = [
            "hf",
            self.model_name,
            f"weights={self._stamp or getattr(self.model.config, '_commit_hash', None) or '-'}",
            f"dtype={str(self.dtype).removeprefix('torch.')}",
            f"mode={self.mode}",
            f"template={TEMPLATE_VERSION}",
        ]
        if self.mode == "generate":
            parts.append(f"max_new_tokens={self.max_new_tokens}")
        return "|".join(parts)

    # ---- transport ----------------------------------------------------------------------------------------------

    def choice_token_ids(self, choices: tuple[str, ...]) -> tuple[list[int], ...]:
        """Token ids that spell each choice as one token (case and leading-space variants), cached.

        A choice that no variant spells as one token (e.g. "10" in a tokenizer that splits digits) cannot be read
        from a single position's logits: that is an error, not a silently dropped answer. The one exception is the
        cannot-assess answer: a model that splits it still judges, its "unknown" read from generated text only.
        """
        if choices not in self._choice_ids:
            found: list[list[int]] = []
            for choice in choices:
                ids = []
                for variant in choice_variants(choice):
                    enc = self.tokenizer.encode(variant, add_special_tokens=False)
                    if len(enc) == 1 and enc[0] not in ids:
                        ids.append(enc[0])
                if not ids and choice == CANNOT_ASSESS_ANSWER:
                    logger.warning(
                        "judge model %r: %r is not a single token, so mode='probs' never answers it",
                        self.model_name,
                        choice,
                    )
                elif not ids:
                    raise ValueError(
                        f"judge model {self.model_name!r}: answer {choice!r} is not a single token in its "
                        f"vocabulary, so mode='probs' cannot score it; use mode='generate'"
                    )
                found.append(ids)
            self._choice_ids[choices] = tuple(found)
        return self._choice_ids[choices]

    def _render(self, request: ChatRequest) -> str:
        """The request as the model's chat text, up to the assistant's turn."""
        messages = request.messages
        if self.text_only:  # plain chat templates take a string per message, not a list of parts
            messages = [
                {
                    "role": m["role"],
                    "content": "".join(p["text"] for p in m["content"] if p["type"] == "text"),
                }
                for m in messages
            ]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def _tokenize(self, texts: list[str], images: list[list[Image.Image]]) -> Any:
        if self.text_only:
            return self.processor(text=texts, padding=True, return_tensors="pt")
        return self.processor(
            text=texts, images=images if any(images) else None, padding=True, return_tensors="pt"
        )

    def _encode(self, requests: Sequence[ChatRequest]) -> Any:
        texts = []
        for req in requests:
            text = self._render(req)
            if self.mode == "probs":
                text += req.answer_prefix
            texts.append(text)
        return self._tokenize(texts, [req.images for req in requests]).to(self.device)

    def _chat(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        # Free-text requests (rubric writing) are always generated, whatever the judging mode; requests without
        # images (zero-shot rubrics, guide structuring, texts to judge) are batched apart, since the processor wants
        # images in all rows of a batch or in none.
        results: list[ChatResult | None] = [None] * len(requests)
        groups: dict[tuple[bool, bool], list[int]] = {}
        for i, r in enumerate(requests):
            if self.text_only and r.images:
                results[i] = ChatResult(
                    error=f"judge model {self.model_name!r} is a text-only model: it sees no images"
                )
                continue
            generated = r.kind == "text" or self.mode == "generate"
            groups.setdefault((generated, bool(r.images)), []).append(i)
        for (generated, _), indices in groups.items():
            if not generated and self.share_prefix:
                indices = self._probs_by_prefix(requests, indices, results)
            for start in range(0, len(indices), self.batch_size):
                chunk_ids = indices[start : start + self.batch_size]
                chunk = [requests[i] for i in chunk_ids]
                answers = self._generate(chunk) if generated else self._probs(chunk)
                for i, answer in zip(chunk_ids, answers, strict=True):
                    results[i] = answer
        return [r for r in results if r is not None]

    def _probs(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        torch = self._torch
        inputs = self._encode(requests)
        with torch.inference_mode():
            logits = self.model(**inputs, logits_to_keep=1).logits[:, -1, :]
        # Softmax in float32: bf16 logits would round small choice probabilities to zero.
        probs = torch.softmax(logits.float(), dim=-1)
        out = []
        for row, req in zip(probs, requests, strict=True):
            ids = self.choice_token_ids(req.choices)
            out.append(ChatResult(choice_probs=tuple(float(row[i].sum()) for i in ids)))
        for r, n in zip(out, inputs["attention_mask"].sum(dim=1).tolist(), strict=True):
            r.prompt_tokens, r.completion_tokens = int(n), 0
        return out

    # ---- shared-prefix scoring -------------------------------------------------------------------------------------

    def _probs_by_prefix(
        self, requests: Sequence[ChatRequest], indices: list[int], results: list[ChatResult | None]
    ) -> list[int]:
        """Answer, into `results`, the requests of `indices` that share their images with another; return the rest.

        Requests are grouped by the identity of their image objects (`RubricJudge.score_many` passes one image
        object to all of an item's criteria) and their choices; a group whose token prefix cannot be split cleanly is left to the
        full path.
        """
        by_images: dict[tuple[Any, ...], list[int]] = {}
        for i in indices:
            # The choices select the system prompt too (yes/no vs a 1..N rating), so they are part of the key.
            key = (requests[i].choices, *(id(im) for im in requests[i].images))
            by_images.setdefault(key, []).append(i)
        rest: list[int] = []
        for group in by_images.values():
            answers = self._probs_shared([requests[i] for i in group]) if len(group) > 1 else None
            if answers is None:
                rest.extend(group)
                continue
            for i, answer in zip(group, answers, strict=True):
                results[i] = answer
        return sorted(rest)

    def _split_prefix(self, texts: list[str]) -> tuple[str, list[list[int]]] | None:
        """The common prefix text of `texts` and each text's suffix token ids, or None when no clean split exists.

        The split is made in token space (the longest common run of token ids, keeping at least one suffix token),
        then checked: the prefix text must tokenize to exactly that run and hold every image placeholder, so that
        prefix + suffix are the very tokens a full pass would see.
        """
        tok = self.tokenizer
        if not getattr(tok, "is_fast", False):
            return None  # offsets are needed to cut the text at a token boundary
        enc = tok(texts, return_offsets_mapping=True)
        ids = enc["input_ids"]
        n = min(len(row) for row in ids) - 1
        first = ids[0]
        for row in ids[1:]:
            k = 0
            while k < n and row[k] == first[k]:
                k += 1
            n = k
        if n <= 0:
            return None
        prefix_text = texts[0][: enc["offset_mapping"][0][n - 1][1]]
        if tok(prefix_text)["input_ids"] != first[:n]:
            return None
        image_token = getattr(self.processor, "image_token", None)
        if image_token is not None:
            image_id = tok.convert_tokens_to_ids(image_token)
            if any(image_id in row[n:] for row in ids):
                return None
        return prefix_text, [row[n:] for row in ids]

    def _probs_shared(self, requests: Sequence[ChatRequest]) -> list[ChatResult] | None:
        """Choice probabilities of requests with the same images: one prefix pass, then batched suffix passes."""
        torch = self._torch
        texts = [self._render(r) + r.answer_prefix for r in requests]
        split = self._split_prefix(texts)
        if split is None:
            return None
        prefix_text, suffixes = split
        prefix = self._tokenize([prefix_text], [requests[0].images]).to(self.device)
        pad = self.tokenizer.pad_token_id
        out: list[ChatResult] = []
        with torch.inference_mode():
            prefix_cache = self._cache_of(self.model(**prefix, use_cache=True, logits_to_keep=1))
            if not hasattr(prefix_cache, "batch_repeat_interleave"):
                return None  # a cache type that cannot be copied across a batch: the full path answers these
            prefix_len = int(prefix["input_ids"].shape[1])
            for start in range(0, len(requests), self.batch_size):
                rows = suffixes[start : start + self.batch_size]
                width = max(len(r) for r in rows)
                # Right padding: each row's real tokens come first, and the causal mask keeps them from seeing the
                # pads after them, so no attention mask is needed (and the model derives positions from the cache
                # length, continuing the prefix's positions, M-RoPE offsets included).
                ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=self.device)
                last = torch.tensor([len(r) - 1 for r in rows], device=self.device)
                keep = torch.unique(last)
                cache = prefix_cache
                if start + self.batch_size < len(requests):
                    cache = copy.deepcopy(
                        prefix_cache
                    )  # the suffix pass appends to it; later chunks need a clean one
                cache.batch_repeat_interleave(len(rows))
                logits = self.model(
                    input_ids=ids, **{self._cache_arg: cache}, use_cache=True, logits_to_keep=keep
                ).logits
                picked = logits[torch.arange(len(rows), device=self.device), torch.searchsorted(keep, last)]
                # Softmax in float32: bf16 logits would round small choice probabilities to zero.
                probs = torch.softmax(picked.float(), dim=-1)
                for row, req, suffix in zip(probs, requests[start : start + len(rows)], rows, strict=True):
                    ids_ = self.choice_token_ids(req.choices)
                    out.append(
                        ChatResult(
                            choice_probs=tuple(float(row[i].sum()) for i in ids_),
                            prompt_tokens=prefix_len + len(suffix),
                            completion_tokens=0,
                        )
                    )
        return out

    @property
    def _cache_arg(self) -> str:
        # transformers renamed `past_key_values` to `cache` (5.2x); pass it under the name this version takes.
        params = inspect.signature(self.model.forward).parameters
        return "cache" if "cache" in params else "past_key_values"

    @staticmethod
    def _cache_of(output: Any) -> Any:
        cache = getattr(output, "cache", None)
        return cache if cache is not None else output.past_key_values

    def _generate(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        torch = self._torch
        inputs = self._encode(requests)
        budget = max((r.max_new_tokens or self.max_new_tokens) for r in requests)
        with torch.inference_mode():
            generated = self.model.generate(
                **inputs,
                max_new_tokens=budget,
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        new_tokens = generated[:, inputs["input_ids"].shape[1] :]
        texts = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        prompt_lens = inputs["attention_mask"].sum(dim=1).tolist()
        new_lens = (new_tokens != self.tokenizer.pad_token_id).sum(dim=1).tolist()
        return [
            ChatResult(text=t.strip(), prompt_tokens=int(p), completion_tokens=int(n))
            for t, p, n in zip(texts, prompt_lens, new_lens, strict=True)
        ]

    # ---- features for the alignment diagnostic --------------------------------------------------------------------

    def features(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Mean-pooled vision features of each image, `[N, D]` float32 (the vision tower's output, projected).

        Used by the representation-alignment diagnostic to compare the judge's view of images with the policy's.
        """
        torch = self._torch
        rows: list[np.ndarray] = []
        image_processor = getattr(self.processor, "image_processor", None)
        if image_processor is None or not hasattr(self.model, "get_image_features"):
            raise TypeError(f"judge model {self.model_name!r} has no image processor / get_image_features()")
        for start in range(0, len(images), self.batch_size):
            chunk = [im.convert("RGB") for im in images[start : start + self.batch_size]]
            pixel_inputs = image_processor(images=chunk, return_tensors="pt").to(self.device)
            with torch.inference_mode():
                out = self.model.get_image_features(**pixel_inputs)
            per_image = getattr(out, "pooler_output", out)
            if isinstance(per_image, torch.Tensor) and per_image.dim() == 3:
                pooled = per_image.float().mean(dim=1)
            elif isinstance(per_image, (list, tuple)) and len(per_image) == len(chunk):
                pooled = torch.stack([t.float().reshape(-1, t.shape[-1]).mean(dim=0) for t in per_image])
            else:
                raise TypeError(
                    f"judge model {self.model_name!r}: get_image_features() returned {type(per_image).__name__} "
                    f"that is not per-image features for {len(chunk)} images"
                )
            rows.append(pooled.cpu().numpy().astype(np.float32))
        if not rows:
            return np.zeros((0, 0), dtype=np.float32)
        return np.concatenate(rows, axis=0)
