"""What the registry reads from an SFT file: metadata, K, density, size and a content hash.

Every file is checksum-verified before it is published or registered, never after; a push also
decodes every index set once (``deep``), so a structurally bad file never reaches the Hub.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sftkit._io import sha256_file as sha256_of
from sftkit.metadata import SFTMetadata


@dataclass(frozen=True)
class FileFacts:
    metadata: SFTMetadata
    nnz: int
    numel: int
    size: int
    sha256: str

    @property
    def density(self) -> float:
        return self.nnz / self.numel if self.numel else 0.0


def inspect_file(path: str | Path, *, deep: bool = False) -> FileFacts:
    """Verify ``path`` and summarise it; raises ChecksumError / FormatError.

    Always: the header is validated and the checksum over all tensor data recomputed (altered or
    truncated bytes are refused). ``deep``: also decode and validate every index set (what
    :func:`sftkit.format.load_file` does) — the check a publisher runs once before pushing, about ten
    times the cost of the checksum.
    """
    from sftkit.format import load_file, safe_open

    path = Path(path)
    if deep:
        sft = load_file(str(path), verify=True)
        metadata, nnz, numel = sft.metadata, sft.nnz, sft.numel
    else:
        with safe_open(str(path), verify=True) as reader:
            metadata = reader.metadata
            sparse = [e for e in reader.header.entries.values() if e.kind == "sparse"]
        nnz, numel = sum(e.nnz for e in sparse), sum(e.numel for e in sparse)
    return FileFacts(metadata, nnz, numel, path.stat().st_size, sha256_of(path))
