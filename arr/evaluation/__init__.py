"""Judge evaluation: preference accuracy, position bias and cost on labelled pairs (`arr eval preference`)."""

from __future__ import annotations

from arr.evaluation.preference import (
    CONFIGS,
    evaluate_config,
    evaluate_preference,
    load_editreward_bench,
    load_hpdv3,
    load_mmrb2,
    load_pairs,
    load_preference_suite,
    write_report,
)

__all__ = [
    "CONFIGS",
    "evaluate_config",
    "evaluate_preference",
    "load_editreward_bench",
    "load_hpdv3",
    "load_mmrb2",
    "load_pairs",
    "load_preference_suite",
    "write_report",
]
