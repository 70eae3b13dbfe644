"""Compose by name: find the language / task SFT that fits a base model.

``sftkit compose xlmr/ --language quy --task nli`` asks the registry for "the" language SFT for
``quy`` and "the" task SFT for ``nli`` made for that base. The local registry is asked first, then
the Hub (when online, or when asked to). Candidates are judged by base fingerprint where they record
one (computed from the base only when a candidate has one to compare with), else by base name; one
fitting candidate is chosen, and anything else is a one-line error listing what was found.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftkit.errors import ConfigError, SFTError
from sftkit.metadata import BaseModelInfo
from sftkit.registry.entry import RegistryEntry
from sftkit.registry.errors import HubServerError, RegistryError, ResolveError
from sftkit.registry.local import LocalRegistry
from sftkit.registry.naming import RepoRef, base_name_matches

logger = logging.getLogger("sftkit")


class BaseTarget:
    """The base model asked for: a path / Hub id, a loaded model, or a :class:`BaseModelInfo`.

    Its fingerprint is computed lazily (loading the model), only when a candidate has one.
    """

    def __init__(self, base: Any) -> None:
        self.base = base
        self._info: BaseModelInfo | None = None
        self._tried = False

    @property
    def name(self) -> str | None:
        if isinstance(self.base, (str, os.PathLike)):
            return str(self.base)
        if isinstance(self.base, BaseModelInfo):
            return self.base.name
        config = getattr(self.base, "config", None)
        return getattr(config, "_name_or_path", None) or None

    def info(self) -> BaseModelInfo | None:
        if self._tried:
            return self._info
        self._tried = True
        from sftkit.fingerprints import describe_base

        if isinstance(self.base, BaseModelInfo):
            self._info = self.base
        elif isinstance(self.base, (str, os.PathLike)):
            try:
                from sftkit.models import load_model

                model = load_model(str(self.base), for_task="base")
                self._info = describe_base(model, name=str(self.base))
            except (SFTError, OSError, ValueError, ImportError) as exc:
                logger.info("cannot fingerprint base %s (%s); matching SFTs by base name", self.base, exc)
        else:
            self._info = describe_base(self.base, name=self.name)
        return self._info


@dataclass
class _Verdict:
    chosen: RegistryEntry | None = None
    rejected: list[RegistryEntry] = field(default_factory=list)


def choose(target: BaseTarget, candidates: list[RegistryEntry], what: str) -> _Verdict:
    """Pick the one candidate made for ``target``; raise :class:`ResolveError` if several fit equally."""
    from sftkit.fingerprints import matches

    if not candidates:
        return _Verdict()
    exact: list[RegistryEntry] = []
    by_name: list[RegistryEntry] = []
    unknown: list[RegistryEntry] = []
    rejected: list[RegistryEntry] = []
    info = target.info() if any(c.base_fingerprint for c in candidates) else None
    for cand in candidates:
        if cand.base_fingerprint and info is not None and info.fingerprint:
            recorded = BaseModelInfo(name=cand.base_name, fingerprint=cand.base_fingerprint)
            same = cand.base_fingerprint == info.fingerprint or matches(recorded, info)
            (exact if same else rejected).append(cand)
        elif base_name_matches(cand.base_name, target.name):
            by_name.append(cand)
        elif not cand.base_name:
            unknown.append(cand)
        else:
            rejected.append(cand)
    for group in (exact, by_name, unknown):
        if len(group) == 1:
            return _Verdict(group[0], rejected)
        if len(group) > 1:
            listed = ", ".join(c.ref for c in group)
            raise ResolveError(
                f"{what}: {len(group)} SFTs fit ({listed}); pass the one you want as a file or pull only that one"
            )
    return _Verdict(None, rejected)


def resolve(
    base: Any,
    *,
    language: str | None = None,
    task: str | None = None,
    registry: str | os.PathLike[str] | LocalRegistry | None = None,
    hub: bool | None = None,
) -> list[Path]:
    """Local SFT file paths for ``base``: the language SFT first, then the task SFT.

    ``hub``: True = also search the Hub (errors reaching it are raised), False = local only,
    None = search the Hub when nothing fits locally and not offline (unreachable Hub is reported
    only if nothing is found). Hub hits are pulled into the local registry.
    """
    from sftkit.registry.hub import is_offline

    if not language and not task:
        raise ConfigError("resolve needs language= or task= (--language / --task)")
    local = registry if isinstance(registry, LocalRegistry) else LocalRegistry(registry)
    use_hub = hub if hub is not None else not is_offline()
    target = BaseTarget(base)
    requests = [("language", "language", language), ("task", "task", task)]
    return [
        _resolve_one(target, kind, field_name, code, local, use_hub, strict_hub=hub is True)
        for kind, field_name, code in requests
        if code
    ]


def _resolve_one(
    target: BaseTarget,
    kind: str,
    field_name: str,
    code: str,
    local: LocalRegistry,
    use_hub: bool,
    *,
    strict_hub: bool,
) -> Path:
    what = f"{kind} SFT '{code}' for base {target.name or '?'}"
    query = {field_name: code, "kind": kind}
    verdict = choose(target, local.search(**query), what)
    if verdict.chosen is not None and verdict.chosen.file is not None:
        return verdict.chosen.file
    rejected = list(verdict.rejected)
    hub_note = ""
    if use_hub:
        from sftkit.registry.hub import HubRegistry

        hub_registry = HubRegistry()
        try:
            if not strict_hub and not hub_registry.reachable():
                raise HubServerError(f"cannot reach {hub_registry.endpoint}")
            hub_verdict = choose(target, hub_registry.search(**query), what)
        except RegistryError as exc:
            if strict_hub or isinstance(exc, ResolveError):
                raise
            hub_verdict, hub_note = _Verdict(), f" (the Hub was not searched: {exc})"
        rejected.extend(hub_verdict.rejected)
        if hub_verdict.chosen is not None:
            chosen = hub_verdict.chosen
            base_model = target.base if not isinstance(target.base, (str, os.PathLike, BaseModelInfo)) else None
            entry = hub_registry.pull(RepoRef(chosen.repo_id, chosen.revision), local=local, base=base_model)
            if entry.file is None:
                raise ResolveError(f"{what}: pulled {entry.ref} but it has no SFT file")
            return entry.file
    where = f"the local registry {local.root}" + (" or on the Hub" if use_hub else "")
    if rejected:
        listed = ", ".join(f"{c.ref} (base {c.base_name or '?'})" for c in rejected)
        raise ResolveError(f"{what}: none in {where} was made for this base, found only {listed}{hub_note}")
    hint = f"`sftkit search --{field_name} {code} --hub` lists Hub SFTs, `sftkit pull REPO` adds one"
    raise ResolveError(f"{what}: none in {where}{hub_note}; {hint}")
