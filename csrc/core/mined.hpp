// MinED nearest-neighbour search: for each query string, the target string at the smallest
// Levenshtein distance, ties going to the lowest target index (FuseLLM vocabulary mapping).
//
// Search per query, cheapest first:
//   1. exact match through a hash of the whole string (distance 0);
//   2. distance 1 through a deletion-neighbourhood index: lev(q, t) == 1 implies that q == t
//      minus one character, t == q minus one character, or both minus one character at the same
//      position share the same string, so hashed one-deletion variants of every target find all
//      candidates, which are then verified;
//   3. distance 2 the same way (symmetric deletions): lev(q, t) <= 2 implies that some variant of
//      q with at most two characters deleted equals such a variant of t (indexed for targets of
//      up to 64 code points, whose variants number O(length^2); longer ones are verified);
//   4. otherwise (far queries) a bound-ordered search: per-character posting lists give, for every
//      target t sharing a character with q, the size of the multiset intersection s(t), and
//      lev(q, t) >= max(|q|, |t|) - s(t). Targets are verified by the bit-parallel kernel in
//      increasing order of that bound with the running minimum as cutoff, until the bound exceeds
//      the minimum. Targets sharing no character are at exactly max(|q|, |t|), unverified.
//      Bounds up to r only involve targets within r of the query's length, so the lists (sorted
//      by target length) are counted in widening rings of lengths (r = 3, 5, then all); most
//      queries of moderate distance end in the first ring.
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
  struct Bucket {  // targets of one length, ascending index
    std::vector<std::int32_t> ids;
  };
  // (hash, id) pairs bucketed by the top hash bits through a directory: a lookup reads one
  // directory slot and a short run of entries (about two cache misses, not a binary search).
  // Entries keep 32 other hash bits as a check; a false match only costs a verification.
  struct KeyTable {
    struct Entry {
      std::uint32_t check;
      std::int32_t id;
    };
    std::vector<std::uint64_t> pending_hashes;  // add() appends here, build() consumes
    std::vector<std::int32_t> pending_ids;
    std::vector<Entry> entries;
    std::vector<std::size_t> directory;  // [2^bits + 1]: first entry whose hash has that prefix
    int shift = 63;
    void reserve(std::size_t count) {
      pending_hashes.reserve(count);
      pending_ids.reserve(count);
    }
    void add(std::uint64_t hash, std::int32_t id) {
      pending_hashes.push_back(hash);
      pending_ids.push_back(id);
    }
    void build();
    // Appends the ids stored under `hash`; ascending when they were added in ascending order.
    void collect(std::uint64_t hash, std::vector<std::int32_t>* out) const;
  };

  std::size_t max_length() const { return buckets_.size() - 1; }
  void build_postings();
  U32String encode(U32View s) const;
  U32View target(std::int32_t id) const {
    return U32View(chars_.data() + offsets_[static_cast<std::size_t>(id)],
                   offsets_[static_cast<std::size_t>(id) + 1] - offsets_[static_cast<std::size_t>(id)]);
  }
  bool find_exact(U32View q, std::vector<std::int32_t>* hits) const;
  // Nearest targets of a query by the bound-ordered search (step 4 above): returns the minimum
  // distance, stores the lowest index at it and, if ties is non-null, appends all targets at it
  // (unsorted).
  int scan_by_shared_chars(const LevenshteinPattern& pattern, std::int32_t* nearest,
                           std::vector<std::int32_t>* ties) const;

  // Code points are relabelled densely by descending frequency in the targets, so that the most
  // common characters (including the tokenizers' space markers) hit the pattern's direct table.
  std::vector<std::uint32_t> code_of_;  // code point -> code + 1 (0 = absent from all targets)
  char32_t foreign_code_ = 0;           // shared code of characters absent from every target
  U32String chars_;                     // encoded targets, concatenated
  std::vector<std::size_t> offsets_;    // [nt + 1]
  KeyTable whole_;                      // hash of each target
  KeyTable deletions_;                  // hashes of the one-deletion variants of each target
  KeyTable within_two_;                 // hashes of the <= 2-deletion variants of short targets
  std::vector<Bucket> buckets_;         // by length
  std::size_t min_len_ = 0;             // length of the shortest target
  // Character posting lists (CSR over codes): targets containing the code, with its count.
  std::vector<std::size_t> posting_offsets_;  // [codes + 1]
  std::vector<std::int32_t> posting_ids_;     // ascending per code
  std::vector<std::int32_t> posting_counts_;
  std::vector<std::int32_t> lengths_;  // [nt] target lengths in code points
};

// Convenience: build the index over targets and map all queries.
MinedResult mined_map(const std::vector<U32String>& queries, const std::vector<U32String>& targets, int threads,
                      bool with_ties);

}  // namespace fk
