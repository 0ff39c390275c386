"""Shared-prefix pointwise judging against full passes, hf backend, random-init Qwen2-VL on CPU.

    OMP_WAIT_POLICY=PASSIVE python bench/judge_prefix.py --image-size 448 --criteria 8 \
        --out bench/results/judge_prefix_448.json

Builds a small random-init Qwen2-VL whose proportions follow Qwen2-VL-7B (vision tower ~1/10 of the language
model's parameters, 14 px patches merged 2x2 so a 448 px image is 256 tokens) and a BPE tokenizer trained on the
judge's own templates (about 4 characters per token, as real tokenizers give on English; the tiny test tokenizer's
one byte per token would make the text, not the image, dominate). It then scores `--images` images on `--criteria`
yes/no criteria each, with `HFBackend(share_prefix=False)` (every question a full pass, batched 8 at a time) and
`share_prefix=True` (image + prompt once, criteria as suffixes), alternating, `--repeats` times, one thread.
Speedup = median full seconds / median shared seconds; the target is >= 0.6 * criteria. Probabilities must agree
within 1e-4. Token counts of the prefix and the suffixes go into the JSON, since they bound the speedup: at best
K * (P + S) / (P + K * S) for prefix length P and suffix length S, plus the vision tower run once instead of K times.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from PIL import Image

CRITERIA = [
    "there is exactly one red circle",
    "the circle is to the left of the square",
    "the square is blue",
    "the background is plain white",
    "the objects do not overlap",
    "the circle is larger than the square",
    "the image has no text or watermark",
    "the edges of the shapes are sharp",
    "the colours are saturated",
    "the square is in the lower half of the image",
    "there are no other objects",
    "the lighting is even across the image",
]
PROMPT = "a photo of a red circle to the left of a blue square on a white table"


def _corpus() -> list[str]:
    from importlib import resources

    texts = [
        p.read_text()
        for p in resources.files("arr").joinpath("templates").iterdir()
        if p.name.endswith(".txt")
    ]
    return texts + CRITERIA + [PROMPT, "yes no Yes No 1 2 3 4 5 rank reason"] * 4


def build_bench_tokenizer(vocab_size: int = 3000):
    """A byte-level BPE trained on the judge templates (word-sized tokens) with Qwen's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from arr.testing.tiny_vlm import SPECIAL_TOKENS

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_corpus(), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        padding_side="left",
        extra_special_tokens={
            "image_token": "<|image_pad|>",
            "video_token": "<|video_pad|>",
            "vision_bos_token": "<|vision_start|>",
            "vision_eos_token": "<|vision_end|>",
        },
    )
    for word in ("yes", "no", "1", "2"):
        if len(fast.encode(word, add_special_tokens=False)) != 1:
            raise RuntimeError(f"bench tokenizer: {word!r} is not one token")
    return fast


def build_bench_judge(out_dir: str | Path, image_size: int = 448, seed: int = 0) -> Path:
    """Save a random Qwen2-VL (LM 256 wide x 4 layers, vision 64 wide x 4 layers) with its processor to `out_dir`."""
    from arr.testing.tiny_vlm import save_random_qwen2vl

    pixels = image_size * image_size
    return save_random_qwen2vl(
        out_dir,
        build_bench_tokenizer(),
        text_config={
            "hidden_size": 256,
            "intermediate_size": 1024,
            "num_hidden_layers": 4,
            "num_attention_heads": 8,
            "num_key_value_heads": 4,
            "max_position_embeddings": 8192,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 6, 6]},
        },
        vision_config={"depth": 4, "embed_dim": 64, "hidden_size": 256, "num_heads": 4, "mlp_ratio": 4},
        patch_size=14,
        merge_size=2,
        min_pixels=pixels,
        max_pixels=pixels,
        seed=seed,
    )


def random_images(n: int, size: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def param_counts(model) -> dict[str, int]:
    vision = sum(p.numel() for p in model.model.visual.parameters())
    total = sum(p.numel() for p in model.parameters())
    return {"vision": vision, "language": total - vision, "total": total}


def machine() -> str:
    return f"{platform.machine()} {platform.processor() or ''} torch {torch.__version__}, {torch.get_num_threads()} thread(s)"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--image-size", "--image_size", type=int, default=448)
    p.add_argument("--criteria", type=int, default=8)
    p.add_argument("--images", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="bench/results/judge_prefix.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from arr.backends.base import CriterionQuery
    from arr.backends.chat import render_criterion
    from arr.backends.hf import HFBackend
    from arr.rubrics import Criterion, Rubric

    folder = build_bench_judge(tempfile.mkdtemp(prefix="arr_bench_judge_"), args.image_size)
    full = HFBackend(str(folder), batch_size=8, trust_remote_code=True, share_prefix=False)
    shared = HFBackend(str(folder), batch_size=8, trust_remote_code=True, share_prefix=True)
    rubric = Rubric(PROMPT, [Criterion(f"c{i}", CRITERIA[i % len(CRITERIA)]) for i in range(args.criteria)])
    images = random_images(args.images, args.image_size)
    queries = [CriterionQuery(PROMPT, im, rubric, c) for im in images for c in rubric.criteria]

    # Token lengths of one group: the shared prefix (image tokens included) and each criterion's suffix.
    texts = [
        shared.processor.apply_chat_template(
            render_criterion(q).messages, add_generation_prompt=True, tokenize=False
        )
        for q in queries[: args.criteria]
    ]
    prefix_text, suffixes = shared._split_prefix(texts)
    prefix_len = int(
        shared.processor(text=[prefix_text], images=[[images[0]]], return_tensors="pt")["input_ids"].shape[1]
    )
    suffix_len = statistics.mean(len(s) for s in suffixes)
    image_tokens = (args.image_size // 28) ** 2

    full.judge_criteria(queries[:2])  # warm-up: allocator, lazy imports
    shared.judge_criteria(queries[:2])
    t_full: list[float] = []
    t_shared: list[float] = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        want = full.judge_criteria(queries)
        t_full.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        got = shared.judge_criteria(queries)
        t_shared.append(time.perf_counter() - t0)
    max_diff = max(abs(a.prob_yes - b.prob_yes) for a, b in zip(want, got, strict=True))
    k = args.criteria
    speedup = statistics.median(t_full) / statistics.median(t_shared)
    result = {
        "benchmark": "judge_prefix",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "args": vars(args),
        "params": param_counts(full.model),
        "tokens": {
            "prefix": prefix_len,
            "image": image_tokens,
            "suffix_mean": suffix_len,
            "full_question": prefix_len + suffix_len,
        },
        "token_bound_speedup": k * (prefix_len + suffix_len) / (prefix_len + k * suffix_len),
        "seconds_full": t_full,
        "seconds_shared": t_shared,
        "speedup": speedup,
        "target_speedup": 0.6 * k,
        "met": speedup >= 0.6 * k and max_diff < 1e-4,
        "max_abs_prob_diff": max_diff,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
