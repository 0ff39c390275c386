"""A persistent judgment cache: the same question to the same judge is asked once, across runs and processes.

Judging dominates the cost of RPO and of evaluation, and resumed or repeated runs ask the same questions again.
`JudgmentCache` stores each answer (a JSON object) under a key from `judgment_key`, in one sqlite file that many
processes (data-parallel ranks, evaluation workers) share safely: WAL mode lets readers run beside one writer,
a busy timeout makes concurrent writers wait instead of failing, and every write is its own transaction, so a
process killed mid-write loses at most the batch it was writing.

    with JudgmentCache("runs/judge.sqlite") as cache:
        key = judgment_key(kind="pair", backend_fingerprint=backend.fingerprint(), rubric=rubric,
                           prompt=prompt, images=[a, b], source=None)
        if (hit := cache.get(key)) is None:
            cache.put(key, {"prob_first": 0.8, "reason": "..."})
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from arr.rubrics import Rubric

__all__ = [
    "CacheError",
    "CacheStats",
    "JudgmentCache",
    "JudgmentKeys",
    "image_digest",
    "judgment_key",
    "rubric_digest",
    "text_digest",
]

# Bump when the key recipe changes, so old entries are not served for new questions. v2: the rubric enters the key
# as its digest, so that a batch hashes each rubric once instead of re-serialising it for every criterion.
KEY_VERSION = 2
_BUSY_TIMEOUT_S = 60.0  # writers wait this long for the lock; a batch of judgments commits in milliseconds
_CHUNK = 500  # keys per SELECT ... IN (...): under SQLite's oldest variable limit (999)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS judgments (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    created REAL NOT NULL
) WITHOUT ROWID
"""


class CacheError(RuntimeError):
    """The cache file cannot be opened or used (not a sqlite database, unwritable, locked for too long)."""


@dataclass(frozen=True)
class CacheStats:
    """Lookups this `JudgmentCache` object answered from the file (hits) or could not (misses)."""

    hits: int = 0
    misses: int = 0
    writes: int = 0

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


def image_digest(image: Image.Image) -> str:
    """sha256 of an image's mode, size, palette and raw pixels: equal pixels give equal digests, whatever the file
    format they were decoded from (PNG, BMP, TIFF); metadata is ignored."""
    h = hashlib.sha256()
    h.update(f"{image.mode}|{image.size[0]}x{image.size[1]}|".encode())
    if image.mode in ("P", "PA"):
        # Palette images store indices; the same indices under another palette are different pixels.
        h.update(bytes(image.getpalette() or []))
        h.update(b"|")
    h.update(image.tobytes())
    return h.hexdigest()


