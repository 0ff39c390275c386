"""Shared fixtures and helpers of the test suite.

Fixtures are found by pytest; plain helpers (tiny models, run settings, images) are imported from here:
`from tests.conftest import tiny_policy, make_args`. Scripted judge backends live in tests/fakes.py. Heavy imports
(diffusers, transformers) stay inside the helpers that need them, so collecting a test file stays cheap.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from arr.shapes.models import ASSETS_DIR, CONFIG_NAME

# The tests never reach the Hugging Face Hub: models are built in code.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent

# ---- subprocesses ------------------------------------------------------------------------------------------------

# The environment of a child `python -m arr ...` or bench script. Without a launcher's rank variables: inside "a
# rank", `arr demo` would train instead of launching its ranks. One thread, and no busy-waiting OpenMP threads, so
# that children share the 2-core machines this suite runs on.
SUBPROCESS_ENV = {
    **{
        k: v
        for k, v in os.environ.items()
        if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
    },
    "OMP_WAIT_POLICY": "PASSIVE",
    "OMP_NUM_THREADS": "1",
    "HF_HUB_OFFLINE": "1",
}
needs_shipped_t2i = pytest.mark.skipif(
    not (ASSETS_DIR / "t2i" / CONFIG_NAME).is_file(), reason="shipped t2i weights missing"
)
needs_shipped_edit = pytest.mark.skipif(
    not (ASSETS_DIR / "edit" / CONFIG_NAME).is_file(), reason="shipped edit weights missing"
)

# ---- images ------------------------------------------------------------------------------------------------------


def random_image(seed: int, size: int = 32) -> Image.Image:
    """A reproducible RGB noise image: distinct inputs for judges whose answers need not mean anything."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


# ---- a tiny VLM judge and tiny feature models --------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_vlm_path(tmp_path_factory):
    """A tiny random Qwen2-VL judge saved to a temporary folder (built once per test run, ~2 s)."""
    from arr.testing.tiny_vlm import build_tiny_qwen2vl

    return build_tiny_qwen2vl(tmp_path_factory.mktemp("tiny_qwen2vl"))


def save_tiny_feature_models(root: Path) -> tuple[Path, Path]:
    """A tiny random CLIP (with a word-level tokenizer) and a tiny DINOv2, saved as Hub-style folders."""
    import torch
    from transformers import (
        BitImageProcessor,
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        Dinov2Config,
        Dinov2Model,
    )

    from arr.shapes.models import build_tokenizer

    tok = build_tokenizer(max_length=16)
    clip_dir, dino_dir = root / "clip", root / "dino"
    torch.manual_seed(0)
    text = dict(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                max_position_embeddings=16, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id)  # fmt: skip
    vision = dict(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=8)).save_pretrained(clip_dir)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        clip_dir
    )
    tok.save_pretrained(clip_dir)
    Dinov2Model(Dinov2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                             image_size=32, patch_size=8)).save_pretrained(dino_dir)  # fmt: skip
    BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        dino_dir
    )
    return clip_dir, dino_dir


# ---- judge servers -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def transformers_server(tiny_vlm_path, tmp_path_factory):
    """One `transformers serve` process of the tiny judge, on a free port, per test module.

    Start-up takes 5-40 s, mostly imports. A test may kill it; `alive_server` restarts it for the tests after.
    """
    from arr.testing.serve import TransformersServer

    srv = TransformersServer(tiny_vlm_path, log_path=tmp_path_factory.mktemp("serve") / "serve.log")
    srv.start()
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def alive_server(server):
    """`server` (a TransformersServer), restarted first if an earlier test stopped or killed it."""
    if server.process is None or server.process.poll() is not None:
        server.start()
        server.wait_ready()
    return server


@pytest.fixture
def faulty_judge_server():
    """An in-process OpenAI-compatible judge whose faults a test queues; a hang fault lasts 0.8 s."""
    from arr.testing.faulty_server import FaultyJudgeServer

    with FaultyJudgeServer(hang_seconds=0.8) as server:
        yield server


# ---- the CLI in a child process ------------------------------------------------------------------------------------

