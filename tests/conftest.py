"""Test set-up: without a GPU the Triton kernels run under the interpreter (set before raggedkv is imported)."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs a CUDA device")
    config.addinivalue_line("markers", "slow: long-running; skipped unless --run-slow")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    skip_slow = pytest.mark.skip(reason="slow: pass --run-slow")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
        if "slow" in item.keywords and not config.getoption("--run-slow"):
            item.add_marker(skip_slow)


@pytest.fixture
def device() -> torch.device:
    """Where kernel tests run: CUDA when present, else the CPU under the Triton interpreter."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(autouse=True)
def _fresh_seed() -> None:
    """Fresh random inputs on every run. The seed goes to captured stdout, which pytest shows with a failure, so the
    case can be replayed with RAGGEDKV_TEST_SEED=<seed>."""
    seed = int(os.environ.get("RAGGEDKV_TEST_SEED", torch.seed() % 2**31))
    torch.manual_seed(seed)
    print(f"RAGGEDKV_TEST_SEED={seed}")
