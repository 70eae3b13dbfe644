"""The SFT file format: one safetensors file holding sparse deltas, dense tensors and metadata.

Public API (mirrors safetensors' own)::

    from sftkit.format import save_file, load_file, read_metadata, safe_open
    save_file(sft, "lang-quy.safetensors")                      # atomic write
    sft = load_file("lang-quy.safetensors")                     # verified load
    with safe_open("lang-quy.safetensors") as f:                # lazy reads
        delta = f.get_delta("encoder.layer.0.attention.self.query.weight")

The byte-level specification is ``docs/format.md``; index coders are in
:mod:`sftkit.format.encodings`, header parsing (usable on the first bytes of a remote file) in
:mod:`sftkit.format.header`.
"""

from __future__ import annotations

from sftkit.format.container import SFTReader, TensorInfo, load_file, read_metadata, safe_open, save_file
from sftkit.format.encodings import (
    ENCODINGS,
    choose_encoding,
    decode_indices,
    encode_indices,
    encoded_nbytes,
    entropy_bound_bits,
)
from sftkit.format.header import (
    FORMAT_NAME,
    FORMAT_VERSION,
    SFTHeader,
    TableEntry,
    header_from_bytes,
    header_size,
    read_header,
)

__all__ = [
    "ENCODINGS",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "SFTHeader",
    "SFTReader",
    "TableEntry",
    "TensorInfo",
    "choose_encoding",
    "decode_indices",
    "encode_indices",
    "encoded_nbytes",
    "entropy_bound_bits",
    "header_from_bytes",
    "header_size",
    "load_file",
    "read_header",
    "read_metadata",
    "safe_open",
    "save_file",
]
