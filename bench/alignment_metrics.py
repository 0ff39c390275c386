"""Speed of the alignment metrics on CPU (or the features' device) at the paper's scale.

    OMP_WAIT_POLICY=PASSIVE python bench/alignment_metrics.py --n 4096 --d 4096 --out bench/results/alignment_metrics.json

Random float32 features, two views of shared factors (so the values are not trivially chance). Each metric is
timed from raw features (normalisation, Gram matrices and neighbour lists included), best of `--repeats`; also
`alignment_metrics(..., "all")`, which shares the Gram matrices between metrics. Writes a JSON with the settings,
seconds per metric, the values and torch's thread count.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from arr.diagnostics import alignment as al


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=4096, help="rows (paired inputs)")
    p.add_argument("--d", type=int, default=4096, help="feature width of each side")
    p.add_argument("--topk", type=int, default=10)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--metrics", default="mutual_knn,cknna", help="comma-separated metrics to time one by one, or 'all'"
    )
    p.add_argument("--out", default="bench/results/alignment_metrics.json")
    args = p.parse_args()

    g = torch.Generator().manual_seed(0)
    z = torch.randn(args.n, 64, generator=g)
    a = z @ torch.randn(64, args.d, generator=g) + torch.randn(args.n, args.d, generator=g)
    b = z @ torch.randn(64, args.d, generator=g) + 2 * torch.randn(args.n, args.d, generator=g)
    a, b = a.to(args.device), b.to(args.device)
    names = list(al.METRICS) if args.metrics == "all" else args.metrics.split(",")

    def timed(fn):
        best, value = float("inf"), None
        for _ in range(args.repeats):
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            t = time.perf_counter()
            value = fn()
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t)
        return best, value

    seconds, values = {}, {}
    for name in names:
        kwargs = {"topk": args.topk} if name in al.KNN_METRICS else {}
        seconds[name], values[name] = timed(
            lambda name=name, kwargs=kwargs: getattr(al, name)(a, b, **kwargs)
        )
    seconds["all_shared"], values["all_shared"] = timed(lambda: al.alignment_metrics(a, b, "all", args.topk))
    result = {
        "n": args.n,
        "d": args.d,
        "topk": args.topk,
        "device": args.device,
        "dtype": "float32",
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "repeats": args.repeats,
        "seconds": seconds,
        "values": values,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
