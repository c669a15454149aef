"""Which exceptions count as out of memory and which as a poisoned device (worker/gpu_faults.py), on
the exception classes torch itself defines, and how far a batch that never fits is split."""

from __future__ import annotations

import pytest
import torch

from worker.gpu_faults import is_fatal_device_error, is_out_of_memory, split_after_out_of_memory


@pytest.mark.parametrize(
    ("exc", "out_of_memory", "fatal"),
    [
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"), True, False),
        # cuBLAS or cuDNN failing to allocate outside the caching allocator: not sticky
        (torch.AcceleratorError("CUDA error: out of memory"), True, False),
        (torch.AcceleratorError("CUDA error: an illegal memory access was encountered"), False, True),
        (torch.AcceleratorError("something new the driver says"), False, True),  # the class is enough
        # torch before 2.8 raised CUDA errors as plain RuntimeError
        (RuntimeError("CUDA error: device-side assert triggered"), False, True),
        (RuntimeError("CUDA error: unspecified launch failure"), False, True),
        (RuntimeError("CUDA out of memory. Tried to allocate 2.00 MiB"), True, False),
        (RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)"), False, False),
        (ValueError("illegal memory access"), False, False),  # only torch's RuntimeErrors
    ],
)
def test_fault_kinds(exc, out_of_memory, fatal):
    assert is_out_of_memory(exc) is out_of_memory
    assert is_fatal_device_error(exc) is fatal


def test_a_batch_is_halved_and_a_request_alone_runs_once_more():
    assert split_after_out_of_memory([1, 2, 3, 4], retried=False) == [[1, 2], [3, 4]]
    assert split_after_out_of_memory([1, 2, 3], retried=True) == [[1, 2], [3]]
    assert split_after_out_of_memory([1], retried=False) == [[1]]
    assert split_after_out_of_memory([1], retried=True) == []


@pytest.mark.parametrize(("size", "calls"), [(1, 2), (2, 3), (3, 5), (4, 7)])
def test_a_batch_that_never_fits_ends_within_a_bounded_number_of_calls(size, calls):
    pending, made = [(list(range(size)), False)], 0
    while pending:
        batch, retried = pending.pop(0)
        made += 1  # every call runs out of memory
        pending[:0] = [(part, True) for part in split_after_out_of_memory(batch, retried)]
    assert made == calls