def text_digest(text: str) -> str:
    """A judged text's digest, marked so that it can never equal an image's."""
    return "text:" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def rubric_digest(rubric: Rubric) -> str:
    """sha256 of a rubric's canonical JSON (`Rubric.to_dict()`): everything about the rubric that can change an answer."""
    canonical = json.dumps(
        rubric.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


class JudgmentKeys:
    """Cache keys for the questions of one batch, hashing each rubric and each image once.

    A rubric with N criteria asks N questions about one image; hashing the rubric and the image per question made
    keying a batch O(N^2) in the rubric's size. Digests are remembered by object identity (the objects are kept
    alive here, so an id is never reused), which is right because rubrics and images are not changed while judged.
    Keep one `JudgmentKeys` per batch, not for the life of a process.
    """

    def __init__(self, backend_fingerprint: str) -> None:
        self.backend_fingerprint = backend_fingerprint
        self._rubrics: dict[int, tuple[Rubric, str]] = {}
        self._images: dict[int, tuple[Image.Image, str]] = {}

    def _rubric(self, rubric: Rubric) -> str:
        hit = self._rubrics.get(id(rubric))
        if hit is None:
            hit = self._rubrics[id(rubric)] = (rubric, rubric_digest(rubric))
        return hit[1]

    def _image(self, image: Image.Image | str, where: str, texts: bool = True) -> str:
        if isinstance(image, str) and texts:
            return text_digest(image)
        hit = self._images.get(id(image))
        if hit is None:
            if not isinstance(image, Image.Image):
                kinds = "a PIL image or a text" if texts else "a PIL image"
                raise TypeError(f"judgment_key: {where} must be {kinds}, got {type(image).__name__}")
            hit = self._images[id(image)] = (image, image_digest(image))
        return hit[1]

    def key(
        self,
        *,
        kind: str,
        rubric: Rubric,
        prompt: str,
        images: Sequence[Image.Image | str],
        source: Image.Image | None,
        criterion_id: str | None = None,
    ) -> str:
        """The key of one question (see `judgment_key`); the candidates are images or texts (texts judged as
        responses), and a text never shares a digest with an image."""
        if not isinstance(images, Sequence) or isinstance(images, (str, bytes)):
            raise TypeError(
                f"judgment_key: images must be a sequence of PIL images or texts, got {type(images).__name__}"
            )
        parts = {
            "v": KEY_VERSION,
            "kind": kind,
            "backend": self.backend_fingerprint,
            "rubric": self._rubric(rubric),
            "prompt": prompt,
            "images": [self._image(im, f"images[{i}]") for i, im in enumerate(images)],
            "source": self._image(source, "source", texts=False) if source is not None else None,
            "criterion_id": criterion_id,
        }
        canonical = json.dumps(
            parts, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
        )
        return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def judgment_key(
    *,
    kind: str,
    backend_fingerprint: str,
    rubric: Rubric,
    prompt: str,
    images: Sequence[Image.Image | str],
    source: Image.Image | None,
    criterion_id: str | None = None,
) -> str:
    """The cache key of one judge question: sha256 of a canonical JSON of every input that can change the answer.

    `kind` names the question ("pair", "criterion", ...); image order matters ("Image 1" vs "Image 2"). For many
    questions at once use `JudgmentKeys`, which hashes each rubric and image once.
    """
    return JudgmentKeys(backend_fingerprint).key(
        kind=kind, rubric=rubric, prompt=prompt, images=images, source=source, criterion_id=criterion_id
    )


def _encode(key: str, value: dict[str, Any]) -> str:
    if not isinstance(key, str):
        raise TypeError(f"cache key must be a string, got {type(key).__name__}")
    if not isinstance(value, dict):
        raise TypeError(f"cache value for key {key[:16]}... must be a dict, got {type(value).__name__}")
    try:
        return json.dumps(value, sort_keys=True, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"cache value for key {key[:16]}... is not JSON-serialisable: {e}") from None


class JudgmentCache:
    """A dict-like persistent store of judge answers (JSON objects) in one sqlite file.

    Each thread and each process gets its own connection (sqlite connections must not cross threads or forks);
    the object can be pickled to worker processes, where it reopens the same file.
    """

    def __init__(self, path: str | os.PathLike[str], timeout: float = _BUSY_TIMEOUT_S) -> None:
        self.path = Path(path)
        self.timeout = float(timeout)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._conns: list[sqlite3.Connection] = []
        self._hits = self._misses = self._writes = 0
        self._closed = False
        if self.path.is_dir():
            raise CacheError(
                f"judgment cache path {self.path} is a directory; pass a file path such as judge.sqlite"
            )
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CacheError(
                f"cannot create the folder for judgment cache {self.path}: {e.strerror}"
            ) from None
        self._conn()  # open now, so a bad path or a corrupt file fails here rather than mid-training

    # ---- connections ----------------------------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise CacheError(f"judgment cache {self.path} is closed")
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            return conn
        conn = self._open()
        self._local.conn = conn
        self._local.pid = os.getpid()
        with self._lock:
            self._conns.append(conn)
        return conn

    def _open(self) -> sqlite3.Connection:
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, so each put is exactly one transaction.
            conn = sqlite3.connect(
                self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as e:
            raise CacheError(f"cannot open judgment cache {self.path}: {e}") from None
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            self._retry_locked(lambda: conn.execute("PRAGMA journal_mode = WAL").fetchone())
            # NORMAL in WAL mode: a killed process never loses a committed transaction (only power loss can).
            conn.execute("PRAGMA synchronous = NORMAL")
            self._retry_locked(lambda: conn.execute(_SCHEMA))
        except sqlite3.DatabaseError as e:
            conn.close()
            raise CacheError(
                f"judgment cache {self.path} is not a usable sqlite database ({e}); "
                "delete it or choose another cache path"
            ) from None
        return conn

    def _retry_locked(self, fn: Any) -> Any:
        """Run `fn`, retrying while another process holds the lock for schema or journal-mode changes.

        Switching to WAL needs an exclusive lock and sqlite does not always call the busy handler for it.
        """
        deadline = time.monotonic() + self.timeout
        delay = 0.01
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.5)

    def close(self) -> None:
        """Close every connection this object opened (all threads); further use raises CacheError."""
        with self._lock:
            conns, self._conns = self._conns, []
            self._closed = True
        for conn in conns:
            conn.close()
        self._local = threading.local()

    def __enter__(self) -> JudgmentCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        # Connections cannot be pickled; a worker process reopens the file.
        return {"path": str(self.path), "timeout": self.timeout}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], state["timeout"])  # type: ignore[misc]

    # ---- reads and writes -----------------------------------------------------------------------------------

    def _count(self, hits: int, misses: int, writes: int = 0) -> None:
        with self._lock:
            self._hits += hits
            self._misses += misses
            self._writes += writes

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored value for `key`, or None."""
        row = self._execute("SELECT value FROM judgments WHERE key = ?", (key,)).fetchone()
        self._count(row is not None, row is None)
        return json.loads(row[0]) if row is not None else None

    def get_many(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        """{key: value} for the keys that are stored (missing keys are left out)."""
        wanted = list(dict.fromkeys(keys))
        found: dict[str, dict[str, Any]] = {}
        for i in range(0, len(wanted), _CHUNK):
            chunk = wanted[i : i + _CHUNK]
            marks = ",".join("?" * len(chunk))
            for key, value in self._execute(
                f"SELECT key, value FROM judgments WHERE key IN ({marks})", chunk
            ):
                found[key] = json.loads(value)
        self._count(len(found), len(wanted) - len(found))
        return found

    def put(self, key: str, value: dict[str, Any]) -> None:
        """Store `value` under `key` (replacing any previous value), committed before returning."""
        self.put_many([(key, value)])

    def put_many(self, items: Iterable[tuple[str, dict[str, Any]]] | dict[str, dict[str, Any]]) -> None:
        """Store many values in one transaction: either all of them are committed or none."""
        pairs = items.items() if isinstance(items, dict) else items
        rows = [(k, _encode(k, v), time.time()) for k, v in pairs]
        if not rows:
            return
        conn = self._conn()
        try:
            # BEGIN IMMEDIATE takes the write lock up front (waiting up to the busy timeout), so two writers
            # never deadlock upgrading from read to write locks.
            self._retry_locked(lambda: conn.execute("BEGIN IMMEDIATE"))
            try:
                conn.executemany(
                    "INSERT OR REPLACE INTO judgments (key, value, created) VALUES (?, ?, ?)", rows
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:
            raise CacheError(f"cannot write {len(rows)} entries to judgment cache {self.path}: {e}") from None
        self._count(0, 0, len(rows))

    def _execute(self, sql: str, params: Sequence[Any]) -> sqlite3.Cursor:
        try:
            return self._conn().execute(sql, params)
        except sqlite3.Error as e:
            raise CacheError(f"cannot read judgment cache {self.path}: {e}") from None

    def __len__(self) -> int:
        return int(self._execute("SELECT COUNT(*) FROM judgments", ()).fetchone()[0])

    def __contains__(self, key: object) -> bool:
        return self._execute("SELECT 1 FROM judgments WHERE key = ?", (key,)).fetchone() is not None

    def keys(self) -> Iterator[str]:
        for (key,) in self._execute("SELECT key FROM judgments ORDER BY key", ()).fetchall():
            yield key

    @property
    def stats(self) -> CacheStats:
        """Hits, misses and writes made through this object (not by other processes sharing the file)."""
        with self._lock:
            return CacheStats(hits=self._hits, misses=self._misses, writes=self._writes)

    def __repr__(self) -> str:
        return f"JudgmentCache({str(self.path)!r})"
