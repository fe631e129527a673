#include "core/byte_span.hpp"

#include <algorithm>
#include <cstring>
#include <limits>
#include <vector>

#include "core/parallel.hpp"

namespace fk {
namespace {

constexpr int64_t kUnbounded = std::numeric_limits<int64_t>::max();

// How many text bytes one sequence covers (mirrors _Extent in byte_span.py).
struct Extent {
  int64_t total = 0;     // sum of token byte lengths, dummy-prefix space included
  int start = 0;         // leading bytes that are a dummy-prefix space (0 or 1)
  bool ambiguous = false;  // "unless_space" prefix and no text: the space may be text
  int64_t unknown = 0;   // unk-role tokens (each >= 1 unnamed byte)

  int64_t lo() const { return (ambiguous ? total - 1 : total - start) + unknown; }
  int64_t hi() const { return unknown ? kUnbounded : (ambiguous ? total : total - start); }
};

Extent extent(const SpanVocab& v, const int32_t* ids, int64_t n, int text_space) {
  Extent e;
  int64_t first_nonempty = -1;
  for (int64_t i = 0; i < n; ++i) {
    const int32_t id = ids[i];
    const int32_t len = v.byte_lengths[id];
    e.total += len;
    if (first_nonempty < 0 && len > 0) first_nonempty = id;
    if (id == v.unk) ++e.unknown;
  }
  if (v.dummy_prefix != 0 && first_nonempty >= 0 && v.bytes[v.byte_offsets[first_nonempty]] == ' ' &&
      !(v.dummy_prefix == 2 && text_space == 1)) {
    e.start = 1;
  }
  e.ambiguous = e.start == 1 && text_space < 0 && v.dummy_prefix == 2;
  return e;
}

int resolve_start(const Extent& own, const Extent& other) {
  if (own.ambiguous && !other.ambiguous && !other.unknown && other.lo() == own.total) return 0;
  return own.start;
}

// Token bytes of ids up to the first unk-role token; returns whether that was all of them.
bool known_text(const SpanVocab& v, const int32_t* ids, int64_t n, std::vector<uint8_t>& out) {
  out.clear();
  for (int64_t i = 0; i < n; ++i) {
    if (ids[i] == v.unk) return false;
    const uint8_t* b = v.bytes + v.byte_offsets[ids[i]];
    out.insert(out.end(), b, b + v.byte_lengths[ids[i]]);
  }
  return true;
}

// The dummy-prefix starts of a row, or false when the two sequences cover different texts.
bool check_row(const SpanVocab& base, const int32_t* b, int64_t m, const SpanVocab& blend, const int32_t* a,
               int64_t n, int text_space, SpanCheck check, int& b_start, int& a_start) {
  const Extent eb = extent(base, b, m, text_space), ea = extent(blend, a, n, text_space);
  b_start = resolve_start(eb, ea);
  a_start = resolve_start(ea, eb);
  if (check == SpanCheck::kNone) return true;
  if (check != SpanCheck::kPrefix && std::max(eb.lo(), ea.lo()) > std::min(eb.hi(), ea.hi())) return false;
  if (check == SpanCheck::kLength) return true;
  thread_local std::vector<uint8_t> x, y;
  const bool x_whole = known_text(base, b, m, x), y_whole = known_text(blend, a, n, y);
  const int b_try[2] = {b_start, 1 - b_start}, a_try[2] = {a_start, 1 - a_start};
  for (int ib = 0; ib < (eb.ambiguous ? 2 : 1); ++ib) {
    for (int ia = 0; ia < (ea.ambiguous ? 2 : 1); ++ia) {
      const int sb = b_try[ib], sa = a_try[ia];
      const int64_t lx = std::max<int64_t>(static_cast<int64_t>(x.size()) - sb, 0);
      const int64_t ly = std::max<int64_t>(static_cast<int64_t>(y.size()) - sa, 0);
      const int64_t common = std::min(lx, ly);
      const bool equal = common == 0 || std::memcmp(x.data() + sb, y.data() + sa, common) == 0;
      if (equal && (lx == ly || check == SpanCheck::kPrefix || !(x_whole && y_whole))) {
        b_start = sb;
        a_start = sa;
        return true;
      }
    }
  }
  return false;
}

// Byte offsets [start, end) of every token with the dummy-prefix space shifted out (clamped at 0).
void spans(const SpanVocab& v, const int32_t* ids, int64_t n, int start, std::vector<int64_t>& st,
           std::vector<int64_t>& en) {
  st.resize(n);
  en.resize(n);
  int64_t end = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t begin = end;
    end += v.byte_lengths[ids[i]];
    st[i] = std::max<int64_t>(begin - start, 0);
    en[i] = std::max<int64_t>(end - start, 0);
  }
}

// pos[j] = the blending position of base position j, or -1 (see the header).
void match_positions(const std::vector<int64_t>& bst, const std::vector<int64_t>& ben,
                     const std::vector<int64_t>& ast, const std::vector<int64_t>& aen, bool match_end,
                     std::vector<int64_t>& pos) {
  const int64_t m = static_cast<int64_t>(ben.size()), n = static_cast<int64_t>(aen.size());
  pos.assign(m, -1);
  // Both sides are sorted by (start, end) and by end: walk runs of equal end offsets together.
  int64_t j = 0;
  for (int64_t i = 0; i < m;) {
    int64_t i1 = i + 1;
    while (i1 < m && ben[i1] == ben[i]) ++i1;
    while (j < n && aen[j] < ben[i]) ++j;
    int64_t j1 = j;
    while (j1 < n && aen[j1] == ben[i]) ++j1;
    if (j1 > j) {
      if (match_end) {
        // key (end, non-empty): per emptiness class, unique on both sides
        for (int c = 0; c < 2; ++c) {
          int64_t nb = 0, na = 0, pb = -1, pa = -1;
          for (int64_t x = i; x < i1; ++x) {
            if ((bst[x] != ben[x]) == (c == 1)) { ++nb; pb = x; }
          }
          for (int64_t y = j; y < j1; ++y) {
            if ((ast[y] != aen[y]) == (c == 1)) { ++na; pa = y; }
          }
          if (nb == 1 && na == 1) pos[pb] = pa;
        }
      } else {
        // key (start, end): within a run of equal ends, starts are sorted too
        int64_t y = j;
        for (int64_t x = i; x < i1;) {
          int64_t x1 = x + 1;
          while (x1 < i1 && bst[x1] == bst[x]) ++x1;
          while (y < j1 && ast[y] < bst[x]) ++y;
          int64_t y1 = y;
          while (y1 < j1 && ast[y1] == bst[x]) ++y1;
          if (x1 - x == 1 && y1 - y == 1) pos[x] = y;
          x = x1;
        }
      }
    }
    i = i1;
  }
}

bool valid_row(const SpanVocab& v, const int32_t* ids, int64_t n) {
  bool ok = true;
  for (int64_t i = 0; i < n; ++i) ok &= ids[i] >= 0 && ids[i] < v.vocab;
  return ok;
}

bool valid_topk(int64_t vocab, const int32_t* ids, const float* logits, int64_t size) {
  bool ok = true;
  for (int64_t i = 0; i < size; ++i) ok &= ids[i] >= 0 && ids[i] < vocab && logits[i] == logits[i];
  return ok;
}

}  // namespace

