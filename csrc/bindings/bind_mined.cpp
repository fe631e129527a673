// Python bindings of the MinED vocabulary mapping (nearest target by Levenshtein distance).
#include <memory>

#include "bindings/common.hpp"
#include "bindings/str_sequence.hpp"
#include "core/mined.hpp"

namespace fk::bind {
namespace {

template <class T>
py::array_t<T> to_array(std::vector<T>&& v) {
  // Hand the vector to numpy without a copy; the capsule frees it with the array.
  auto* owned = new std::vector<T>(std::move(v));
  py::capsule free_when_done(owned, [](void* p) { delete static_cast<std::vector<T>*>(p); });
  return py::array_t<T>(static_cast<py::ssize_t>(owned->size()), owned->data(), free_when_done);
}

void check_threads(int threads) {
  if (threads < 0) throw py::value_error("threads must be >= 0 (0 = all cores), got " + std::to_string(threads));
}

py::tuple to_python(MinedResult&& r, bool return_ties) {
  py::object offsets = py::none(), tie_ids = py::none();
  if (return_ties) {
    offsets = to_array(std::move(r.tie_offsets));
    tie_ids = to_array(std::move(r.tie_ids));
  }
  return py::make_tuple(to_array(std::move(r.ids)), to_array(std::move(r.distances)), offsets, tie_ids);
}

class PyMinedIndex {
 public:
  explicit PyMinedIndex(py::handle targets) {
    std::vector<U32String> t = u32_strings(targets, "targets");
    if (t.empty()) throw py::value_error("targets must not be empty");
    py::gil_scoped_release release;
    const InterruptScope interrupt(&python_signal_pending);
    index_ = std::make_unique<MinedIndex>(t);
  }
  py::tuple map(py::handle queries, int threads, bool return_ties) const {
    check_threads(threads);
    const std::vector<U32String> q = u32_strings(queries, "queries");
    MinedResult r;
    {
      py::gil_scoped_release release;
      const InterruptScope interrupt(&python_signal_pending);
      r = index_->map(q, threads, return_ties);
    }
    return to_python(std::move(r), return_ties);
  }
  std::size_t size() const { return index_->size(); }

 private:
  std::unique_ptr<MinedIndex> index_;
};

py::tuple mined_map_py(py::handle queries, py::handle targets, int threads, bool return_ties) {
  check_threads(threads);
  const std::vector<U32String> q = u32_strings(queries, "queries");
  const std::vector<U32String> t = u32_strings(targets, "targets");
  if (t.empty()) throw py::value_error("targets must not be empty");
  MinedResult r;
  {
    py::gil_scoped_release release;
    const InterruptScope interrupt(&python_signal_pending);
    r = fk::mined_map(q, t, threads, return_ties);
  }
  return to_python(std::move(r), return_ties);
}

}  // namespace

void bind_mined(py::module_& m) {
  m.def("mined_map", &mined_map_py, py::arg("queries"), py::arg("targets"), py::arg("threads") = 0,
        py::arg("return_ties") = false,
        "(ids int32 [nq], distances int32 [nq], tie_offsets int64 [nq+1] | None, tie_ids int32 | None)");
  py::class_<PyMinedIndex>(m, "MinedIndex")
      .def(py::init<py::handle>(), py::arg("targets"))
      .def("map", &PyMinedIndex::map, py::arg("queries"), py::arg("threads") = 0, py::arg("return_ties") = false)
      .def("__len__", &PyMinedIndex::size);
}

}  // namespace fk::bind
