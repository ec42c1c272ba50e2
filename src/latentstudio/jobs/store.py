"""The SQLite job store: jobs, their input images (init image and mask, an extras job's images) and the
image index, in one WAL database. An extras job's row has its options in ``params``, no checkpoint and an
empty ``vae``.

One connection shared by the worker and request threads behind a lock (every statement is short).
Durability: every commit survives a process crash (WAL). Commits a client is told about (a queued job, a
cancel) run with ``synchronous=FULL`` and so also survive a power loss; the worker's own transitions
(claim, finish) run with ``NORMAL`` (no fsync: one per job saves ~4 ms each on this disk) and become
durable with the next FULL commit or checkpoint; after a power loss they at worst roll back to
``running``, which the next start fails cleanly. The schema version lives in ``PRAGMA user_version``; a
newer database than this code knows is refused, an older one is migrated in place (version 1 → 2: the
``facts`` column, NULL for the jobs it already holds).
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from PIL import Image

from latentstudio.jobs.codec import extras_from_json, extras_images, params_from_json, params_to_json
from latentstudio.jobs.model import (
    AnySpec,
    ExtrasSpec,
    GenerationFacts,
    ImageRef,
    JobKind,
    JobRecord,
    JobSpec,
    JobStatus,
)
from latentstudio.storage import private_file

SCHEMA_VERSION = 2
_SCHEMA = """
CREATE TABLE jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    kind TEXT NOT NULL,
    source TEXT NOT NULL,
    checkpoint TEXT,
    vae TEXT NOT NULL,
    params TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    step INTEGER NOT NULL DEFAULT 0,
    total INTEGER NOT NULL DEFAULT 0,
    warnings TEXT NOT NULL DEFAULT '[]',
    error TEXT,
    interrupted INTEGER NOT NULL DEFAULT 0,
    facts TEXT
);
CREATE INDEX jobs_by_status ON jobs (status, seq);
CREATE TABLE inputs (
    job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    field TEXT NOT NULL,
    png BLOB NOT NULL,
    PRIMARY KEY (job_id, field)
);
CREATE TABLE images (
    id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    path TEXT NOT NULL,
    seed INTEGER NOT NULL,
    subseed INTEGER NOT NULL,
    infotext TEXT NOT NULL,
    UNIQUE (job_id, idx)
);
"""
_COLUMNS = (
    "id, status, kind, source, checkpoint, vae, params, created_at, started_at, finished_at, "
    "step, total, warnings, error, interrupted, facts"
)
# Each step takes the schema from version i + 1 to i + 2 (a database is created at the newest version).
_MIGRATIONS = ("ALTER TABLE jobs ADD COLUMN facts TEXT;",)


class StoreError(RuntimeError):
    """The database cannot be used (newer schema, corrupt file)."""


@dataclass(frozen=True)
class StoredImage:
    """An image row: ``path`` relative to the store's images root."""

    ref: ImageRef
    path: str


@dataclass(frozen=True)
class Outcome:
    """How a running job ended, written in one transaction with its image rows."""

    status: JobStatus
    finished_at: float
    step: int
    total: int
    images: Sequence[StoredImage] = ()
    warnings: Sequence[str] = ()
    error: str | None = None
    interrupted: bool = False
    facts: GenerationFacts | None = None


