"""The fused-head fusion loss inside an FSDP2-sharded model (``torch.distributed.fsdp.fully_shard``).

Accelerate enables FSDP only on accelerators (a CPU launch is plain DDP), so this worker shards
the model with torch's FSDP2 directly, on CPU with gloo: every decoder layer and the root are
``fully_shard``-ed, the LM-head weight is a sharded DTensor outside the forward. Each of the 2
processes runs :class:`FusedForward` (the loss computed inside the wrapped forward) on its half
of the batch; rank 0 compares the loss and the full gradients with an unsharded copy of the model
on the whole batch, and writes a JSON report. Run by test_fsdp.py under ``torchrun``.

Teardown is ordered, because the test used to fail under load with ``terminate called without an
active exception`` in rank 1 (then SIGTERM for rank 0). Gloo runs every collective on its own
worker threads, which outlive ``destroy_process_group`` (the process keeps its thread count), and
a worker drops its last reference to a finished collective's tensors only after the caller has
already been told the collective is done. Rank 1 used to exit right after its last collective
(rank 0 goes on computing the reference); a worker thread descheduled by the load then freed
those tensors during interpreter shutdown, needed the GIL, and the interpreter stops such a thread
with ``pthread_exit``, whose unwinding through a C++ destructor calls ``std::terminate``. Now the
sharded work runs in :func:`run`, whose objects (the FSDP2 modules are reference cycles) are
collected while the group is alive; both ranks meet at a barrier once rank 0 has finished (the
last tensor collective is long released by then; a barrier holds no tensors); then the group is
destroyed.
"""
import copy
import datetime
import gc
import json
import os
import sys

import torch.distributed as dist

from fusekernels.integration import FusionArguments, FusionDataCollator
from fusekernels.integration.fused_forward import install_fused_forward
from fusekernels.integration.trainer import shift_labels
from tests.integration.ddp_worker import DDP_LENGTHS
from tests.integration.helpers import synthetic_examples, tiny_llama


def targets(batch, num_items, fused=True):
    config = FusionArguments()
    spec = dict(fused=fused, fusion=config.fusion, loss_type=config.loss_type, temperature=1.0, lam=0.7,
                backend="torch", chunk_rows=None, components=False, precision="fp32", base_teacher=True)
    return dict(spec=spec, labels=shift_labels(batch["labels"]), teacher_ids=batch["teacher_ids"],
                teacher_logits=batch["teacher_logits"], teacher_ce=batch["teacher_ce"], fusion_mask=None,
                num_items_in_batch=num_items, num_fusion_items=None)


def run(rank, world, out_file):
    """The sharded forward / backward and, on rank 0, the comparison; returns nothing, so that
    every object holding the process group (the FSDP2 modules, their states and DTensors) is
    unreachable once it returns."""
    from torch.distributed.fsdp import fully_shard

    examples = synthetic_examples(4, exact_lengths=DDP_LENGTHS, seed=3)
    collate = FusionDataCollator()
    full = collate(examples)
    num_items = int((shift_labels(full["labels"]) != -100).sum())  # the whole batch's count
    reference = tiny_llama(seed=1)
    model = copy.deepcopy(reference)
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    state = install_fused_forward(model)
    mine = collate(examples[rank * 2:(rank + 1) * 2])
    inputs = {k: mine[k] for k in ("input_ids", "attention_mask")}
    loss = model(**inputs, fusion_targets=targets(mine, num_items))["loss"]
    loss.backward()
    total = loss.detach().clone()
    dist.all_reduce(total)
    # FSDP2 averages gradients over ranks; each rank's loss is its share of the global mean
    grads = {n: (p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad).double() * world
             for n, p in model.named_parameters() if p.grad is not None}
    sharded_head = type(model.lm_head.weight).__name__
    if rank == 0:
        ref_state = install_fused_forward(reference)
        ref_loss = reference(input_ids=full["input_ids"], attention_mask=full["attention_mask"],
                             fusion_targets=targets(full, num_items))["loss"]
        ref_loss.backward()
        diffs = {n: float((grads[n] - p.grad.double()).abs().max() / max(float(p.grad.abs().max()), 1e-12))
                 for n, p in reference.named_parameters()}
        with open(out_file, "w") as f:
            json.dump({"loss": float(total), "reference_loss": float(ref_loss.detach()),
                       "max_rel_grad_diff": max(diffs.values()), "fused": state.last_fused,
                       "reference_fused": ref_state.last_fused, "warned": state.warned,
                       "head_weight_type": sharded_head, "world": world}, f)


def main(out_file):
    # a bounded wait: a peer that never arrives fails the test with a message instead of a hang
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=180))
    rank, world = dist.get_rank(), dist.get_world_size()
    run(rank, world, out_file)
    gc.collect()  # the FSDP2 modules are reference cycles: free them (and their hold on the group) now
    dist.barrier()  # rank 1 waits until rank 0 has finished its reference computation
    dist.destroy_process_group()  # the last reference: gloo's threads are joined here, not at exit


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main(sys.argv[1])
