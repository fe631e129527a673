// Python bindings of the Levenshtein distance: one pair, and many pairs in parallel.
#include <algorithm>
#include <optional>
#include <stdexcept>

#include "bindings/common.hpp"
#include "bindings/str_sequence.hpp"
#include "core/levenshtein.hpp"
#include "core/parallel.hpp"

namespace fk::bind {
namespace {

int checked_max_dist(py::object max_dist) {
  if (max_dist.is_none()) return -1;
  const long long v = max_dist.cast<long long>();
  if (v < 0) throw py::value_error("max_dist must be >= 0 or None, got " + std::to_string(v));
  // Distances never exceed the longer string's length, which fits an int.
  return v > (1LL << 30) ? (1 << 30) : static_cast<int>(v);
}

int levenshtein_one(py::handle a, py::handle b, py::object max_dist) {
  const U32String ua = to_u32(a, "a"), ub = to_u32(b, "b");
  const int cutoff = checked_max_dist(max_dist);
  // Releasing the GIL costs more than a short pair takes; only long strings are worth it.
  std::optional<py::gil_scoped_release> release;
  std::optional<InterruptScope> interrupt;
  if (ua.size() + ub.size() > 512) {
    release.emplace();
    interrupt.emplace(&python_signal_pending);
  }
  return fk::levenshtein(ua, ub, cutoff);
}

py::array_t<std::int32_t> levenshtein_pairs(py::handle a, py::handle b, py::object max_dist, int threads) {
  if (threads < 0) throw py::value_error("threads must be >= 0 (0 = all cores), got " + std::to_string(threads));
  const int cutoff = checked_max_dist(max_dist);
  const FlatStrings ua = flatten(a, "a");
  const FlatStrings ub = flatten(b, "b");
  if (ua.size() != ub.size()) {
    throw py::value_error("a and b must have the same length, got " + std::to_string(ua.size()) + " and " +
                          std::to_string(ub.size()));
  }
  py::array_t<std::int32_t> out(static_cast<py::ssize_t>(ua.size()));
  std::int32_t* dst = out.mutable_data();
  {
    py::gil_scoped_release release;
    const InterruptScope interrupt(&python_signal_pending);
    constexpr std::size_t kChunk = 1024;
    const std::size_t chunks = (ua.size() + kChunk - 1) / kChunk;
    fk::parallel_for(chunks, threads, [&](std::size_t c) {
      detail::WordMasks scratch;  // one per chunk: no thread-local lookup per pair
      const std::size_t end = std::min(ua.size(), (c + 1) * kChunk);
      for (std::size_t i = c * kChunk; i < end; ++i) dst[i] = detail::levenshtein_with(scratch, ua[i], ub[i], cutoff);
    });
  }
  return out;
}

}  // namespace

void bind_levenshtein(py::module_& m) {
  m.def("levenshtein", &levenshtein_one, py::arg("a"), py::arg("b"), py::arg("max_dist") = py::none(),
        "Levenshtein distance over code points; capped at max_dist + 1 when max_dist is given.");
  m.def("levenshtein_batch", &levenshtein_pairs, py::arg("a"), py::arg("b"), py::arg("max_dist") = py::none(),
        py::arg("threads") = 0, "Distances of the pairs (a[i], b[i]) as int32 [n], GIL released.");
}

}  // namespace fk::bind
