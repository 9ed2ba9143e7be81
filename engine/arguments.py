"""What one argument accepts (type, range or choice), as objects that both check a value and describe themselves.

The engine's and the methods' validation is built from these: a method declares `accepts` (parameter -> one of
them), its constructor checks with them, and `raggedkv methods` prints their `describe()`. Every `check` raises
TypeError for a value of the wrong type and ValueError for one outside the accepted range or choices, with the
message "`name` must be <describe()>, got <value>". Booleans are refused where an int or a number is expected,
and numbers must be finite.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

BACKEND_NAMES = ("auto", "torch", "triton")
"""The names `backend=` accepts (`raggedkv.engine.backend.get_backend`), here so the CLI lists them without torch."""
DEFAULT_MAX_NEW_TOKENS = 64
"""`max_new_tokens` of `Engine.generate`, `generate_ids` and `sweep` and of `raggedkv generate` (kept free of torch)."""
TRUE_WORDS, FALSE_WORDS = ("true", "yes", "1"), ("false", "no", "0")
"""How a boolean parameter is spelled in text (`parse_value`)."""


def _refuse(error: type[Exception], name: str, accepted: str, value: object) -> Exception:
    return error(f"{name} must be {accepted}, got {value!r}")


@dataclass(frozen=True)
class Int:
    """An int (not a bool) in `[minimum, maximum]` (no upper bound when None), odd when `odd`; `why` explains."""

    minimum: int
    maximum: int | None = None
    odd: bool = False
    why: str = ""

    def describe(self) -> str:
        kind = "an odd int" if self.odd else "an int"
        bounds = f">= {self.minimum}" if self.maximum is None else f"in [{self.minimum}, {self.maximum}]"
        return f"{kind} {bounds}" + (f" ({self.why})" if self.why else "")

    def check(self, name: str, value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _refuse(TypeError, name, self.describe(), value)
        too_big = self.maximum is not None and value > self.maximum
        if value < self.minimum or too_big or (self.odd and value % 2 == 0):
            raise _refuse(ValueError, name, self.describe(), value)
        return value


@dataclass(frozen=True)
class Real:
    """A finite int or float (not a bool) from `low` to `high` (inclusive unless `*_open`; `high=inf`: unbounded)."""

    low: float
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False

    def describe(self) -> str:
        if math.isinf(self.high):
            return f"a finite number {'>' if self.low_open else '>='} {self.low:g}"
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"a finite number in {left}{self.low:g}, {self.high:g}{right}"

    def check(self, name: str, value: object) -> float:
        """`value` as a float."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _refuse(TypeError, name, self.describe(), value)
        try:
            number = float(value)
        except OverflowError:  # an int beyond the float range
            raise _refuse(ValueError, name, self.describe(), value) from None
        below = number <= self.low if self.low_open else number < self.low
        above = number >= self.high if self.high_open else number > self.high
        if not math.isfinite(number) or below or above:
            raise _refuse(ValueError, name, self.describe(), value)
        return number


@dataclass(frozen=True)
class Choice:
    """One of the strings `choices`."""

    choices: tuple[str, ...]

    def describe(self) -> str:
        return f"one of {list(self.choices)}"

    def check(self, name: str, value: object) -> str:
        if not isinstance(value, str):
            raise _refuse(TypeError, name, self.describe(), value)
        if value not in self.choices:
            raise _refuse(ValueError, name, self.describe(), value)
        return value


@dataclass(frozen=True)
class Flag:
    """True or False (no other truthy or falsy value)."""

    def describe(self) -> str:
        return "True or False"

    def check(self, name: str, value: object) -> bool:
        if not isinstance(value, bool):
            raise _refuse(TypeError, name, self.describe(), value)
        return value


@dataclass(frozen=True)
class PathOrDict:
    """A file path (str or os.PathLike), a dict of its contents, or None (a default file)."""

    def describe(self) -> str:
        return "a path (str or os.PathLike), a dict or None"

    def check(self, name: str, value: object) -> object:
        if value is not None and not isinstance(value, str | os.PathLike | dict):
            raise _refuse(TypeError, name, self.describe(), value)
        return value


Accepted = Int | Real | Choice | Flag | PathOrDict


def parse_value(accepted: Accepted, text: str) -> object:
    """`text` as the type `accepted` checks (int, float, bool or str; a path stays a str); the method checks ranges.

    Raises:
        ValueError: `text` is not of that type.
    """
    try:
        if isinstance(accepted, Int):
            return int(text)
        if isinstance(accepted, Real):
            return float(text)
    except ValueError:
        raise ValueError(f"must be {accepted.describe()}") from None
    if isinstance(accepted, Flag):
        if text.lower() not in TRUE_WORDS + FALSE_WORDS:
            raise ValueError(f"must be one of {list(TRUE_WORDS + FALSE_WORDS)}")
        return text.lower() in TRUE_WORDS
    return text
