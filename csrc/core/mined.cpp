// MinED nearest-neighbour search (see mined.hpp for the strategy).
#include "core/mined.hpp"

#include <algorithm>
#include <array>
#include <climits>
#include <stdexcept>

#include "core/parallel.hpp"

namespace fk {
namespace {

constexpr std::uint64_t kBase = 0x100000001B3ull;  // odd multiplier of the polynomial hash
// Far-query search (scan_by_shared_chars): candidates verified per window of bound levels (a
// window costs one pass over the touched targets, worth about this many verifications), and the
// stride of the sample that estimates how many targets each level holds.
constexpr std::int32_t kWindowCandidates = 256;
constexpr std::size_t kHistogramStride = 16;
// Radii of the length rings of the far-query search (see scan_by_shared_chars).
constexpr std::array<int, 2> kStageRadii = {3, 5};
// Targets up to this length have their O(length^2) two-deletion variants indexed; longer ones
// (rare in vocabularies) are verified directly when the query's length is within 2 of theirs.
constexpr std::size_t kWithinTwoMaxLength = 64;

inline std::uint64_t finalize(std::uint64_t h, std::size_t len) {
  // splitmix64 finaliser; the length is mixed in so that strings of different lengths rarely
  // collide (collisions only cost a verification, never correctness).
  std::uint64_t z = h ^ (static_cast<std::uint64_t>(len) * 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

inline std::uint64_t whole_hash(U32View s) {
  std::uint64_t h = 0;
  for (char32_t c : s) h = h * kBase + (static_cast<std::uint64_t>(c) + 1);
  return finalize(h, s.size());
}

// Hashes of the distinct strings obtained by deleting one character of s (deleting any
// character of a run of equal characters gives the same string, so runs contribute once).
void deletion_hashes(U32View s, std::vector<std::uint64_t>* out) {
  const std::size_t len = s.size();
  out->clear();
  if (len == 0) return;
  std::vector<std::uint64_t> prefix(len + 1, 0), power(len, 1);
  for (std::size_t i = 0; i < len; ++i) prefix[i + 1] = prefix[i] * kBase + (static_cast<std::uint64_t>(s[i]) + 1);
  for (std::size_t i = 1; i < len; ++i) power[i] = power[i - 1] * kBase;
  for (std::size_t p = 0; p < len; ++p) {
    if (p > 0 && s[p] == s[p - 1]) continue;
    // hash(s without s[p]) = hash(s[0, p)) * B^(len-1-p) + hash(s[p+1, len))
    const std::uint64_t h = (prefix[p] - prefix[p + 1]) * power[len - 1 - p] + prefix[len];
    out->push_back(finalize(h, len - 1));
  }
}

// Hashes of the distinct strings obtained by deleting at most two characters of s, sorted.
// lev(a, b) <= 2 implies that such variants of a and b coincide (each edit is undone by deleting
// the inserted, deleted or substituted character on one or both sides).
void within_two_hashes(U32View s, std::vector<std::uint64_t>* out) {
  const std::size_t len = s.size();
  thread_local std::vector<std::uint64_t> prefix, power;
  prefix.assign(len + 1, 0);
  power.assign(len + 1, 1);
  for (std::size_t i = 0; i < len; ++i) {
    prefix[i + 1] = prefix[i] * kBase + (static_cast<std::uint64_t>(s[i]) + 1);
    power[i + 1] = power[i] * kBase;
  }
  // Polynomial hash of s[a, b) and of a concatenation: h(XY) = h(X) * B^|Y| + h(Y).
  auto part = [&](std::size_t a, std::size_t b) { return prefix[b] - prefix[a] * power[b - a]; };
  out->clear();
  out->push_back(finalize(prefix[len], len));
  for (std::size_t p = 0; p < len; ++p) {
    if (p > 0 && s[p] == s[p - 1]) continue;  // same variant as deleting s[p - 1]
    const std::uint64_t head = part(0, p);
    out->push_back(finalize(head * power[len - 1 - p] + part(p + 1, len), len - 1));
    for (std::size_t r = p + 1; r < len; ++r) {
      if (r > p + 1 && s[r] == s[r - 1]) continue;  // same as deleting s[r - 1]
      const std::uint64_t h = (head * power[r - p - 1] + part(p + 1, r)) * power[len - 1 - r] + part(r + 1, len);
      out->push_back(finalize(h, len - 2));
    }
  }
  std::sort(out->begin(), out->end());
  out->erase(std::unique(out->begin(), out->end()), out->end());
}

}  // namespace

MinedIndex::MinedIndex(const std::vector<U32String>& targets) {
  if (targets.empty()) throw std::invalid_argument("targets must not be empty");
  if (targets.size() > static_cast<std::size_t>(INT32_MAX)) throw std::invalid_argument("too many targets");

  char32_t max_cp = 0;
  std::size_t total = 0, max_len = 0;
  for (const auto& t : targets) {
    for (char32_t c : t) max_cp = std::max(max_cp, c);
    total += t.size();
    max_len = std::max(max_len, t.size());
  }
  std::vector<std::uint64_t> counts(static_cast<std::size_t>(max_cp) + 1, 0);
  for (const auto& t : targets)
    for (char32_t c : t) ++counts[c];
  std::vector<char32_t> alphabet;
  for (std::size_t c = 0; c < counts.size(); ++c)
    if (counts[c] != 0) alphabet.push_back(static_cast<char32_t>(c));
  std::stable_sort(alphabet.begin(), alphabet.end(), [&](char32_t x, char32_t y) { return counts[x] > counts[y]; });
  code_of_.assign(counts.size(), 0);
  for (std::size_t r = 0; r < alphabet.size(); ++r) code_of_[alphabet[r]] = static_cast<std::uint32_t>(r + 1);
  foreign_code_ = static_cast<char32_t>(alphabet.size());

  chars_.reserve(total);
  offsets_.reserve(targets.size() + 1);
  offsets_.push_back(0);
  for (const auto& t : targets) {
    for (char32_t c : t) chars_.push_back(static_cast<char32_t>(code_of_[c] - 1));
    offsets_.push_back(chars_.size());
  }

  buckets_.resize(max_len + 1);
  std::size_t within_two_count = 0;  // upper bound of the variants, to allocate once
  for (const auto& t : targets) {
    const std::size_t m = t.size();
    if (m <= kWithinTwoMaxLength) within_two_count += 1 + m + m * (m > 0 ? m - 1 : 0) / 2;
  }
  lengths_.reserve(targets.size());
  whole_.reserve(targets.size());
  deletions_.reserve(total);
  within_two_.reserve(within_two_count);
  std::vector<std::uint64_t> dels;
  for (std::size_t i = 0; i < targets.size(); ++i) {
    const auto id = static_cast<std::int32_t>(i);
    const U32View t = target(id);
    whole_.add(whole_hash(t), id);
    deletion_hashes(t, &dels);
    for (std::uint64_t h : dels) deletions_.add(h, id);
    if (t.size() <= kWithinTwoMaxLength) {
      within_two_hashes(t, &dels);
      for (std::uint64_t h : dels) within_two_.add(h, id);
    }
    buckets_[t.size()].ids.push_back(id);
    lengths_.push_back(static_cast<std::int32_t>(t.size()));
  }
  whole_.build();
  deletions_.build();
  within_two_.build();
  min_len_ = max_len;
  for (std::size_t len = 0; len <= max_len; ++len)
    if (!buckets_[len].ids.empty()) {
      min_len_ = len;
      break;
    }
  build_postings();
}

void MinedIndex::build_postings() {
  const std::size_t codes = static_cast<std::size_t>(foreign_code_);
  const std::size_t nt = size();
  // Distinct codes of each target with their counts, as runs of the sorted string.
  std::vector<std::size_t> per_code(codes + 1, 0);
  U32String sorted;
  auto runs = [&](std::int32_t id, auto&& emit) {
    const U32View t = target(id);
    sorted.assign(t.begin(), t.end());
    std::sort(sorted.begin(), sorted.end());
    for (std::size_t i = 0; i < sorted.size();) {
      std::size_t j = i + 1;
      while (j < sorted.size() && sorted[j] == sorted[i]) ++j;
      emit(static_cast<std::size_t>(sorted[i]), static_cast<std::int32_t>(j - i));
      i = j;
    }
  };
  for (std::size_t i = 0; i < nt; ++i)
    runs(static_cast<std::int32_t>(i), [&](std::size_t c, std::int32_t) { ++per_code[c]; });
  posting_offsets_.assign(codes + 1, 0);
  for (std::size_t c = 0; c < codes; ++c) posting_offsets_[c + 1] = posting_offsets_[c] + per_code[c];
  posting_ids_.resize(posting_offsets_[codes]);
  posting_counts_.resize(posting_offsets_[codes]);
  std::vector<std::size_t> fill(posting_offsets_.begin(), posting_offsets_.end() - 1);
  for (const Bucket& bucket : buckets_)  // by length, then index: lists sorted by (length, id)
    for (std::int32_t id : bucket.ids)
      runs(id, [&](std::size_t c, std::int32_t count) {
        posting_ids_[fill[c]] = id;
        posting_counts_[fill[c]++] = count;
      });
}

U32String MinedIndex::encode(U32View s) const {
  U32String out(s.size(), U'\0');
  for (std::size_t i = 0; i < s.size(); ++i) {
    const char32_t c = s[i];
    const std::uint32_t code = c < code_of_.size() ? code_of_[c] : 0;
    out[i] = code != 0 ? static_cast<char32_t>(code - 1) : foreign_code_;
  }
  return out;
}

void MinedIndex::KeyTable::build() {
  const std::size_t count = pending_hashes.size();
  int bits = 1;
  while (bits < 30 && (std::size_t{1} << bits) < count) ++bits;
  shift = 64 - bits;
  // Stable counting sort by the directory prefix: linear time, and the ids of one hash keep
  // their insertion order.
  directory.assign((std::size_t{1} << bits) + 1, 0);
  for (std::uint64_t h : pending_hashes) ++directory[static_cast<std::size_t>(h >> shift) + 1];
  for (std::size_t i = 1; i < directory.size(); ++i) directory[i] += directory[i - 1];
  entries.resize(count);
  std::vector<std::size_t> fill(directory.begin(), directory.end() - 1);
  for (std::size_t i = 0; i < count; ++i) {
    const std::uint64_t h = pending_hashes[i];
    entries[fill[static_cast<std::size_t>(h >> shift)]++] = {static_cast<std::uint32_t>(h), pending_ids[i]};
  }
  std::vector<std::uint64_t>().swap(pending_hashes);
  std::vector<std::int32_t>().swap(pending_ids);
}

void MinedIndex::KeyTable::collect(std::uint64_t hash, std::vector<std::int32_t>* out) const {
  const std::size_t prefix = static_cast<std::size_t>(hash >> shift);
  const auto check = static_cast<std::uint32_t>(hash);
  const std::size_t end = directory[prefix + 1];
  for (std::size_t i = directory[prefix]; i < end; ++i)
    if (entries[i].check == check) out->push_back(entries[i].id);
}

bool MinedIndex::find_exact(U32View q, std::vector<std::int32_t>* hits) const {
  std::vector<std::int32_t> same_hash;
  whole_.collect(whole_hash(q), &same_hash);  // ascending ids
  hits->clear();
  for (std::int32_t id : same_hash)
    if (target(id) == q) hits->push_back(id);
  return !hits->empty();
}

namespace {
// Per-thread scratch of scan_by_shared_chars: shared-character counts per target (all zero
// between calls) and the targets touched by the posting lists.
struct SharedScratch {
  std::vector<std::int32_t> shared;
  std::vector<std::int32_t> touched;
  std::vector<std::int32_t> histogram;   // [upper + 2] touched targets per bound (estimated)
  std::vector<std::int32_t> candidates;  // touched targets of the current window of bounds
  std::vector<std::int32_t> level_start;
  std::vector<std::int32_t> by_level;
};
}  // namespace

int MinedIndex::scan_by_shared_chars(const LevenshteinPattern& pattern, std::int32_t* nearest,
                                     std::vector<std::int32_t>* ties) const {
  const bool with_ties = ties != nullptr;
  const U32View q = pattern.query();
  const auto n = static_cast<std::ptrdiff_t>(q.size());
  const auto max_len = static_cast<std::ptrdiff_t>(buckets_.size()) - 1;
  thread_local SharedScratch scratch;
  // Raw pointers: the loops below must not re-derive the thread-local address per element.
  if (scratch.shared.size() < size()) {
    scratch.shared.assign(size(), 0);
    scratch.touched.assign(size() + 1, 0);  // +1: the branch-free append writes one past
  }
  std::int32_t* const shared = scratch.shared.data();
  std::int32_t* const touched_ids = scratch.touched.data();
  std::size_t touched_count = 0;
  struct ZeroOnExit {  // restores the all-zero invariant of `shared`, also on exceptions
    std::int32_t* shared;
    const std::int32_t* ids;
    const std::size_t& count;
    ~ZeroOnExit() {
      for (std::size_t k = 0; k < count; ++k) shared[ids[k]] = 0;
    }
  } zero_on_exit{shared, touched_ids, touched_count};

  // shared[t] = size of the multiset intersection of the characters of q and t, accumulated
  // from the posting lists over the targets with lengths in [min_len, max_len].
  U32String sorted(q);
  std::sort(sorted.begin(), sorted.end());
  const std::int32_t* const ids = posting_ids_.data();
  const std::int32_t* const counts = posting_counts_.data();
  const std::int32_t* const lengths = lengths_.data();
  auto accumulate = [&](std::ptrdiff_t min_len, std::ptrdiff_t max_len_incl) {
    if (min_len > max_len_incl) return;
    for (std::size_t i = 0; i < sorted.size();) {
      std::size_t j = i + 1;
      while (j < sorted.size() && sorted[j] == sorted[i]) ++j;
      const auto c = static_cast<std::size_t>(sorted[i]);
      const auto q_count = static_cast<std::int32_t>(j - i);
      i = j;
      if (c >= posting_offsets_.size() - 1) continue;  // occurs in no target
      const std::int32_t* begin = ids + posting_offsets_[c];
      const std::int32_t* end = ids + posting_offsets_[c + 1];
      begin = std::partition_point(begin, end, [&](std::int32_t id) { return lengths[id] < min_len; });
      end = std::partition_point(begin, end, [&](std::int32_t id) { return lengths[id] <= max_len_incl; });
      const std::int32_t* count = counts + (begin - ids);
      for (const std::int32_t* p = begin; p != end; ++p, ++count) {  // branch-free append
        const std::int32_t id = *p;
        const std::int32_t old = shared[id];
        touched_ids[touched_count] = id;
        touched_count += old == 0;
        shared[id] = old + (q_count == 1 ? 1 : std::min(q_count, *count));
      }
    }
  };

  // Every target is within max(n, m) of q, so the best distance is at most `upper`; unmatched
  // characters need one edit each: lev(q, t) >= max(n, m) - shared[t] (the bound, or level).
  const int upper = static_cast<int>(std::max<std::ptrdiff_t>(n, static_cast<std::ptrdiff_t>(min_len_)));
  // Histogram of the bounds over a sample of the touched targets (bounds above `upper` pooled in
  // upper + 1: those targets can never be nearest). It only sizes the windows below, so an
  // estimate suffices.
  const auto n32 = static_cast<std::int32_t>(n);
  auto bound_of = [shared, lengths, n32](std::int32_t id) { return std::max(n32, lengths[id]) - shared[id]; };
  std::vector<std::int32_t>& histogram = scratch.histogram;
  auto sample_bounds = [&] {
    histogram.assign(static_cast<std::size_t>(upper) + 2, 0);
    for (std::size_t k = 0; k < touched_count; k += kHistogramStride)
      histogram[static_cast<std::size_t>(std::min(bound_of(touched_ids[k]), upper + 1))] += kHistogramStride;
    if (scratch.candidates.size() < touched_count + 1) scratch.candidates.resize(touched_count + 1);
  };

  int best = INT_MAX;  // none yet; the true minimum is <= upper
  std::int32_t best_id = INT32_MAX;
  auto offer = [&](std::int32_t id, int d) {
    if (d < best) {
      best = d;
      best_id = id;
      if (with_ties) ties->assign(1, id);
    } else if (d == best) {
      best_id = std::min(best_id, id);
      if (with_ties) ties->push_back(id);
    }
  };
  // Levels [first_level, last_level] (bound values) ascending, in windows: one pass over the
  // touched list gathers the candidates of a window, which are sorted by level and verified with
  // the running minimum as cutoff. The search ends at the first level above the minimum; usually the first window
  // already gets there, so most touched targets are never sorted or verified.
  std::vector<std::int32_t>& level_start = scratch.level_start;
  std::vector<std::int32_t>& by_level = scratch.by_level;
  auto search_levels = [&](int first_level, int last_level) {
    std::int32_t* const candidates = scratch.candidates.data();
    for (int lo = first_level; lo <= last_level && (best == INT_MAX || lo <= best);) {
      int hi = lo;
      std::int32_t in_window = histogram[static_cast<std::size_t>(lo)];
      while (hi < last_level && in_window < kWindowCandidates) in_window += histogram[static_cast<std::size_t>(++hi)];
      if (best != INT_MAX) hi = std::min(hi, best);
      const int width = hi - lo + 1;
      level_start.assign(static_cast<std::size_t>(width) + 1, 0);
      {  // (in_window is an estimate: the pass runs even when it is 0)
        std::size_t kept = 0;  // branch-free compaction of the targets with bounds in [lo, hi]
        for (std::size_t k = 0; k < touched_count; ++k) {
          const std::int32_t id = touched_ids[k];
          candidates[kept] = id;
          kept += static_cast<std::uint32_t>(bound_of(id) - lo) < static_cast<std::uint32_t>(width);
        }
        for (std::size_t k = 0; k < kept; ++k)
          ++level_start[static_cast<std::size_t>(bound_of(candidates[k]) - lo) + 1];
        for (std::size_t l = 1; l < level_start.size(); ++l) level_start[l] += level_start[l - 1];
        by_level.resize(kept);
        std::vector<std::int32_t> fill(level_start.begin(), level_start.end() - 1);
        for (std::size_t k = 0; k < kept; ++k)
          by_level[static_cast<std::size_t>(fill[static_cast<std::size_t>(bound_of(candidates[k]) - lo)]++)] =
              candidates[k];
      }
      for (int level = lo; level <= hi && (best == INT_MAX || level <= best); ++level) {
        const auto slot = static_cast<std::size_t>(level - lo);
        for (std::int32_t k = level_start[slot]; k < level_start[slot + 1]; ++k) {
          const std::int32_t id = by_level[static_cast<std::size_t>(k)];
          // Without ties a later index only wins with a strictly smaller distance.
          const int cutoff = best == INT_MAX ? upper : ((with_ties || id < best_id) ? best : best - 1);
          if (cutoff < level) continue;
          const int d = pattern.distance(target(id), cutoff);
          if (d <= cutoff) offer(id, d);
        }
        // Targets sharing no character with q are at exactly max(n, m): `level` is reached by those
        // of length <= n when level == n, by those of length `level` when level > n.
        if (level < n) continue;
        const std::ptrdiff_t first_len = level == n ? 0 : level, last_len = std::min<std::ptrdiff_t>(level, max_len);
        for (std::ptrdiff_t len = first_len; len <= last_len; ++len) {
          for (std::int32_t id : buckets_[static_cast<std::size_t>(len)].ids) {  // ascending
            if (shared[id] != 0) continue;
            if (!with_ties && best != INT_MAX && level == best && id > best_id) break;
            offer(id, level);
            if (!with_ties) break;
          }
        }
      }
      lo = hi + 1;
    }
  };
  // Levels up to r only involve targets within r of the query's length, so the lengths are
  // counted in widening rings (radii kStageRadii, then all): most queries of moderate distance
  // end in the first ring. After each ring, levels up to its radius are exact and searched.
  int done_radius = -1;  // lengths within n +- done_radius are counted, levels <= it searched
  for (std::size_t stage = 0; stage <= kStageRadii.size(); ++stage) {
    const int radius = stage < kStageRadii.size() ? std::min(kStageRadii[stage], upper) : upper;
    if (radius <= done_radius) continue;
    if (done_radius < 0) {
      accumulate(n - radius, n + radius);
    } else {
      accumulate(n - radius, n - done_radius - 1);
      accumulate(n + done_radius + 1, n + radius);
    }
    sample_bounds();
    search_levels(done_radius + 1, radius);
    done_radius = radius;
    if (best != INT_MAX && best <= radius) break;  // (a best above it is only an upper bound)
  }
  *nearest = best_id;
  return best;
}

std::int32_t MinedIndex::query(U32View raw, int* distance, std::vector<std::int32_t>* ties) const {
  const U32String q = encode(raw);
  std::vector<std::int32_t> hits;
  if (find_exact(q, &hits)) {
    *distance = 0;
    if (ties) *ties = hits;
    return hits.front();
  }
  const LevenshteinPattern pattern(q);
  // Distance 1: t == q + one character (t's deletion == q), t == q - one character (q's deletion
  // == t), or one substitution (equal deletions).
  std::vector<std::int32_t> candidates;
  deletions_.collect(whole_hash(q), &candidates);
  std::vector<std::uint64_t> dels;
  deletion_hashes(q, &dels);
  for (std::uint64_t h : dels) {
    deletions_.collect(h, &candidates);
    whole_.collect(h, &candidates);
  }
  std::sort(candidates.begin(), candidates.end());
  candidates.erase(std::unique(candidates.begin(), candidates.end()), candidates.end());
  hits.clear();
  for (std::int32_t id : candidates)
    if (pattern.distance(target(id), 1) == 1) hits.push_back(id);
  if (!hits.empty()) {
    *distance = 1;
    if (ties) *ties = hits;
    return hits.front();
  }
  // Distance 2: some variant of q with at most two deletions equals such a variant of t (for
  // targets up to kWithinTwoMaxLength; longer ones within 2 of q's length are verified).
  // Only targets of length >= n - 2 can qualify.
  const std::size_t n = q.size();
  if (n <= max_length() + 2) {
    candidates.clear();
    if (n <= kWithinTwoMaxLength + 2) {
      within_two_hashes(q, &dels);
      for (std::uint64_t h : dels) within_two_.collect(h, &candidates);
    }
    for (std::size_t len = std::max(n, kWithinTwoMaxLength + 3) - 2; len <= std::min(n + 2, max_length()); ++len)
      candidates.insert(candidates.end(), buckets_[len].ids.begin(), buckets_[len].ids.end());
    std::sort(candidates.begin(), candidates.end());
    candidates.erase(std::unique(candidates.begin(), candidates.end()), candidates.end());
    for (std::int32_t id : candidates)
      if (pattern.distance(target(id), 2) == 2) hits.push_back(id);
    if (!hits.empty()) {
      *distance = 2;
      if (ties) *ties = hits;
      return hits.front();
    }
  }
  // Distance 3 or more: bound-ordered search over the character posting lists.
  std::int32_t nearest = 0;
  if (ties) ties->clear();
  *distance = scan_by_shared_chars(pattern, &nearest, ties);
  if (ties) std::sort(ties->begin(), ties->end());
  return nearest;
}

MinedResult MinedIndex::map(const std::vector<U32String>& queries, int threads, bool with_ties) const {
  MinedResult r;
  const std::size_t nq = queries.size();
  r.ids.assign(nq, 0);
  r.distances.assign(nq, 0);
  std::vector<std::vector<std::int32_t>> ties(with_ties ? nq : 0);
  parallel_for(
      nq, threads,
      [&](std::size_t i) {
        int d = 0;
        r.ids[i] = query(queries[i], &d, with_ties ? &ties[i] : nullptr);
        r.distances[i] = d;
      },
      16);
  if (with_ties) {
    r.tie_offsets.assign(nq + 1, 0);
    for (std::size_t i = 0; i < nq; ++i) r.tie_offsets[i + 1] = r.tie_offsets[i] + static_cast<std::int64_t>(ties[i].size());
    r.tie_ids.reserve(static_cast<std::size_t>(r.tie_offsets[nq]));
    for (const auto& t : ties) r.tie_ids.insert(r.tie_ids.end(), t.begin(), t.end());
  }
  return r;
}

MinedResult mined_map(const std::vector<U32String>& queries, const std::vector<U32String>& targets, int threads,
                      bool with_ties) {
  const MinedIndex index(targets);
  return index.map(queries, threads, with_ties);
}

}  // namespace fk
