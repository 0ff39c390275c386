"""How `arr demo` picks its number of CPU ranks."""

from __future__ import annotations

import pytest

from arr.rpo.launch import MAX_AUTO_PROCESSES, auto_num_processes


@pytest.mark.parametrize(
    ("prompts", "cores", "expected"),
    [
        (16, 2, 2),  # the demo on this project's 2-core machines
        (16, 3, 2),  # 3 does not divide 16: the largest divisor that fits
        (16, 1, 1),
        (12, 5, 4),
        (3, 2, 1),  # an odd batch cannot be split in two
        (16, 64, MAX_AUTO_PROCESSES),  # capped: each rank holds a copy of the model
        (1, 8, 1),
    ],
)
def test_auto_num_processes_divides_the_batch_and_fits_the_cores(prompts, cores, expected):
    n = auto_num_processes(prompts, cores=cores)
    assert n == expected and prompts % n == 0 and n <= cores
