// Binding of the batched byte-span alignment (fusekernels/tokenization/native.py packs the
// arrays: flat ids with row offsets, per-vocabulary byte tables).
#include <stdexcept>
#include <string>

#include "bindings/common.hpp"
#include "core/byte_span.hpp"

namespace fk::bind {
namespace {

// A C-contiguous numpy array of exactly dtype T and rank `ndim` (the Python layer converts).
template <class T>
py::array_t<T> exact_array(py::handle h, const std::string& arg, int ndim) {
  if (!py::isinstance<py::array_t<T>>(h) || py::array(py::reinterpret_borrow<py::object>(h)).dtype().kind() !=
                                                 py::dtype::of<T>().kind()) {
    throw py::type_error(arg + " must be a numpy array of dtype " + std::string(py::str(py::dtype::of<T>())));
  }
  auto a = py::reinterpret_borrow<py::array_t<T>>(h);
  if (a.ndim() != ndim) throw std::invalid_argument(arg + " must have " + std::to_string(ndim) + " dimension(s)");
  if (!(a.flags() & py::array::c_style)) throw std::invalid_argument(arg + " must be C-contiguous");
  return a;
}

// (byte_lengths int32 [V], bytes uint8 [B], byte_offsets int64 [V+1], unk id or -1, dummy-prefix code)
SpanVocab vocab_view(py::tuple t, const std::string& arg, std::vector<py::array>& keep) {
  if (py::len(t) != 5) throw std::invalid_argument(arg + " must be a 5-tuple");
  auto lengths = exact_array<int32_t>(t[0], arg + ".byte_lengths", 1);
  auto bytes = exact_array<uint8_t>(t[1], arg + ".bytes", 1);
  auto offsets = exact_array<int64_t>(t[2], arg + ".byte_offsets", 1);
  SpanVocab v;
  v.vocab = lengths.shape(0);
  if (offsets.shape(0) != v.vocab + 1) throw std::invalid_argument(arg + ".byte_offsets must have vocab + 1 entries");
  const int64_t* off = offsets.data();
  const int32_t* len = lengths.data();
  for (int64_t i = 0; i < v.vocab; ++i) {
    if (len[i] < 0 || off[i] < 0 || off[i + 1] - off[i] != len[i]) {
      throw std::invalid_argument(arg + ": byte_offsets disagree with byte_lengths at id " + std::to_string(i));
    }
  }
  if (off[v.vocab] > bytes.shape(0)) throw std::invalid_argument(arg + ".bytes is shorter than byte_offsets say");
  v.byte_lengths = len;
  v.bytes = bytes.data();
  v.byte_offsets = off;
  v.unk = t[3].cast<int64_t>();
  v.dummy_prefix = t[4].cast<int>();
  if (v.dummy_prefix < 0 || v.dummy_prefix > 2) throw std::invalid_argument(arg + ": dummy-prefix code must be 0, 1 or 2");
  keep.insert(keep.end(), {lengths, bytes, offsets});
  return v;
}

void check_offsets(const py::array_t<int64_t>& off, int64_t rows, int64_t total, const std::string& arg) {
  if (off.shape(0) != rows + 1) throw std::invalid_argument(arg + " must have rows + 1 entries");
  const int64_t* o = off.data();
  if (o[0] != 0 || o[rows] != total) throw std::invalid_argument(arg + " must start at 0 and end at the id count");
  for (int64_t r = 0; r < rows; ++r) {
    if (o[r + 1] < o[r]) throw std::invalid_argument(arg + " must be non-decreasing");
  }
}

}  // namespace

void bind_byte_span(py::module_& m) {
  m.def(
      "byte_span_align_batch",
      [](py::tuple base_vocab, py::tuple blend_vocab, py::handle id_map_h, py::handle base_ids_h,
         py::handle base_offsets_h, py::handle blend_ids_h, py::handle blend_offsets_h, py::handle topk_ids_h,
         py::handle topk_logits_h, py::object text_space_h, bool match_end, const std::string& check_name,
         int64_t k_out, int threads) {
        SpanCheck check;
        if (check_name == "length") check = SpanCheck::kLength;
        else if (check_name == "bytes") check = SpanCheck::kBytes;
        else if (check_name == "prefix") check = SpanCheck::kPrefix;
        else if (check_name == "none") check = SpanCheck::kNone;
        else throw std::invalid_argument("check must be 'length', 'bytes', 'prefix' or 'none', got '" + check_name + "'");
        if (k_out < 0) throw std::invalid_argument("k_out must be >= 0");
        if (threads < 0) throw std::invalid_argument("threads must be >= 0 (0 = all cores)");
        std::vector<py::array> keep;
        const SpanVocab base = vocab_view(base_vocab, "base_vocab", keep);
        const SpanVocab blend = vocab_view(blend_vocab, "blend_vocab", keep);
        auto id_map = exact_array<int32_t>(id_map_h, "id_map", 1);
        if (id_map.shape(0) != blend.vocab) throw std::invalid_argument("id_map must have one entry per blending id");
        for (int64_t i = 0; i < blend.vocab; ++i) {
          if (id_map.data()[i] < -1 || id_map.data()[i] >= base.vocab) {
            throw std::invalid_argument("id_map holds base ids outside [-1, base vocabulary)");
          }
        }
        auto base_ids = exact_array<int32_t>(base_ids_h, "base_ids", 1);
        auto blend_ids = exact_array<int32_t>(blend_ids_h, "blend_ids", 1);
        auto base_offsets = exact_array<int64_t>(base_offsets_h, "base_offsets", 1);
        auto blend_offsets = exact_array<int64_t>(blend_offsets_h, "blend_offsets", 1);
        auto topk_ids = exact_array<int32_t>(topk_ids_h, "topk_ids", 2);
        auto topk_logits = exact_array<float>(topk_logits_h, "topk_logits", 2);
        SpanBatchInput in;
        in.rows = base_offsets.shape(0) - 1;
        if (in.rows < 0) throw std::invalid_argument("base_offsets must not be empty");
        check_offsets(base_offsets, in.rows, base_ids.shape(0), "base_offsets");
        check_offsets(blend_offsets, in.rows, blend_ids.shape(0), "blend_offsets");
        if (topk_ids.shape(0) != blend_ids.shape(0)) throw std::invalid_argument("topk_ids must have one row per blending id");
        if (topk_logits.shape(0) != topk_ids.shape(0) || topk_logits.shape(1) != topk_ids.shape(1)) {
          throw std::invalid_argument("topk_logits must have the shape of topk_ids");
        }
        in.base_ids = base_ids.data();
        in.base_offsets = base_offsets.data();
        in.blend_ids = blend_ids.data();
        in.blend_offsets = blend_offsets.data();
        in.topk_ids = topk_ids.data();
        in.topk_logits = topk_logits.data();
        in.k_in = topk_ids.shape(1);
        py::array_t<int8_t> text_space;
        if (!text_space_h.is_none()) {
          text_space = exact_array<int8_t>(text_space_h, "text_space", 1);
          if (text_space.shape(0) != in.rows) throw std::invalid_argument("text_space must have one entry per row");
          in.text_space = text_space.data();
        }
        const int64_t total = base_ids.shape(0);
        py::array_t<int32_t> ids({total, k_out});
        py::array_t<float> logits({total, k_out});
        py::array_t<bool> matched(total);
        SpanBatchOutput out{k_out, ids.mutable_data(), logits.mutable_data(),
                            reinterpret_cast<uint8_t*>(matched.mutable_data())};
        int64_t failed;
        {
          py::gil_scoped_release release;
          failed = byte_span_align_batch(base, blend, id_map.data(), in, match_end, check, out, threads);
        }
        return py::make_tuple(ids, logits, matched, failed);
      },
      py::arg("base_vocab"), py::arg("blend_vocab"), py::arg("id_map"), py::arg("base_ids"), py::arg("base_offsets"),
      py::arg("blend_ids"), py::arg("blend_offsets"), py::arg("topk_ids"), py::arg("topk_logits"),
      py::arg("text_space"), py::arg("match_end"), py::arg("check"), py::arg("k_out"), py::arg("threads") = 1,
      "Byte-span alignment of a whole batch (flat int32 ids with int64 row offsets, topk int32/float32 [N, k]). "
      "Returns (ids int32 [M, k_out], logits float32 [M, k_out], matched bool [M], first failing row or -1).");
}

}  // namespace fk::bind
