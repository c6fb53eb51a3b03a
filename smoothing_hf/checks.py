"""Argument checks at the library's boundary (DESIGN.md contract 5), in one place.

Each check returns the value in its plain Python type, or raises ``TypeError`` (wrong kind of value) or
``ValueError`` (right kind, outside the allowed range) with a message that names the argument and says what
is allowed. A leaf: imports nothing of the package and nothing heavier than the standard library, so
every module may use it (the report command included, which must not import torch).
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Collection, Mapping
from typing import Any

PIXEL_TOLERANCE = 1e-4
"""How far outside [0, 1] a clean pixel may be (rounding in resize/rescale) before it is an error."""


def is_number(value: object) -> bool:
    """Whether ``value`` is a finite real number: not a bool, not NaN or +-inf, not an int too large for a float."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and _is_finite(value)


def check_int(value: Any, name: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an int, if it is an integer (not a bool) in [``minimum``, ``maximum``] (either bound may
    be None); a float such as 3.0 is refused, since a count given as a float is usually a mistake."""
    allowed = _range_text("an int", minimum, maximum)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"`{name}` must be {allowed}, got {type(value).__name__} {value!r}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"`{name}` must be {allowed}, got {value}")
    return int(value)


def check_positive_int(value: Any, name: str) -> int:
    """``value`` as an int >= 1."""
    return check_int(value, name, minimum=1)


def check_optional_positive_int(value: Any, name: str) -> int | None:
    """None, or ``value`` as an int >= 1."""
    return None if value is None else check_positive_int(value, name)


def check_seed(seed: Any, name: str = "seed") -> int:
    """``seed`` as a non-negative int."""
    return check_int(seed, name, minimum=0)


def check_number(
    value: Any,
    name: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    strict_minimum: bool = False,
    strict_maximum: bool = False,
    unit: str = "",
) -> float:
    """``value`` as a float, if it is a finite real number within the bounds (inclusive unless ``strict_*``);
    ``unit`` (e.g. "l2, pixels in [0, 1]") is added to the message. NaN and +-inf are refused (``ValueError``)
    whatever the bounds: no argument checked here has a meaning at infinity."""
    if minimum is not None and maximum is not None:
        interval = f"{'(' if strict_minimum else '['}{minimum:g}, {maximum:g}{')' if strict_maximum else ']'}"
        allowed = f"in {interval}"
    elif minimum == 0 and strict_minimum:
        allowed = "a positive finite number"
    elif minimum is not None:
        allowed = f"a finite number {'>' if strict_minimum else '>='} {minimum:g}"
    elif maximum is not None:
        allowed = f"a finite number {'<' if strict_maximum else '<='} {maximum:g}"
    else:
        allowed = "a finite number"
    allowed += f" ({unit})" if unit else ""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be {allowed}, got {type(value).__name__} {value!r}")
    if not _is_finite(value):
        shown = str(value) if len(str(value)) <= 24 else f"{str(value)[:12]}... (beyond the float range)"
        raise ValueError(f"`{name}` must be {allowed}, got {shown}")
    if minimum is not None and (value < minimum or (strict_minimum and value == minimum)):
        raise ValueError(f"`{name}` must be {allowed}, got {value}")
    if maximum is not None and (value > maximum or (strict_maximum and value == maximum)):
        raise ValueError(f"`{name}` must be {allowed}, got {value}")
    return float(value)


def check_alpha(alpha: Any, name: str = "alpha") -> float:
    """``alpha``, a failure probability, as a float in (0, 1)."""
    return check_number(alpha, name, minimum=0, maximum=1, strict_minimum=True, strict_maximum=True)


def check_sigma(sigma: Any, name: str = "sigma") -> float:
    """``sigma``, a noise standard deviation, as a float > 0."""
    return check_number(sigma, name, minimum=0, strict_minimum=True, unit="noise std in [0, 1] pixel units")


def check_choice(value: Any, name: str, allowed: Collection[Any]) -> Any:
    """``value`` if it is one of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"`{name}` must be one of {sorted(allowed, key=str)}, got {value!r}")
    return value


def check_pixel_range(low: float, high: float, name: str) -> None:
    """Raise unless [``low``, ``high``], the range of a batch of clean pixels, lies in [0, 1] (up to
    ``PIXEL_TOLERANCE``); NaN fails too."""
    if not (low >= -PIXEL_TOLERANCE and high <= 1 + PIXEL_TOLERANCE):
        raise ValueError(
            f"`{name}` must hold un-normalized pixels in [0, 1], got values in [{low:.4g}, {high:.4g}] (normalization "
            "is the model's first step; do not pass normalized or 0-255 images, nor NaN)"
        )


def parse_json_object(text: Any, name: str) -> dict[str, Any]:
    """The JSON object that ``text`` (a command-line option such as ``--method_options '{"r": 16}'``) holds, as
    a dict. A dict is taken as it is: in a JSON file of arguments the option may be written as an object."""
    allowed = "the text of a JSON object, such as '{\"name\": value}' ('{}' for none)"
    if isinstance(text, Mapping):
        return dict(text)
    if not isinstance(text, str):
        raise TypeError(f"`{name}` must be {allowed}, got {type(text).__name__} {text!r}")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"`{name}` must be {allowed}, got {text!r}, which is not JSON: {error}") from None
    if not isinstance(value, dict):
        raise ValueError(f"`{name}` must be {allowed}, got {text!r}, which is {_json_kind(value)}")
    return value


def _is_finite(value: numbers.Real) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond the float range
        return False


def _json_kind(value: object) -> str:
    if value is None:
        return "JSON null"
    kinds = ((bool, "a JSON boolean"), (list, "a JSON array"), (str, "a JSON string"))
    return next((kind for python_type, kind in kinds if isinstance(value, python_type)), "a JSON number")


def _range_text(kind: str, minimum: int | None, maximum: int | None) -> str:
    if minimum is not None and maximum is not None:
        return f"{kind} in [{minimum}, {maximum}]"
    if minimum is not None:
        named = {0: "a non-negative int", 1: "a positive int"}.get(minimum, kind)
        return f"{named} (>= {minimum})"
    return kind if maximum is None else f"{kind} <= {maximum}"
