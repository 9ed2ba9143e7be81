"""Judging short generated answers: whole-word alias matching after LongBench's answer normalisation."""

from __future__ import annotations

from collections.abc import Iterable

from .metrics import normalize_answer


def mentions(text: str, aliases: Iterable[str]) -> bool:
    """Whether any alias occurs in `text` as whole words, both normalised (case, punctuation, articles ignored)."""
    haystack = f" {normalize_answer(text)} "
    return any(f" {normalize_answer(alias)} " in haystack for alias in aliases)


def judge_retrieval(answer: str, answers: Iterable[str]) -> bool:
    """A NIAH answer is correct when it states the needle's key fact."""
    return mentions(answer, answers)


def judge_reasoning(answer: str, answers: Iterable[str], distractor_answers: Iterable[str]) -> bool:
    """A reasoning answer is correct when it states the answer and not the one the distractor leads to."""
    return mentions(answer, answers) and not mentions(answer, distractor_answers)
