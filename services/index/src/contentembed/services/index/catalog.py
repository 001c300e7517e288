"""The shard's catalog: collection names, each an alias over its versions (which one
serves, the previous one, the pending ones), kept in ``alias.json`` next to them."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contentembed.services.common.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from contentembed.services.common.rwlock import ReadWriteLock
from contentembed.services.common.validation import shown, validate_collection_name
from contentembed.services.index.collection import LIVE_VERSION, HnswCollection
from contentembed.services.index.persistence import atomic_write

VERSION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
ALIAS_FILE = "alias.json"


def check_version_name(version: str) -> None:
    if not VERSION_NAME.match(version) or version == LIVE_VERSION:
        raise InvalidArgument(
            f"version {shown(version)} must be 1-64 characters of [A-Za-z0-9._-] and not "
            f"{LIVE_VERSION!r}",
            reason="BAD_VERSION",
        )


@dataclass(frozen=True)
class CandidateSpec:
    """A collection's candidate version under shadow traffic and canary (SetCandidate)."""

    version: str
    shadow_fraction: float = 0.0
    canary_weight: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "shadow_fraction": self.shadow_fraction,
                "canary_weight": self.canary_weight}

    @classmethod
    def from_json(cls, value: Any) -> CandidateSpec | None:
        if not value:
            return None
        return cls(str(value["version"]), float(value["shadow_fraction"]), float(value["canary_weight"]))


_UNCHANGED: Any = object()


@dataclass
class Alias:
    """A collection name: its loaded versions, which one serves, and the pending ones."""

    versions: dict[str, HnswCollection]
    active: str
    previous: str | None = None
    # Opened by BeginVersion, waiting for their bundle: they take writes, serve nothing.
    pending: dict[str, HnswCollection] = field(default_factory=dict)
    # Shadowed and canaried by every gateway; kept here so they all agree, durably.
    candidate: CandidateSpec | None = None
    # Writes hold it shared while they pick their target versions and write them; a change
    # of the version set (load, begin, install, drop) holds it alone, so no write lands on
    # a version being replaced, or misses one being added, or checks a stale fingerprint.
    gate: ReadWriteLock = field(default_factory=ReadWriteLock, repr=False, compare=False)

    @property
    def serving(self) -> HnswCollection:
        return self.versions[self.active]

    def every_version(self) -> dict[str, HnswCollection]:
        """Loaded and pending versions, the serving one first."""
        others = {**self.versions, **self.pending}
        return {self.active: others.pop(self.active), **dict(sorted(others.items()))}

    @property
    def fingerprint(self) -> str:
        """Changes whenever a version is loaded, opened, installed or dropped."""
        state = sorted(
            [version, c.space_id, "pending" if c.pending else "loaded"]
            for version, c in self.every_version().items()
        )
        return hashlib.sha256(json.dumps(state).encode()).hexdigest()[:16]


