"""What a replica process needs to know about its kernel, written by the host agent that starts it.

A JSON file beside the replica's connection file (mode 0600: it holds the Raft password). The host agent writes it,
the replica kernel reads it; neither imports the other.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from jupyter_core.paths import secure_write

READY_MARKER = "ready"
# Log compaction (raft_log.py, snapshots.py): the executor snapshots the namespace every SNAPSHOT_EVERY cells, and
# pysyncobj compacts a journal that holds ``compact_after`` entries (raft_log.COMPACT_AFTER_ENTRIES, the same 400: a
# few hundred cells, as an ordinary cell appends one). The environment variables set them for every kernel the
# cluster service starts (tests and benchmarks use small values).
SNAPSHOT_EVERY_ENV, COMPACT_AFTER_ENV = "NOTEBOOKOS_SNAPSHOT_EVERY", "NOTEBOOKOS_COMPACT_AFTER_ENTRIES"
GC_GRACE_ENV = "NOTEBOOKOS_GC_GRACE_S"
MIN_FREE_ENV = "NOTEBOOKOS_MIN_FREE_MB"


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value else default
    except ValueError:
        raise ValueError(f"{name}={value!r} is not a whole number; unset it or set a number of entries") from None


@dataclass(frozen=True)
class ReplicaConfig:
    kernel_id: str
    replica: int  # 0, 1 or 2: the replica's index within its kernel, stable across restarts
    host: str  # the host it runs on
    raft_address: str  # "address:port" of this replica's Raft node, on its host's address
    raft_peers: tuple[str, ...]  # all replicas' Raft addresses, this one included, in replica order
    raft_password: str
    journal_path: str  # chosen by the host agent, under its state folder
    store: str  # object store location, e.g. "file:///var/lib/notebookos/objects" (the host agent's, unless shared)
    cwd: str | None = None  # the notebook's directory, where the user's relative paths resolve
    inline_limit: int = 1 << 20
    # Replicas on machines of their own talk to each other over HTTP (kernel/peer_api.py: objects, when no store
    # is shared, and membership changes): every replica's peer API URL, in replica order; empty on one machine.
    peer_urls: tuple[str, ...] = ()
    # A replacement joining a running kernel as a new Raft member (its peers do not list it yet): it asks them to
    # add it, then catches up from the log.
    joining: bool = False
    snapshot_every: int = dataclasses.field(default_factory=lambda: _env_int(SNAPSHOT_EVERY_ENV, 100))
    compact_after: int = dataclasses.field(default_factory=lambda: _env_int(COMPACT_AFTER_ENV, 400))
    # The store is this replica's alone (the host agent's folder for the kernel, on a machine of its own): objects
    # neither its dump and the entries after it nor its latest snapshot need are deleted from it once ``gc_grace_s``
    # old (younger ones may belong to a cell whose record has not committed yet). A store shared with the kernel's
    # other replicas (logical hosts on one disk) or with other kernels (Redis) is not collected here.
    owns_store: bool = False
    gc_grace_s: int = dataclasses.field(default_factory=lambda: _env_int(GC_GRACE_ENV, 60))
    # Below this much free space in its state folder a replica leaves (EXIT_STATE_FOLDER_FULL) to be replaced on
    # another host, before a journal or object write fails under a cell.
    min_free_mb: int = dataclasses.field(default_factory=lambda: _env_int(MIN_FREE_ENV, 128))

    @property
    def ready_marker(self) -> Path:
        """Written by the replica beside its journal once it has applied what its group had committed when it
        (re)joined; the host agent removes it before each start and reports the replica "catching up" until then."""
        return Path(self.journal_path).parent / READY_MARKER

    def write(self, path: str | os.PathLike) -> None:
        path = Path(path)
        tmp = path.with_suffix(".tmp")
        with secure_write(str(tmp)) as f:
            json.dump(asdict(self), f)
        os.replace(tmp, path)

    @classmethod
    def read(cls, path: str | os.PathLike) -> ReplicaConfig:
        return cls.from_json(json.loads(Path(path).read_text()))

    @classmethod
    def from_json(cls, data: dict) -> ReplicaConfig:
        """From its JSON form (a file, or an agent's API); TypeError or ValueError if it is not one."""
        fields = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(data, dict):
            raise ValueError("a replica configuration is a JSON object")
        if not set(data) <= fields:
            raise ValueError(f"not a replica configuration: unknown fields {sorted(set(data) - fields)}")
        return cls(**{**data, "raft_peers": tuple(data["raft_peers"]), "peer_urls": tuple(data.get("peer_urls", ()))})