class JobStore:
    """Persistent jobs in submission order (``seq``) with their images."""

    def __init__(self, path: Path) -> None:
        private_file(path)  # SQLite's -wal and -shm files take this mode: prompts and inputs stay private
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30.0)
        try:
            for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON", "busy_timeout=30000"):
                self._db.execute(f"PRAGMA {pragma}")
            self._migrate()
        except sqlite3.DatabaseError as e:
            self._db.close()
            raise StoreError(f"{path}: cannot open the job store ({e})") from e

    def _migrate(self) -> None:
        version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: schema version {version} is newer than this latentstudio ({SCHEMA_VERSION})"
            )
        if version == 0:
            with self._locked():
                self._db.executescript(f"BEGIN;{_SCHEMA}PRAGMA user_version = {SCHEMA_VERSION};COMMIT;")
            return
        for step in range(version, SCHEMA_VERSION):
            with self._locked():
                migration = _MIGRATIONS[step - 1]
                self._db.executescript(f"BEGIN;{migration}PRAGMA user_version = {step + 1};COMMIT;")

    @contextmanager
    def _locked(self) -> Iterator[sqlite3.Connection]:
        """The connection under the lock (single statements, or a script that manages its transaction)."""
        with self._lock:
            yield self._db

    @contextmanager
    def _atomic(self, *, durable: bool = False) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction; ``durable``: fsync the WAL at commit (power-loss safe)."""
        with self._lock:
            self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def close(self) -> None:
        """Checkpoint the WAL and close the connection."""
        with self._lock:
            self._db.close()

    # -- writing ---------------------------------------------------------------------------------------
    def insert(
        self, record: JobRecord, inputs: Mapping[str, bytes], *, max_queued: int | None = None
    ) -> bool:
        """Add a queued job with its input images (field → PNG bytes: :func:`codec.input_pngs`, or
        :func:`codec.extras_input_pngs` for extras); False (nothing written) when ``max_queued`` jobs are
        already queued."""
        spec = record.spec
        checkpoint, vae = (spec.checkpoint, spec.vae) if isinstance(spec, JobSpec) else (None, "")
        params = params_to_json(spec.params if isinstance(spec, JobSpec) else spec.options)
        with self._atomic(durable=True) as db:
            if max_queued is not None:
                (queued,) = db.execute("SELECT COUNT(*) FROM jobs WHERE status = 'queued'").fetchone()
                if queued >= max_queued:
                    return False
            db.execute(
                f"INSERT INTO jobs ({_COLUMNS}) VALUES ({', '.join('?' * 16)})",
                (
                    record.id, record.status.value, spec.kind.value, spec.source, checkpoint, vae, params,
                    record.created_at, None, None, 0, 0, "[]", None, 0, None,
                ),
            )  # fmt: skip
            db.executemany(
                "INSERT INTO inputs (job_id, field, png) VALUES (?, ?, ?)",
                [(record.id, name, png) for name, png in inputs.items()],
            )
        return True

    def claim_next(self, now: float) -> JobRecord | None:
        """The oldest queued job, now marked running (None when nothing waits)."""
        with self._atomic() as db:
            row = db.execute("SELECT id FROM jobs WHERE status = 'queued' ORDER BY seq LIMIT 1").fetchone()
            if row is None:
                return None
            db.execute("UPDATE jobs SET status = 'running', started_at = ? WHERE id = ?", (now, row[0]))
        found = self.get(row[0])
        assert found is not None
        return found

    def cancel_queued(self, job_id: str, now: float) -> bool:
        """queued → cancelled; False when the job is not queued (any more)."""
        with self._atomic(durable=True) as db:
            cursor = db.execute(
                "UPDATE jobs SET status = 'cancelled', finished_at = ? WHERE id = ? AND status = 'queued'",
                (now, job_id),
            )
            return cursor.rowcount == 1

    def delete_finished(self, job_id: str) -> bool:
        """Remove a terminal job with its inputs and image index; False when it is queued or running."""
        with self._atomic(durable=True) as db:
            cursor = db.execute(
                "DELETE FROM jobs WHERE id = ? AND status NOT IN ('queued', 'running')", (job_id,)
            )
            return cursor.rowcount == 1

    def finish(self, job_id: str, outcome: Outcome) -> None:
        """Record how a running job ended and index its images, all or nothing."""
        with self._atomic() as db:
            cursor = db.execute(
                "UPDATE jobs SET status = ?, finished_at = ?, step = ?, total = ?, warnings = ?, error = ?, "
                "interrupted = ?, facts = ? WHERE id = ? AND status = 'running'",
                (
                    outcome.status.value, outcome.finished_at, outcome.step, outcome.total,
                    json.dumps(list(outcome.warnings)), outcome.error, int(outcome.interrupted),
                    _facts_to_json(outcome.facts), job_id,
                ),
            )  # fmt: skip
            if cursor.rowcount != 1:
                raise StoreError(f"job {job_id} is not running; its outcome was not recorded")
            db.executemany(
                "INSERT INTO images (id, job_id, idx, path, seed, subseed, infotext) VALUES (?,?,?,?,?,?,?)",
                [
                    (i.ref.id, job_id, i.ref.index, i.path, i.ref.seed, i.ref.subseed, i.ref.infotext)
                    for i in outcome.images
                ],
            )

    def requeue(self, job_id: str) -> None:
        """running → queued, keeping its place (a clean shutdown interrupted it; it runs again first)."""
        with self._atomic() as db:
            db.execute(
                "UPDATE jobs SET status = 'queued', started_at = NULL, step = 0, total = 0 "
                "WHERE id = ? AND status = 'running'",
                (job_id,),
            )

    def fail_running(self, now: float, error: str) -> list[str]:
        """Mark every running job failed (start-up after a crash); returns their ids."""
        with self._atomic(durable=True) as db:
            ids = [r[0] for r in db.execute("SELECT id FROM jobs WHERE status = 'running' ORDER BY seq")]
            db.execute(
                "UPDATE jobs SET status = 'failed', finished_at = ?, error = ? WHERE status = 'running'",
                (now, error),
            )
        return ids

    # -- reading ---------------------------------------------------------------------------------------
    def get(self, job_id: str) -> JobRecord | None:
        """One job with its images, or None."""
        with self._locked() as db:
            row = db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
            images = self._images(db, [job_id]) if row is not None else {}
            inputs = self._inputs(db, [job_id]) if row is not None else {}
        return None if row is None else _record(row, images.get(job_id, ()), inputs.get(job_id, {}))

    def list(self, status: JobStatus | None = None, offset: int = 0, limit: int = 50) -> list[JobRecord]:
        """Jobs newest first, optionally of one status."""
        where, args = ("WHERE status = ?", [status.value]) if status is not None else ("", [])
        with self._locked() as db:
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM jobs {where} ORDER BY seq DESC LIMIT ? OFFSET ?",
                (*args, limit, offset),
            ).fetchall()
            ids = [r[0] for r in rows]
            images, inputs = self._images(db, ids), self._inputs(db, ids)
        return [_record(r, images.get(r[0], ()), inputs.get(r[0], {})) for r in rows]

    def count(self, status: JobStatus | None = None) -> int:
        """How many jobs (of one status)."""
        where, args = ("WHERE status = ?", (status.value,)) if status is not None else ("", ())
        with self._locked() as db:
            return int(db.execute(f"SELECT COUNT(*) FROM jobs {where}", args).fetchone()[0])

    def position(self, job_id: str) -> int | None:
        """0-based place of a queued job in the queue (None when it is not queued)."""
        with self._locked() as db:
            row = db.execute("SELECT seq FROM jobs WHERE id = ? AND status = 'queued'", (job_id,)).fetchone()
            if row is None:
                return None
            query = "SELECT COUNT(*) FROM jobs WHERE status = 'queued' AND seq < ?"
            return int(db.execute(query, (row[0],)).fetchone()[0])

    def image(self, image_id: str) -> StoredImage | None:
        """An indexed image by id."""
        with self._locked() as db:
            row = db.execute(
                "SELECT id, idx, seed, subseed, infotext, path FROM images WHERE id = ?", (image_id,)
            ).fetchone()
        return None if row is None else StoredImage(ImageRef(*row[:5]), row[5])

    @staticmethod
    def _images(db: sqlite3.Connection, job_ids: Sequence[str]) -> dict[str, tuple[ImageRef, ...]]:
        if not job_ids:
            return {}
        marks = ",".join("?" * len(job_ids))
        rows = db.execute(
            f"SELECT job_id, id, idx, seed, subseed, infotext FROM images WHERE job_id IN ({marks}) "
            "ORDER BY job_id, idx",
            tuple(job_ids),
        ).fetchall()
        out: dict[str, list[ImageRef]] = {}
        for job_id, *ref in rows:
            out.setdefault(job_id, []).append(ImageRef(*ref))
        return {k: tuple(v) for k, v in out.items()}

    @staticmethod
    def _inputs(db: sqlite3.Connection, job_ids: Sequence[str]) -> dict[str, dict[str, bytes]]:
        if not job_ids:
            return {}
        marks = ",".join("?" * len(job_ids))
        query = f"SELECT job_id, field, png FROM inputs WHERE job_id IN ({marks})"
        out: dict[str, dict[str, bytes]] = {}
        for job_id, field, png in db.execute(query, tuple(job_ids)):
            out.setdefault(job_id, {})[field] = bytes(png)
        return out


def _record(row: tuple[object, ...], images: tuple[ImageRef, ...], inputs: Mapping[str, bytes]) -> JobRecord:
    (job_id, status, kind, source, checkpoint, vae, params, created, started, finished, step, total,
     warnings, error, interrupted, facts) = row  # fmt: skip
    decoded = {name: Image.open(BytesIO(png)) for name, png in inputs.items()}  # pixels decoded on first use
    spec: AnySpec
    if JobKind(str(kind)) is JobKind.EXTRAS:
        spec = ExtrasSpec(extras_from_json(str(params)), extras_images(decoded), source=str(source))
    else:
        spec = JobSpec(
            kind=JobKind(str(kind)),
            params=params_from_json(str(params), decoded),
            checkpoint=None if checkpoint is None else str(checkpoint),
            vae=str(vae),
            source=str(source),
        )
    return JobRecord(
        id=str(job_id),
        status=JobStatus(str(status)),
        spec=spec,
        created_at=float(created),  # type: ignore[arg-type]
        started_at=None if started is None else float(started),  # type: ignore[arg-type]
        finished_at=None if finished is None else float(finished),  # type: ignore[arg-type]
        step=int(step),  # type: ignore[call-overload]
        total=int(total),  # type: ignore[call-overload]
        images=images,
        warnings=tuple(json.loads(str(warnings))),
        error=None if error is None else str(error),
        interrupted=bool(interrupted),
        facts=None if facts is None else _facts_from_json(str(facts)),
    )


def _facts_to_json(facts: GenerationFacts | None) -> str | None:
    """A JSON object; a parameter value JSON has no type for is stored as its ``str()`` (as the infotext)."""
    return None if facts is None else json.dumps(dataclasses.asdict(facts), default=str, ensure_ascii=False)


def _facts_from_json(text: str) -> GenerationFacts:
    data = json.loads(text)
    return GenerationFacts(
        model_name=data["model_name"],
        model_hash=data["model_hash"],
        vae_name=data["vae_name"],
        vae_hash=data["vae_hash"],
        all_seeds=tuple(data["all_seeds"]),
        all_subseeds=tuple(data["all_subseeds"]),
        extra_generation_params=data["extra_generation_params"],
        inpainting_conditioning=bool(data["inpainting_conditioning"]),
    )
