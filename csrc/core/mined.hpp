// MinED nearest-neighbour search: for each query string, the target string at the smallest
// Levenshtein distance, ties going to the lowest target index (FuseLLM vocabulary mapping).
//
// Search per query, cheapest first:
//   1. exact match through a hash of the whole string (distance 0);
//   2. distance 1 through a deletion-neighbourhood index: lev(q, t) == 1 implies that q == t
//      minus one character, t == q minus one character, or both minus one character at the same
//      position share the same string, so hashed one-deletion variants of every target find all
//      candidates, which are then verified;
//   3. otherwise the targets, bucketed by length, are scanned: first one tight pass per small
//      radius r (only buckets with length difference <= r; a bucket stops at its first hit when
//      ties are not wanted, ids ascending within it), then one scan with the running minimum as
//      cutoff, visiting buckets by increasing length difference until that difference alone
//      exceeds the minimum. Cheap lower bounds (character and bigram class signatures,
//      characters that occur in no target) prune targets before the bit-parallel kernel
//      verifies the survivors with the cutoff.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/levenshtein.hpp"

namespace fk {

struct MinedResult {
  std::vector<std::int32_t> ids;        // [nq] best target per query (lowest index on ties)
  std::vector<std::int32_t> distances;  // [nq]
  // With ties requested: CSR of all targets at the minimum distance, ascending per query.
  std::vector<std::int64_t> tie_offsets;  // [nq + 1]
  std::vector<std::int32_t> tie_ids;
};

// Index over a fixed target list, reusable for many query lists. Immutable after construction,
// so queries may run concurrently.
class MinedIndex {
 public:
  // Throws std::invalid_argument when targets is empty or has more than INT32_MAX entries.
  explicit MinedIndex(const std::vector<U32String>& targets);

  std::size_t size() const { return offsets_.size() - 1; }

  // Best target (and its distance) for one query; when ties is non-null it receives every
  // target index at the minimum distance, ascending.
  std::int32_t query(U32View q, int* distance, std::vector<std::int32_t>* ties) const;

  MinedResult map(const std::vector<U32String>& queries, int threads, bool with_ties) const;

 private:
  struct Signature {  // character classes occurring at least once / twice; bigram classes
    std::uint64_t once, twice, bigrams;
  };
  struct QueryProfile {
    Signature sig;            // over the characters that occur in some target
    int foreign_chars = 0;    // characters that occur in no target
    int foreign_bigrams = 0;  // bigrams containing such a character
  };
  struct Bucket {  // targets of one length, ascending index
    std::vector<std::int32_t> ids;
    std::vector<Signature> signatures;
  };
  struct Key {
    std::uint64_t hash;
    std::int32_t id;
    bool operator<(const Key& o) const { return hash != o.hash ? hash < o.hash : id < o.id; }
  };
  // (hash, id) pairs sorted, with a directory over the top hash bits: a lookup reads one
  // directory slot and a short run of keys (about two cache misses, not a binary search).
  struct KeyTable {
    std::vector<Key> keys;
    std::vector<std::size_t> directory;  // [2^bits + 1]: first key whose hash has that prefix
    int shift = 63;
    void build();
    // Appends the ids stored under `hash`, ascending.
    void collect(std::uint64_t hash, std::vector<std::int32_t>* out) const;
  };

  U32String encode(U32View s) const;
  U32View target(std::int32_t id) const {
    return U32View(chars_.data() + offsets_[static_cast<std::size_t>(id)],
                   offsets_[static_cast<std::size_t>(id) + 1] - offsets_[static_cast<std::size_t>(id)]);
  }
  static Signature signature(U32View encoded, char32_t foreign, int* foreign_chars, int* foreign_bigrams);
  static std::uint64_t filter(const Signature* sigs, std::size_t count, const QueryProfile& q, int radius);
  bool find_exact(U32View q, std::vector<std::int32_t>* hits) const;
  QueryProfile profile_of(U32View encoded_query) const;
  // Targets at exactly `radius` from a query that has none closer: returns false if there are
  // none, else stores the lowest index (and appends all of them to ties, if non-null).
  bool scan_radius(const LevenshteinPattern& pattern, const QueryProfile& profile, int radius,
                   std::int32_t* nearest, std::vector<std::int32_t>* ties) const;
  // Nearest targets of a query with none closer than lower_bound, by one scan with a running
  // minimum as cutoff; returns the minimum distance (ties unsorted).
  int scan_best_first(const LevenshteinPattern& pattern, const QueryProfile& profile, int lower_bound,
                      std::int32_t* nearest, std::vector<std::int32_t>* ties) const;

  // Code points are relabelled densely by descending frequency in the targets, so that the most
  // common characters (including the tokenizers' space markers) hit the pattern's direct table.
  std::vector<std::uint32_t> code_of_;  // code point -> code + 1 (0 = absent from all targets)
  char32_t foreign_code_ = 0;           // shared code of characters absent from every target
  U32String chars_;                     // encoded targets, concatenated
  std::vector<std::size_t> offsets_;    // [nt + 1]
  KeyTable whole_;                      // hash of each target
  KeyTable deletions_;                  // hashes of the one-deletion variants of each target
  std::vector<Bucket> buckets_;         // by length
};

// Convenience: build the index over targets and map all queries.
MinedResult mined_map(const std::vector<U32String>& queries, const std::vector<U32String>& targets, int threads,
                      bool with_ties);

}  // namespace fk
