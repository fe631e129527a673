// Levenshtein distance over Unicode code points (UTF-32 strings).
//
// Bit-parallel algorithm of Myers (1999) in Hyyrö's formulation: one 64-bit word per 64 pattern
// characters, so a text character costs O(ceil(n / 64)) word operations instead of O(n) cells.
// Patterns longer than 64 code points use Myers' block version with carries between words.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace fk {

using U32String = std::u32string;
using U32View = std::u32string_view;

// Unit-cost edit distance between a and b. With max_dist >= 0 the result is capped:
// any distance above max_dist is reported as max_dist + 1 (and computed faster).
int levenshtein(U32View a, U32View b, int max_dist = -1);

namespace detail {

// Match masks of a pattern of at most 64 code points: bit i of get(c) is set iff pattern[i] == c.
// Code points < 256 use a direct table; the rest an open-addressing table (128 slots, so it is
// at most half full). Key 0 marks a free slot, which is safe because only c >= 256 is stored.
struct WordMasks {
  static constexpr int kSlots = 128;
  std::uint64_t latin1[256] = {};
  char32_t keys[kSlots] = {};
  std::uint64_t values[kSlots] = {};

  static int slot_of(char32_t c) {
    return static_cast<int>((static_cast<std::uint64_t>(c) * 0x9E3779B97F4A7C15ull) >> 57);
  }
  void add(char32_t c, std::uint64_t bit) {
    if (c < 256) {
      latin1[c] |= bit;
      return;
    }
    int s = slot_of(c);
    while (keys[s] != 0 && keys[s] != c) s = (s + 1) & (kSlots - 1);
    keys[s] = c;
    values[s] |= bit;
  }
  std::uint64_t get(char32_t c) const {
    if (c < 256) return latin1[c];
    int s = slot_of(c);
    while (keys[s] != 0) {
      if (keys[s] == c) return values[s];
      s = (s + 1) & (kSlots - 1);
    }
    return 0;
  }
  void fill(U32View pattern) {
    std::uint64_t bit = 1;
    for (char32_t c : pattern) {
      add(c, bit);
      bit <<= 1;
    }
  }
  // Undoes fill(pattern) by touching only the entries it set (cheaper than clearing 3 KiB).
  void clear(U32View pattern) {
    for (char32_t c : pattern) {
      if (c < 256) {
        latin1[c] = 0;
      } else {
        int s = slot_of(c);
        while (keys[s] != 0) {
          keys[s] = 0;
          values[s] = 0;
          s = (s + 1) & (kSlots - 1);
        }
      }
    }
  }
};

// Match masks of a pattern of any length, ceil(n / 64) words per code point.
class BlockMasks {
 public:
  explicit BlockMasks(U32View pattern);
  std::size_t blocks() const { return blocks_; }
  // blocks() words for code point c; a shared all-zero row when c does not occur.
  const std::uint64_t* row(char32_t c) const {
    if (c < 256) return &latin1_[static_cast<std::size_t>(c) * blocks_];
    std::size_t s = slot_of(c);
    while (keys_[s] != 0) {
      if (keys_[s] == c) return &rows_[s * blocks_];
      s = (s + 1) & mask_;
    }
    return zero_.data();
  }

 private:
  std::size_t slot_of(char32_t c) const {
    return static_cast<std::size_t>((static_cast<std::uint64_t>(c) * 0x9E3779B97F4A7C15ull) >> shift_);
  }
  std::size_t blocks_ = 0;
  std::size_t mask_ = 0;
  int shift_ = 63;
  std::vector<std::uint64_t> latin1_;  // 256 * blocks_
  std::vector<char32_t> keys_;         // open addressing over code points >= 256; 0 = free
  std::vector<std::uint64_t> rows_;    // keys_.size() * blocks_
  std::vector<std::uint64_t> zero_;    // blocks_ zeros
};

// Distance of pattern (n <= 64 code points, masks filled from it) to text; cutoff as levenshtein().
int distance_word(const WordMasks& masks, std::size_t n, U32View text, int max_dist);
// Same for any n, with masks built from the pattern.
int distance_blocks(const BlockMasks& masks, std::size_t n, U32View text, int max_dist);

// Ukkonen-banded distance for n = |a| <= |b|: exact when <= band, else band + 1. O(n * band).
int distance_banded(U32View a, U32View b, int band);
// Distance of a long pattern a (> 64 code points, masks optional) to b: banded search when the
// distance is (or turns out) small next to the lengths, else the bit-parallel block kernel.
int distance_long(U32View a, U32View b, int max_dist, const BlockMasks* masks);

// levenshtein() with caller-owned scratch masks (all zero before and after the call), which
// saves the thread-local lookup in batch loops.
int levenshtein_with(WordMasks& scratch, U32View a, U32View b, int max_dist);

}  // namespace detail

// A query string preprocessed once for many comparisons (DTW rows, MinED scans):
// distance(b, max_dist) == levenshtein(query, b, max_dist). Thread-safe for concurrent distance().
class LevenshteinPattern {
 public:
  explicit LevenshteinPattern(U32View query);
  int distance(U32View b, int max_dist = -1) const;
  const U32String& query() const { return query_; }

 private:
  U32String query_;
  std::unique_ptr<detail::WordMasks> word_;    // set when the query has <= 64 code points
  std::unique_ptr<detail::BlockMasks> blocks_;  // set otherwise
};

}  // namespace fk