# A few steps of the demo recipe: enough to write every file of a run directory.
TINY_RUN = ["--max_steps", "2", "--prompts_per_step", "2", "--eval_num_prompts", "4", "--num_train_prompts", "8",
            "--save_steps", "1", "--sample_steps", "1", "--eval_steps", "0", "--report_to", "none", "--align_every", "0"]  # fmt: skip


def run_arr(*args, cwd: Path | None = None):
    """`python -m arr ARGS...` in a child process, as users run it (not a launched rank)."""
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "arr", *map(str, args)],
        capture_output=True,
        text=True,
        env=SUBPROCESS_ENV,
        cwd=cwd,
        timeout=600,
    )


# ---- RPO on a tiny shapes policy ---------------------------------------------------------------------------------

# metrics.jsonl fields that measure the machine, not the run: left out when two runs must agree.
TIMING = {
    "judge_seconds",
    "judge_wait_seconds",
    "step_seconds",
    "sample_seconds",
    "optimize_seconds",
    "eval_seconds",
}


def tiny_shapes_config():
    """A 2-layer shapes text-to-image model: big enough to train, small enough for a few CPU steps per test."""
    from arr.shapes.models import ShapesModelConfig

    return ShapesModelConfig(
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        text_hidden_size=16,
        text_layers=1,
        text_heads=2,
    )


def tiny_policy(dtype=None, **kw):
    """A randomly initialised (seed 0) tiny shapes policy, sampled with 3 steps. In float64 it comes with a float64
    LoRA (r4/alpha8, as `make_args`, initialised as the trainer would), so that two runs can be compared to ~1e-9."""
    import torch

    from arr.policies.shapes import ShapesPolicy
    from arr.rpo.seeds import LORA_INIT_SALT, seed_for
    from arr.shapes.models import build_t2i_model

    model = build_t2i_model(tiny_shapes_config(), seed=0)
    policy = ShapesPolicy(model.to(dtype) if dtype is not None else model, num_steps=3, **kw)
    if dtype == torch.float64:
        torch.manual_seed(seed_for(0, LORA_INIT_SALT))
        policy.add_lora(4, 8)
    return policy


def cpu_fsdp_accelerator(**kwargs):
    """An Accelerator whose engine is FSDP version 2 over gloo on CPU, for tests of the trainer's FSDP path.

    accelerate turns FSDP on only for accelerator devices: on a CPU, an FSDP launch config with `cpu=True` gives
    MULTI_CPU (DDP), and without it every process runs alone (distributed type NO); the plugin is dropped without
    an error either way. This sets the engine that accelerate sets on GPUs. Everything after that is real:
    accelerate's FSDP2 preparation and checkpoints, torch's `fully_shard` and its collectives over gloo."""
    from accelerate import Accelerator
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    acc = Accelerator(cpu=True, step_scheduler_with_optimizer=False, **kwargs)
    acc.state.fsdp_plugin = FullyShardedDataParallelPlugin(
        fsdp_version=2,
        auto_wrap_policy="transformer_based_wrap",
        reshard_after_forward=True,
        state_dict_type="SHARDED_STATE_DICT",
    )
    acc.state.distributed_type = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    return acc


def brightness(images) -> float:
    """Mean grey level (0-255) of the images: the quantity BrightnessBackend prefers."""
    return float(
        sum(sum(im.convert("L").get_flattened_data()) / (im.width * im.height) for im in images) / len(images)
    )


def brightness_eval(records, images):
    """An evaluator for RPOTrainer: the held-out score is the images' mean brightness in [0, 1]."""
    return {"eval_score": brightness(images) / 255}


def make_args(tmp_path: Path, **kw):
    """An RPOConfig for a few CPU steps of a tiny policy, writing to `tmp_path / "run"`; `kw` overrides."""
    from arr.rpo import RPOConfig

    base = dict(
        output_dir=str(tmp_path / "run"),
        max_steps=3,
        prompts_per_step=4,
        num_sampling_steps=3,
        eval_num_prompts=4,
        eval_steps=0,
        eval_num_sampling_steps=3,
        save_steps=100,
        sample_steps=100,
        report_to="none",
        guidance_scale=1.0,
        lora_rank=4,
        lora_alpha=8,
        learning_rate=3e-3,
        cpu=True,
    )
    base.update(kw)
    return RPOConfig(**base)


