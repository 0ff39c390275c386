"""JudgmentCache and judgment_key: round trips, key sensitivity, concurrency across processes, crash safety."""

from __future__ import annotations

import io
import multiprocessing as mp
import pickle
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from arr.cache import CacheError, JudgmentCache, image_digest, judgment_key
from arr.rubrics import Criterion, GuideCategory, Rubric

# ---- helpers run in spawned processes (module level so that spawn can import them) ----------------------------


def _writer(path: str, tag: str, n: int, start_event) -> None:
    cache = JudgmentCache(path)
    start_event.wait(30)
    for i in range(n):
        cache.put(f"{tag}-{i}", {"tag": tag, "i": i})
    cache.close()


def _endless_writer(path: str, batch: int) -> None:
    cache = JudgmentCache(path)
    payload = "x" * 2000  # big enough that a batch takes a measurable time to write
    b = 0
    while True:
        cache.put_many([(f"b{b}-{j}", {"batch": b, "j": j, "pad": payload}) for j in range(batch)])
        b += 1


# ---- fixtures --------------------------------------------------------------------------------------------------


def _rubric(prompt: str = "a red circle", text: str = "there is a red circle") -> Rubric:
    return Rubric(
        prompt=prompt, criteria=[Criterion("c1", text), Criterion("c2", "nothing else", weight=0.5)]
    )


def _img(color: str = "red", size: tuple[int, int] = (16, 16)) -> Image.Image:
    return Image.new("RGB", size, color)


def _key(**overrides) -> str:
    parts = dict(
        kind="pair",
        backend_fingerprint="pixel:v1",
        rubric=_rubric(),
        prompt="a red circle",
        images=[_img("red"), _img("blue")],
        source=None,
        criterion_id=None,
    )
    parts.update(overrides)
    return judgment_key(**parts)


# ---- round trip ------------------------------------------------------------------------------------------------


def test_put_get_round_trip_and_stats(tmp_path):
    with JudgmentCache(tmp_path / "sub" / "judge.sqlite") as cache:  # missing folders are created
        value = {"prob_first": 0.75, "reason": "Image 1 has the red circle ✓", "raw": None, "n": [1, 2]}
        cache.put("k1", value)
        assert cache.get("k1") == value
        assert cache.get("nope") is None
        assert len(cache) == 1 and "k1" in cache and "nope" not in cache
        cache.put("k1", {"prob_first": 0.25})  # replaces
        assert cache.get("k1") == {"prob_first": 0.25}
        assert len(cache) == 1
        stats = cache.stats
        assert (stats.hits, stats.misses, stats.writes) == (2, 1, 2)
        assert stats.hit_rate == pytest.approx(2 / 3)


def test_get_many_put_many(tmp_path):
    with JudgmentCache(tmp_path / "judge.sqlite") as cache:
        items = [(f"k{i}", {"i": i}) for i in range(1200)]  # more than one SELECT chunk
        cache.put_many(items)
        cache.put_many({"d1": {"i": -1}})
        assert len(cache) == 1201
        got = cache.get_many([f"k{i}" for i in range(0, 1300, 2)] + ["d1"])
        assert got == {f"k{i}": {"i": i} for i in range(0, 1200, 2)} | {"d1": {"i": -1}}
        assert cache.stats.hits == 601 and cache.stats.misses == 50
        assert cache.get_many([]) == {}
        cache.put_many([])  # nothing to do, no error


def test_bad_values_are_refused_and_nothing_is_written(tmp_path):
    with JudgmentCache(tmp_path / "judge.sqlite") as cache:
        with pytest.raises(ValueError, match="not JSON-serialisable"):
            cache.put_many([("ok", {"a": 1}), ("bad", {"a": object()})])
        with pytest.raises(ValueError, match="not JSON-serialisable"):
            cache.put("nan", {"p": float("nan")})
        with pytest.raises(TypeError, match="must be a dict"):
            cache.put("list", [1, 2])  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="key must be a string"):
            cache.put(3, {"a": 1})  # type: ignore[arg-type]
        assert len(cache) == 0  # the batch with one bad value stored nothing


def test_reopen_keeps_entries(tmp_path):
    path = tmp_path / "judge.sqlite"
    with JudgmentCache(path) as cache:
        cache.put_many([(f"k{i}", {"i": i}) for i in range(50)])
    with JudgmentCache(str(path)) as again:
        assert len(again) == 50
        assert again.get("k49") == {"i": 49}
        assert sorted(again.keys()) == sorted(f"k{i}" for i in range(50))


