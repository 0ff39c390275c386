"""The shapes judge: a tiny Qwen2-VL (`Qwen2VLForConditionalGeneration`) that judges shapes-world images.

It is an ordinary transformers VLM folder, so every judge path serves it unchanged: the hf backend in process
(`load_backend("hf", model="shapes-judge")`), `transformers serve` with the openai backend, the reward server.
What is particular to it:
- its tokenizer is a byte-level BPE trained on the judge's own questions (arr/templates rendered through the chat
  template, with their answers): each line of template text becomes one or a few tokens, while the shapes
  vocabulary (colours, shapes, numbers, relations, "yes"/"no"/"unknown") and every digit are kept as tokens of
  their own, so that prompts the judge never saw are spelled from the same pieces as those it did. A criterion
  question is ~100 tokens, a pairwise one ~130 (16 of them per image);
- images are 48x48: 6-px vision patches merged 2x2, so each image token covers one 12-px cell of the scene grid.

`arr shapes pretrain-judge` (arr/shapes/pretrain_judge.py) trains it; the shipped weights live in
arr/shapes/assets/judge with their model card.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from arr.shapes.prompts import NUMBER_WORDS, PLURALS, RELATIONS
from arr.shapes.scene import COLORS, IMAGE_SIZE, SHAPES

JUDGE_NAME = "shapes-judge"
JUDGE_DIR = Path(__file__).parent / "assets" / "judge"
# How a saved judge folder names its processor class (the module file `save_judge` copies beside the weights).
PROCESSOR_CLASS_REF = "judge_processor.ShapesJudgeProcessor"

# Qwen2-VL's special tokens, in the roles the model and processor look them up by.
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# The Qwen chat format: <|im_start|>role\n...<|im_end|>\n, one vision block per image part (OpenAI-style
# "image_url" parts too, which is how `transformers serve` passes the openai backend's images).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' or part['type'] == 'image_url' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def isolated_words() -> list[str]:
    """Words that are always tokens of their own: what varies between questions and the answer words."""
    words = {
        *COLORS,
        *SHAPES,
        *PLURALS.values(),
        *NUMBER_WORDS.values(),
        *(w for r in RELATIONS for w in r.split()),
    }
    words |= {"no", "five", "yes", "unknown", "top", "bottom", "up", "down", "row", "column", "corner"}
    return sorted(words, key=lambda w: (-len(w), w))  # longest first: "circles" before "circle"


def pretokenizer_pattern() -> str:
    """Split points of the pre-tokenizer: newlines, single digits and the isolated words."""
    return r"\n|\d|\b(?:" + "|".join(isolated_words()) + r")\b"


@dataclass
class JudgeModelConfig:
    """Sizes of the judge. Defaults: ~1.2M parameters, 16 image tokens per 48x48 image."""

    hidden_size: int = 128
    intermediate_size: int = 384
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    vision_depth: int = 2
    vision_embed_dim: int = 64
    vision_heads: int = 4
    vision_mlp_ratio: int = 2
    patch_size: int = 6
    merge_size: int = 2
    image_size: int = IMAGE_SIZE
    vocab_size: int = 3000  # the BPE tokenizer's target; the trained vocabulary may be smaller
    min_frequency: int = 8  # BPE merges seen fewer times than this in the corpus are not learnt
    max_positions: int = 1024
    init_range: float = 0.02

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} must divide into num_heads {self.num_heads}, and num_heads into "
                f"num_kv_heads {self.num_kv_heads}"
            )
        if (self.hidden_size // self.num_heads) % 8:
            raise ValueError(
                f"head size {self.hidden_size // self.num_heads} must be a multiple of 8 (M-RoPE sections)"
            )
        if self.image_size % (self.patch_size * self.merge_size):
            raise ValueError(
                f"image_size {self.image_size} must be a multiple of patch_size * merge_size "
                f"({self.patch_size} * {self.merge_size})"
            )

    @property
    def image_tokens(self) -> int:
        return (self.image_size // (self.patch_size * self.merge_size)) ** 2

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JudgeModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(
                f"unknown keys {sorted(unknown)} in a judge model config; expected {sorted(known)}"
            )
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_judge_tokenizer(texts: Iterable[str], config: JudgeModelConfig | None = None):
    """A byte-level BPE tokenizer trained on `texts` (the judge's questions and answers), Qwen's special tokens."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    config = config or JudgeModelConfig()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pretokenizer_pattern()), "isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    trainer = trainers.BpeTrainer(
        vocab_size=config.vocab_size,
        min_frequency=config.min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # The isolated words are in the corpus on their own as well, once per text: as frequent as the template lines,
    # so that each becomes one token even where the questions use it rarely or the vocabulary is small.
    texts = list(texts)
    tok.train_from_iterator([*texts, *(" ".join(isolated_words()) for _ in texts)], trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        padding_side="left",
        model_max_length=config.max_positions,
        extra_special_tokens={
            "image_token": "<|image_pad|>",
            "video_token": "<|video_pad|>",
            "vision_bos_token": "<|vision_start|>",
            "vision_eos_token": "<|vision_end|>",
        },
    )


def build_judge_processor(tokenizer: Any, config: JudgeModelConfig | None = None):
    """The judge's processor: `tokenizer`, the PIL image processor at 48x48 and the chat template."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from arr.shapes.judge_processor import ShapesJudgeProcessor

    config = config or JudgeModelConfig()
    pixels = config.image_size * config.image_size
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=config.patch_size,
        merge_size=config.merge_size,
        temporal_patch_size=2,
        min_pixels=pixels,
        max_pixels=pixels,
    )
    return ShapesJudgeProcessor(image_processor, tokenizer, chat_template=CHAT_TEMPLATE)


def build_judge_model(tokenizer: Any, config: JudgeModelConfig | None = None, seed: int = 0):
    """A randomly initialised `Qwen2VLForConditionalGeneration` of `config`'s sizes for `tokenizer`."""
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    config = config or JudgeModelConfig()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    special = {
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
    }
    head = config.hidden_size // config.num_heads
    # M-RoPE splits each head's rotary half (head / 2 frequencies) into temporal, height and width sections.
    sections = [head // 8, 3 * head // 16, head // 2 - head // 8 - 3 * head // 16]
    hf_config = Qwen2VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": config.hidden_size,
            "intermediate_size": config.intermediate_size,
            "num_hidden_layers": config.num_layers,
            "num_attention_heads": config.num_heads,
            "num_key_value_heads": config.num_kv_heads,
            "max_position_embeddings": config.max_positions,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": sections},
            "initializer_range": config.init_range,
            "tie_word_embeddings": True,
            **special,
        },
        vision_config={
            "depth": config.vision_depth,
            "embed_dim": config.vision_embed_dim,
            "hidden_size": config.hidden_size,
            "num_heads": config.vision_heads,
            "mlp_ratio": config.vision_mlp_ratio,
            "patch_size": config.patch_size,
            "spatial_merge_size": config.merge_size,
            "temporal_patch_size": 2,
            "initializer_range": config.init_range,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
        **special,
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(hf_config)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.do_sample = False
    return model


def save_judge(model: Any, processor: Any, folder: str | Path, dtype: Any = None) -> Path:
    """Write a loadable judge folder: weights (safetensors, in `dtype` if given), tokenizer, processor, its code."""
    import copy

    from arr.shapes.judge_processor import ShapesJudgeProcessor

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    to_save = model if dtype is None else copy.deepcopy(model).to(dtype)
    to_save.save_pretrained(out)
    # Registered so that the folder's processor_config.json points AutoProcessor at the copied processor code.
    ShapesJudgeProcessor.register_for_auto_class("AutoProcessor")
    processor.save_pretrained(out)
    return out


def resolve_judge(name: str | Path) -> Path | None:
    """The folder of a shapes judge: the shipped one for its name ("shapes-judge"), or a folder `save_judge` wrote
    (its processor config names `ShapesJudgeProcessor`); None for anything else."""
    import json

    if str(name) == JUDGE_NAME:
        return JUDGE_DIR
    config = Path(name) / "processor_config.json"
    if not config.is_file():
        return None
    try:
        auto_map = json.loads(config.read_text(encoding="utf-8")).get("auto_map", {})
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return None
    return Path(name) if auto_map.get("AutoProcessor") == PROCESSOR_CLASS_REF else None


def load_judge_processor(folder: str | Path):
    """The processor of a judge folder written by `save_judge`, loaded by class (no remote code runs)."""
    from arr.shapes.judge_processor import ShapesJudgeProcessor

    return ShapesJudgeProcessor.from_pretrained(str(folder))


__all__ = [
    "CHAT_TEMPLATE",
    "JUDGE_DIR",
    "JUDGE_NAME",
    "SPECIAL_TOKENS",
    "JudgeModelConfig",
    "build_judge_model",
    "build_judge_processor",
    "build_judge_tokenizer",
    "isolated_words",
    "load_judge_processor",
    "pretokenizer_pattern",
    "resolve_judge",
    "save_judge",
]
