"""FuseChat's last step: merge target models trained from one pivot in parameter space (VaRM,
linear, and SLERP with per-layer-type t gradients as in FuseChat's published config).

Two "targets" are made here by perturbing a tiny pivot differently (stand-ins for the students
of `fusekernels fusechat`); every method writes a loadable model folder.

    python examples/fusechat_merge.py
"""
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from fusekernels.pipeline.merge import merge_models


def main() -> None:
    work = Path(tempfile.mkdtemp())
    torch.manual_seed(0)
    pivot = LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2))
    pivot.save_pretrained(work / "pivot")
    for name, scale in (("target_a", 0.01), ("target_b", 0.03)):
        target = LlamaForCausalLM(pivot.config)
        target.load_state_dict(pivot.state_dict())
        with torch.no_grad():
            for param in target.parameters():
                param.add_(scale * torch.randn_like(param))
        target.save_pretrained(work / name)
    targets = [str(work / "target_a"), str(work / "target_b")]

    merge_models(targets, work / "varm", method="varm", base=str(work / "pivot"))      # FuseChat's default
    merge_models(targets, work / "linear", method="linear")
    try:  # SLERP comes from mergekit (the "merge" extra)
        merge_models(targets, work / "slerp", method="slerp",
                     t=[{"filter": "self_attn", "value": [0, 0.5, 1]}, {"filter": "mlp", "value": [1, 0.5, 0]},
                        {"value": 0.5}])
    except ImportError as err:
        print("slerp skipped:", err)
    for method in ("varm", "linear", "slerp"):
        if (work / method).is_dir():
            merged = AutoModelForCausalLM.from_pretrained(work / method)
            print(f"{method}: {sum(p.numel() for p in merged.parameters()):,} parameters in {work / method}")


if __name__ == "__main__":
    main()
