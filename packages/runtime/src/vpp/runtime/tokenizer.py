"""A CLIP BPE tokenizer in plain Python, so new instructions work without transformers.

It follows the exported ``tokenizers`` pipeline of transformers' CLIPTokenizer: NFC, whitespace
runs -> one space, lowercase; split into contractions / letter runs / single digits / runs of
other symbols; UTF-8 bytes -> printable stand-ins; BPE with ``</w>`` on each word's last symbol;
``<|startoftext|> ... <|endoftext|>``, truncated and padded to the text encoder's length.
The standard ``re`` module has no ``\\p{L}``: letters are ``[^\\W\\d_]`` and numbers ``\\d``,
which agree with the Unicode classes on letters and decimal digits (not on, e.g., superscripts).
"""

from __future__ import annotations

import itertools
import json
import re
import unicodedata
from functools import lru_cache
from pathlib import Path

_WORD = re.compile(
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|(?:[^\s\w]|_)+", re.UNICODE
)
_WHITESPACE = re.compile(r"\s+")


@lru_cache(maxsize=1)
def byte_symbols() -> tuple[str, ...]:
    """The printable stand-ins byte-level BPE uses for the 256 byte values, in byte order."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    symbols = {b: chr(b) for b in printable}
    extra = 0
    for byte in range(256):
        if byte not in symbols:
            symbols[byte] = chr(256 + extra)
            extra += 1
    return tuple(symbols[b] for b in range(256))


class ClipTokenizer:
    def __init__(
        self,
        vocab: dict[str, int],
        merges: list[tuple[str, str]],
        bos_id: int,
        eos_id: int,
        pad_id: int,
        unk_id: int,
        max_length: int,
    ) -> None:
        self.vocab = vocab
        self.ranks = {pair: rank for rank, pair in enumerate(merges)}
        self.bos_id, self.eos_id, self.pad_id, self.unk_id = bos_id, eos_id, pad_id, unk_id
        self.max_length = max_length
        self._cache: dict[str, list[str]] = {}
        # Written in an instruction, the special tokens stay single tokens (as transformers does).
        self.special_ids = {"<|startoftext|>": bos_id, "<|endoftext|>": eos_id}

    @classmethod
    def load(cls, path: str | Path) -> ClipTokenizer:
        data = json.loads(Path(path).read_text())
        merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in data["merges"]]
        return cls(
            data["vocab"],
            merges,
            data["bos_id"],
            data["eos_id"],
            data["pad_id"],
            data["unk_id"],
            data["max_length"],
        )

    def _bpe(self, word: str) -> list[str]:
        if word in self._cache:
            return self._cache[word]
        symbols = [*word[:-1], word[-1] + "</w>"]
        while len(symbols) > 1:
            pairs = [
                (self.ranks.get(pair, len(self.ranks)), i)
                for i, pair in enumerate(itertools.pairwise(symbols))
            ]
            rank, index = min(pairs)
            if rank == len(self.ranks):
                break
            best = (symbols[index], symbols[index + 1])
            merged: list[str] = []
            i = 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        self._cache[word] = symbols
        return symbols

    def __call__(self, text: str) -> list[int]:
        """Token ids of one instruction, exactly ``max_length`` long."""
        text = _WHITESPACE.sub(" ", unicodedata.normalize("NFC", text)).lower()
        symbols = byte_symbols()
        ids: list[int] = []
        for word in _WORD.findall(text):
            if word in self.special_ids:
                ids.append(self.special_ids[word])
                continue
            encoded = "".join(symbols[b] for b in word.encode("utf-8"))
            ids.extend(self.vocab.get(token, self.unk_id) for token in self._bpe(encoded))
        ids = [self.bos_id, *ids[: self.max_length - 2], self.eos_id]
        return ids + [self.pad_id] * (self.max_length - len(ids))
