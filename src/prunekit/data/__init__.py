"""Datasets for measuring accuracy: MNIST-format IDX files, sklearn digits, image folders; and
a set of English sentences for label-free calibration and fidelity of sentence encoders."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from prunekit.data.digits import digits_arrays, load_digits_split
from prunekit.data.idx import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DEBIAN_DIR,
    IdxDataset,
    find_idx_files,
    load_idx_split,
    read_idx,
    write_idx,
)
from prunekit.data.image_folder import IMAGENET_MEAN, IMAGENET_STD, image_folder_dataset
from prunekit.errors import DataError

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DEBIAN_DIR",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IdxDataset",
    "digits_arrays",
    "find_idx_files",
    "image_folder_dataset",
    "load_digits_split",
    "load_idx_split",
    "load_sentences",
    "read_idx",
    "sample_sentences",
    "write_idx",
]


SENTENCES = "sentences.txt"


def load_sentences(path: str | Path | None = None, limit: int | None = None) -> list[str]:
    """The sentences of a text file, one per line (blank lines skipped, surrounding whitespace
    stripped), in file order.

    ``path=None``: the sentences shipped with prunekit (``prunekit/data/sentences.txt``): a few
    hundred varied English sentences written for prunekit (everyday life, science, sport, food,
    technology, weather...; short and long; with near-paraphrase pairs, so that the pairwise
    similarities have structure), for calibrating and checking sentence encoders without a
    dataset. Raises ``DataError`` naming the path when the file is missing or holds no sentence.
    ``limit``: see ``sample_sentences``.
    """
    return sample_sentences(path, limit)[0]


def sample_sentences(
    path: str | Path | None = None, limit: int | None = None
) -> tuple[list[str], int]:
    """(sentences, how many the file holds): all of them, or, with ``limit``, a uniform random
    sample of ``limit`` of them (reservoir sampling, seed 0) kept in file order. The file is
    read one line at a time, so memory stays bounded by ``limit`` whatever its size."""
    import random

    if path is None:
        source = resources.files(__name__).joinpath(SENTENCES)
        where = str(source)
        try:
            handle = source.open("r", encoding="utf-8")
        except (FileNotFoundError, NotADirectoryError):
            raise DataError(f"the sentence file {where} is missing: reinstall prunekit") from None
    else:
        where = str(path)
        try:
            handle = Path(path).open(encoding="utf-8")  # noqa: SIM115 (closed below)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise DataError(f"the sentence file {where} does not exist or is not a file") from None
    rng = random.Random(0)
    kept: list[tuple[int, str]] = []
    total = 0
    try:
        with handle:
            for line in handle:
                sentence = line.strip()
                if not sentence:
                    continue
                if limit is None or len(kept) < limit:
                    kept.append((total, sentence))
                else:
                    slot = rng.randrange(total + 1)
                    if slot < limit:
                        kept[slot] = (total, sentence)
                total += 1
    except UnicodeDecodeError as exc:
        raise DataError(f"the sentence file {where} is not UTF-8 text ({exc.reason})") from None
    if not kept:
        raise DataError(f"the sentence file {where} holds no sentence (it is empty)")
    return [sentence for _, sentence in sorted(kept)], total
