// Byte-span alignment of many sequence pairs in one call (fusekernels/tokenization/byte_span.py
// documents the rule; fusekernels/tokenization/native.py prepares the flat arrays).
// A base position takes the teacher's top-k of the one blending position whose byte span
// (span mode) or end offset and emptiness (end mode) it shares, when that key is unique on both
// sides; its ids go through the blending -> base id table, unmapped and repeated ids dropped.
#pragma once
#include <cstdint>

namespace fk {

// One tokenizer's facts, indexed by token id.
struct SpanVocab {
  int64_t vocab = 0;
  const int32_t* byte_lengths = nullptr;  // [vocab] UTF-8 bytes a token stands for (0: special)
  const uint8_t* bytes = nullptr;         // concatenated token bytes
  const int64_t* byte_offsets = nullptr;  // [vocab + 1] token i is bytes[byte_offsets[i] .. [i+1])
  int64_t unk = -1;                       // unk-role id, -1 if none
  int dummy_prefix = 0;                   // 0 none, 1 always, 2 unless the text starts with a space
};

enum class SpanCheck { kLength, kBytes, kPrefix, kNone };

// Rows r = 0..rows-1: base ids base_ids[base_offsets[r] .. base_offsets[r+1]), blending ids and
// their top-k rows likewise (topk_ids / topk_logits are [N, k_in], row-major, one row per
// blending token). Ids and logits are checked here (rows failing the checks are reported).
struct SpanBatchInput {
  int64_t rows = 0;
  const int32_t* base_ids = nullptr;
  const int64_t* base_offsets = nullptr;   // [rows + 1], non-decreasing, first 0
  const int32_t* blend_ids = nullptr;
  const int64_t* blend_offsets = nullptr;  // [rows + 1]
  const int32_t* topk_ids = nullptr;       // [N, k_in]
  const float* topk_logits = nullptr;      // [N, k_in]
  int64_t k_in = 0;
  const int8_t* text_space = nullptr;      // [rows] or null: 1 text starts with ' ', 0 not, -1 no text
};

// Outputs over all M base positions: ids [M, k_out] (padding -1), logits [M, k_out] (padding
// -inf), matched [M] (1 where the teacher's distribution was used; 0: one-hot fallback).
struct SpanBatchOutput {
  int64_t k_out = 0;
  int32_t* ids = nullptr;
  float* logits = nullptr;
  uint8_t* matched = nullptr;
};

// Aligns every row; returns -1, or the first row that is invalid (an empty sequence, an id out of
// range, a NaN logit) or whose two sequences fail `check`. Rows that fail have unspecified
// outputs; the caller re-runs them on the per-row Python path, which raises the exact error.
int64_t byte_span_align_batch(const SpanVocab& base, const SpanVocab& blend, const int32_t* id_map,
                              const SpanBatchInput& in, bool match_end, SpanCheck check,
                              const SpanBatchOutput& out, int threads);

}  // namespace fk