class Catalog:
    """Names to aliases. ``lock`` is held by every change of the names or of a name's
    versions; reads take none (a dict lookup is atomic, and a stale answer is one a
    concurrent change could have given anyway)."""

    def __init__(self, root: Path | None, max_collections: int | None = None) -> None:
        self.root = root  # <data-dir>/collections; None in memory
        self.max_collections = max_collections
        self.lock = threading.Lock()
        self._aliases: dict[str, Alias] = {}

    def __contains__(self, name: str) -> bool:
        return name in self._aliases

    def names(self) -> list[str]:
        return sorted(self._aliases)

    def find(self, name: str) -> Alias | None:
        return self._aliases.get(name)

    def alias(self, name: str) -> Alias:
        alias = self._aliases.get(name)
        if alias is None:
            # Only here, off the search path: every stored name passed the same check.
            validate_collection_name(name)  # a malformed name is the caller's mistake
            raise NotFound(f"collection {shown(name)} does not exist", reason="COLLECTION_NOT_FOUND")
        return alias

    def get(self, name: str, version: str = "") -> HnswCollection:
        """The serving version, or the named one."""
        alias = self.alias(name)
        if not version:
            return alias.serving
        collection = alias.versions.get(version)
        if collection is None and version in alias.pending:
            raise FailedPrecondition(
                f"version {shown(version)} of {shown(name)} is pending: its bundle is not installed",
                reason="VERSION_PENDING",
            )
        if collection is None:
            raise NotFound(
                f"collection {shown(name)} has no version {shown(version)} (loaded: {sorted(alias.versions)})",
                reason="VERSION_NOT_FOUND",
            )
        return collection

    def loaded_version(self, name: str, version: str) -> HnswCollection | None:
        alias = self._aliases.get(name)
        return alias.versions.get(version) if alias else None

    def list_page(self, page_size: int, after: str) -> tuple[list[HnswCollection], bool]:
        """Serving versions ordered by name, of the names after ``after``; True when more
        follow the page."""
        names = sorted(name for name in self._aliases if name > after)
        page = [name for name in names[:page_size] if name in self._aliases]
        return [self._aliases[name].serving for name in page], len(names) > page_size

    def check_room_for_one_more(self) -> None:
        """Under ``lock``: RESOURCE_EXHAUSTED TOO_MANY_COLLECTIONS at the limit."""
        if self.max_collections is not None and len(self._aliases) >= self.max_collections:
            raise ResourceExhausted(
                f"this shard holds {len(self._aliases)} collections, the limit "
                f"(--max-collections); delete one first",
                reason="TOO_MANY_COLLECTIONS",
            )

    def refuse_lexical_only(self, name: str, action: str) -> None:
        """Versions exist to roll out embedding models (bundles of vectors); a lexical-only
        collection has none: FAILED_PRECONDITION LEXICAL_ONLY. Whether a collection is
        lexical-only never changes while it exists, so no lock is needed."""
        alias = self._aliases.get(name)
        if alias is not None and not alias.serving.dense:
            raise FailedPrecondition(
                f"cannot {action} {shown(name)}: it is lexical-only, with no vectors and no "
                "versions; re-upsert its items to change them",
                reason="LEXICAL_ONLY",
            )

    # -- changes (under lock) ----------------------------------------------------------
    def add(self, name: str, alias: Alias, *, durable: bool = True) -> None:
        """Registers a name; ``durable`` writes its alias first (the last step of a
        create: without alias.json the collection never existed for any client)."""
        if durable:
            self.write(name, alias)
        self._aliases[name] = alias

    def remove(self, name: str) -> bool:
        return self._aliases.pop(name, None) is not None

    def write(self, name: str, alias: Alias, *, active: str = _UNCHANGED,
              previous: str | None = _UNCHANGED, candidate: CandidateSpec | None = _UNCHANGED) -> None:
        """alias.json of ``name``: ``alias`` with the changes given (nothing in memory:
        disk first, so a crash never leaves memory ahead of what a restart finds)."""
        if self.root is None:
            return
        active = alias.active if active is _UNCHANGED else active
        previous = alias.previous if previous is _UNCHANGED else previous
        candidate = alias.candidate if candidate is _UNCHANGED else candidate
        state: dict[str, Any] = {"active": active, "previous": previous}
        if candidate is not None:  # absent: none (as before candidates were kept here)
            state["candidate"] = candidate.to_json()
        atomic_write(self.root / name / ALIAS_FILE, json.dumps(state).encode())

    @staticmethod
    def read(name_dir: Path) -> tuple[str, str | None, CandidateSpec | None] | None:
        """(active, previous, candidate) from a name's alias.json; None when it has none."""
        path = name_dir / ALIAS_FILE
        if not path.exists():
            return None
        state = json.loads(path.read_bytes())
        return state["active"], state.get("previous"), CandidateSpec.from_json(state.get("candidate"))

    def activate(self, name: str, version: str) -> tuple[HnswCollection, str]:
        """Flips the alias; returns (now serving, previously serving version)."""
        with self.lock:
            alias = self.alias(name)
            if version in alias.pending:
                raise FailedPrecondition(
                    f"version {shown(version)} of {shown(name)} is pending: install its bundle first",
                    reason="VERSION_PENDING",
                )
            if version not in alias.versions:
                raise NotFound(
                    f"collection {shown(name)} has no version {shown(version)} (loaded: {sorted(alias.versions)})",
                    reason="VERSION_NOT_FOUND",
                )
            previous = alias.active
            if version != previous:
                # Disk first: a crash after the rename serves the new version on restart,
                # a crash before it the old one; never a mix. A candidate that now serves
                # is a candidate no more.
                candidate = alias.candidate
                if candidate is not None and candidate.version == version:
                    candidate = None
                self.write(name, alias, active=version, previous=previous, candidate=candidate)
                alias.active, alias.previous, alias.candidate = version, previous, candidate
            return alias.serving, previous

    def set_candidate(self, name: str, candidate: CandidateSpec | None) -> HnswCollection:
        """Records (or with None clears) the collection's candidate; returns the serving
        version. The version must be loaded and not serving."""
        with self.lock:
            alias = self.alias(name)
            if candidate is not None:
                for label, share in (("shadow_fraction", candidate.shadow_fraction),
                                     ("canary_weight", candidate.canary_weight)):
                    if not 0.0 <= share <= 1.0:
                        raise InvalidArgument(f"{label} must be between 0 and 1, got {share}",
                                              reason="BAD_SHARE")
                if candidate.version in alias.pending:
                    raise FailedPrecondition(
                        f"version {shown(candidate.version)} of {shown(name)} is pending: its "
                        "bundle is not installed", reason="VERSION_PENDING")
                if candidate.version not in alias.versions:
                    raise NotFound(f"collection {shown(name)} has no version {shown(candidate.version)}",
                                   reason="VERSION_NOT_FOUND")
                if candidate.version == alias.active:
                    raise FailedPrecondition(f"version {shown(candidate.version)} is already serving",
                                             reason="ALREADY_SERVING")
            if candidate != alias.candidate:
                self.write(name, alias, candidate=candidate)
                alias.candidate = candidate
            return alias.serving

    def rollback(self, name: str) -> tuple[HnswCollection, str]:
        with self.lock:
            alias = self.alias(name)
            if alias.previous is None or alias.previous not in alias.versions:
                raise FailedPrecondition(
                    f"collection {shown(name)} has no previous version to roll back to",
                    reason="NO_PREVIOUS_VERSION",
                )
            target = alias.previous
        return self.activate(name, target)
