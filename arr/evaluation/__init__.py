"""Evaluation: judge preference accuracy, position bias and cost on labelled pairs (`arr eval preference`), and
editing benchmarks (`arr eval SUITE`: edit_benchmarks, editing, edit_judges, edit_metrics, edit_report, editors).

Preference evaluation in three modules: `preference_benchmarks` loads the pairs (HPDv3, MMRB2, EditReward-Bench,
suites), `preference` evaluates judges on them, `preference_report` writes the report.
"""

from __future__ import annotations

from arr.evaluation.preference import CONFIGS, evaluate_config, evaluate_preference
from arr.evaluation.preference_benchmarks import (
    load_editreward_bench,
    load_hpdv3,
    load_mmrb2,
    load_pairs,
    load_preference_suite,
)
from arr.evaluation.preference_report import write_report

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
