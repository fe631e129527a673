"""Kernel tests run on the Triton CPU interpreter when no CUDA device is present.

TRITON_INTERPRET is set by the root tests/conftest.py before anything imports a kernel module;
this guard makes a wrongly ordered setup fail loudly instead of testing compiled-mode kernels.
"""
import os

import torch

if not torch.cuda.is_available():
    assert os.environ.get("TRITON_INTERPRET") == "1", "tests/conftest.py must set TRITON_INTERPRET=1"