def test_closed_cache_raises(tmp_path):
    cache = JudgmentCache(tmp_path / "judge.sqlite")
    cache.close()
    with pytest.raises(CacheError, match="closed"):
        cache.get("k")


def test_corrupt_file_names_the_path(tmp_path):
    path = tmp_path / "judge.sqlite"
    path.write_bytes(b"this is not a database, just text\n" * 200)
    with pytest.raises(CacheError) as info:
        JudgmentCache(path)
    message = str(info.value)
    assert str(path) in message and "not a usable sqlite database" in message and "\n" not in message


def test_directory_path_is_refused(tmp_path):
    with pytest.raises(CacheError, match="is a directory"):
        JudgmentCache(tmp_path)


def test_wal_mode_and_busy_timeout(tmp_path):
    with JudgmentCache(tmp_path / "judge.sqlite", timeout=7.5) as cache:
        conn = cache._conn()
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 7500


def test_threads_get_their_own_connections(tmp_path):
    cache = JudgmentCache(tmp_path / "judge.sqlite")
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(100):
                cache.put(f"t{t}-{i}", {"t": t, "i": i})
                assert cache.get(f"t{t}-{i}") == {"t": t, "i": i}
        except BaseException as e:  # collected and re-raised in the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert len(cache) == 400
    assert len(cache._conns) == 5  # the main thread's plus one per worker thread
    cache.close()


def test_pickle_reopens_the_same_file(tmp_path):
    with JudgmentCache(tmp_path / "judge.sqlite") as cache:
        cache.put("k", {"v": 1})
        clone = pickle.loads(pickle.dumps(cache))
        assert clone.path == cache.path and clone.get("k") == {"v": 1}
        clone.close()


# ---- processes -------------------------------------------------------------------------------------------------


@pytest.mark.slow  # starts child processes
def test_two_processes_writing_at_once_lose_nothing(tmp_path):
    path = str(tmp_path / "judge.sqlite")
    JudgmentCache(path).close()
    ctx = mp.get_context("spawn")
    go = ctx.Event()
    procs = [ctx.Process(target=_writer, args=(path, tag, 500, go)) for tag in ("a", "b")]
    for p in procs:
        p.start()
    time.sleep(0.5)  # let both open the file, then release them together
    go.set()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    with JudgmentCache(path) as cache:
        assert len(cache) == 1000
        got = cache.get_many([f"{tag}-{i}" for tag in "ab" for i in range(500)])
        assert all(got[f"{tag}-{i}"] == {"tag": tag, "i": i} for tag in "ab" for i in range(500))


def _forked_child(cache: JudgmentCache, queue) -> None:
    # Uses the parent's object: the cache must notice the new pid and open its own connection.
    cache.put("child", {"pid": "child"})
    queue.put((cache.get("parent"), len(cache)))


@pytest.mark.skipif("fork" not in mp.get_all_start_methods(), reason="needs the fork start method")
@pytest.mark.slow  # starts child processes
def test_forked_child_reuses_the_object_with_its_own_connection(tmp_path):
    cache = JudgmentCache(tmp_path / "judge.sqlite")
    cache.put("parent", {"pid": "parent"})
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_forked_child, args=(cache, queue))
    proc.start()
    got = queue.get(timeout=60)
    proc.join(60)
    assert proc.exitcode == 0
    assert got == ({"pid": "parent"}, 2)
    assert cache.get("child") == {"pid": "child"}  # the parent's connection still works after the fork
    cache.close()


@pytest.mark.slow  # starts child processes
def test_sigkill_while_writing_keeps_every_committed_entry(tmp_path):
    path = str(tmp_path / "judge.sqlite")
    batch = 10
    reader = JudgmentCache(path)
    ctx = mp.get_context("spawn")
    proc = ctx.Process(target=_endless_writer, args=(path, batch))
    proc.start()
    deadline = time.monotonic() + 60
    while (seen := len(reader)) < 300:
        assert time.monotonic() < deadline, "writer made no progress"
        assert proc.is_alive()
        time.sleep(0.01)
    proc.kill()  # SIGKILL, most likely inside a transaction
    proc.join(30)
    assert proc.exitcode == -9
    reader.close()

    with JudgmentCache(path) as cache:
        n = len(cache)
        assert n >= seen  # nothing that a reader saw committed is gone
        assert n % batch == 0  # put_many is all-or-nothing
        batches = n // batch
        got = cache.get_many([f"b{b}-{j}" for b in range(batches) for j in range(batch)])
        assert len(got) == n  # batches are committed in order, none skipped
        assert got[f"b{batches - 1}-{batch - 1}"]["batch"] == batches - 1
        conn = sqlite3.connect(path)
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        conn.close()
        cache.put("after", {"ok": True})  # still writable: no stale lock left behind
        assert cache.get("after") == {"ok": True}


