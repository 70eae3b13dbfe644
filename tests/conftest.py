from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from fakehub import fake_hub  # noqa: F401

from sftkit.testing import perturbed_copy, tiny_classifier, tiny_masked_lm


@pytest.fixture
def mlm():
    return tiny_masked_lm(seed=0)


@pytest.fixture
def classifier():
    return tiny_classifier(seed=0)


@pytest.fixture
def finetuned_mlm(mlm):
    return perturbed_copy(mlm, density=0.1, seed=1)


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny models run faster on one thread, and far faster when CI's 2 cores are shared.

    Training test modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
