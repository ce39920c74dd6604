"""Datasets this project knows by content: what they are, where their labels come from, their licence.

Keyed by `Source.fingerprint()` (the archive's directory of names, sizes and CRC-32s), so a renamed copy is
still recognised and a modified one is not. Model cards and reports name a dataset from here, and say
plainly when a dataset is not known.
"""

from __future__ import annotations

KNOWN_DATASETS = {
    "d1789249ef75fcd371e77effd026a443e3174512884e6e7ffb4c60791c857bdf": {
        "name": "AffectNet training subset (Kaggle, noamsegal)",
        "labels": "class folders (the default) or the labels.csv re-labelling; they agree on 64% of the images",
        "licence": "CC BY-NC-SA (built from AffectNet's academic, non-commercial terms and FFHQ-derived images): "
                   "non-commercial research only",
    },
    "2c203a8215db79abfebe1725ce9c2af4759563a97b5959c07bb1ca4fa69e0ae1": {
        "name": "FER2013 training split (ICML 2013 challenge, Kaggle layout), 48x48 grayscale, no contempt class",
        "labels": "the original crowd labels (about 65% human agreement is often quoted)",
        "licence": "research use under the challenge's terms: non-commercial",
    },
}  # fmt: skip


def describe_dataset(fingerprint: str | None) -> dict:
    """What is known about a dataset, or a plain statement that nothing is."""
    return KNOWN_DATASETS.get(fingerprint or "", {
        "name": "a dataset this project does not know",
        "labels": "not recorded",
        "licence": "not recorded: check the terms of your data",
    })  # fmt: skip
