#include "core/topk_transfer.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>

namespace fk {

namespace {

[[noreturn]] void fail(const std::string& msg) { throw std::invalid_argument(msg); }

void check_ids(const int32_t* ids, int64_t count, int64_t vocab, const char* arg, const char* vocab_name) {
  // Branch-free reduction first (one unsigned compare catches negatives too; vectorises); the
  // position is searched only on failure.
  const uint32_t limit = static_cast<uint32_t>(std::min<int64_t>(vocab, std::numeric_limits<int32_t>::max()));
  uint32_t bad = 0;
  for (int64_t x = 0; x < count; ++x) bad |= static_cast<uint32_t>(ids[x]) >= limit;
  if (!bad) return;
  for (int64_t x = 0; x < count; ++x) {
    if (ids[x] < 0 || ids[x] >= vocab) {
      fail(std::string(arg) + " holds " + std::to_string(ids[x]) + " at flat position " + std::to_string(x) +
           ", outside the " + vocab_name + " vocabulary of the tables (size " + std::to_string(vocab) + ")");
    }
  }
}

}  // namespace

void validate_transfer(const TransferInput& in, const TransferTablesView& t, TransferMode mode) {
  if (in.m < 1) fail("base_ids must not be empty");
  if (in.n < 1) fail("blend_ids must not be empty");
  if (in.k < 1) fail("topk_ids must have at least one column (k >= 1)");
  if (mode == TransferMode::kSoft && (t.soft == nullptr || t.soft_prefixed == nullptr)) {
    fail("mode='soft' needs tables built with a vocab_map");
  }
  check_ids(in.base_ids, in.m, t.base_vocab, "base_ids", "base");
  check_ids(in.blend_ids, in.n, t.blend_vocab, "blend_ids", "blending");
  check_ids(in.topk_ids, in.n * in.k, t.blend_vocab, "topk_ids", "blending");
  if (in.offsets[0] != 0) fail("alignment.offsets[0] must be 0");
  for (int64_t j = 0; j < in.m; ++j) {
    if (in.offsets[j + 1] < in.offsets[j]) fail("alignment.offsets must be non-decreasing");
  }
  if (in.offsets[in.m] != in.nnz) {
    fail("alignment.offsets[-1] = " + std::to_string(in.offsets[in.m]) + " does not match len(alignment.indices) = " +
         std::to_string(in.nnz));
  }
  for (int64_t x = 0; x < in.nnz; ++x) {
    if (in.indices[x] < 0 || in.indices[x] >= in.n) {
      fail("alignment does not match the sequences: alignment.indices holds blending position " +
           std::to_string(in.indices[x]) + " but blend_ids has length " + std::to_string(in.n));
    }
  }
  int any_nan = 0;
  for (int64_t x = 0; x < in.n * in.k; ++x) any_nan |= in.topk_logits[x] != in.topk_logits[x];
  if (any_nan) {
    for (int64_t x = 0; x < in.n * in.k; ++x) {
      if (std::isnan(in.topk_logits[x])) {
        fail("topk_logits holds NaN at row " + std::to_string(x / in.k) + ", column " + std::to_string(x % in.k));
      }
    }
  }
}

void transfer_topk(const TransferInput& in, const TransferTablesView& t, TransferMode mode, const TransferOutput& out) {
  const bool soft = mode == TransferMode::kSoft;
  const int32_t* step_table = soft ? t.soft : t.exact;  // lookup of each top-k token
  for (int64_t j = 0; j < in.m; ++j) {
    int32_t* ids = out.ids + j * in.k;
    float* logits = out.logits + j * in.k;
    const int32_t base_id = in.base_ids[j];
    const int32_t bt = t.base_canonical[base_id];  // the base token string, as an id
    bool matched = false;
    int32_t count = 0;
    if (in.offsets[j + 1] - in.offsets[j] == 1) {
      const int64_t i = in.indices[in.offsets[j]];
      const int32_t a = in.blend_ids[i];
      // The published special case for byte-level BPE blending tokenizers: at the first base
      // position, a base marker missing from the blending token is prepended to it.
      const bool prefixed = t.byte_level_blend && j == 0 && t.base_starts_with_marker[base_id] &&
                            !t.blend_starts_with_marker[a];
      matched = (prefixed ? t.exact_prefixed[a] : t.exact[a]) == bt;
      if (soft && !matched) matched = (prefixed ? t.soft_prefixed[a] : t.soft[a]) == bt;
      if (matched) {
        const int32_t* cand = in.topk_ids + i * in.k;
        const float* cand_logits = in.topk_logits + i * in.k;
        // The published code keeps the first occurrence of each base id. A 64-bit filter of the
        // ids kept so far skips the linear duplicate scan for almost every candidate.
        uint64_t filter = 0;
        for (int64_t r = 0; r < in.k; ++r) {
          const int32_t id = step_table[cand[r]];
          if (id < 0) continue;  // not in the base vocabulary
          const uint64_t bit = uint64_t{1} << (id & 63);
          if (filter & bit) {
            bool seen = false;
            for (int32_t q = 0; q < count; ++q) seen |= ids[q] == id;
            if (seen) continue;
          }
          filter |= bit;
          ids[count] = id;
          logits[count] = cand_logits[r];
          ++count;
        }
      }
    }
    if (!matched) {
      ids[0] = bt;
      logits[0] = 1.0f;
      count = 1;
    }
    for (int64_t r = count; r < in.k; ++r) {
      ids[r] = -1;
      logits[r] = -std::numeric_limits<float>::infinity();
    }
    out.counts[j] = count;
    out.matched[j] = matched ? 1 : 0;
  }
}

}  // namespace fk
