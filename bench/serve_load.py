"""Reward server under load: a burst of concurrent clients, and /health while a long request is judged.

    OMP_WAIT_POLICY=PASSIVE python bench/serve_load.py --label current
    PYTHONPATH=/path/to/other/checkout python bench/serve_load.py --label other   # another version's server

Starts `python -m arr serve --backend pixel --port 0` on 127.0.0.1 (loopback only) with this process's environment,
so PYTHONPATH picks the server's code, then measures:

1. burst: `--clients` threads (default 200) are released at once by a barrier; each opens its own connection and
   POSTs one small /score request (one 48 px image, its shapes-world rubric). Counted: answers by HTTP status,
   connection errors by kind (resets, refusals, timeouts: requests lost), and 503s, which a client retries after
   the server's Retry-After (as docs/serve.md's clients do). Latency is from the first connect to the last byte,
   retries included; p50 / p99 / max over the answered requests.
2. /health under a long request: one /group request (`--long-groups` groups of `--long-group-size` images; every pair
   judged in both orders by the pixel judge, several seconds) runs while /health is asked every 0.1 s; p50 / max
   /health latency and the long request's duration.

Bounded in count (`--clients` <= 1000) and time (`--timeout` per request, `--deadline` for the whole run). Writes
JSON to bench/results/serve_load_<label>.json. Latencies on a shared machine are noisy: compare the two servers
one after another on one machine, and the counts (lost requests) before the times.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from arr.shapes.pairs import make_pairs


def b64_png(image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def server_code(cwd: str) -> str:
    """Where the server process imports arr from (PYTHONPATH decides: it runs outside any checkout)."""
    cmd = [sys.executable, "-c", "import arr; print(arr.__file__)"]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, check=True).stdout.strip()


def start_server(cwd: str, args: list[str]) -> tuple[subprocess.Popen, int]:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    cmd = [sys.executable, "-m", "arr", "serve", "--backend", "pixel", "--port", "0", *args]
    # `python -m` puts the working directory first on sys.path: run outside any checkout so PYTHONPATH decides.
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)
    line = proc.stderr.readline()
    if "listening on http://127.0.0.1:" not in line:
        proc.kill()
        raise SystemExit(f"the server did not start: {line.strip()!r}")
    port = int(line.split("listening on http://127.0.0.1:")[1].split()[0].rstrip("/"))
    deadline = time.monotonic() + 30
    while True:
        try:
            exchange(port, "GET", "/health", None, 5)
            return proc, port
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.1)


def exchange(
    port: int, method: str, path: str, body: bytes | None, timeout: float
) -> tuple[int, dict, bytes]:
    """One request on a fresh connection: (status, headers, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def ms(x: float | None) -> float | None:
    return None if x is None else round(1000 * x, 1)


def burst(port: int, clients: int, body: bytes, timeout: float, retries: int = 5) -> dict:
    barrier = threading.Barrier(clients)
    results: list[dict] = [{} for _ in range(clients)]

    def client(i: int) -> None:
        barrier.wait()
        start = time.perf_counter()
        tries = 0
        while True:
            try:
                status, headers, _ = exchange(port, "POST", "/score", body, timeout)
            except (OSError, http.client.HTTPException) as e:
                results[i] = {"error": type(e).__name__, "seconds": time.perf_counter() - start}
                return
            headers = {k.lower(): v for k, v in headers.items()}
            if status == 503 and tries < retries:
                tries += 1
                time.sleep(min(float(headers.get("retry-after", 1)), 5.0))
                continue
            results[i] = {"status": status, "seconds": time.perf_counter() - start, "retries": tries}
            return

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ok = [r["seconds"] for r in results if r.get("status") == 200]
    statuses: dict[str, int] = {}
    errors: dict[str, int] = {}
    for r in results:
        if "status" in r:
            statuses[str(r["status"])] = statuses.get(str(r["status"]), 0) + 1
        else:
            errors[r["error"]] = errors.get(r["error"], 0) + 1
    return {
        "clients": clients,
        "answered": statuses,
        "lost": errors,
        "lost_total": sum(errors.values()),
        "retried_after_503": sum(r.get("retries", 0) for r in results),
        "p50_ms": ms(percentile(ok, 0.5)),
        "p99_ms": ms(percentile(ok, 0.99)),
        "max_ms": ms(max(ok) if ok else None),
        "wall_s": round(wall, 2),
    }


def health_under_long_request(port: int, body: bytes, timeout: float, deadline: float) -> dict:
    long: dict = {}

    def run_long() -> None:
        t = time.perf_counter()
        try:
            long["status"] = exchange(port, "POST", "/group", body, timeout)[0]
        except (OSError, http.client.HTTPException) as e:
            long["status"] = type(e).__name__
        long["seconds"] = time.perf_counter() - t

    thread = threading.Thread(target=run_long)
    thread.start()
    time.sleep(0.5)  # the long request is being judged
    latencies, failures = [], 0
    while thread.is_alive() and time.monotonic() < deadline:
        t = time.perf_counter()
        try:
            exchange(port, "GET", "/health", None, timeout)
            latencies.append(time.perf_counter() - t)
        except (OSError, http.client.HTTPException):
            failures += 1
        time.sleep(0.1)
    thread.join(max(deadline - time.monotonic(), 0))
    return {
        "long_request_status": long.get("status"),
        "long_request_s": round(long.get("seconds", float("nan")), 2),
        "health_samples": len(latencies),
        "health_failures": failures,
        "health_p50_ms": ms(percentile(latencies, 0.5)),
        "health_max_ms": ms(max(latencies) if latencies else None),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--label", default="current", help="names the result file and row")
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--long-groups", type=int, default=8)
    p.add_argument("--long-group-size", type=int, default=16)
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    p.add_argument("--deadline", type=float, default=600.0, help="seconds for the whole run")
    p.add_argument("--out", default=None, help="default bench/results/serve_load_<label>.json")
    p.add_argument(
        "--server-arg", action="append", default=[], help="extra `arr serve` argument (repeatable)"
    )
    a = p.parse_args()
    if not 1 <= a.clients <= 1000:
        raise SystemExit(f"--clients must be in 1..1000, got {a.clients}")
    deadline = time.monotonic() + a.deadline

    pairs = make_pairs(max(a.long_groups, 1), seed=1, split="heldout", task="t2i")
    small = json.dumps({"images": [b64_png(pairs[0].image_a)], "rubric": pairs[0].rubric.to_dict()}).encode()
    groups = [
        [b64_png(p.image_a), b64_png(p.image_b)] * (a.long_group_size // 2) for p in pairs[: a.long_groups]
    ]
    long = json.dumps(
        {"groups": groups, "rubrics": [p.rubric.to_dict() for p in pairs[: a.long_groups]]}
    ).encode()

    cwd = tempfile.mkdtemp(prefix="arr_serve_load_")
    proc, port = start_server(cwd, a.server_arg)
    try:
        row = {
            "label": a.label,
            "server_code": server_code(cwd),
            "server_args": a.server_arg,
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": {
                "cpus": os.cpu_count(),
                "load_avg": os.getloadavg(),
                "python": platform.python_version(),
            },
            "burst": burst(port, a.clients, small, a.timeout),
            "health_during_long_request": health_under_long_request(port, long, a.timeout, deadline),
        }
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    row["server_exit_code"] = proc.returncode
    out = Path(a.out or f"bench/results/serve_load_{a.label}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(row, indent=2) + "\n")
    print(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()
