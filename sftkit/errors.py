"""The library's own error types.

Every user mistake surfaces as a subclass of :class:`SFTError` whose message is one line naming the
file or parameter at fault and what to do about it. The CLI prints ``Error: <message>`` for these and
exits non-zero without a traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class SFTError(Exception):
    """Base class for all sftkit errors meant for the user."""


class FormatError(SFTError):
    """An SFT file is malformed: unknown format/version, bad indices, wrong dtypes or shapes."""


class ChecksumError(FormatError):
    """The tensor data of an SFT file does not match the checksum in its header (truncated or altered)."""


class BaseMismatchError(SFTError):
    """An SFT was made for a different base model (fingerprint mismatch); pass ``force=True`` to override."""


class MissingParameterError(SFTError):
    """An SFT touches a parameter the target model does not have (raised only in strict mode)."""


class ConfigError(SFTError):
    """An invalid argument combination or value (e.g. K larger than the eligible parameter count)."""
