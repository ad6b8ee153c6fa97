"""Frozen records the checkpoint manager hands out, and the compaction policy."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._snapshot import Snapshot

__all__ = ["HASHES", "CommitInfo", "ManagerConfig", "PartRef", "Restored", "plan_kind"]


#: The integrity hashes a manifest records, by the JSON key that holds the hex digest:
#: SHA-256 for the index and every pickled part, xxh3-128 for numeric parts (never
#: unpickled) since index version 2 (docs/architecture.md, "Threat model").
HASHES = ("sha256", "xxh3_128")


@dataclass(frozen=True)
class ManagerConfig:
    """Tunables of a :class:`CheckpointManager`.

    Attributes:
        db_size_limit: blobs smaller than this many bytes are stored in SQL,
            the others in the object store.
        max_deltas_per_base: after this many deltas the next checkpoint is a base.
        compression: codec choice passed to the encoder (auto, gzip, zstd, none).
        orphan_grace_seconds: unreferenced blobs younger than this are kept.
        key_prefix: first component of every blob key.
        encode_threads: at most this many threads of the codec pool encode one
            save (None: all of them, one per core up to 8). A worker leaves a
            core to its tasks this way; the bytes written do not depend on it.
        file_chunk_size: checkpointed files are stored in chunks of this many
            bytes (``checkpoint/_files.py``).
        numeric_hash: the integrity hash of numeric parts (``xxh3_128``, or
            ``sha256`` where the object store's writers are less trusted than
            the catalog's and array values must be authentic; see the threat
            model in docs/architecture.md). The index and pickled parts are
            always SHA-256; restore reads either.
    """

    db_size_limit: int = 1 << 20
    max_deltas_per_base: int = 50
    compression: str = "auto"
    orphan_grace_seconds: float = 3600.0
    key_prefix: str = "ckpt"
    encode_threads: int | None = None
    file_chunk_size: int = 4 << 20
    numeric_hash: str = "xxh3_128"

    def __post_init__(self) -> None:
        if self.encode_threads is not None and self.encode_threads < 1:
            raise ValueError(f"encode_threads must be >= 1 or None, got {self.encode_threads}")
        if self.numeric_hash not in HASHES:
            raise ValueError(f"numeric_hash must be one of {HASHES}, got {self.numeric_hash!r}")


@dataclass(frozen=True)
class PartRef:
    """One stored blob of a checkpoint, as recorded in the manifest.

    ``digest`` is the hex digest of the stored bytes by ``hash`` (one of
    ``HASHES``); the JSON form keys the digest by the hash's name.
    """

    key: str
    tier: str  # "sql" | "object"
    size: int
    raw_size: int
    digest: str
    codec: str
    hash: str = "sha256"

    @property
    def sha256(self) -> str | None:
        """The SHA-256 hex digest, or None for a part checked by another hash."""
        return self.digest if self.hash == "sha256" else None

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "tier": self.tier, "size": self.size,
                "raw_size": self.raw_size, self.hash: self.digest, "codec": self.codec}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PartRef:
        kind = next((h for h in HASHES if h in d), "sha256")
        return cls(str(d["key"]), str(d["tier"]), int(d["size"]), int(d["raw_size"]),
                   str(d[kind]), str(d["codec"]), kind)


@dataclass(frozen=True)
class CommitInfo:
    """A committed checkpoint."""

    task_id: str
    job_id: str
    seq: int
    epoch: int
    kind: str  # "base" | "delta"
    base_seq: int
    raw_bytes: int
    stored_bytes: int
    parts: tuple[PartRef, ...]
    created_at: datetime
    progress_percent: float | None
    file_bytes: int = 0      # stored bytes of the file chunks this save added
    #: committed while storage had no room for a new base (a delta past the usual limits)
    storage_full: bool = False

    @property
    def tiers(self) -> tuple[str, ...]:
        return tuple(p.tier for p in self.parts)

    def ref(self) -> dict[str, Any]:
        """A small JSON-able reference (for heartbeats and logs)."""
        return {"task_id": self.task_id, "seq": self.seq, "epoch": self.epoch, "kind": self.kind,
                "progress_percent": self.progress_percent,
                "checkpoint_at": self.created_at.isoformat(), "bytes": self.stored_bytes,
                "stored_in": sorted(set(self.tiers))}


@dataclass
class Restored:
    """The state rebuilt from the newest consistent checkpoint of a task."""

    snapshot: Snapshot
    task_id: str
    job_id: str
    seq: int
    base_seq: int
    epoch: int
    created_at: datetime
    age_seconds: float
    truncated: bool
    progress_percent: float | None
    chain: tuple[int, ...] = field(default=())  # seqs applied, base first
    files_dir: str | None = None  # where the link's files were restored, None without files
    #: True when nothing but this object holds ``snapshot`` (``CheckpointManager.restore``):
    #: ``state`` then takes over its buffers instead of copying them
    exclusive: bool = False

    @cached_property
    def state(self) -> Any:
        """The restored user state (``snapshot.to_state()``).

        When ``exclusive`` the arrays of the state are the snapshot's buffers
        (no copy): ``snapshot`` changes with the state from then on. A
        restore that a writer continues from (``open_attempt``) keeps the
        snapshot as its delta reference, so its state is a copy.
        """
        return self.snapshot.to_state(share=self.exclusive)


def plan_kind(*, has_previous: bool, deltas_since_base: int, delta_bytes_since_base: int,
              base_bytes: int, max_deltas_per_base: int) -> str:
    """``"base"`` or ``"delta"`` for the next checkpoint (DESIGN.md §3, compaction)."""
    if not has_previous or deltas_since_base >= max_deltas_per_base:
        return "base"
    if delta_bytes_since_base > base_bytes:
        return "base"
    return "delta"
