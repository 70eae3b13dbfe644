from __future__ import annotations

import pytest
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
