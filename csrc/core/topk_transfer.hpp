// Top-k transfer from a blending model's vocabulary into the base vocabulary along a token
// alignment, compatible with the published FuseLLM `transform_step_logits` (spec section 5).
// All string comparisons of the published code are precomputed into integer tables over token
// ids (built in Python, fusekernels/align/topk_transfer.py), so the per-token work is lookups.
#pragma once
#include <cstdint>

namespace fk {

// Read-only views of the tables; every base id stored in them is a canonical base id (the first
// id of its string), -1 meaning "the string is not in the base vocabulary".
struct TransferTablesView {
  int64_t blend_vocab = 0;                  // size of the blending vocabulary
  int64_t base_vocab = 0;                   // size of the base vocabulary
  const int32_t* exact = nullptr;           // [blend_vocab] base id of x' (marker-replaced)
  const int32_t* exact_prefixed = nullptr;  // [blend_vocab] base id of base_marker + x'
  const int32_t* soft = nullptr;            // [blend_vocab] base id of map[x'] (null: no map)
  const int32_t* soft_prefixed = nullptr;   // [blend_vocab] base id of map[base_marker + x']
  const uint8_t* blend_starts_with_marker = nullptr;  // [blend_vocab] x' starts with base_marker
  const uint8_t* base_starts_with_marker = nullptr;   // [base_vocab]
  const int32_t* base_canonical = nullptr;  // [base_vocab] first id with the same string
  bool byte_level_blend = false;            // enables the j == 0 special case
};

// One sequence pair. Alignment in CSR form: blending positions of base position j are
// indices[offsets[j] .. offsets[j+1]).
struct TransferInput {
  const int32_t* base_ids = nullptr;   // [m]
  int64_t m = 0;
  const int32_t* blend_ids = nullptr;  // [n]
  int64_t n = 0;
  const int32_t* offsets = nullptr;    // [m + 1]
  const int32_t* indices = nullptr;    // [nnz]
  int64_t nnz = 0;
  const int32_t* topk_ids = nullptr;   // [n, k] blending ids
  const float* topk_logits = nullptr;  // [n, k]
  int64_t k = 0;
};

// Row-major outputs: ids [m, k] (padding -1), logits [m, k] (padding -inf), counts [m],
// matched [m] (1 where the step matched and the blending top-k was used, even if nothing of it
// reached the base vocabulary; 0 for the one-hot fallback).
struct TransferOutput {
  int32_t* ids = nullptr;
  float* logits = nullptr;
  int32_t* counts = nullptr;
  uint8_t* matched = nullptr;
};

enum class TransferMode { kHard, kSoft };

// Throws std::invalid_argument naming the offending argument: ids outside the tables, an
// alignment that does not fit the sequence lengths, NaN logits, k < 1, soft mode without a map.
void validate_transfer(const TransferInput& in, const TransferTablesView& tables, TransferMode mode);

// Fills `out` for one sequence pair; `in` must have passed validate_transfer.
void transfer_topk(const TransferInput& in, const TransferTablesView& tables, TransferMode mode,
                   const TransferOutput& out);

}  // namespace fk
