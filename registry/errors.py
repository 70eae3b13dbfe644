"""Registry errors: one-line messages that say what went wrong and what to do next.

Every failure the Hub can report (missing repo, missing revision, no permission, server trouble, no
network, offline mode) maps to one of these, so the CLI prints a single ``Error: …`` line instead of
an HTTP traceback.
"""

from __future__ import annotations

from sftkit.errors import SFTError


class RegistryError(SFTError):
    """Base class of registry errors (local or Hub)."""


class EntryNotFoundError(RegistryError):
    """No such repository or revision (locally or on the Hub)."""


class HubAuthError(RegistryError):
    """The Hub refused the request (401/403): not logged in, no write access, or a gated/private repo."""


class HubServerError(RegistryError):
    """The Hub failed (5xx) or could not be reached; retrying later usually helps."""


class HubOfflineError(RegistryError):
    """Offline mode (``HF_HUB_OFFLINE=1``) and the file is not in the local Hub cache."""


class ResolveError(RegistryError):
    """No SFT, or more than one, fits a ``--language`` / ``--task`` request for a base model."""
