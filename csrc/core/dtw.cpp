#include "core/dtw.hpp"

#include <algorithm>
#include <functional>
#include <limits>
#include <stdexcept>
#include <string>

#include "core/interrupt.hpp"

namespace fk {

U32String remove_marker(U32View s, U32View marker) {
  if (marker.empty()) return U32String(s);
  U32String out;
  out.reserve(s.size());
  std::size_t pos = 0;
  for (;;) {
    const std::size_t hit = s.find(marker, pos);
    if (hit == U32View::npos) break;
    out.append(s.substr(pos, hit - pos));
    pos = hit + marker.size();
  }
  out.append(s.substr(pos));
  return out;
}

namespace {

// Distinct stripped token strings of both sequences. Base strings are interned first, so ids
// [0, num_base) are the distinct base strings and a blending string equal to a base string
// shares its id (cost 0 without calling Levenshtein).
class StringInterner {
 public:
  explicit StringInterner(std::size_t expected) {
    std::size_t cap = 16;
    while (cap < 2 * expected) cap <<= 1;
    slots_.assign(cap, -1);
  }

  int32_t intern(U32String s) {
    const std::size_t mask = slots_.size() - 1;
    std::size_t h = std::hash<U32View>{}(U32View(s)) & mask;
    while (slots_[h] >= 0) {
      if (strings_[static_cast<std::size_t>(slots_[h])] == s) return slots_[h];
      h = (h + 1) & mask;
    }
    slots_[h] = static_cast<int32_t>(strings_.size());
    payload_bytes_ += sizeof(U32String) + s.capacity() * sizeof(char32_t);
    strings_.push_back(std::move(s));
    return slots_[h];
  }

  const U32String& operator[](std::size_t id) const { return strings_[id]; }
  std::size_t size() const { return strings_.size(); }
  std::size_t bytes() const { return slots_.size() * sizeof(int32_t) + payload_bytes_; }

 private:
  std::vector<int32_t> slots_;  // open addressing, -1 = empty
  std::vector<U32String> strings_;
  std::size_t payload_bytes_ = 0;
};

// Per blending row, the costs against every distinct base string. Rows of blending strings
// that occur several times are cached (one byte per pair, 255 = "recompute"), most frequent
// first, within the byte budget; the others are computed when their row comes.
class CostRows {
 public:
  CostRows(const StringInterner& strings, std::size_t num_base, const std::vector<int32_t>& blend_unique,
           const std::vector<int32_t>& blend_row, std::size_t cache_bytes)
      : strings_(strings), num_base_(num_base), blend_unique_(blend_unique), row_(num_base),
        slot_(blend_unique.size(), -1) {
    std::vector<int32_t> count(blend_unique.size(), 0);
    for (int32_t u : blend_row) ++count[static_cast<std::size_t>(u)];
    std::vector<int32_t> repeated;
    for (std::size_t u = 0; u < count.size(); ++u) {
      if (count[u] > 1) repeated.push_back(static_cast<int32_t>(u));
    }
    std::stable_sort(repeated.begin(), repeated.end(), [&](int32_t x, int32_t y) {
      return count[static_cast<std::size_t>(x)] > count[static_cast<std::size_t>(y)];
    });
    const std::size_t rows = std::min(repeated.size(), cache_bytes / std::max<std::size_t>(num_base, 1));
    for (std::size_t r = 0; r < rows; ++r) slot_[static_cast<std::size_t>(repeated[r])] = static_cast<int32_t>(r);
    cache_.resize(rows * num_base);
    cached_.assign(rows, 0);
  }

