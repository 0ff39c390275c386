"""A tiny random-init Qwen2-VL judge built in code, for tests and benchmarks (no Hub access needed).

`build_tiny_qwen2vl(out_dir)` writes a complete model folder (safetensors weights, byte-level BPE tokenizer with
Qwen's special tokens, a Qwen-style chat template, a PIL image processor giving 4 tokens per image) that
`AutoModelForImageTextToText.from_pretrained` and `AutoProcessor.from_pretrained(..., trust_remote_code=True)`
load offline, and that `transformers serve` can serve. Its answers are random but deterministic, which is all
the backend tests need: they check plumbing (probabilities, batching, parsing), not judgment quality.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# The Qwen chat format and special tokens, as the shapes judge uses them.
from arr.shapes.judge_model import CHAT_TEMPLATE, SPECIAL_TOKENS

# Merges that make the judge's answer words single tokens (with and without a leading space, "Ġ" in
# byte-level BPE), so the token-probability paths see real single-token choices; digits are bytes already.
_MERGES = [
    ("y", "e"),
    ("ye", "s"),
    ("Y", "e"),
    ("Ye", "s"),
    ("n", "o"),
    ("N", "o"),
    ("Ġ", "yes"),
    ("Ġ", "Yes"),
    ("Ġ", "no"),
    ("Ġ", "No"),
    # "unknown" (the cannot-assess answer): "n"+"o" merges first, so the word is built around "no".
    ("u", "n"),
    ("k", "no"),
    ("kno", "w"),
    ("know", "n"),
    ("un", "known"),
    ("Ġ", "unknown"),
]

# Vision patches of 4 px merged 2x2: one image token per 8x8 pixels; images are resized to at most 16x16 pixels,
# so every image costs 4 tokens.
_PATCH = 4
_MERGE = 2
_MAX_PIXELS = 16 * 16
_MIN_PIXELS = 8 * 8


def build_tiny_tokenizer():
    """A byte-level BPE tokenizer (any text encodes) with Qwen's special tokens and single-token yes/no."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    for a, b in _MERGES:
        vocab[a + b] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=list(_MERGES)))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
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


def build_tiny_qwen2vl(out_dir: str | Path, seed: int = 0, init_range: float = 0.2) -> Path:
    """Build, save and return the folder of a ~150k-parameter random Qwen2-VL with its processor.

    `init_range` is larger than Qwen's 0.02 so that the random model's choice probabilities spread away from 0.5
    and tests can tell answers apart.
    """
    return save_random_qwen2vl(
        out_dir,
        build_tiny_tokenizer(),
        text_config={
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 4096,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
            "initializer_range": init_range,
        },
        vision_config={
            "depth": 2,
            "embed_dim": 32,
            "hidden_size": 64,
            "num_heads": 2,
            "mlp_ratio": 2,
            "initializer_range": init_range,
        },
        patch_size=_PATCH,
        merge_size=_MERGE,
        min_pixels=_MIN_PIXELS,
        max_pixels=_MAX_PIXELS,
        seed=seed,
    )


def save_random_qwen2vl(
    out_dir: str | Path,
    tokenizer: Any,
    text_config: dict[str, Any],
    vision_config: dict[str, Any],
    *,
    patch_size: int,
    merge_size: int,
    min_pixels: int,
    max_pixels: int,
    seed: int = 0,
) -> Path:
    """Save a random-init Qwen2-VL of the given sizes with its processor (this module's chat template and special
    tokens, which `tokenizer` must have), ready for `load_backend("hf", model=out_dir)`; returns the folder."""
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from arr.testing.tiny_qwen2vl_processor import TinyQwen2VLProcessor

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    special = {
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
    }
    config = Qwen2VLConfig(
        text_config={"vocab_size": len(tokenizer), **text_config, **special},
        vision_config={
            **vision_config,
            "patch_size": patch_size,
            "spatial_merge_size": merge_size,
            "temporal_patch_size": 2,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        **special,
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.do_sample = False
    model.save_pretrained(out)

    image_processor = Qwen2VLImageProcessorPil(
        patch_size=patch_size,
        merge_size=merge_size,
        temporal_patch_size=2,
        min_pixels=min_pixels,
        max_pixels=max_pixels,
    )
    processor = TinyQwen2VLProcessor(image_processor, tokenizer, chat_template=CHAT_TEMPLATE)
    TinyQwen2VLProcessor.register_for_auto_class("AutoProcessor")
    processor.save_pretrained(out)
    return out