def read_rows(run: Path) -> list[dict]:
    """The rows of a run's metrics.jsonl."""
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_same_rows(run_a: Path, run_b: Path, steps: list[int]) -> None:
    """Two runs wrote the same metrics rows at `steps` (timings aside): what an exact resume must give."""
    a, b = read_rows(run_a), read_rows(run_b)
    assert [r["step"] for r in a] == [r["step"] for r in b] == steps
    for ra, rb in zip(a, b, strict=True):
        for k in ra:
            if k not in TIMING:
                assert ra[k] == pytest.approx(rb[k], rel=1e-6, abs=1e-9), (ra["step"], k)


# ---- tiny SD3, FLUX and Qwen-Image policies ----------------------------------------------------------------------

FAMILIES = ["sd3", "flux", "qwen_image"]


class TinyText:
    """A deterministic stand-in for the text encoders: a fixed random table indexed by characters."""

    def __init__(self, dim: int, pooled: int = 16, length: int = 6):
        import torch

        gen = torch.Generator().manual_seed(123)
        self.table = torch.randn(128, dim, generator=gen)
        self.pool = torch.randn(dim, pooled, generator=gen)
        self.length = length

    def ids(self, prompts):
        import torch

        return torch.tensor(
            [[ord(ch) % 128 for ch in (p + " " * self.length)[: self.length]] for p in prompts]
        )

    def pair(self, prompts):
        e = self.table[self.ids(prompts)]
        return e, e.mean(1) @ self.pool

    def qwen(self, prompts, images=None):
        import torch

        # Variable lengths with a mask, as Qwen2.5-VL gives; the source image shifts the states when present.
        e = self.table[self.ids(prompts)]
        if images is not None:
            e = e + torch.tensor([float(sum(im.convert("L").tobytes())) / 1e5 for im in images]).view(
                -1, 1, 1
            )
        mask = torch.ones(e.shape[:2], dtype=torch.long)
        mask[0, -2:] = 0
        return e, mask


def kl_vae():
    """A tiny 2-block AutoencoderKL with 4 latent channels (SD3 and FLUX layouts)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=[8, 16],
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        norm_num_groups=8,
        layers_per_block=1,
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
    )


def build_family_policy(family, cfg=1.0, **kw):
    """A one-layer random-init policy of `family` ("sd3", "flux", "qwen_image") at 16 px, 3 sampling steps, with
    classifier-free guidance `cfg` as the family's pipeline names it: SD3's guidance_scale, FLUX's and Qwen-Image's
    true_cfg_scale (FLUX keeps its embedded guidance_scale 3.5 unless `kw` sets it)."""
    import torch
    from diffusers import (
        AutoencoderKLQwenImage,
        FluxTransformer2DModel,
        QwenImageTransformer2DModel,
        SD3Transformer2DModel,
    )

    from arr.policies import make_policy

    torch.manual_seed(0)
    cfg_key = "guidance_scale" if family == "sd3" else "true_cfg_scale"
    common = {"height": 16, "width": 16, "num_steps": 3, cfg_key: cfg, **kw}
    if family == "sd3":
        tr = SD3Transformer2DModel(
            sample_size=8,
            patch_size=2,
            in_channels=4,
            num_layers=1,
            attention_head_dim=8,
            num_attention_heads=2,
            joint_attention_dim=16,
            caption_projection_dim=16,
            pooled_projection_dim=16,
            out_channels=4,
        )
        return make_policy("sd3", transformer=tr, vae=kl_vae(), encode_fn=TinyText(16).pair, **common)
    if family == "flux":
        tr = FluxTransformer2DModel(
            patch_size=1,
            in_channels=16,
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=16,
            pooled_projection_dim=16,
            guidance_embeds=True,
            axes_dims_rope=(4, 6, 6),
        )
        return make_policy("flux", transformer=tr, vae=kl_vae(), encode_fn=TinyText(16).pair, **common)
    tr = QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=16,
        out_channels=4,
        num_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=16,
        axes_dims_rope=(4, 6, 6),
    )
    vae = AutoencoderKLQwenImage(
        base_dim=8,
        z_dim=4,
        dim_mult=[1, 2],
        num_res_blocks=1,
        temperal_downsample=[False],
        latents_mean=[0.1, -0.2, 0.0, 0.3],
        latents_std=[1.5, 0.8, 1.0, 2.0],
    )
    return make_policy(
        "qwen_image", transformer=tr, vae=vae, encode_fn=TinyText(16).qwen, edit_area=32 * 32, **common
    )


@pytest.fixture
def unwritable_dir(tmp_path):
    """A folder this process cannot write to: a read-only folder, or, for root (whom permission bits do not stop),
    a read-only file system such as Linux's /sys. Skips where neither exists."""
    import tempfile
    from pathlib import Path

    read_only = tmp_path / "read_only"
    read_only.mkdir()
    read_only.chmod(0o555)
    found = None
    for candidate in (read_only, Path("/sys")):
        try:
            fd, probe = tempfile.mkstemp(dir=candidate)
        except OSError:
            found = candidate
            break
        os.close(fd)
        os.unlink(probe)
    try:
        if found is None:
            pytest.skip("no unwritable folder on this machine")
        yield found
    finally:
        read_only.chmod(0o755)


