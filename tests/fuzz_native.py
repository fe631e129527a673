"""Opt-in fuzzing of the native core against independent implementations (not part of pytest).

    python -m tests.fuzz_native                      # 1M Levenshtein pairs, 10k DTW + 10k transfer cases
    python -m tests.fuzz_native --pairs 20000 --cases 500 --seed 7   # a quick run

- Levenshtein: ``levenshtein_batch`` (with and without ``max_dist``) and ``levenshtein`` against
  ``rapidfuzz.distance.Levenshtein``, plus ``mined_map`` against a brute-force nearest neighbour.
- DTW: ``dtw_align`` against the pure-Python reference ``tests/reference/fusellm_spec.py``.
- Top-k transfer: ``transfer_topk`` (hard and soft) against the same reference.

Strings mix small alphabets (many near ties), Latin-1, CJK, combining marks, astral characters
(emoji, U+1D400), lone surrogates, empty strings and lengths over 1000 code points (also
near-identical long pairs, the banded / trimmed path). Exits 1 on the first mismatch, printing a
reproducer; prints the counts checked otherwise.
"""
from __future__ import annotations

import argparse
import random
import sys
import time

import numpy as np

ALPHABETS = ["ab", "abc", "abcdé", "a\u0301e\u0300", "你好世界", "😀👍🏽🇫🇷", "\U0001d400\U0001d401x",
             "\ud800\udfffa", "▁Ġab", "".join(chr(c) for c in range(32, 127))]


def random_string(rng: random.Random, long: bool = False) -> str:
    alphabet = rng.choice(ALPHABETS)
    r = rng.random()
    if long:
        n = rng.randint(1000, 3000)
    elif r < 0.05:
        n = 0
    elif r < 0.7:
        n = rng.randint(1, 12)
    else:
        n = rng.randint(13, 140)  # across the 64-code-point word boundary
    return "".join(rng.choice(alphabet) for _ in range(n))


def mutate(rng: random.Random, s: str, edits: int) -> str:
    chars = list(s)
    pool = rng.choice(ALPHABETS)
    for _ in range(edits):
        op, at = rng.random(), rng.randint(0, len(chars))
        if op < 0.34 or not chars:
            chars.insert(at, rng.choice(pool))
        elif op < 0.67:
            del chars[min(at, len(chars) - 1)]
        else:
            chars[min(at, len(chars) - 1)] = rng.choice(pool)
    return "".join(chars)


def random_pair(rng: random.Random) -> tuple[str, str]:
    long = rng.random() < 0.003
    a = random_string(rng, long)
    r = rng.random()
    if r < 0.5:
        b = mutate(rng, a, rng.choice([0, 1, 1, 2, 3, 5, 20]))
    else:
        b = random_string(rng, long)
    return (a, b) if rng.random() < 0.5 else (b, a)


def fail(what: str, **details) -> None:
    print(f"MISMATCH in {what}:", file=sys.stderr)
    for key, value in details.items():
        print(f"  {key} = {value!r}"[:2000], file=sys.stderr)
    sys.exit(1)


