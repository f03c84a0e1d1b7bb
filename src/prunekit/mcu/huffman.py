"""Canonical Huffman codes for the ``huffman`` weight format (``prunekit.mcu.storage``).

Deep Compression (Han et al., ICLR 2016) ends with Huffman coding of the relative indices and
the shared-weight codes because both are far from uniform: most gaps are short, and some
shared values are much more frequent than others. The paper reports 20-30% fewer bytes from
this stage alone.

A *canonical* code is fully described by the number of codes of each length and the symbols
in code order, so the decoder needs two tiny tables and no tree (``counts`` and ``symbols``,
both stored in flash next to the bit stream). Decoding reads one bit at a time: at length
``L`` the codes of that length are the integers ``first .. first + counts[L] - 1``; this is
the simple decoder of zlib's ``puff.c`` and needs a few dozen bytes of code.

Bits are written into the same LSB-first byte stream as ``storage.pack_bits`` (stream bit
``j`` is bit ``j % 8`` of byte ``j // 8``), each code from its most significant bit on.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

from prunekit.errors import DeploymentError

MAX_CODE_LENGTH = 15  # the decoder builds codes in a uint32; short tables keep flash small


@dataclass(frozen=True)
class CanonicalCode:
    """A canonical prefix code over ``symbols`` (in code order)."""

    symbols: np.ndarray  # int64, the alphabet in canonical order (by length, then value)
    counts: np.ndarray  # int64 [max_length]: counts[L - 1] codes of length L
    lengths: np.ndarray  # int64, code length of symbols[i]
    codes: np.ndarray  # int64, code of symbols[i] (``lengths[i]`` bits, MSB first)

    @property
    def max_length(self) -> int:
        return int(self.counts.size)

    def lookup(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Codes and lengths of ``values`` (each must be in the alphabet)."""
        order = np.argsort(self.symbols)
        position = np.searchsorted(self.symbols[order], values)
        if values.size and (
            position.max() >= self.symbols.size
            or not np.array_equal(self.symbols[order][position], values)
        ):
            raise DeploymentError("a value to encode is not in the Huffman alphabet")
        index = order[position]
        return self.codes[index], self.lengths[index]


def code_lengths(frequencies: np.ndarray, limit: int = MAX_CODE_LENGTH) -> np.ndarray:
    """Huffman code lengths (at most ``limit``) of symbols with positive ``frequencies``.

    A single symbol gets length 1 (a code must have at least one bit). Beyond ``limit`` the
    frequencies are flattened (halved, rounding up, keeping every symbol) and the tree rebuilt:
    the lengths stay a valid prefix code, a little longer than optimal only in that rare case.
    """
    freq = np.asarray(frequencies, dtype=np.int64)
    if freq.size == 0 or int(freq.min()) <= 0:
        raise DeploymentError("Huffman code lengths need at least one symbol, all frequencies > 0")
    if freq.size > 1 << limit:
        raise DeploymentError(f"{freq.size} symbols do not fit codes of at most {limit} bits")
    if freq.size == 1:
        return np.ones(1, dtype=np.int64)
    while True:
        lengths = _tree_lengths(freq)
        if int(lengths.max()) <= limit:
            return lengths
        freq = (freq + 1) // 2


def _tree_lengths(freq: np.ndarray) -> np.ndarray:
    # heap entries: (weight, tie-break, leaf indices below this node)
    heap: list[tuple[int, int, list[int]]] = [(int(f), i, [i]) for i, f in enumerate(freq)]
    heapq.heapify(heap)
    lengths = np.zeros(freq.size, dtype=np.int64)
    serial = freq.size
    while len(heap) > 1:
        w1, _, leaves1 = heapq.heappop(heap)
        w2, _, leaves2 = heapq.heappop(heap)
        merged = leaves1 + leaves2
        lengths[merged] += 1
        heapq.heappush(heap, (w1 + w2, serial, merged))
        serial += 1
    return lengths


def canonical_code(symbols: np.ndarray, lengths: np.ndarray) -> CanonicalCode:
    """Assign canonical codes: shorter codes first, equal lengths by symbol value."""
    symbols = np.asarray(symbols, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.lexsort((symbols, lengths))
    symbols, lengths = symbols[order], lengths[order]
    max_length = int(lengths.max())
    counts = np.bincount(lengths, minlength=max_length + 1)[1:]
    codes = np.zeros(symbols.size, dtype=np.int64)
    code, previous = 0, int(lengths[0])
    for i, length in enumerate(lengths.tolist()):
        code <<= length - previous
        codes[i] = code
        code += 1
        previous = length
    return CanonicalCode(symbols, counts.astype(np.int64), lengths, codes)


def build_code(values: np.ndarray, limit: int = MAX_CODE_LENGTH) -> CanonicalCode:
    """The canonical Huffman code of the symbols occurring in ``values``."""
    alphabet, frequencies = np.unique(np.asarray(values, dtype=np.int64), return_counts=True)
    return canonical_code(alphabet, code_lengths(frequencies, limit))


def write_bits(codes: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, int]:
    """Concatenate ``codes`` (MSB first, ``lengths`` bits each) into an LSB-first byte stream;
    returns the bytes and the number of bits written."""
    codes = np.asarray(codes, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.uint8), 0
    owner = np.repeat(np.arange(codes.size), lengths)
    # position of each bit inside its code, counted from the code's most significant bit
    within = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    bits = (codes[owner] >> (lengths[owner] - 1 - within)) & 1
    return np.packbits(bits.astype(np.uint8), bitorder="little"), total


class BitReader:
    """Reads canonical codes back from a stream (the Python twin of the C decoder)."""

    def __init__(self, stream: np.ndarray):
        self.bits = np.unpackbits(np.asarray(stream, dtype=np.uint8), bitorder="little")
        self.position = 0

    def symbol(self, code: CanonicalCode) -> int:
        value = first = index = 0
        for length in range(1, code.max_length + 1):
            if self.position >= self.bits.size:
                raise DeploymentError("Huffman stream ends in the middle of a code")
            value |= int(self.bits[self.position])
            self.position += 1
            count = int(code.counts[length - 1])
            if value - first < count:
                return int(code.symbols[index + value - first])
            index += count
            first = (first + count) << 1
            value <<= 1
        raise DeploymentError("invalid Huffman code in the stream")
