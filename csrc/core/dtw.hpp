// Dynamic time warping token alignment, compatible with the published FuseLLM `dtw`
// (spec section 4): exact integer costs, bounded memory, no (n+1) x (m+1) matrix.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/levenshtein.hpp"

namespace fk {

// For every base position j, the ascending blending positions aligned to it, in CSR form:
// indices[offsets[j] .. offsets[j+1]) (never empty).
struct DtwAlignment {
  std::vector<int32_t> offsets;  // [m + 1]
  std::vector<int32_t> indices;  // [nnz], nnz <= n + m - 1
  std::size_t workspace_bytes = 0;  // bytes of working buffers the call allocated (diagnostics)
};

// `s` with every non-overlapping occurrence of `marker` removed, left to right (Python's
// str.replace(marker, "")). An empty marker leaves `s` unchanged.
U32String remove_marker(U32View s, U32View marker);

// Aligns blending tokens `blend` (n) with base tokens `base` (m) of the same text.
// Cost c(i, j) = levenshtein(strip(blend[i]), strip(base[j])) with each side's marker removed.
// Recurrence D[i+1][j+1] = c(i, j) + min(D[i][j+1], D[i+1][j], D[i][j]), D[0][0] = 0, other
// borders +inf; traceback from (n-1, m-1) with ties diag > up > left, then (0, 0).
// Throws std::invalid_argument if either sequence is empty.
// Memory: a few int32 rows (int64 for huge costs), a 2-bit-per-cell traceback (n * ceil(m / 4)
// bytes) and a bounded cache of distances between distinct stripped strings: under 2 MiB in all
// for 2048 x 2048 tokens.
// Upper bound in bytes of the distance cache: one byte per (repeated distinct blending string,
// distinct base string) pair; rows that do not fit are recomputed when needed.
constexpr std::size_t kDtwCostCacheBytes = std::size_t{512} * 1024;

DtwAlignment dtw_align(const std::vector<U32String>& blend, const std::vector<U32String>& base,
                       U32View blend_marker, U32View base_marker,
                       std::size_t cost_cache_bytes = kDtwCostCacheBytes);


}  // namespace fk
