// Bit-parallel Levenshtein distance (Myers 1999, Hyyrö's formulation) over UTF-32 strings.
//
// Column j of the DP matrix is kept as two bit vectors over the pattern rows: VP (vertical delta
// +1) and VN (vertical delta -1). One text character updates all rows of a 64-bit word at once;
// the score D[n][j] is tracked through the delta of the last row.
#include "core/levenshtein.hpp"

#include <algorithm>
#include <climits>
#include <vector>

#include "core/interrupt.hpp"

namespace fk {
namespace {

inline int cap(int d, int max_dist) { return (max_dist >= 0 && d > max_dist) ? max_dist + 1 : d; }

template <bool kCutoff>
int word_kernel(const detail::WordMasks& masks, std::size_t n, U32View text, int max_dist) {
  const std::uint64_t last = 1ull << (n - 1);
  const std::ptrdiff_t m = static_cast<std::ptrdiff_t>(text.size());
  // The DP cell on the diagonal that ends in (n, m): its row for the column being finished,
  // and its value, which starts at |n - m| where the diagonal leaves the matrix border.
  std::ptrdiff_t diag_row = 1 + static_cast<std::ptrdiff_t>(n) - m;
  int diag = static_cast<int>(diag_row > 1 ? diag_row - 1 : 1 - diag_row);
  std::uint64_t vp = ~0ull, vn = 0;
  int score = static_cast<int>(n);
  for (std::ptrdiff_t j = 0; j < m; ++j, ++diag_row) {
    const std::uint64_t eq = masks.get(text[static_cast<std::size_t>(j)]);
    const std::uint64_t x = eq | vn;
    const std::uint64_t d0 = (((eq & vp) + vp) ^ vp) | x;
    std::uint64_t hp = vn | ~(d0 | vp);
    std::uint64_t hn = vp & d0;
    score += static_cast<int>((hp & last) != 0) - static_cast<int>((hn & last) != 0);
    hp = (hp << 1) | 1;  // row 0 of the matrix grows by one per column
    hn <<= 1;
    vp = hn | ~(x | hp);
    vn = hp & x;
    if constexpr (kCutoff) {
      // D[n][m] >= D[n][j+1] - (remaining columns): once that is over the cutoff, stop.
      if (score - static_cast<int>(m - 1 - j) > max_dist) return max_dist + 1;
      // Diagonals never decrease, so D[n][m] >= the diagonal cell. Stepping from (i-1, j) to
      // (i, j+1) adds the horizontal delta of row i-1 and the vertical delta of row i, both
      // held in bit i-1 of the shifted horizontal and the new vertical vectors.
      if (diag_row > 0) {
        const int s = static_cast<int>(diag_row - 1);
        diag += static_cast<int>(((hp >> s) & 1) + ((vp >> s) & 1)) - static_cast<int>(((hn >> s) & 1) + ((vn >> s) & 1));
        if (diag > max_dist) return max_dist + 1;
      }
    }
  }
  return kCutoff ? cap(score, max_dist) : score;
}

}  // namespace

namespace detail {

int distance_word(const WordMasks& masks, std::size_t n, U32View text, int max_dist) {
  return max_dist >= 0 ? word_kernel<true>(masks, n, text, max_dist) : word_kernel<false>(masks, n, text, max_dist);
}

BlockMasks::BlockMasks(U32View pattern) : blocks_((pattern.size() + 63) / 64) {
  latin1_.assign(256 * blocks_, 0);
  zero_.assign(blocks_, 0);
  std::size_t wide = 0;
  for (char32_t c : pattern) wide += c >= 256;
  std::size_t slots = 8;
  while (slots < 2 * wide) slots <<= 1;
  mask_ = slots - 1;
  shift_ = 64 - __builtin_ctzll(slots);
  keys_.assign(slots, 0);
  rows_.assign(slots * blocks_, 0);
  for (std::size_t i = 0; i < pattern.size(); ++i) {
    const char32_t c = pattern[i];
    const std::uint64_t bit = 1ull << (i % 64);
    const std::size_t block = i / 64;
    if (c < 256) {
      latin1_[static_cast<std::size_t>(c) * blocks_ + block] |= bit;
      continue;
    }
    std::size_t s = slot_of(c);
    while (keys_[s] != 0 && keys_[s] != c) s = (s + 1) & mask_;
    keys_[s] = c;
    rows_[s * blocks_ + block] |= bit;
  }
}

int distance_blocks(const BlockMasks& masks, std::size_t n, U32View text, int max_dist) {
  const std::size_t nb = masks.blocks();
  const std::uint64_t last = 1ull << ((n - 1) % 64);
  std::vector<std::uint64_t> vp(nb, ~0ull), vn(nb, 0);
  int score = static_cast<int>(n);
  const std::ptrdiff_t m = static_cast<std::ptrdiff_t>(text.size());
  // Diagonal lower bound as in word_kernel (row diag_row of the column being finished).
  std::ptrdiff_t diag_row = 1 + static_cast<std::ptrdiff_t>(n) - m;
  int diag = static_cast<int>(diag_row > 1 ? diag_row - 1 : 1 - diag_row);
  for (std::ptrdiff_t j = 0; j < m; ++j, ++diag_row) {
    if ((j & 1023) == 1023) interruption_point();  // >= 2 words per column: a few microseconds
    const std::uint64_t* eq_row = masks.row(text[static_cast<std::size_t>(j)]);
    const std::ptrdiff_t diag_bit = diag_row - 1;  // bit of the diagonal step, when >= 0
    // Horizontal delta entering the block from above: +1 for the first block (row 0 is j).
    std::uint64_t h_pos = 1, h_neg = 0;
    for (std::size_t b = 0; b < nb; ++b) {
      std::uint64_t eq = eq_row[b];
      const std::uint64_t pv = vp[b], mv = vn[b];
      const std::uint64_t xv = eq | mv;
      eq |= h_neg;  // a -1 carry acts like a match entering the lowest row (Myers 1999)
      const std::uint64_t xh = (((eq & pv) + pv) ^ pv) | eq;
      std::uint64_t ph = mv | ~(xh | pv);
      std::uint64_t mh = pv & xh;
      const std::uint64_t high = (b + 1 == nb) ? last : (1ull << 63);
      const std::uint64_t out_pos = (ph & high) != 0, out_neg = (mh & high) != 0;
      ph = (ph << 1) | h_pos;
      mh = (mh << 1) | h_neg;
      vp[b] = mh | ~(xv | ph);
      vn[b] = ph & xv;
      h_pos = out_pos;
      h_neg = out_neg;
      if (max_dist >= 0 && diag_bit >= 0 && static_cast<std::size_t>(diag_bit) / 64 == b) {
        const int s = static_cast<int>(diag_bit % 64);
        diag += static_cast<int>(((ph >> s) & 1) + ((vp[b] >> s) & 1)) - static_cast<int>(((mh >> s) & 1) + ((vn[b] >> s) & 1));
      }
    }
    score += static_cast<int>(h_pos) - static_cast<int>(h_neg);
    if (max_dist >= 0 && (diag > max_dist || score - static_cast<int>(m - 1 - j) > max_dist)) return max_dist + 1;
  }
  return cap(score, max_dist);
}

int distance_banded(U32View a, U32View b, int band) {
  // Ukkonen's band: with n <= m, only cells with -band <= j - i <= band can lie on a path of cost
  // <= band. Row i keeps columns [i - band, i + band] at offsets 0..2*band; outside is "> band".
  const std::size_t n = a.size(), m = b.size();
  const int over = band + 1;
  if (m - n > static_cast<std::size_t>(band)) return over;
  const std::size_t width = 2 * static_cast<std::size_t>(band) + 1;
  thread_local std::vector<int> prev_buf, cur_buf;
  prev_buf.assign(width + 2, over);
  cur_buf.assign(width + 2, over);
  int* prev = prev_buf.data() + 1;  // index -1 and width are sentinels ("> band")
  int* cur = cur_buf.data() + 1;
  // Row 0: D[0][j] = j for j <= band (offset o = j - 0 + band).
  for (std::size_t j = 0; j <= std::min<std::size_t>(m, band); ++j) prev[j + band] = static_cast<int>(j);
  for (std::size_t i = 1; i <= n; ++i) {
    if ((i & 255) == 0) interruption_point();
    const char32_t ca = a[i - 1];
    const std::ptrdiff_t lo = std::max<std::ptrdiff_t>(0, static_cast<std::ptrdiff_t>(i) - band);
    const std::ptrdiff_t hi = std::min<std::ptrdiff_t>(static_cast<std::ptrdiff_t>(m), static_cast<std::ptrdiff_t>(i) + band);
    int row_min = over;
    std::fill(cur - 1, cur + width + 1, over);
    for (std::ptrdiff_t j = lo; j <= hi; ++j) {
      // offset of (i, j) is j - i + band; (i-1, j) sits at +1 in prev, (i-1, j-1) at the same, (i, j-1) at -1
      const std::ptrdiff_t o = j - static_cast<std::ptrdiff_t>(i) + band;
      int d;
      if (j == 0) {
        d = static_cast<int>(i);
      } else {
        const int sub = prev[o] + (ca != b[static_cast<std::size_t>(j - 1)]);
        const int del = prev[o + 1] + 1;
        const int ins = cur[o - 1] + 1;
        d = std::min(sub, std::min(del, ins));
      }
      d = std::min(d, over);
      cur[o] = d;
      row_min = std::min(row_min, d);
    }
    if (row_min > band) return over;  // every path through this row already costs more
    std::swap(prev, cur);
  }
  const std::ptrdiff_t o = static_cast<std::ptrdiff_t>(m) - static_cast<std::ptrdiff_t>(n) + band;
  return std::min(prev[o], over);
}

int distance_long(U32View a, U32View b, int max_dist, const BlockMasks* masks) {
  // a (the pattern, n > 64) and b after trimming. A small known bound runs the band directly;
  // without one, bands double from a small start while they stay much cheaper than the full
  // bit-parallel pass (one word op per 64 cells), so a near-identical pair costs O(n * distance).
  const std::size_t n = a.size(), m = b.size();
  const std::size_t diff = n > m ? n - m : m - n;
  // A band cell costs about what a 64-cell word step of the block kernel costs: a band of width
  // w is cheaper than the full pass below w = m / 64. Known bounds band up to half that; the
  // doubling search stops at a quarter, so a far pair wastes at most about half a full pass.
  const std::size_t cheap = std::max(n, m) / 128;
  auto blocks = [&](int cutoff) {
    if (masks != nullptr) return distance_blocks(*masks, n, b, cutoff);
    const BlockMasks own(a);
    return distance_blocks(own, n, b, cutoff);
  };
  if (max_dist >= 0 && 2 * static_cast<std::size_t>(max_dist) + 1 <= cheap)
    return n <= m ? distance_banded(a, b, max_dist) : distance_banded(b, a, max_dist);
  if (max_dist < 0) {
    for (std::size_t band = std::max<std::size_t>(diff, 16); 2 * (2 * band + 1) <= cheap; band *= 2) {
      const int k = static_cast<int>(std::min<std::size_t>(band, INT_MAX / 4));
      const int d = n <= m ? distance_banded(a, b, k) : distance_banded(b, a, k);
      if (d <= k) return d;
    }
  }
  return blocks(max_dist);
}

}  // namespace detail

int detail::levenshtein_with(detail::WordMasks& scratch, U32View a, U32View b, int max_dist) {
  // Common prefix and suffix never change the distance.
  std::size_t pre = 0;
  const std::size_t lim = std::min(a.size(), b.size());
  while (pre < lim && a[pre] == b[pre]) ++pre;
  a.remove_prefix(pre);
  b.remove_prefix(pre);
  std::size_t suf = 0;
  const std::size_t lim2 = std::min(a.size(), b.size());
  while (suf < lim2 && a[a.size() - 1 - suf] == b[b.size() - 1 - suf]) ++suf;
  a.remove_suffix(suf);
  b.remove_suffix(suf);
  if (a.size() > b.size()) std::swap(a, b);  // the shorter string is the pattern
  const std::size_t n = a.size(), m = b.size();
  if (max_dist >= 0 && m - n > static_cast<std::size_t>(max_dist)) return max_dist + 1;
  if (n == 0) return cap(static_cast<int>(m), max_dist);
  if (max_dist == 0) return 1;  // after trimming the strings differ
  if (n <= 64) {
    scratch.fill(a);
    const int d = detail::distance_word(scratch, n, b, max_dist);
    scratch.clear(a);
    return d;
  }
  return detail::distance_long(a, b, max_dist, nullptr);
}

int levenshtein(U32View a, U32View b, int max_dist) {
  thread_local detail::WordMasks scratch;
  return detail::levenshtein_with(scratch, a, b, max_dist);
}

LevenshteinPattern::LevenshteinPattern(U32View query) : query_(query) {
  if (query_.size() <= 64) {
    word_ = std::make_unique<detail::WordMasks>();
    word_->fill(query_);
  } else {
    blocks_ = std::make_unique<detail::BlockMasks>(query_);
  }
}

int LevenshteinPattern::distance(U32View b, int max_dist) const {
  const std::size_t n = query_.size(), m = b.size();
  const std::size_t diff = n > m ? n - m : m - n;
  if (max_dist >= 0 && diff > static_cast<std::size_t>(max_dist)) return max_dist + 1;
  if (n == 0) return cap(static_cast<int>(m), max_dist);
  if (m == 0) return cap(static_cast<int>(n), max_dist);
  if (n == m && U32View(query_) == b) return 0;
  if (max_dist == 0) return 1;
  if (word_) return detail::distance_word(*word_, n, b, max_dist);
  // Long query: a common prefix / suffix never changes the distance, and removing it (the masks
  // cover the whole query, so the rest goes through the generic long path) turns near-identical
  // pairs from O(n * m / 64) into O(n).
  U32View a(query_);
  std::size_t pre = 0;
  const std::size_t lim = std::min(n, m);
  while (pre < lim && a[pre] == b[pre]) ++pre;
  std::size_t suf = 0;
  while (suf < lim - pre && a[n - 1 - suf] == b[m - 1 - suf]) ++suf;
  if (pre + suf == 0) return detail::distance_long(a, b, max_dist, blocks_.get());
  thread_local detail::WordMasks scratch;
  return detail::levenshtein_with(scratch, a.substr(pre, n - pre - suf), b.substr(pre, m - pre - suf), max_dist);
}

}  // namespace fk
