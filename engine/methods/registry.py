"""The method registry: every method class by name, and `get_method` building one from its name and parameters.

`get_method(name, model_name=..., **params)` builds one; `model_name` is passed on only to the methods that read
packaged score files (HeadKV, CompressKV) and ignored by the others, so the engine can always pass it.

`name` may be a variant spelling, `"headkv-r2:beta=2,window=16"`: the method's name, then `param=value` pairs whose
text is typed by what the method declares in `accepts` (`raggedkv.engine.arguments.parse_value`). The method built
remembers its canonical spelling as `method.label` (parameters sorted by name, score files left out), which results
record as their method.
"""

from __future__ import annotations

import inspect
from typing import Any

from ..arguments import parse_value
from .adakv import AdaSnapKV
from .base import Method
from .compresskv import CompressKV
from .headkv import HeadKVR, HeadKVR2
from .pyramid import PyramidKV
from .streaming import StreamingLLM
from .uniform import Full, SnapKV

METHODS: dict[str, type[Method]] = {
    cls.name: cls for cls in (Full, StreamingLLM, SnapKV, PyramidKV, AdaSnapKV, HeadKVR, HeadKVR2, CompressKV)
}


def method_parameters(name: str) -> dict[str, Any]:
    """The user-facing constructor parameters of method `name` and their defaults (`model_name` excluded)."""
    signature = inspect.signature(METHODS[name].__init__)
    return {p.name: p.default for p in list(signature.parameters.values())[1:] if p.name != "model_name"}


def not_a_method(value: object) -> TypeError:
    """The error for a `method` argument that is neither a method name nor a `Method`."""
    return TypeError(f"method must be a method name (one of {sorted(METHODS)}) or a Method, got {value!r}")


def parse_variant(spelling: str) -> tuple[str, dict[str, Any]]:
    """Split a variant spelling `"name:param=value,param=value"` into the method name and its typed parameters.

    Only names and types are checked here (ranges are the constructor's); a bare name has no parameters.

    Raises:
        TypeError: `spelling` is not a string.
        ValueError: unknown method, malformed pair, unknown or repeated parameter, or a value of the wrong type; the
            message names the variant, the parameter and what is accepted.
    """
    if not isinstance(spelling, str):
        raise not_a_method(spelling)
    name, sep, pairs = spelling.partition(":")
    name = name.strip()
    if name not in METHODS:
        where = f"method={spelling!r}: {name!r}" if sep else f"method={spelling!r}"
        raise ValueError(f"{where} is unknown; choose one of {sorted(METHODS)} "
                         "(a variant is spelled name:param=value,param=value)")
    cls, accepted = METHODS[name], method_parameters(name)
    params: dict[str, Any] = {}
    for pair in pairs.split(",") if sep else []:
        key, eq, text = (part.strip() for part in pair.partition("="))
        if not eq or not key:
            raise ValueError(f"method={spelling!r}: {pair!r} is not param=value (e.g. {name}:window=16)")
        if key not in accepted:
            raise ValueError(f"method={spelling!r}: {name!r} has no parameter {key!r}; its parameters are "
                             f"{sorted(accepted)}")
        if key in params:
            raise ValueError(f"method={spelling!r}: parameter {key!r} is given twice")
        try:
            params[key] = parse_value(cls.accepts[key], text) if key in cls.accepts else text
        except ValueError as err:
            raise ValueError(f"method={spelling!r}: {key} {err}, got {text!r}") from None
    return name, params


def variant_label(name: str, params: dict[str, Any]) -> str:
    """The canonical spelling of method `name` with `params`: `name`, or `name:k=v,...` sorted by parameter.

    Score files (`Method.score_files`) are left out: results record them separately.
    """
    shown = {key: value for key, value in params.items() if key not in METHODS[name].score_files}
    if not shown:
        return name
    return name + ":" + ",".join(f"{key}={_spelled(value)}" for key, value in sorted(shown.items()))


def _spelled(value: Any) -> str:
    """A parameter value as a variant spells it: booleans `true`/`false`, whole floats without `.0` (`beta=2` and
    `beta=2.0` are one variant), anything else as `str` gives it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def get_method(name: str, model_name: str | None = None, **params: Any) -> Method:
    """Instantiate the method called `name` (a name or a variant spelling, see `parse_variant`) with its parameters.

    `params` are merged with the spelled ones; the method's `label` is the canonical spelling of the result.

    Raises:
        TypeError: `name` is not a string, or a parameter has the wrong type.
        ValueError: unknown method name or parameter (the message lists the accepted ones), a parameter given both
            in the spelling and in `params`, or a parameter outside its range.
    """
    base, spelled = parse_variant(name)
    twice = sorted(set(spelled) & set(params))
    if twice:
        raise ValueError(f"method={name!r}: parameter {twice[0]!r} is given both in the spelling and as an argument")
    params = {**spelled, **params}
    accepted = method_parameters(base)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(f"method {base!r} has no parameter {unknown[0]!r}; its parameters are {sorted(accepted)}")
    cls = METHODS[base]
    label = variant_label(base, {key: value for key, value in params.items() if value is not None})
    if "model_name" in inspect.signature(cls.__init__).parameters:
        params["model_name"] = model_name
    method = cls(**params)
    method.label = label
    return method
