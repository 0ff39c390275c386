"""Reward-model backends load from tiny random configs of the real transformers classes and give finite scores."""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image

from arr.reward_models.backends import BlipScorer, CLIPScorer, QwenVLScorer
from arr.reward_models.rewards import RewardModelReward, RewardModelTRLReward
from arr.shapes.models import build_tokenizer

PROMPTS = ["a red circle", "two blue squares", "a green triangle left of a red circle"]


def _images(n: int = 3) -> list[Image.Image]:
    return [Image.new("RGB", (40, 40), (40 * i, 200 - 50 * i, 90)) for i in range(n)]


def _tiny_clip():
    from transformers import CLIPConfig, CLIPModel
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tok = build_tokenizer(max_length=16)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=16, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
            pad_token_id=tok.pad_token_id,
        ),
        vision_config=dict(
            image_size=32, patch_size=8, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
            num_attention_heads=4,
        ),
        projection_dim=16,
    )  # fmt: skip
    torch.manual_seed(0)
    proc = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return CLIPModel(config), proc, tok


def test_clip_scorer_is_scaled_cosine_and_round_trips(tmp_path):
    model, proc, tok = _tiny_clip()
    scorer = CLIPScorer(model, proc, tok)
    scores = scorer.score(PROMPTS, _images())
    assert len(scores) == 3 and all(math.isfinite(s) for s in scores)
    # |score| <= logit_scale.exp(): it is a scaled cosine similarity.
    assert all(abs(s) <= float(model.logit_scale.exp()) + 1e-4 for s in scores)
    # Batching does not change scores.
    assert CLIPScorer(model, proc, tok, batch_size=1).score(PROMPTS, _images()) == pytest.approx(
        scores, abs=1e-5
    )
    # Save and load as a Hub folder would be: same scores.
    model.save_pretrained(tmp_path / "m")
    from transformers import CLIPModel

    again = CLIPScorer(CLIPModel.from_pretrained(tmp_path / "m"), proc, tok).score(PROMPTS, _images())
    assert again == pytest.approx(scores, abs=1e-5)


def test_blip_scorer_imagereward_style():
    from transformers import BlipConfig, BlipForImageTextRetrieval
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    tok = build_tokenizer(max_length=16)
    config = BlipConfig(
        text_config=dict(
            vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
            encoder_hidden_size=32, max_position_embeddings=32, pad_token_id=tok.pad_token_id,
        ),
        vision_config=dict(
            image_size=32, patch_size=8, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
            num_attention_heads=4,
        ),
    )  # fmt: skip
    torch.manual_seed(0)
    blip = BlipForImageTextRetrieval(config)
    scorer = BlipScorer(blip, BlipImageProcessorPil(size={"height": 32, "width": 32}), tok, head_dims=(16, 1))
    scores = scorer.score(PROMPTS, _images())
    assert len(scores) == 3 and all(math.isfinite(s) for s in scores)
    assert len(set(round(s, 6) for s in scores)) == 3  # the image and the text both reach the score


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory):
    from arr.testing.tiny_vlm import build_tiny_qwen2vl

    return build_tiny_qwen2vl(tmp_path_factory.mktemp("qwen"))


def test_qwen_scorer_hpsv3_style(tiny_qwen, tmp_path):
    scorer = QwenVLScorer.from_pretrained(str(tiny_qwen), trust_remote_code=True)
    scores = scorer.score(PROMPTS, _images())
    assert len(scores) == 3 and all(math.isfinite(s) for s in scores)
    # Left padding: a prompt scores the same alone as in a batch with longer ones.
    alone = scorer.score(PROMPTS[:1], _images()[:1])
    assert alone[0] == pytest.approx(scores[0], abs=1e-4)
    # A saved head loads back and reproduces the scores.
    from safetensors.torch import save_file

    save_file(
        {k: v.contiguous() for k, v in scorer.head.state_dict().items()}, str(tmp_path / "head.safetensors")
    )
    again = QwenVLScorer.from_pretrained(
        str(tiny_qwen), head_path=tmp_path / "head.safetensors", trust_remote_code=True
    )
    assert again.score(PROMPTS, _images()) == pytest.approx(scores, abs=1e-5)


def test_qwen_scorer_editreward_style_needs_and_uses_source(tiny_qwen):
    base = QwenVLScorer.from_pretrained(str(tiny_qwen), trust_remote_code=True)
    scorer = QwenVLScorer.for_editing(base.model, base.processor)
    scorer.head.load_state_dict(base.head.state_dict())
    edited, sources = _images(), list(reversed(_images()))
    scores = scorer.score(PROMPTS, edited, sources)
    assert len(scores) == 3 and all(math.isfinite(s) for s in scores)
    with pytest.raises(ValueError, match="source image"):
        scorer.score(PROMPTS, edited)


def test_scorers_as_rewards():
    model, proc, tok = _tiny_clip()
    scorer = CLIPScorer(model, proc, tok)
    images = _images(4)
    out = RewardModelReward(scorer)(
        prompts=PROMPTS[:2], images=[images[:2], images[2:]], rubrics=[None, None]
    )
    flat = scorer.score([PROMPTS[0]] * 2 + [PROMPTS[1]] * 2, images)
    assert [x for g in out.rewards for x in g] == pytest.approx(flat, abs=1e-5)
    trl = RewardModelTRLReward(scorer, name="pickscore")
    assert trl.__name__ == "pickscore"
    got = trl(prompts=[PROMPTS[0]] * 2 + [PROMPTS[1]] * 2, completions=images + [])
    assert got == pytest.approx(flat, abs=1e-5)
    # A completion with no image gets None, not a crash.
    assert trl(prompts=["a red circle"], completions=[""]) == [None]
