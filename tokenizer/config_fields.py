"""Checks on config values before anything is built: each field's type and range, and the model's size.

A ``config.json`` is user input: a string where a number belongs, ``10**12`` codes or ``10**7`` layers must
give a message naming the field, the value and what was expected, not a ``TypeError`` from inside torch or a
16 TB allocation. The checks read each dataclass field's annotation, so a field added to a config class is
type-checked without further code; its range comes from the class's ``field_ranges`` (else a generic bound).

This module imports nothing from the package (``config.py`` and ``quantizer_config.py`` build on it). The
checks return messages; the config classes raise them as a ``ConfigError``, defined here for both.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any

# Bound for integer fields without a declared range: a channel count or size past 2**31 is no real model
# and overflows int32 index arithmetic in kernels.
INT_LIMIT = 2**31 - 1
# A model past this many parameters (40 GB of fp32 weights) is refused before any module is built.
MAX_PARAMETERS = 10**10

Range = tuple[float | None, float | None]  # inclusive (low, high); None = unbounded


class ConfigError(ValueError):
    """A config that cannot be built or loaded (unknown field, bad value, unknown version)."""


def _describe_type(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is int:
        return "an integer"
    if hint is float:
        return "a number"
    if hint is bool:
        return "true or false"
    if hint is str:
        return "a string"
    if hint is type(None):
        return "null"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe_type(a) for a in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_plural(args[0])}"
        return f"a list of {len(args)} {_plural(args[0]) if len(set(args)) == 1 else 'values'}"
    return getattr(hint, "__name__", str(hint))


def _plural(hint: Any) -> str:
    return {int: "integers", float: "numbers", bool: "booleans", str: "strings"}.get(hint, "values")


def _number(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def _range_text(rng: Range) -> str:
    low, high = rng
    if low is not None and high is not None:
        return f" in {_number(low)}..{_number(high)}"
    if low is not None:
        return f" >= {_number(low)}"
    if high is not None:
        return f" <= {_number(high)}"
    return ""


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _scalar_problem(hint: Any, value: Any, rng: Range) -> str | None:
    """None if ``value`` fits the scalar type ``hint`` and the range, else what is wrong."""
    if hint is bool:
        return None if isinstance(value, bool) else "wrong type"
    if hint is int:
        if not isinstance(value, int) or isinstance(value, bool):
            return "wrong type"
        low, high = rng
        if low is None and high is None:
            rng = (-INT_LIMIT, INT_LIMIT)
    elif hint is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return "wrong type"
        if not math.isfinite(value):
            return "not finite"
    elif hint is str:
        return None if isinstance(value, str) else "wrong type"
    elif typing.get_origin(hint) is typing.Literal:
        return None if value in typing.get_args(hint) and isinstance(value, str) else "wrong value"
    low, high = rng
    if (low is not None and value < low) or (high is not None and value > high):
        return "out of range"
    return None


def _fits(hint: Any, value: Any, rng: Range) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return type(None) in args
        return any(_fits(a, value, rng) for a in args if a is not type(None))
    if origin is tuple:
        if not isinstance(value, (tuple, list)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_fits(args[0], v, rng) for v in value)
        return len(value) == len(args) and all(_fits(a, v, rng) for a, v in zip(args, value))
    return _scalar_problem(hint, value, rng) is None


def field_problems(config: Any) -> list[str]:
    """What is wrong with each field of a config dataclass instance (empty when all fit).

    Each message names the field, shows the value and says the expected type and range. Ranges come from
    ``field_ranges`` of the class and its bases (for a list field the range applies to every entry).
    """
    cls = type(config)
    hints = typing.get_type_hints(cls)
    ranges: dict[str, Range] = {}
    for klass in reversed(cls.__mro__):
        ranges.update(getattr(klass, "__dict__", {}).get("field_ranges", {}))
    problems = []
    for f in dataclasses.fields(config):
        value, hint, rng = getattr(config, f.name), hints[f.name], ranges.get(f.name, (None, None))
        if not _fits(hint, value, rng):
            problems.append(
                f"field {f.name!r} is {_shown(value)} ({type(value).__name__}); "
                f"expected {_describe_type(hint)}{_range_text(rng)}"
            )
    return problems


# --- size -----------------------------------------------------------------------------------------
def _conv(c_in: int, c_out: int, k: int) -> int:
    return c_in * c_out * k * k + c_out


def _resnet(c_in: int, c_out: int) -> int:
    shortcut = _conv(c_in, c_out, 1) if c_in != c_out else 0
    return 2 * c_in + _conv(c_in, c_out, 3) + 2 * c_out + _conv(c_out, c_out, 3) + shortcut


def _attn(c: int) -> int:
    return 2 * c + 4 * _conv(c, c, 1)


def autoencoder_parameters(config: Any, encoder_channels: int, bottleneck_channels: int) -> int:
    """Parameters of the encoder, decoder and 1x1 convs a config builds (``tokenizer/blocks.py``'s layout).

    Computed from the sizes alone, so a config asking for 10**13 weights is refused in microseconds.
    """
    c = config
    widths = [c.base_channels * m for m in c.channel_mult]
    n = 0
    # Encoder.
    n += _conv(c.in_channels * c.patch_size**2, c.base_channels, 3)  # after the space-to-channel stem
    ch = c.base_channels
    for i, width in enumerate(widths):
        for _ in range(c.layers_per_block):
            n += _resnet(ch, width) + (_attn(width) if i in c.attn_levels else 0)
            ch = width
        if i < len(widths) - 1:
            n += _conv(width, width, 3)
    mid = 2 * _resnet(ch, ch) + (_attn(ch) if c.mid_attention else 0)
    n += mid + 2 * ch + _conv(ch, encoder_channels, 3)
    # Decoder.
    ch = widths[-1]
    n += _conv(c.decoder_in_channels, ch, 3) + mid
    for i in reversed(range(len(widths))):
        for _ in range(c.decoder_blocks):
            n += _resnet(ch, widths[i]) + (_attn(widths[i]) if i in c.attn_levels else 0)
            ch = widths[i]
        if i > 0:
            n += _conv(ch, ch, 3)
    n += 2 * ch + _conv(ch, c.out_channels * c.patch_size**2, 3)  # before the channel-to-space pixel-shuffle
    if c.use_quant_conv:
        n += _conv(encoder_channels, bottleneck_channels, 1)
    if c.has_post_quant_conv:
        n += _conv(c.latent_channels, c.decoder_in_channels, 1)
    return n


def size_problem(parameters: int) -> str | None:
    """A message when ``parameters`` is past what any machine can hold, else None."""
    if parameters > MAX_PARAMETERS:
        return (f"the model would have about {parameters:.3g} parameters ({4 * parameters / 2**30:,.0f} GiB in "
                f"fp32), over the limit of {MAX_PARAMETERS:.0e}; a field is probably far too large")
    return None
