"""Compile the shipped kernels for an H100 (sm_90) without a GPU; print a JSON summary.

Run as ``python -m tests.kernels.aot_compile`` with TRITON_INTERPRET unset: the interpreter
patches triton.language process-wide, so the test drives this script in a subprocess. Pointers
and V are declared 16-aligned, as the launcher specialises them at run time for such shapes.
"""
import json
import re
import sys

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from fusekernels.kernels import fusion_loss_triton, teacher_topk_triton

H100 = GPUTarget("cuda", 90, 32)
VOCAB = 152064

FUSION_SIGNATURE = {
    "logits_ptr": "*bf16", "grad_ptr": "*bf16", "labels_ptr": "*i64", "teacher_ids_ptr": "*i32",
    "teacher_logits_ptr": "*fp32", "teacher_weights_ptr": "*fp32", "clm_scale_ptr": "*fp32",
    "fusion_scale_ptr": "*fp32", "loss_ptr": "*fp32", "V": "i32", "T": "i32", "K": "i32",
    "ignore_index": "i32", "temperature": "fp32", "IS_KL": "constexpr", "COMPUTE_GRAD": "constexpr",
    "PROBS_GIVEN": "constexpr", "BLOCK_V": "constexpr", "BLOCK_E": "constexpr", "BLOCK_T": "constexpr",
}
TEACHER_SIGNATURE = {
    "logits_ptr": "*bf16", "labels_ptr": "*i64", "ids_out_ptr": "*i32", "values_out_ptr": "*fp32",
    "lse_out_ptr": "*fp32", "ce_out_ptr": "*fp32", "V": "i32", "K": "i32", "ignore_index": "i32",
    "HAS_LABELS": "constexpr", "BLOCK_V": "constexpr", "BLOCK_K": "constexpr",
}


def compile_for_h100(kernel, signature, constexprs, num_warps):
    names = list(signature)
    aligned = {(names.index(n),): [["tt.divisibility", 16]] for n in names if n.endswith("_ptr") or n == "V"}
    source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=aligned)
    compiled = triton.compile(source, target=H100, options={"num_warps": num_warps})
    return {"cubin_bytes": len(compiled.asm["cubin"]),
            "global_accesses": sorted(set(re.findall(r"(?:ld|st)\.global[\w.]*", compiled.asm["ptx"])))}


def main():
    results = {}
    block_v, warps = fusion_loss_triton.default_launch_config(VOCAB, torch.bfloat16)
    for loss_type in ("kl", "ce"):
        results[f"fusion_{loss_type}"] = compile_for_h100(
            fusion_loss_triton._fusion_loss_rows_kernel, FUSION_SIGNATURE,
            {"IS_KL": loss_type == "kl", "COMPUTE_GRAD": True, "PROBS_GIVEN": False, "BLOCK_V": block_v,
             "BLOCK_E": 32, "BLOCK_T": 4},
            warps)
    block_v, warps = teacher_topk_triton.default_launch_config(VOCAB)
    results["teacher"] = compile_for_h100(
        teacher_topk_triton._teacher_topk_rows_kernel, TEACHER_SIGNATURE,
        {"HAS_LABELS": True, "BLOCK_V": block_v, "BLOCK_K": 16}, warps)
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
