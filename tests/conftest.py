"""Session-wide test environment, set before any test module imports triton or transformers.

- Without CUDA, Triton kernels run on the CPU interpreter. Triton decides interpreted vs
  compiled when a kernel is decorated (at import), so the variable must be set before the first
  import of any kernel module, which is why it lives in the root conftest.
- Model hubs are never contacted: tests use assets shipped in pip packages or built in the test.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
