// Bindings of the top-k transfer (fusekernels/align/topk_transfer.py prepares dtypes and wraps).
#include <algorithm>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "bindings/common.hpp"
#include "core/parallel.hpp"
#include "core/topk_transfer.hpp"

namespace fk::bind {
namespace {

// A C-contiguous numpy array of exactly dtype T and rank `ndim` (the Python layer converts).
template <class T>
py::array_t<T> checked_array(py::handle h, const std::string& arg, int ndim) {
  if (!py::isinstance<py::array_t<T>>(h)) {
    throw py::type_error(arg + " must be a numpy array of dtype " + std::string(py::str(py::dtype::of<T>())) +
                         (std::is_integral_v<T> && sizeof(T) == 4 ? " or int64" : ""));
  }
  auto a = py::reinterpret_borrow<py::array_t<T>>(h);
  if (a.ndim() != ndim) throw std::invalid_argument(arg + " must have " + std::to_string(ndim) + " dimension(s)");
  if (!(a.flags() & py::array::c_style)) throw std::invalid_argument(arg + " must be C-contiguous");
  return a;
}

// Token ids given as int32 (used in place) or int64 (narrowed to int32 in the worker thread,
// so the copy runs without the GIL and in parallel).
struct IdSource {
  std::string name;
  const int32_t* i32 = nullptr;
  const int64_t* i64 = nullptr;
  int64_t size = 0;
  std::vector<int32_t> narrowed;

