// Bindings of the DTW token alignment (fusekernels/align/dtw.py wraps these).
#include <cstring>
#include <stdexcept>

#include "bindings/str_sequence.hpp"
#include "core/dtw.hpp"
#include "core/parallel.hpp"

namespace fk::bind {
namespace {

py::array_t<int32_t> to_numpy(const std::vector<int32_t>& v) {
  py::array_t<int32_t> out(static_cast<py::ssize_t>(v.size()));
  if (!v.empty()) std::memcpy(out.mutable_data(), v.data(), v.size() * sizeof(int32_t));
  return out;
}

py::tuple to_python(const DtwAlignment& a) {
  return py::make_tuple(to_numpy(a.offsets), to_numpy(a.indices), a.workspace_bytes);
}

std::vector<std::vector<U32String>> to_u32_seqs(py::handle seqs, const char* arg) {
  if (PyUnicode_Check(seqs.ptr()) || !PySequence_Check(seqs.ptr())) {
    throw py::type_error(std::string(arg) + " must be a sequence of token sequences");
  }
  py::sequence s = py::reinterpret_borrow<py::sequence>(seqs);
  std::vector<std::vector<U32String>> out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size(); ++i) {
    const py::object seq = s[i];  // owned: sequences may create their items on access
    const std::string name = std::string(arg) + "[" + std::to_string(i) + "]";
    out.push_back(u32_strings(seq, name.c_str()));
  }
  return out;
}

}  // namespace

void bind_dtw(py::module_& m) {
  m.def(
      "dtw_align",
      [](py::handle blend, py::handle base, py::handle blend_marker, py::handle base_marker,
         std::size_t cost_cache_bytes) {
        const auto a = u32_strings(blend, "blend_tokens");
        const auto b = u32_strings(base, "base_tokens");
        const U32String am = to_u32(blend_marker, "blend_marker"), bm = to_u32(base_marker, "base_marker");
        DtwAlignment result;
        {
          py::gil_scoped_release release;
          const InterruptScope interrupt(&python_signal_pending);
          result = dtw_align(a, b, am, bm, cost_cache_bytes);
        }
        return to_python(result);
      },
      py::arg("blend_tokens"), py::arg("base_tokens"), py::arg("blend_marker"), py::arg("base_marker"),
      py::arg("cost_cache_bytes") = kDtwCostCacheBytes,
      "DTW alignment of one pair -> (offsets int32 [m+1], indices int32 [nnz], workspace_bytes). "
      "cost_cache_bytes bounds the distance cache (tuning/tests; results never depend on it).");

  m.def(
      "dtw_align_batch",
      [](py::handle blend_seqs, py::handle base_seqs, py::handle blend_marker, py::handle base_marker, int threads) {
        const auto a = to_u32_seqs(blend_seqs, "blend_seqs");
        const auto b = to_u32_seqs(base_seqs, "base_seqs");
        if (a.size() != b.size()) {
          throw std::invalid_argument("blend_seqs and base_seqs must have the same length, got " +
                                      std::to_string(a.size()) + " and " + std::to_string(b.size()));
        }
        for (std::size_t p = 0; p < a.size(); ++p) {
          if (a[p].empty()) throw std::invalid_argument("blend_seqs[" + std::to_string(p) + "] must not be empty");
          if (b[p].empty()) throw std::invalid_argument("base_seqs[" + std::to_string(p) + "] must not be empty");
        }
        if (threads < 0) throw std::invalid_argument("threads must be >= 0 (0 = all cores)");
        const U32String am = to_u32(blend_marker, "blend_marker"), bm = to_u32(base_marker, "base_marker");
        std::vector<DtwAlignment> results(a.size());
        {
          py::gil_scoped_release release;
          const InterruptScope interrupt(&python_signal_pending);
          parallel_for(a.size(), threads, [&](std::size_t p) { results[p] = dtw_align(a[p], b[p], am, bm); });
        }
        py::list out;
        for (const auto& r : results) out.append(to_python(r));
        return out;
      },
      py::arg("blend_seqs"), py::arg("base_seqs"), py::arg("blend_marker"), py::arg("base_marker"),
      py::arg("threads") = 0, "Batched dtw_align over pairs (GIL released, threads over pairs).");
}

}  // namespace fk::bind