# ---- keys ------------------------------------------------------------------------------------------------------


def test_key_is_stable_hex_sha256():
    k = _key()
    assert k == _key() and len(k) == 64 and int(k, 16) >= 0


def test_key_changes_with_every_part():
    base = _key()
    variants = {
        "kind": _key(kind="criterion"),
        "backend": _key(backend_fingerprint="pixel:v2"),
        "rubric text": _key(rubric=_rubric(text="there is a blue circle")),
        "rubric weight": _key(
            rubric=Rubric(
                "a red circle", [Criterion("c1", "there is a red circle"), Criterion("c2", "nothing else")]
            )
        ),
        "rubric guide": _key(
            rubric=Rubric(
                "a red circle",
                _rubric().criteria,
                guide=[GuideCategory("Colour", ["exact hue"])],
            )
        ),
        "rubric task": _key(rubric=Rubric("a red circle", _rubric().criteria, task="edit")),
        "prompt": _key(prompt="a red  circle"),
        "image order": _key(images=[_img("blue"), _img("red")]),
        "image pixel": _key(images=[_img("red"), _img((0, 0, 254))]),
        "image size": _key(images=[_img("red", (16, 17)), _img("blue")]),
        "image count": _key(images=[_img("red")]),
        "image mode": _key(images=[_img("red").convert("RGBA"), _img("blue")]),
        "source": _key(source=_img("green")),
        "source pixels": _key(source=_img("white")),
        "criterion": _key(criterion_id="c1"),
        "criterion other": _key(criterion_id="c2"),
    }
    keys = [base, *variants.values()]
    assert len(set(keys)) == len(keys), [name for name, k in variants.items() if k == base]


def test_key_depends_on_pixels_not_file_encoding():
    im = Image.new("RGB", (20, 12))
    im.putdata([((x * 13) % 256, (y * 29) % 256, (x * y) % 256) for y in range(12) for x in range(20)])
    decoded = []
    for fmt in ("PNG", "BMP", "TIFF"):
        buf = io.BytesIO()
        im.save(buf, format=fmt)
        buf.seek(0)
        decoded.append(Image.open(buf))
    keys = {_key(images=[d, _img("blue")]) for d in decoded}
    assert keys == {_key(images=[im, _img("blue")])}
    # A PNG with extra metadata decodes to the same pixels, so the same key.
    from PIL import PngImagePlugin

    meta = PngImagePlugin.PngInfo()
    meta.add_text("comment", "saved by another tool")
    buf = io.BytesIO()
    im.save(buf, format="PNG", pnginfo=meta)
    buf.seek(0)
    assert _key(images=[Image.open(buf), _img("blue")]) in keys


def test_palette_images_hash_their_palette():
    a = Image.new("P", (4, 4), 1)
    b = a.copy()
    a.putpalette([0, 0, 0, 255, 0, 0] + [0] * (256 * 3 - 6))
    b.putpalette([0, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 6))
    assert a.tobytes() == b.tobytes()
    assert image_digest(a) != image_digest(b)


def test_key_rejects_non_images():
    with pytest.raises(TypeError, match=r"images\[1\] must be a PIL image or a text"):
        _key(images=[_img(), Path("red.png")])
    # A text is a candidate of its own (a response judged as text): stable, and never the key of an image.
    assert _key(images=[_img(), "an answer"]) == _key(images=[_img(), "an answer"])
    assert _key(images=[_img(), "an answer"]) != _key(images=[_img(), "another answer"])
    assert _key(images=[_img(), "an answer"]) != _key(images=[_img(), _img()])
    with pytest.raises(TypeError, match="source must be a PIL image"):
        _key(source=Path("x.png"))
