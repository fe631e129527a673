// Conversions shared by the bindings: Python str -> UTF-32, argument checks with named errors.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "core/levenshtein.hpp"

namespace fk::bind {
namespace py = pybind11;

// Copies a Python str into UTF-32 (one element per code point). Raises TypeError naming `arg`.
inline U32String to_u32(py::handle obj, const char* arg) {
  if (!PyUnicode_Check(obj.ptr())) {
    throw py::type_error(std::string(arg) + " must be str, got " +
                         std::string(py::str(py::type::handle_of(obj).attr("__name__"))));
  }
  PyObject* s = obj.ptr();
  const Py_ssize_t n = PyUnicode_GET_LENGTH(s);
  U32String out(static_cast<std::size_t>(n), U'\0');
  const int kind = PyUnicode_KIND(s);
  const void* data = PyUnicode_DATA(s);
  for (Py_ssize_t i = 0; i < n; ++i) out[static_cast<std::size_t>(i)] = PyUnicode_READ(kind, data, i);
  return out;
}

// Converts a sequence of str (list, tuple, or any sequence) to UTF-32 strings.
inline std::vector<U32String> to_u32_list(py::handle seq, const char* arg) {
  if (PyUnicode_Check(seq.ptr()) || !PySequence_Check(seq.ptr())) {
    throw py::type_error(std::string(arg) + " must be a sequence of str");
  }
  // PySequence_Fast keeps every item referenced while it is read, also for sequences that
  // create their items on access (numpy string arrays).
  py::object fast = py::reinterpret_steal<py::object>(PySequence_Fast(seq.ptr(), "expected a sequence"));
  if (!fast) throw py::error_already_set();
  const Py_ssize_t n = PySequence_Fast_GET_SIZE(fast.ptr());
  PyObject** items = PySequence_Fast_ITEMS(fast.ptr());
  std::vector<U32String> out;
  out.reserve(static_cast<std::size_t>(n));
  for (Py_ssize_t i = 0; i < n; ++i) {
    py::handle item(items[i]);
    if (!PyUnicode_Check(item.ptr())) {
      throw py::type_error(std::string(arg) + "[" + std::to_string(i) + "] must be str, got " +
                           std::string(py::str(py::type::handle_of(item).attr("__name__"))));
    }
    out.push_back(to_u32(item, arg));
  }
  return out;
}

}  // namespace fk::bind