def fuzz_levenshtein(pairs: int, seed: int) -> dict:
    from rapidfuzz.distance import Levenshtein as RL

    from fusekernels.align import levenshtein, levenshtein_batch, mined_map

    rng = random.Random(seed)
    counts = {"levenshtein_batch pairs": 0, "levenshtein_batch pairs with max_dist": 0, "levenshtein calls": 0,
              "mined_map queries": 0, "long pairs (> 1000 code points)": 0}
    chunk = 50_000
    done = 0
    while done < pairs:
        size = min(chunk, pairs - done)
        a, b = zip(*(random_pair(rng) for _ in range(size)))
        want = np.fromiter((RL.distance(x, y) for x, y in zip(a, b)), dtype=np.int64, count=size)
        got = levenshtein_batch(list(a), list(b), threads=0)
        bad = np.flatnonzero(got != want)
        if bad.size:
            i = int(bad[0])
            fail("levenshtein_batch", a=a[i], b=b[i], got=int(got[i]), want=int(want[i]))
        cap = rng.choice([0, 1, 2, 5, 30])
        got_cap = levenshtein_batch(list(a), list(b), max_dist=cap, threads=0)
        bad = np.flatnonzero(got_cap != np.minimum(want, cap + 1))
        if bad.size:
            i = int(bad[0])
            fail("levenshtein_batch max_dist", a=a[i], b=b[i], max_dist=cap, got=int(got_cap[i]), want=int(want[i]))
        for i in rng.sample(range(size), min(size, 2000)):
            if levenshtein(a[i], b[i]) != want[i]:
                fail("levenshtein", a=a[i], b=b[i], want=int(want[i]))
        counts["levenshtein calls"] += min(size, 2000)
        counts["long pairs (> 1000 code points)"] += sum(max(len(x), len(y)) > 1000 for x, y in zip(a, b))
        # MinED: nearest of a few queries among the chunk's strings, ties to the lowest index
        targets = list(dict.fromkeys(b[:400])) or ["x"]
        queries = list(a[:50])
        res = mined_map(queries, targets, return_ties=True)
        for q, query in enumerate(queries):
            dist = [RL.distance(query, t) for t in targets]
            best = min(dist)
            ties = [t for t, d in enumerate(dist) if d == best]
            if res.distances[q] != best or res.ids[q] != ties[0] or res.ties(q).tolist() != ties:
                fail("mined_map", query=query, got=(int(res.ids[q]), int(res.distances[q])), want=(ties[0], best))
        counts["mined_map queries"] += len(queries)
        counts["levenshtein_batch pairs"] += size
        counts["levenshtein_batch pairs with max_dist"] += size
        done += size
    # near-identical long pairs (trimmed prefix / suffix, banded search), also without common ends
    for _ in range(200):
        a = random_string(rng, long=True) * rng.randint(1, 8)
        b = mutate(rng, a, rng.choice([1, 3, 10]))
        if rng.random() < 0.5:
            b = "\ud801" + b[1:-1] + "😀"
        want = RL.distance(a, b)
        if levenshtein(a, b) != want or mined_map([a], [b]).distances[0] != want:
            fail("long near-identical pair", len_a=len(a), len_b=len(b), want=want)
    counts["long near-identical pairs"] = 200
    return counts


def fuzz_dtw(cases: int, seed: int) -> dict:
    from fusekernels.align import dtw_align
    from tests.reference import fusellm_spec as ref

    rng = random.Random(seed)
    long_cases = 0
    for case in range(cases):
        markers = rng.choice([("", ""), ("▁", "Ġ"), ("Ġ", "▁"), ("▁", "▁")])
        long = rng.random() < 0.02
        n, m = rng.randint(1, 3 if long else 14), rng.randint(1, 3 if long else 14)
        pieces = [random_string(rng, long) for _ in range(rng.randint(1, 6))]
        blend = [rng.choice(["", markers[0]]) + rng.choice(pieces) for _ in range(n)]
        base = [rng.choice(["", markers[1]]) + mutate(rng, rng.choice(pieces), rng.choice([0, 0, 1, 2]))
                for _ in range(m)]
        want = ref.dtw_base_to_blending(blend, base, *markers)
        got = dtw_align(blend, base, blend_marker=markers[0], base_marker=markers[1]).groups()
        if got != want:
            fail("dtw_align", blend=blend, base=base, markers=markers, got=got, want=want)
        long_cases += long
    return {"dtw cases": cases, "dtw cases with tokens > 1000 code points": long_cases}


def fuzz_transfer(cases: int, seed: int) -> dict:
    from tests.align.test_topk_transfer import native, random_case, reference

    for case_seed in range(seed, seed + cases):
        case = random_case(case_seed)
        for mode in ("hard", "soft"):
            result = native(case, mode)
            ids, logits, matched = reference(case, mode)
            if result.to_lists() != (ids, logits) or result.matched.tolist() != matched:
                fail("transfer_topk", seed=case_seed, mode=mode)
    return {"transfer cases (hard + soft each)": cases}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=1_000_000, help="random Levenshtein pairs")
    parser.add_argument("--cases", type=int, default=10_000, help="DTW cases and transfer cases (each)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    counts = {}
    counts.update(fuzz_levenshtein(args.pairs, args.seed))
    counts.update(fuzz_dtw(args.cases, args.seed))
    counts.update(fuzz_transfer(args.cases, args.seed))
    for key, value in counts.items():
        print(f"{key}: {value}")
    print(f"all agree (seed {args.seed}, {time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
