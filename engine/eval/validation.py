"""Checks of the evaluation commands' arguments, failing with the argument, the value and what is accepted."""

from __future__ import annotations

from collections.abc import Sequence


def known_methods() -> list[str]:
    """The engine's method names."""
    from raggedkv.engine.methods import METHODS

    return list(METHODS)


def _positive_ints(name: str, values: Sequence[int]) -> None:
    if not values:
        raise ValueError(f"{name} is empty; give at least one positive integer")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} holds {value!r}; every entry must be a positive integer")


def check_methods(methods: Sequence[str]) -> None:
    """Every method is a name or variant spelling (`name:param=value,...`) the engine knows."""
    if not methods:
        raise ValueError("methods is empty; give at least one method")
    from raggedkv.engine.methods.registry import parse_variant

    for method in methods:
        parse_variant(method)  # ValueError naming the variant, the parameter and what is accepted


def check_grid(
    *,
    methods: Sequence[str],
    kv_sizes: Sequence[int],
    max_new_tokens: int,
    lengths: Sequence[int] = (1,),
    depths: Sequence[int] = (0,),
) -> None:
    """Validate an evaluation grid.

    Raises:
        ValueError: naming the first bad argument and value.
    """
    check_methods(methods)
    _positive_ints("kv_sizes", kv_sizes)
    _positive_ints("lengths", lengths)
    _positive_ints("max_new_tokens", [max_new_tokens])
    for depth in depths:
        if not isinstance(depth, int) or not 0 <= depth <= 100:
            raise ValueError(f"depths holds {depth!r}; every depth must be an integer percentage in [0, 100]")
    if not depths:
        raise ValueError("depths is empty; give at least one percentage in [0, 100]")