  // Costs of distinct blending string u against base strings [0, num_base).
  const int32_t* row(int32_t u) {
    if (u == current_) return row_.data();
    current_ = u;
    const int32_t g = blend_unique_[static_cast<std::size_t>(u)];
    const int32_t slot = slot_[static_cast<std::size_t>(u)];
    if (slot < 0) {
      compute(g);
      return row_.data();
    }
    uint8_t* cached = cache_.data() + static_cast<std::size_t>(slot) * num_base_;
    if (!cached_[static_cast<std::size_t>(slot)]) {
      compute(g);
      for (std::size_t v = 0; v < num_base_; ++v) cached[v] = static_cast<uint8_t>(std::min(row_[v], 255));
      cached_[static_cast<std::size_t>(slot)] = 1;
      return row_.data();
    }
    bool saturated = false;
    for (std::size_t v = 0; v < num_base_; ++v) {
      row_[v] = cached[v];
      saturated |= cached[v] == 255;
    }
    if (saturated) {
      const LevenshteinPattern pattern(strings_[static_cast<std::size_t>(g)]);
      for (std::size_t v = 0; v < num_base_; ++v) {
        if (cached[v] == 255) row_[v] = pattern.distance(strings_[v]);
      }
    }
    return row_.data();
  }

  std::size_t bytes() const {
    return row_.size() * sizeof(int32_t) + slot_.size() * sizeof(int32_t) + cache_.size() + cached_.size();
  }

 private:
  void compute(int32_t g) {
    const LevenshteinPattern pattern(strings_[static_cast<std::size_t>(g)]);
    for (std::size_t v = 0; v < num_base_; ++v) {
      row_[v] = static_cast<std::size_t>(g) == v ? 0 : pattern.distance(strings_[v]);
    }
  }

