"""The judge-backend settings a user can give by name, and which backend takes which.

The command line (`--backend hf --model M --dtype bfloat16`) and training recipes (`judge_backend: hf`,
`judge_model: M`, `judge_dtype: bfloat16`) both go through `backend_kwargs`, so a setting means the same in both and
a setting the chosen backend does not take is an error rather than silently ignored.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from arr.backends.pool import parse_base_urls

# Which named settings each built-in backend takes (beyond `model`); a dotted-path backend gets every given one.
BACKEND_SETTINGS: dict[str, tuple[str, ...]] = {
    "hf": ("model", "dtype", "device", "mode", "trust_remote_code"),
    "openai": ("model", "base_url", "api_key_env", "max_concurrency", "timeout"),
    "pixel": (),
}
NEEDS_MODEL = {
    "hf": "a model id or a local folder",
    "openai": "the model name the server serves",
}


class BackendOptionError(ValueError):
    """A judge-backend setting is missing, out of range, or not one the chosen backend takes."""


def backend_kwargs(
    backend: str,
    *,
    model: str | None = None,
    base_url: str | Sequence[str] | None = None,
    api_key_env: str | None = None,
    dtype: str | None = None,
    device: str | None = None,
    mode: str | None = None,
    trust_remote_code: bool = False,
    max_concurrency: int | None = None,
    timeout: float | None = None,
    spell: Callable[[str], str] = str,
) -> dict[str, Any]:
    """The keyword arguments of `load_backend(backend, ...)` for the settings that were given (None / False: not).

    `spell` turns a setting's name into what the user wrote (`"--base-url"` on the command line, `"judge_base_url"`
    in a recipe), so that errors name the input to fix. `base_url` may name several servers (a list, URLs separated
    by commas, or a file of URLs); it is passed on as one URL, or as the list of them.
    """
    given = {
        name: value
        for name, value in (
            ("model", model),
            ("base_url", base_url),
            ("api_key_env", api_key_env),
            ("dtype", dtype),
            ("device", device),
            ("mode", mode),
            ("trust_remote_code", trust_remote_code),
            ("max_concurrency", max_concurrency),
            ("timeout", timeout),
        )
        if value is not None and value is not False and value != ""
    }
    if max_concurrency is not None and (isinstance(max_concurrency, bool) or max_concurrency < 1):
        raise BackendOptionError(f"{spell('max_concurrency')} must be >= 1, got {max_concurrency}")
    if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
        raise BackendOptionError(f"{spell('timeout')} must be a positive number of seconds, got {timeout}")
    takes = BACKEND_SETTINGS.get(backend)
    if takes is None:  # a "module:Class" backend: its constructor decides what it accepts
        return given
    if backend in NEEDS_MODEL and not model:
        raise BackendOptionError(
            f"{spell('backend')}={backend} needs {spell('model')} ({NEEDS_MODEL[backend]})"
        )
    extra = [name for name in given if name not in takes]
    if extra:
        users = {name: [b for b, names in BACKEND_SETTINGS.items() if name in names] for name in extra}
        name = extra[0]
        where = " or ".join(users[name]) or "no built-in"
        raise BackendOptionError(
            f"{spell(name)} is a setting of the {where} backend, not of {spell('backend')}={backend}; "
            f"drop it or choose another backend"
        )
    if "base_url" in given:
        try:
            urls = parse_base_urls(given["base_url"])
        except ValueError as e:
            raise BackendOptionError(f"{spell('base_url')}: {e}") from None
        given["base_url"] = urls[0] if len(urls) == 1 else urls
    return given
