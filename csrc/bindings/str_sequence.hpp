// Sequences of Python str -> UTF-32 for the batch entry points of the alignment core.
//
// PySequence_Fast materialises any sequence as a list (or uses the list/tuple itself), so every
// item stays referenced while it is read, also for sequences that create their items on access
// (numpy string arrays, custom Sequence classes).
#pragma once
#include <string>
#include <vector>

#include "bindings/common.hpp"

namespace fk::bind {

// Many strings copied into one UTF-32 buffer: one allocation instead of one per string, and
// a copy loop specialised on the str's internal width (1, 2 or 4 bytes per code point).
struct FlatStrings {
  U32String chars;
  std::vector<std::size_t> offsets{0};
  std::size_t size() const { return offsets.size() - 1; }
  U32View operator[](std::size_t i) const { return U32View(chars.data() + offsets[i], offsets[i + 1] - offsets[i]); }
};

namespace detail_strings {

template <class CharT>
inline void widen(const void* data, Py_ssize_t n, char32_t* out) {
  const auto* src = static_cast<const CharT*>(data);
  for (Py_ssize_t i = 0; i < n; ++i) out[i] = static_cast<char32_t>(src[i]);
}

inline void copy_str(PyObject* s, char32_t* out) {
  const Py_ssize_t len = PyUnicode_GET_LENGTH(s);
  switch (PyUnicode_KIND(s)) {
    case PyUnicode_1BYTE_KIND: widen<Py_UCS1>(PyUnicode_DATA(s), len, out); break;
    case PyUnicode_2BYTE_KIND: widen<Py_UCS2>(PyUnicode_DATA(s), len, out); break;
    default: widen<Py_UCS4>(PyUnicode_DATA(s), len, out); break;
  }
}

// The items of `seq` as a list or tuple that owns them; TypeError naming `arg` and the index of
// a non-str item.
inline py::object str_items(py::handle seq, const char* arg) {
  if (PyUnicode_Check(seq.ptr()) || !PySequence_Check(seq.ptr())) {
    throw py::type_error(std::string(arg) + " must be a sequence of str");
  }
  py::object fast = py::reinterpret_steal<py::object>(PySequence_Fast(seq.ptr(), "expected a sequence"));
  if (!fast) throw py::error_already_set();
  const Py_ssize_t n = PySequence_Fast_GET_SIZE(fast.ptr());
  PyObject** items = PySequence_Fast_ITEMS(fast.ptr());
  for (Py_ssize_t i = 0; i < n; ++i) {
    if (!PyUnicode_Check(items[i])) {
      throw py::type_error(std::string(arg) + "[" + std::to_string(i) + "] must be str, got " +
                           std::string(py::str(py::type::handle_of(items[i]).attr("__name__"))));
    }
  }
  return fast;
}

}  // namespace detail_strings

inline FlatStrings flatten(py::handle seq, const char* arg) {
  const py::object fast = detail_strings::str_items(seq, arg);
  const Py_ssize_t n = PySequence_Fast_GET_SIZE(fast.ptr());
  PyObject** items = PySequence_Fast_ITEMS(fast.ptr());
  std::size_t total = 0;
  for (Py_ssize_t i = 0; i < n; ++i) total += static_cast<std::size_t>(PyUnicode_GET_LENGTH(items[i]));
  FlatStrings flat;
  flat.chars.resize(total);
  flat.offsets.resize(static_cast<std::size_t>(n) + 1);
  std::size_t pos = 0;
  for (Py_ssize_t i = 0; i < n; ++i) {
    detail_strings::copy_str(items[i], flat.chars.data() + pos);
    pos += static_cast<std::size_t>(PyUnicode_GET_LENGTH(items[i]));
    flat.offsets[static_cast<std::size_t>(i) + 1] = pos;
  }
  return flat;
}

inline std::vector<U32String> u32_strings(py::handle seq, const char* arg) {
  const py::object fast = detail_strings::str_items(seq, arg);
  const Py_ssize_t n = PySequence_Fast_GET_SIZE(fast.ptr());
  PyObject** items = PySequence_Fast_ITEMS(fast.ptr());
  std::vector<U32String> out(static_cast<std::size_t>(n));
  for (Py_ssize_t i = 0; i < n; ++i) {
    auto& s = out[static_cast<std::size_t>(i)];
    s.resize(static_cast<std::size_t>(PyUnicode_GET_LENGTH(items[i])));
    detail_strings::copy_str(items[i], s.data());
  }
  return out;
}

}  // namespace fk::bind
