"""The shapes judge's processor: Qwen2-VL's, without the video half.

`Qwen2VLProcessor` insists on a video processor, and the video processor needs torchvision, which cannot be
installed beside the CPU torch wheel. A judge reads images only, so this subclass drops videos. arr loads it by
class (`ShapesJudgeProcessor.from_pretrained(folder)`, no remote code); `save_pretrained` also copies this file next
to the model, so that `transformers serve --trust-remote-code FOLDER` can load the folder on its own. It imports
nothing but transformers, so it works as such remote code.
"""

from transformers import Qwen2VLProcessor


class ShapesJudgeProcessor(Qwen2VLProcessor):
    """`Qwen2VLProcessor` with image and text inputs only."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)
