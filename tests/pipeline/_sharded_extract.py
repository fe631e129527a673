"""Run by test_extract_sharded under torchrun: every process extracts its shards of the same
dataset into one output folder and must get the complete result back."""
import json
import os
import sys

import datasets
import torch.distributed as dist

sys.path.insert(0, os.getcwd())

from fusekernels.pipeline.extract import extract_teacher_topk  # noqa: E402
from tests.pipeline.helpers import make_char_tokenizer, make_tiny_llama  # noqa: E402

out_dir, report = sys.argv[1], sys.argv[2]
tokenizer = make_char_tokenizer()
model = make_tiny_llama(len(tokenizer), seed=0)
texts = datasets.Dataset.from_dict({"text": [f"verse {i}: and God said" * (1 + i % 3) for i in range(10)]})
result = extract_teacher_topk(model, tokenizer, texts, k=3, batch_size=2, max_length=64, output_dir=out_dir,
                              shard_size=3, progress=False)
rank = dist.get_rank() if dist.is_initialized() else 0
with open(f"{report}.{rank}", "w") as fh:
    json.dump({"world": dist.get_world_size() if dist.is_initialized() else 1, "rows": len(result),
               "ids": list(result["input_ids"]), "ce": list(result["metric_ce"])}, fh)
