"""What every `arr` subcommand shares: the argument parser, the one-line error type, the judge-backend options,
output checks and terminal-safe printing.

Library modules never import from `arr.cli`; the command line sits on top of the library and translates its
errors (ValueError subclasses with one-line messages) into `CLIError`. Nothing heavy is imported at module level:
`arr --help` builds every subcommand's parser.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


# ---- the parser ------------------------------------------------------------------------------------------------


class ArgumentParser(argparse.ArgumentParser):
    """argparse with TRL's spelling rule and one-line errors.

    Every long option answers to both `--output-dir` and `--output_dir` (TRL's parser accepts both, so recipe keys
    and command options can be written alike); `--help` shows the spelling it was declared with. Errors are one line
    that points at `--help`, instead of the usage block. `forward=True` makes a subcommand whose arguments belong to
    another parser (`arr train` -> the recipe parser): everything after its name, `--help` included, is kept in
    order as `args.forwarded`.
    """

    def __init__(self, *args: Any, forward: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.forward = forward
        # The deepest subcommand's defaults win, so errors name the full command ("arr shapes sample").
        self.set_defaults(command_prog=self.prog)

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:
        args = list(sys.argv[1:] if args is None else args)
        if self.forward:
            namespace = namespace if namespace is not None else argparse.Namespace()
            for key, value in self._defaults.items():
                setattr(namespace, key, value)
            namespace.forwarded = args
            return namespace, []
        return super().parse_known_args(self._respell(args), namespace)

    def _respell(self, args: list[str]) -> list[str]:
        """`--a_b` -> `--a-b` (or the other way) where only the other spelling is an option of this parser."""
        out = []
        for i, arg in enumerate(args):
            if arg == "--":
                return out + args[i:]
            name, eq, value = arg.partition("=")
            if name.startswith("--") and name not in self._option_string_actions:
                for other in ("--" + name[2:].replace("_", "-"), "--" + name[2:].replace("-", "_")):
                    if other in self._option_string_actions:
                        arg = other + eq + value
                        break
            out.append(arg)
        return out

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {terminal_safe(message)} (see `{self.prog} --help`)\n")


class DeprecatedAlias(argparse.Action):
    """An old option name that still works: it stores into the new option's `dest` and says what to use instead."""

    def __init__(self, option_strings: list[str], dest: str, replacement: str, why: str = "", **kwargs: Any):
        kwargs.setdefault("help", argparse.SUPPRESS)
        super().__init__(option_strings, dest, **kwargs)
        self.replacement = replacement
        self.why = why

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: Any, values: Any, option_string=None
    ) -> None:
        why = f" ({self.why})" if self.why else ""
        sys.stderr.write(f"{parser.prog}: {option_string} is deprecated; use {self.replacement}{why}\n")
        setattr(namespace, self.dest, values)


def positive_int(limit: int | None = None):
    """An argparse `type`: an integer >= 1 (and <= `limit`)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
        if limit is not None and value > limit:
            raise argparse.ArgumentTypeError(f"must be at most {limit:,}, got {value:,}")
        return value

    return parse


def port_number(text: str) -> int:
    """An argparse `type`: a TCP port, 0-65535 (0 lets the system pick a free one)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port from 0 to 65535, got {value}")
    return value


