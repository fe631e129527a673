// Conversions shared by the bindings: Python str -> UTF-32, argument checks with named errors.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>

#include "core/interrupt.hpp"
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

// Poll function of the interrupt scopes (core/interrupt.hpp) opened around GIL-free work: runs
// Python's pending signal handlers. When one raises (SIGINT -> KeyboardInterrupt), the error
// stays set, the native call unwinds with fk::Interrupted, and the translator registered in
// module.cpp lets Python see that error.
inline bool python_signal_pending() {
  py::gil_scoped_acquire gil;
  return PyErr_CheckSignals() != 0;
}

}  // namespace fk::bind