int64_t byte_span_align_batch(const SpanVocab& base, const SpanVocab& blend, const int32_t* id_map,
                              const SpanBatchInput& in, bool match_end, SpanCheck check,
                              const SpanBatchOutput& out, int threads) {
  std::vector<uint8_t> failed(static_cast<std::size_t>(in.rows), 0);
  const int64_t k_in = in.k_in, k_out = out.k_out;
  const float neg_inf = -std::numeric_limits<float>::infinity();
  parallel_for(
      static_cast<std::size_t>(in.rows), threads,
      [&](std::size_t r) {
        const int64_t b0 = in.base_offsets[r], m = in.base_offsets[r + 1] - b0;
        const int64_t a0 = in.blend_offsets[r], n = in.blend_offsets[r + 1] - a0;
        const int32_t* b = in.base_ids + b0;
        const int32_t* a = in.blend_ids + a0;
        const int text_space = in.text_space ? in.text_space[r] : -1;
        int b_start = 0, a_start = 0;
        if (m == 0 || n == 0 || !valid_row(base, b, m) || !valid_row(blend, a, n) ||
            !valid_topk(blend.vocab, in.topk_ids + a0 * k_in, in.topk_logits + a0 * k_in, n * k_in) ||
            !check_row(base, b, m, blend, a, n, text_space, check, b_start, a_start)) {
          failed[r] = 1;
          return;
        }
        thread_local std::vector<int64_t> bst, ben, ast, aen, pos;
        thread_local std::vector<int32_t> kept_ids;
        thread_local std::vector<float> kept_logits;
        spans(base, b, m, b_start, bst, ben);
        spans(blend, a, n, a_start, ast, aen);
        match_positions(bst, ben, ast, aen, match_end, pos);
        kept_ids.resize(static_cast<std::size_t>(std::max<int64_t>(k_in, 1)));
        kept_logits.resize(kept_ids.size());
        for (int64_t j = 0; j < m; ++j) {
          int32_t* oid = out.ids + (b0 + j) * k_out;
          float* olg = out.logits + (b0 + j) * k_out;
          int64_t count = 0;
          if (pos[j] >= 0) {
            const int64_t src = (a0 + pos[j]) * k_in;
            for (int64_t t = 0; t < k_in; ++t) {
              const int32_t v = id_map[in.topk_ids[src + t]];
              if (v < 0) continue;
              bool repeat = false;
              for (int64_t q = 0; q < count; ++q) repeat |= kept_ids[q] == v;
              if (repeat) continue;
              kept_ids[count] = v;
              kept_logits[count] = in.topk_logits[src + t];
              ++count;
            }
          }
          out.matched[b0 + j] = count > 0;
          if (count == 0) {  // the spec's one-hot fallback on the current base token
            kept_ids[0] = b[j];
            kept_logits[0] = 1.0f;
            count = 1;
          }
          const int64_t w = std::min(count, k_out);
          for (int64_t q = 0; q < w; ++q) {
            oid[q] = kept_ids[q];
            olg[q] = kept_logits[q];
          }
          for (int64_t q = w; q < k_out; ++q) {
            oid[q] = -1;
            olg[q] = neg_inf;
          }
        }
      },
      4);
  for (int64_t r = 0; r < in.rows; ++r) {
    if (failed[r]) return r;
  }
  return -1;
}

}  // namespace fk