def finite_float(text: str) -> float:
    """An argparse `type`: a finite number (nan and inf are refused: they would silently poison every output)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


# ---- the judge backend -----------------------------------------------------------------------------------------


def add_backend_options(p: argparse.ArgumentParser) -> None:
    """The judge-backend option group (`--backend`, `--model`, `--base-url`, ...), the same in every subcommand.

    `--model` is always the judge's model; commands that also take a generator name it `--policy`."""
    g = p.add_argument_group("judge backend")
    g.add_argument("--backend", default="pixel", help="hf | openai | pixel | module:Class (default: pixel)")
    g.add_argument("--model", help="the judge model: hf: model id or folder; openai: the served model name")
    g.add_argument(
        "--base-url",
        help="openai: server URL, e.g. http://127.0.0.1:8000/v1; several servers of the judge model share the "
        "requests: URLs separated by commas, or a file with one URL per line",
    )
    g.add_argument("--api-key-env", help="openai: environment variable that holds the API key")
    g.add_argument(
        "--max-concurrency", type=positive_int(), help="openai: requests in flight at once (default 8)"
    )
    g.add_argument(
        "--timeout",
        type=finite_float,
        help="openai: seconds to wait for each HTTP attempt before retrying (default 60)",
    )
    g.add_argument("--dtype", help="hf: torch dtype (auto, bfloat16, float32, ...)")
    g.add_argument("--device", help="hf: device (auto, cpu, cuda, ...)")
    g.add_argument("--mode", help="hf: 'probs' (choice-token probabilities) or 'generate' (reasoned answers)")
    g.add_argument("--trust-remote-code", action="store_true", help="hf: allow the model folder's own code")
    g.add_argument("--cache", help="path of a judgment cache file (sqlite); created if missing")


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def backend_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of `load_backend(args.backend, ...)` from the options of `add_backend_options`."""
    from arr.backends.options import BackendOptionError
    from arr.backends.options import backend_kwargs as kwargs_for

    try:
        return kwargs_for(
            args.backend,
            model=args.model,
            base_url=args.base_url,
            api_key_env=args.api_key_env,
            dtype=args.dtype,
            device=args.device,
            mode=args.mode,
            trust_remote_code=args.trust_remote_code,
            max_concurrency=args.max_concurrency,
            timeout=args.timeout,
            spell=_option,
        )
    except BackendOptionError as e:
        raise CLIError(str(e)) from None


def backend_from_args(args: argparse.Namespace):
    """The judge backend the options of `add_backend_options` describe."""
    from arr.backends import load_backend

    kwargs = backend_kwargs(args)
    try:
        return load_backend(args.backend, **kwargs)
    except (ValueError, TypeError, OSError) as e:
        raise CLIError(f"cannot create judge backend {args.backend!r}: {e}") from None


def cache_from_args(args: argparse.Namespace) -> str | None:
    """The `--cache` path, refused up front when it names a folder (sqlite would fail on it mid-run)."""
    if args.cache and Path(args.cache).is_dir():
        raise CLIError(
            f"--cache {args.cache} is a folder; give a file path such as {Path(args.cache) / 'judge.sqlite'}"
        )
    return args.cache


def judge_from_args(args: argparse.Namespace, swap: bool = True, backend: Any = None):
    """A `RubricJudge` over `backend` (default: the one the options describe) with the `--cache` file and, where the
    command has them, the cannot-assess options."""
    from arr.cache import CacheError
    from arr.judge import RubricJudge

    cache = cache_from_args(args)
    backend = backend if backend is not None else backend_from_args(args)
    policy = {
        "na_policy": getattr(args, "na_policy", "skip"),
        "partial_credit": getattr(args, "partial_credit", 0.5),
    }
    try:
        return RubricJudge(backend, cache=cache, swap=swap, **policy)
    except CacheError as e:
        raise CLIError(f"--cache: {e}") from None
    except ValueError as e:  # a partial credit outside [0, 1]
        raise CLIError(f"--partial-credit: {e}") from None


def add_na_options(p: argparse.ArgumentParser) -> None:
    """`--na-policy` and `--partial-credit`: how criteria the judge cannot assess count in pointwise scores."""
    from arr.rubrics import NA_POLICIES

    p.add_argument(
        "--na-policy",
        choices=NA_POLICIES,
        default="skip",
        help="criteria the judge answers 'unknown' for: skip (left out, default), zero, partial or fail "
        "(the worst outcome for the criterion's sign)",
    )
    p.add_argument(
        "--partial-credit",
        type=finite_float,
        default=0.5,
        help="the value --na-policy partial gives a positive criterion (default 0.5)",
    )


# ---- outputs ---------------------------------------------------------------------------------------------------


def writable_dir(path: str | os.PathLike[str], option: str) -> Path:
    """Create folder `path` if needed and prove it writable, before any model loads (a run that would fail at its
    first save fails now). `option` names the input in the error."""
    import tempfile

    p = Path(path)
    if p.exists() and not p.is_dir():
        raise CLIError(f"{option} {p} is a file, not a folder; give a folder path")
    try:
        p.mkdir(parents=True, exist_ok=True)
        # A real write: permission bits say nothing for root, nor on read-only mounts.
        fd, probe = tempfile.mkstemp(prefix=".arr-write-test-", dir=p)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise CLIError(
            f"{option}: cannot write to folder {p} ({e.strerror}); choose another folder or fix its permissions"
        ) from None
    return p


def writable_file(path: str | os.PathLike[str], option: str, example: str = "out.png") -> Path:
    """`path` as an output file: not a folder, and its folder writable (see `writable_dir`)."""
    p = Path(path)
    if p.is_dir():
        raise CLIError(f"{option} {p} is a folder; give a file path such as {p / example}")
    writable_dir(p.parent, option)
    return p


# ---- printing --------------------------------------------------------------------------------------------------

# Bidirectional overrides reorder what a terminal shows without being control characters (category Cf).
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _unsafe(ch: str) -> bool:
    return unicodedata.category(ch) == "Cc" or ch in _BIDI


def terminal_safe(text: str, keep: str = "") -> str:
    """`text` with control characters (ESC, CSI, backspace, bidi overrides, newlines unless kept) written as
    escapes, so that text from a file or a model cannot recolour, move the cursor or hide terminal output."""
    out = []
    for ch in text:
        if ch in keep or not _unsafe(ch):
            out.append(ch)
        elif ord(ch) < 0x100:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(f"\\u{ord(ch):04x}")
    return "".join(out)


def shorten(text: str, limit: int = 80) -> str:
    """`text` cut to `limit` characters with an ellipsis, for quoting user input in one-line errors."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def emit(text: str) -> None:
    """Print a line of our own making; the values in it must already have passed `terminal_safe`."""
    sys.stdout.write(text + "\n")


def emit_json(obj: Any) -> None:
    """Print `obj` as indented JSON that is still valid JSON and safe on a terminal.

    json.dumps escapes U+0000-U+001F but writes DEL, the C1 controls (U+0080-U+009F: CSI) and bidi overrides as
    they are; those can only occur inside strings, where `\\uXXXX` is the same character."""
    text = json.dumps(obj, indent=2, ensure_ascii=False)
    sys.stdout.write("".join(f"\\u{ord(c):04x}" if _unsafe(c) and c != "\n" else c for c in text) + "\n")
