"""Launch-side checks shared by the kernels: interpreter detection and device errors."""
import pytest
import torch

triton = pytest.importorskip("triton")
from triton.runtime.jit import JITFunction  # noqa: E402

import fusekernels.kernels as kernels  # noqa: E402
from fusekernels.kernels._runtime import check_launch_device, next_power_of_2  # noqa: E402
from fusekernels.kernels.fusion_loss_triton import _fusion_loss_rows_kernel  # noqa: E402


def _plain_kernel(x_ptr):
    pass


def test_cpu_tensors_with_a_compiled_kernel_raise_a_clear_error():
    compiled = JITFunction(_plain_kernel)  # what a kernel is when imported without TRITON_INTERPRET
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        check_launch_device(compiled, torch.device("cpu"), "some.module")
    check_launch_device(compiled, torch.device("cuda", 0), "some.module")  # compiled + CUDA: fine


@pytest.mark.skipif(torch.cuda.is_available(), reason="kernels are compiled when CUDA is present")
def test_kernels_run_interpreted_without_cuda():
    check_launch_device(_fusion_loss_rows_kernel, torch.device("cpu"), "x")  # conftest enabled the interpreter


def test_package_exports_resolve_lazily():
    assert kernels.triton_available()
    assert callable(kernels.fusion_loss_rows_triton) and callable(kernels.teacher_topk_rows_triton)
    with pytest.raises(AttributeError):
        kernels.not_a_kernel  # noqa: B018


@pytest.mark.parametrize("n, want", [(0, 1), (1, 1), (3, 4), (64, 64), (65, 128)])
def test_next_power_of_2(n, want):
    assert next_power_of_2(n) == want