  const int32_t* resolve() {
    if (i32 != nullptr) return i32;
    narrowed.resize(static_cast<std::size_t>(size));
    int32_t* dst = narrowed.data();
    // v fits int32 iff v + 2^31 (as unsigned) has no high bits: OR them up branch-free, which
    // vectorises without 64-bit compares.
    uint64_t high = 0;
    for (int64_t x = 0; x < size; ++x) {
      dst[x] = static_cast<int32_t>(i64[x]);
      high |= (static_cast<uint64_t>(i64[x]) + 0x80000000ull) >> 32;
    }
    if (high != 0) throw std::invalid_argument(name + " holds values outside the int32 range");
    return narrowed.data();
  }
};

// A C-contiguous int32 or int64 array of rank `ndim` as an IdSource (the array is kept alive).
// Type errors name `prefix + arg`; range errors raised later in the worker name `arg`.
IdSource id_source(py::handle h, const std::string& prefix, const std::string& arg, int ndim,
                   std::vector<py::array>& keep) {
  IdSource src;
  src.name = arg;
  if (py::isinstance<py::array_t<int64_t>>(h)) {
    auto a = checked_array<int64_t>(h, prefix + arg, ndim);
    src.i64 = a.data();
    src.size = a.size();
    keep.push_back(a);
  } else {
    auto a = checked_array<int32_t>(h, prefix + arg, ndim);
    src.i32 = a.data();
    src.size = a.size();
    keep.push_back(a);
  }
  return src;
}

struct Pair {
  TransferInput in;
  TransferOutput out;
  IdSource base_ids, blend_ids, topk_ids;
};

}  // namespace

void bind_topk_transfer(py::module_& m) {
  m.def(
      "transfer_topk_batch",
      [](py::sequence items, py::handle exact, py::handle exact_prefixed, py::object soft, py::object soft_prefixed,
         py::handle blend_starts, py::handle base_starts, py::handle base_canonical, bool byte_level_blend,
         const std::string& mode_name, int threads, bool name_items) {
        TransferMode mode;
        if (mode_name == "hard") {
          mode = TransferMode::kHard;
        } else if (mode_name == "soft") {
          mode = TransferMode::kSoft;
        } else {
          throw std::invalid_argument("mode must be 'hard' or 'soft', got '" + mode_name + "'");
        }
        if (threads < 0) throw std::invalid_argument("threads must be >= 0 (0 = all cores)");

        std::vector<py::array> keep;  // keeps every buffer alive while the GIL is released
        TransferTablesView t;
        // 1-D tables of one vocabulary: the first one seen sets its length (-1 = not yet known).
        auto int_table = [&](py::handle h, const char* name, int64_t& length) -> const int32_t* {
          auto a = checked_array<int32_t>(h, std::string("tables.") + name, 1);
          if (length < 0) length = a.shape(0);
          if (a.shape(0) != length) {
            throw std::invalid_argument(std::string("tables.") + name + " has the wrong length");
          }
          keep.push_back(a);
          return a.data();
        };
        auto flag_table = [&](py::handle h, const char* name, int64_t& length) -> const uint8_t* {
          auto a = checked_array<uint8_t>(h, std::string("tables.") + name, 1);
          if (a.shape(0) != length) {
            throw std::invalid_argument(std::string("tables.") + name + " has the wrong length");
          }
          keep.push_back(a);
          return a.data();
        };
        t.blend_vocab = -1;
        t.base_vocab = -1;
        t.exact = int_table(exact, "exact", t.blend_vocab);
        t.exact_prefixed = int_table(exact_prefixed, "exact_prefixed", t.blend_vocab);
        if (!soft.is_none()) t.soft = int_table(soft, "soft", t.blend_vocab);
        if (!soft_prefixed.is_none()) t.soft_prefixed = int_table(soft_prefixed, "soft_prefixed", t.blend_vocab);
        t.blend_starts_with_marker = flag_table(blend_starts, "blend_starts_with_marker", t.blend_vocab);
        t.base_canonical = int_table(base_canonical, "base_canonical", t.base_vocab);
        t.base_starts_with_marker = flag_table(base_starts, "base_starts_with_marker", t.base_vocab);
        t.byte_level_blend = byte_level_blend;
        // Table contents are only compared and copied, never used as indices: no per-call scan.

        std::vector<Pair> pairs(py::len(items));
        py::list results;
        for (std::size_t p = 0; p < pairs.size(); ++p) {
          const std::string pre = name_items ? "items[" + std::to_string(p) + "]." : "";
          py::sequence item = py::reinterpret_borrow<py::sequence>(items[p]);
          if (py::len(item) != 6) throw std::invalid_argument(pre + "item must have 6 arrays");
          Pair& pair = pairs[p];
          pair.base_ids = id_source(item[0], pre, "base_ids", 1, keep);
          pair.blend_ids = id_source(item[1], pre, "blend_ids", 1, keep);
          pair.topk_ids = id_source(item[4], pre, "topk_ids", 2, keep);
          auto offsets = checked_array<int32_t>(item[2], pre + "alignment.offsets", 1);
          auto indices = checked_array<int32_t>(item[3], pre + "alignment.indices", 1);
          auto topk_logits = checked_array<float>(item[5], pre + "topk_logits", 2);
          const int64_t topk_rows = py::array(item[4]).shape(0);
          TransferInput& in = pair.in;
          in.m = pair.base_ids.size;
          in.n = pair.blend_ids.size;
          in.k = py::array(item[4]).shape(1);
          in.nnz = indices.shape(0);
          if (offsets.shape(0) != in.m + 1) {
            throw std::invalid_argument(pre + "alignment does not match: it has " + std::to_string(offsets.shape(0) - 1) +
                                        " base positions, base_ids has " + std::to_string(in.m));
          }
          if (topk_rows != in.n) {
            throw std::invalid_argument(pre + "topk_ids must have one row per blending token (" + std::to_string(in.n) +
                                        "), got " + std::to_string(topk_rows));
          }
          if (topk_logits.shape(0) != topk_rows || topk_logits.shape(1) != in.k) {
            throw std::invalid_argument(pre + "topk_logits must have the shape of topk_ids");
          }
          in.offsets = offsets.data();
          in.indices = indices.data();
          in.topk_logits = topk_logits.data();
          keep.push_back(offsets);
          keep.push_back(indices);
          keep.push_back(topk_logits);
          const int64_t width = std::max<int64_t>(in.k, 1);
          py::array_t<int32_t> ids({in.m, width});
          py::array_t<float> logits({in.m, width});
          py::array_t<int32_t> counts(in.m);
          py::array_t<bool> matched(in.m);
          pairs[p].out = TransferOutput{ids.mutable_data(), logits.mutable_data(), counts.mutable_data(),
                                        reinterpret_cast<uint8_t*>(matched.mutable_data())};
          results.append(py::make_tuple(ids, logits, counts, matched));
        }
        {
          py::gil_scoped_release release;
          parallel_for(pairs.size(), threads, [&](std::size_t p) {
            try {
              Pair& pair = pairs[p];
              pair.in.base_ids = pair.base_ids.resolve();
              pair.in.blend_ids = pair.blend_ids.resolve();
              pair.in.topk_ids = pair.topk_ids.resolve();
              validate_transfer(pair.in, t, mode);
            } catch (const std::invalid_argument& e) {
              if (!name_items) throw;
              throw std::invalid_argument("items[" + std::to_string(p) + "]: " + e.what());
            }
            transfer_topk(pairs[p].in, t, mode, pairs[p].out);
          });
        }
        return results;
      },
      py::arg("items"), py::arg("exact"), py::arg("exact_prefixed"), py::arg("soft"), py::arg("soft_prefixed"),
      py::arg("blend_starts_with_marker"), py::arg("base_starts_with_marker"), py::arg("base_canonical"),
      py::arg("byte_level_blend"), py::arg("mode"), py::arg("threads") = 0, py::arg("name_items") = true,
      "Top-k transfer of many pairs; items are (base_ids, blend_ids, offsets, indices, topk_ids, topk_logits): "
      "ids int32 or int64, offsets/indices int32, logits float32. Returns a list of (ids int32 [m,k], logits float32 [m,k], counts int32 [m], "
      "matched bool [m]).");
}

}  // namespace fk::bind