@pytest.fixture
def run_cli(capsys):
    """Run `arr ARGS...` in this process: (exit code, stdout, stderr). argparse's exits count as exit codes."""
    from arr.cli import main

    def run(*argv: str) -> tuple[int, str, str]:
        try:
            code = main([str(a) for a in argv])
        except SystemExit as e:
            code = e.code
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


@pytest.fixture
def reward_server():
    """Start in-process reward servers: `reward_server(judge=None, token=None, **limits)` -> a started
    `RewardServer` on a free 127.0.0.1 port (pixel judge by default); all are shut down after the test."""
    from arr import RubricJudge, load_backend
    from arr.serve import RewardServer, ServeLimits

    started = []

    def start(judge=None, token=None, **limits):
        judge = judge or RubricJudge(load_backend("pixel"))
        server = RewardServer(judge, "127.0.0.1", 0, limits=ServeLimits(**limits), token=token)
        started.append(server)
        server.start()
        return server

    yield start
    for server in started:
        server.shutdown()


# ---- diffusers pipelines around tiny policies -------------------------------------------------------------------


def nonzero_lora(policy, scale=0.3):
    """A LoRA that changes the output: peft's gaussian init leaves B at zero."""
    import torch

    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for p in policy.trainable_parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))


def family_pipeline(family, policy):
    """The family's diffusers pipeline around `policy`'s transformer and VAE, text encoders left out (the test
    passes embeddings), with the scheduler the policy's sigmas follow."""
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        QwenImagePipeline,
        StableDiffusion3Pipeline,
    )

    if family == "sd3":
        return StableDiffusion3Pipeline(
            transformer=policy.transformer,
            scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
            vae=policy.vae,
            text_encoder=None,
            tokenizer=None,
            text_encoder_2=None,
            tokenizer_2=None,
            text_encoder_3=None,
            tokenizer_3=None,
        )
    sched = FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, shift=3.0
    )
    if family == "flux":
        return FluxPipeline(
            scheduler=sched,
            vae=policy.vae,
            text_encoder=None,
            tokenizer=None,
            text_encoder_2=None,
            tokenizer_2=None,
            transformer=policy.transformer,
        )
    return QwenImagePipeline(
        scheduler=sched, vae=policy.vae, text_encoder=None, tokenizer=None, transformer=policy.transformer
    )


# ---- a tiny language model for TRL ------------------------------------------------------------------------------


def tiny_causal_lm(words):
    """A random one-layer Qwen2 causal LM over a word-level vocabulary (`words`, after "<pad>" and "<eos>"), with its
    tokenizer: a policy for a few CPU steps of TRL's GRPOTrainer."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    vocab = ["<pad>", "<eos>", *words]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=1,
        tie_word_embeddings=True,
    )
    return Qwen2ForCausalLM(config), tokenizer
