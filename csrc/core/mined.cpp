// MinED nearest-neighbour search (see mined.hpp for the strategy).
#include "core/mined.hpp"

#include <algorithm>
#include <climits>
#include <stdexcept>

#include "core/parallel.hpp"

namespace fk {
namespace {

constexpr std::uint64_t kBase = 0x100000001B3ull;  // odd multiplier of the polynomial hash
#ifndef FK_MINED_DEEPEN_UNTIL
#define FK_MINED_DEEPEN_UNTIL 5
#endif
// Radii searched by separate tight passes before switching to one best-first scan.
constexpr int kDeepenUntil = FK_MINED_DEEPEN_UNTIL;

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

// lev(q, t) >= max(n, len) - (matched characters) >= max(n, len) - min(n - foreign, len), since
// characters that occur in no target never match: a bound for a whole length bucket.
inline std::ptrdiff_t bucket_bound(std::ptrdiff_t n, std::ptrdiff_t len, std::ptrdiff_t foreign) {
  return std::max(n, len) - std::min(n - foreign, len);
}

// The signature filter is popcount-bound; baseline x86-64 lacks the instruction, so GCC builds
// a POPCNT clone as well and picks it at load time.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define FK_POPCNT_CLONES __attribute__((target_clones("popcnt", "default")))
#else
#define FK_POPCNT_CLONES
#endif

}  // namespace

// Bit i of the result is set when target i of sigs[0, count) (count <= 64) may lie within
// `radius` of the query according to the signature bounds (see signature()).
FK_POPCNT_CLONES
std::uint64_t MinedIndex::filter(const Signature* sigs, std::size_t count, const QueryProfile& q, int radius) {
  std::uint64_t pass = 0;
  const Signature& qs = q.sig;
  for (std::size_t i = 0; i < count; ++i) {
    const Signature& t = sigs[i];
    const int q_chars =
        q.foreign_chars + __builtin_popcountll(qs.once & ~t.once) + __builtin_popcountll(qs.twice & ~t.twice);
    const int t_chars = __builtin_popcountll(t.once & ~qs.once) + __builtin_popcountll(t.twice & ~qs.twice);
    const int q_bigrams = q.foreign_bigrams + __builtin_popcountll(qs.bigrams & ~t.bigrams);
    const int t_bigrams = __builtin_popcountll(t.bigrams & ~qs.bigrams);
    const int bound = std::max(std::max(q_chars, t_chars), (std::max(q_bigrams, t_bigrams) + 1) / 2);
    pass |= static_cast<std::uint64_t>(bound <= radius) << i;
  }
  return pass;
}

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
  whole_.keys.reserve(targets.size());
  std::vector<std::uint64_t> dels;
  for (std::size_t i = 0; i < targets.size(); ++i) {
    const auto id = static_cast<std::int32_t>(i);
    const U32View t = target(id);
    whole_.keys.push_back({whole_hash(t), id});
    deletion_hashes(t, &dels);
    for (std::uint64_t h : dels) deletions_.keys.push_back({h, id});
    buckets_[t.size()].ids.push_back(id);
    buckets_[t.size()].signatures.push_back(signature(t, foreign_code_, nullptr, nullptr));
  }
  whole_.build();
  deletions_.build();
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

// Character classes (code mod 64) present at least once / at least twice, and bigram classes.
// A character class occurring more often in one string than in the other needs that many edits
// (each edit removes or replaces one character); a bigram absent from the other string must be
// destroyed, and one edit destroys at most two bigram occurrences. Characters absent from all
// targets (`foreign`) are counted apart, exactly, instead of entering the classes.
MinedIndex::Signature MinedIndex::signature(U32View encoded, char32_t foreign, int* foreign_chars,
                                            int* foreign_bigrams) {
  Signature sig{0, 0, 0};
  int chars = 0, bigrams = 0;
  for (std::size_t i = 0; i < encoded.size(); ++i) {
    const char32_t c = encoded[i];
    if (i > 0) {
      const char32_t p = encoded[i - 1];
      if (p == foreign || c == foreign) {
        ++bigrams;
      } else {
        sig.bigrams |= 1ull << (((static_cast<std::uint64_t>(p) * 0x9E3779B97F4A7C15ull) ^ c) & 63);
      }
    }
    if (c == foreign) {
      ++chars;
      continue;
    }
    const std::uint64_t bit = 1ull << (c & 63);
    sig.twice |= sig.once & bit;
    sig.once |= bit;
  }
  if (foreign_chars) *foreign_chars = chars;
  if (foreign_bigrams) *foreign_bigrams = bigrams;
  return sig;
}

void MinedIndex::KeyTable::build() {
  std::sort(keys.begin(), keys.end());
  int bits = 1;
  while (bits < 30 && (std::size_t{1} << bits) < keys.size()) ++bits;
  shift = 64 - bits;
  directory.resize((std::size_t{1} << bits) + 1);
  std::size_t i = 0;
  for (std::size_t prefix = 0; prefix < directory.size(); ++prefix) {
    while (i < keys.size() && (keys[i].hash >> shift) < prefix) ++i;
    directory[prefix] = i;
  }
}

void MinedIndex::KeyTable::collect(std::uint64_t hash, std::vector<std::int32_t>* out) const {
  const std::size_t prefix = static_cast<std::size_t>(hash >> shift);
  const std::size_t end = directory[prefix + 1];
  for (std::size_t i = directory[prefix]; i < end; ++i)
    if (keys[i].hash == hash) out->push_back(keys[i].id);
}

bool MinedIndex::find_exact(U32View q, std::vector<std::int32_t>* hits) const {
  std::vector<std::int32_t> same_hash;
  whole_.collect(whole_hash(q), &same_hash);  // ascending ids
  hits->clear();
  for (std::int32_t id : same_hash)
    if (target(id) == q) hits->push_back(id);
  return !hits->empty();
}

MinedIndex::QueryProfile MinedIndex::profile_of(U32View q) const {
  QueryProfile profile;
  profile.sig = signature(q, foreign_code_, &profile.foreign_chars, &profile.foreign_bigrams);
  return profile;
}

bool MinedIndex::scan_radius(const LevenshteinPattern& pattern, const QueryProfile& profile, int radius,
                             std::int32_t* nearest, std::vector<std::int32_t>* ties) const {
  const bool with_ties = ties != nullptr;
  const auto n = static_cast<std::ptrdiff_t>(pattern.query().size());
  const auto max_len = static_cast<std::ptrdiff_t>(buckets_.size()) - 1;
  std::int32_t best_id = INT32_MAX;
  for (std::ptrdiff_t k = 0; k <= radius; ++k) {
    for (int side = 0; side < (k == 0 ? 1 : 2); ++side) {  // lengths n - k, then n + k
      const std::ptrdiff_t len = side == 0 ? n - k : n + k;
      if (len < 0 || len > max_len || bucket_bound(n, len, profile.foreign_chars) > radius) continue;
      const Bucket& bucket = buckets_[static_cast<std::size_t>(len)];
      const std::size_t size = bucket.ids.size();
      bool done = false;
      for (std::size_t chunk = 0; chunk < size && !done; chunk += 64) {
        const std::size_t count = std::min<std::size_t>(64, size - chunk);
        for (std::uint64_t pass = filter(&bucket.signatures[chunk], count, profile, radius); pass != 0;
             pass &= pass - 1) {
          const std::int32_t id = bucket.ids[chunk + static_cast<std::size_t>(__builtin_ctzll(pass))];
          if (!with_ties && id > best_id) {
            done = true;
            break;
          }
          if (pattern.distance(target(id), radius) > radius) continue;
          best_id = std::min(best_id, id);
          if (!with_ties) {
            done = true;  // ids ascend in a bucket: the first hit is its lowest
            break;
          }
          ties->push_back(id);
        }
      }
    }
  }
  if (best_id == INT32_MAX) return false;
  *nearest = best_id;
  return true;
}

int MinedIndex::scan_best_first(const LevenshteinPattern& pattern, const QueryProfile& profile, int lower_bound,
                                std::int32_t* nearest, std::vector<std::int32_t>* ties) const {
  const bool with_ties = ties != nullptr;
  const auto n = static_cast<std::ptrdiff_t>(pattern.query().size());
  const auto max_len = static_cast<std::ptrdiff_t>(buckets_.size()) - 1;
  int best = INT_MAX;  // running minimum (INT_MAX: none yet)
  std::int32_t best_id = INT32_MAX;
  for (std::ptrdiff_t k = 0; best == INT_MAX || k <= best; ++k) {
    if (n - k < 0 && n + k > max_len) break;
    for (int side = 0; side < (k == 0 ? 1 : 2); ++side) {
      const std::ptrdiff_t len = side == 0 ? n - k : n + k;
      if (len < 0 || len > max_len || bucket_bound(n, len, profile.foreign_chars) > best) continue;
      const Bucket& bucket = buckets_[static_cast<std::size_t>(len)];
      const std::size_t size = bucket.ids.size();
      bool done = false;
      for (std::size_t chunk = 0; chunk < size && !done; chunk += 64) {
        const std::size_t count = std::min<std::size_t>(64, size - chunk);
        for (std::uint64_t pass = filter(&bucket.signatures[chunk], count, profile, best); pass != 0;
             pass &= pass - 1) {
          const std::int32_t id = bucket.ids[chunk + static_cast<std::size_t>(__builtin_ctzll(pass))];
          int cutoff = -1;  // no bound yet: exact distance
          if (best != INT_MAX) {
            // Without ties a later index only wins with a strictly smaller distance.
            cutoff = (with_ties || id < best_id) ? best : best - 1;
            if (cutoff < lower_bound) {
              if (!with_ties && id > best_id) {
                done = true;  // ids ascend: nothing later in this bucket can win
                break;
              }
              continue;
            }
          }
          const int d = pattern.distance(target(id), cutoff);
          if (cutoff >= 0 && d > cutoff) continue;
          if (d < best) {
            best = d;
            best_id = id;
            if (with_ties) ties->assign(1, id);
          } else if (d == best) {
            best_id = std::min(best_id, id);
            if (with_ties) ties->push_back(id);
          }
        }
      }
    }
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
  // Distances 0 and 1 are excluded now. Radii 2 .. kDeepenUntil: one tight pass each, cheap
  // because the filters prune hard at small radii; beyond, one best-first scan.
  const QueryProfile profile = profile_of(q);
  std::int32_t nearest = 0;
  if (ties) ties->clear();
  for (int radius = 2; radius <= kDeepenUntil; ++radius) {
    if (scan_radius(pattern, profile, radius, &nearest, ties)) {
      *distance = radius;
      if (ties) std::sort(ties->begin(), ties->end());
      return nearest;
    }
  }
  *distance = scan_best_first(pattern, profile, kDeepenUntil + 1, &nearest, ties);
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
