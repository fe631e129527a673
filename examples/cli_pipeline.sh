#!/usr/bin/env bash
# The command-line route on a CPU with the packaged assets: documents -> prepare (split, extract
# both teachers through the cache, align, pack) -> train a fresh tiny student -> held-out eval.
# Takes about 10-15 minutes on 2 cores the first time (teacher extraction), far less afterwards.
#
#   bash examples/cli_pipeline.sh [work folder]
set -euo pipefail
work=${1:-$(mktemp -d)}
mkdir -p "$work"
cd "$work"
fusekernels assets kjv --out docs.jsonl --docs 24
fusekernels assets kjv --out held_out.jsonl --docs 8 --skip 2000
fusekernels prepare --data docs.jsonl --student-tokenizer mistral-v1 --teacher smollm2 --teacher gemma3 \
    --block-size 128 --out packed/
fusekernels train --student tiny:mistral-v1 --data packed/ --eval_data held_out.jsonl --output_dir student/ \
    --max_steps 6 --per_device_train_batch_size 4 --learning_rate 2e-3 --loss_type kl --metric_level token \
    --eval_strategy steps --eval_steps 6 --save_strategy no --report_to none --use_cpu true
echo "student in $work/student"
