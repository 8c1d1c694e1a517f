"""Tokenizers for the CLIP text encoder that need no download.

The built-in ``bytes`` tokenizer is a CLIP BPE tokenizer with no merges: every UTF-8 byte is a
symbol (with a word-final variant), so any instruction tokenizes, and the vocabulary (514 ids)
is generated here rather than fetched. Presets trained from scratch use it; a model built from a
real CLIP folder keeps that folder's own tokenizer.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from transformers import CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

from vpp.tvp.config import BYTES_VOCAB_SIZE


def byte_vocabulary() -> dict[str, int]:
    """The built-in tokenizer's 514 ids: every byte's symbol, then its word-final variant, then
    the start and end tokens. The symbols are transformers' own byte-to-symbol table, the one
    CLIPTokenizer encodes bytes with (vpp.runtime.tokenizer mirrors it without transformers)."""
    table = bytes_to_unicode()
    symbols = [table[byte] for byte in range(256)]
    tokens = [*symbols, *(s + "</w>" for s in symbols), "<|startoftext|>", "<|endoftext|>"]
    assert len(tokens) == BYTES_VOCAB_SIZE
    return {token: index for index, token in enumerate(tokens)}


def byte_tokenizer() -> CLIPTokenizer:
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "vocab.json").write_text(json.dumps(byte_vocabulary()))
        Path(folder, "merges.txt").write_text("#version: 0.2\n")
        # transformers 5 ignores vocab_file=/merges_file= keywords; from_pretrained reads them.
        return CLIPTokenizer.from_pretrained(folder, local_files_only=True)


def load_tokenizer(spec: str) -> CLIPTokenizer:
    """``"bytes"`` for the built-in tokenizer, otherwise a local folder holding a CLIP tokenizer."""
    if spec == "bytes":
        return byte_tokenizer()
    folder = Path(spec)
    if not folder.is_dir():
        raise FileNotFoundError(f"tokenizer {spec!r} is neither 'bytes' nor an existing folder")
    if (folder / "tokenizer").is_dir():
        folder = folder / "tokenizer"
    if not any((folder / name).is_file() for name in ("vocab.json", "tokenizer.json")):
        raise FileNotFoundError(
            f"{folder} holds no CLIP tokenizer (vocab.json + merges.txt, or tokenizer.json)"
        )
    return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
