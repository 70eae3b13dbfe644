"""The sample corpus shipped with sftkit (a CC BY-SA 4.0 subset of NusaX-Senti; see README.txt here).

It lets the embedded demo, the tests and the documentation examples run offline on real text:
unlabeled Javanese and Sundanese text for language SFTs, English sentiment data for a task SFT,
and Javanese/Sundanese sentiment *test* rows used only for zero-shot evaluation.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

SAMPLE_FILES = {
    "eng-train": "sentiment_eng_train.csv",
    "eng-validation": "sentiment_eng_validation.csv",
    "jav-text": "text_jav.txt",
    "sun-text": "text_sun.txt",
    "jav-test": "sentiment_jav_test.csv",
    "sun-test": "sentiment_sun_test.csv",
}
"""Short name → file name of every shipped sample file."""


def sample_path(name: str) -> Path:
    """Filesystem path of a shipped sample file, by short name (``jav-text``) or file name."""
    file_name = SAMPLE_FILES.get(name, name)
    if file_name not in SAMPLE_FILES.values():
        known = ", ".join(SAMPLE_FILES)
        raise KeyError(f"no sample file {name!r}; known: {known}")
    return Path(str(resources.files(__name__).joinpath(file_name)))
