"""Training diagnostics: representation alignment between the policy and the judge.

- `arr.diagnostics.alignment`: the metrics (mutual_knn, cka, unbiased_cka, cknna, cycle_knn, edit_distance_knn).
- `arr.diagnostics.probe.AlignmentProbe`: the trainer callback that logs them during RPO.
- `arr.diagnostics.curves`: a run's alignment curves, their correlation with eval_score, a PNG plot.
"""

from typing import Any

__all__ = ["AlignmentProbe"]


def __getattr__(name: str) -> Any:
    # The probe imports the trainer (torch, accelerate); load it only when asked for.
    if name == "AlignmentProbe":
        from arr.diagnostics.probe import AlignmentProbe

        return AlignmentProbe
    raise AttributeError(f"module 'arr.diagnostics' has no attribute {name!r}")
