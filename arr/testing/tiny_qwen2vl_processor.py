"""A Qwen2-VL processor without a video processor, for the tiny test judge built by `arr.testing.tiny_vlm`.

`Qwen2VLProcessor` insists on a video processor, and the video processor needs torchvision, which cannot be
installed beside the CPU torch wheel. Images are all a judge needs, so this subclass drops the video half.
`save_pretrained` copies this file next to the model; loading it back needs `trust_remote_code=True` (tests only,
on a folder the tests built themselves). It imports nothing but transformers so it works as remote code.
"""

from transformers import Qwen2VLProcessor


class TinyQwen2VLProcessor(Qwen2VLProcessor):
    """`Qwen2VLProcessor` with image and text inputs only."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)