  const StringInterner& strings_;
  std::size_t num_base_;
  const std::vector<int32_t>& blend_unique_;  // distinct blending string -> interner id
  std::vector<int32_t> row_;
  std::vector<int32_t> slot_;                 // distinct blending string -> cache row or -1
  std::vector<uint8_t> cache_;
  std::vector<uint8_t> cached_;
  int32_t current_ = -1;
};

enum Move : uint8_t { kDiag = 0, kUp = 1, kLeft = 2 };

// Forward pass over D keeping two rows of T (plus two scratch rows). The move into each cell of
// M = D[1:, 1:] is the argmin of the same three neighbours the traceback compares, so it is
// stored now, 2 bits per cell, row i at moves[i * stride]. The +inf borders make the boundary
// moves come out as left (row 0) and up (column 0). T must hold every D value below kInf.
// Returns the bytes of its buffers.
template <class T>
std::size_t forward_moves(CostRows& costs, const std::vector<int32_t>& blend_row,
                          const std::vector<int32_t>& base_id, uint8_t* moves, std::size_t stride) {
  constexpr T kInf = std::numeric_limits<T>::max() / 2;
  const std::size_t n = blend_row.size(), m = base_id.size();
  std::vector<T> prev(m + 1, kInf), cur(m + 1, kInf), best_du(m), cost(m);
  std::vector<uint8_t> move(m + 3, 0);
  prev[0] = 0;
  for (std::size_t i = 0; i < n; ++i) {
    if ((i & 15) == 15) interruption_point();
    const int32_t* crow = costs.row(blend_row[i]);
    // Independent per cell: cost and the better of diag / up (diag wins ties).
    for (std::size_t j = 0; j < m; ++j) cost[j] = static_cast<T>(crow[base_id[j]]);
    for (std::size_t j = 0; j < m; ++j) {
      const bool up_wins = prev[j + 1] < prev[j];
      best_du[j] = up_wins ? prev[j + 1] : prev[j];
      move[j] = up_wins ? kUp : kDiag;
    }
    // The loop-carried part: left = D[i+1][j] wins only when strictly smaller. Never +inf, so
    // the sum cannot overflow.
    T left = kInf;
    cur[0] = kInf;  // D[i+1][0]
    for (std::size_t j = 0; j < m; ++j) {
      const unsigned left_wins = left < best_du[j];
      left = (left_wins ? left : best_du[j]) + cost[j];
      cur[j + 1] = left;
      // move = left_wins ? kLeft : move, without a (tie-dependent, unpredictable) branch
      move[j] = static_cast<uint8_t>((move[j] & (left_wins - 1u)) | (left_wins << 1));
    }
    uint8_t* mrow = moves + i * stride;
    for (std::size_t q = 0; q < stride; ++q) {
      const uint8_t* mv = move.data() + 4 * q;
      mrow[q] = static_cast<uint8_t>(mv[0] | (mv[1] << 2) | (mv[2] << 4) | (mv[3] << 6));
    }
    std::swap(prev, cur);
  }
  return (prev.size() + cur.size() + best_du.size() + cost.size()) * sizeof(T) + move.size();
}

}  // namespace

DtwAlignment dtw_align(const std::vector<U32String>& blend, const std::vector<U32String>& base,
                       U32View blend_marker, U32View base_marker, std::size_t cost_cache_bytes) {
  const std::size_t n = blend.size(), m = base.size();
  if (n == 0) throw std::invalid_argument("blend_tokens must not be empty");
  if (m == 0) throw std::invalid_argument("base_tokens must not be empty");
  if (n > static_cast<std::size_t>(std::numeric_limits<int32_t>::max() / 2) ||
      m > static_cast<std::size_t>(std::numeric_limits<int32_t>::max() / 2)) {
    throw std::invalid_argument("token sequences are too long for int32 alignment indices");
  }

  StringInterner strings(n + m);
  std::vector<int32_t> base_id(m), blend_row(n), blend_unique;
  for (std::size_t j = 0; j < m; ++j) base_id[j] = strings.intern(remove_marker(base[j], base_marker));
  const std::size_t num_base = strings.size();
  {
    // Compact numbering of the distinct blending strings (rows of the cost cache).
    std::vector<int32_t> compact;
    for (std::size_t i = 0; i < n; ++i) {
      const int32_t g = strings.intern(remove_marker(blend[i], blend_marker));
      if (static_cast<std::size_t>(g) >= compact.size()) compact.resize(static_cast<std::size_t>(g) + 1, -1);
      if (compact[static_cast<std::size_t>(g)] < 0) {
        compact[static_cast<std::size_t>(g)] = static_cast<int32_t>(blend_unique.size());
        blend_unique.push_back(g);
      }
      blend_row[i] = compact[static_cast<std::size_t>(g)];
    }
  }
  CostRows costs(strings, num_base, blend_unique, blend_row, cost_cache_bytes);

  // Every D value is at most (n + m - 1) * (longest stripped string): int32 arithmetic when that
  // fits (half the memory traffic, wider SIMD), int64 otherwise.
  std::size_t longest = 0;
  for (std::size_t g = 0; g < strings.size(); ++g) longest = std::max(longest, strings[g].size());
  const std::size_t stride = (m + 3) / 4;
  std::vector<uint8_t> moves(n * stride);
  const bool narrow = longest == 0 || (n + m) <= (std::size_t{1} << 29) / longest;
  const std::size_t dp_bytes = narrow ? forward_moves<int32_t>(costs, blend_row, base_id, moves.data(), stride)
                                      : forward_moves<int64_t>(costs, blend_row, base_id, moves.data(), stride);

  DtwAlignment out;
  out.offsets.assign(m + 1, 0);
  out.indices.reserve(n + m - 1);
  std::size_t i = n - 1, j = m - 1;
  while (i > 0 || j > 0) {
    out.indices.push_back(static_cast<int32_t>(i));
    ++out.offsets[j + 1];
    const unsigned move = (moves[i * stride + (j >> 2)] >> (2 * (j & 3))) & 3u;
    if (move == kDiag) {
      --i;
      --j;
    } else if (move == kUp) {
      --i;
    } else {
      --j;
    }
  }
  out.indices.push_back(0);
  ++out.offsets[1];
  // The path was walked backwards; forwards it is sorted by (j, i), which is the CSR order.
  std::reverse(out.indices.begin(), out.indices.end());
  for (std::size_t k = 0; k < m; ++k) out.offsets[k + 1] += out.offsets[k];

  out.workspace_bytes = moves.size() + dp_bytes +
                        (base_id.size() + blend_row.size() + blend_unique.size()) * sizeof(int32_t) +
                        strings.bytes() + costs.bytes();
  return out;
}

}  // namespace fk
