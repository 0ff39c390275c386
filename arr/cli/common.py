"""What every `arr` subcommand shares: the one-line error type and the judge-backend option group.

Library modules never import from `arr.cli`; the command line sits on top of the library and translates its
errors (ValueError subclasses with one-line messages) into `CLIError`.
"""

from __future__ import annotations

import argparse
from typing import Any


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


def add_backend_options(p: argparse.ArgumentParser) -> None:
    """The judge-backend option group (`--backend`, `--model`, `--base-url`, ...), the same in every subcommand."""
    g = p.add_argument_group("judge backend")
    g.add_argument("--backend", default="pixel", help="hf | openai | pixel | module:Class (default: pixel)")
    g.add_argument("--model", help="hf: model id or folder; openai: the served model name")
    g.add_argument("--base-url", help="openai: server URL, e.g. http://127.0.0.1:8000/v1")
    g.add_argument("--api-key-env", help="openai: environment variable that holds the API key")
    g.add_argument("--dtype", help="hf: torch dtype (auto, bfloat16, float32, ...)")
    g.add_argument("--device", help="hf: device (auto, cpu, cuda, ...)")
    g.add_argument("--mode", help="hf: 'probs' (choice-token probabilities) or 'generate' (reasoned answers)")
    g.add_argument("--trust-remote-code", action="store_true", help="hf: allow the model folder's own code")
    g.add_argument("--cache", help="path of a judgment cache (sqlite); created if missing")


def backend_kwargs(
    backend: str,
    model: str | None = None,
    base_url: str | None = None,
    api_key_env: str | None = None,
    dtype: str | None = None,
    device: str | None = None,
    mode: str | None = None,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """The keyword arguments of `load_backend(backend, ...)` from option values, checked per backend.

    One function for the command line and for recipes, so `arr train` sets the hf judge's dtype or
    `trust_remote_code` exactly as `arr judge` does."""
    kwargs: dict[str, Any] = {}
    if backend == "hf":
        if not model:
            raise CLIError("--backend hf needs --model (a model id or a local folder)")
        kwargs["model"] = model
        for name, value in (("dtype", dtype), ("device", device), ("mode", mode)):
            if value:
                kwargs[name] = value
        if trust_remote_code:
            kwargs["trust_remote_code"] = True
    elif backend == "openai":
        if not model:
            raise CLIError("--backend openai needs --model (the model name the server serves)")
        kwargs["model"] = model
        if base_url:
            kwargs["base_url"] = base_url
        if api_key_env:
            kwargs["api_key_env"] = api_key_env
    return kwargs


def backend_from_args(args: argparse.Namespace):
    """The judge backend the options of `add_backend_options` describe."""
    from arr.backends import load_backend

    kwargs = backend_kwargs(
        args.backend,
        model=args.model,
        base_url=args.base_url,
        api_key_env=args.api_key_env,
        dtype=args.dtype,
        device=args.device,
        mode=args.mode,
        trust_remote_code=args.trust_remote_code,
    )
    try:
        return load_backend(args.backend, **kwargs)
    except (ValueError, OSError) as e:
        raise CLIError(str(e)) from None
