// The private extension module fusekernels._C; each binding file registers its own functions.
#include <pybind11/pybind11.h>

#include "core/interrupt.hpp"

namespace py = pybind11;

namespace fk::bind {
void bind_levenshtein(py::module_& m);
void bind_mined(py::module_& m);
void bind_dtw(py::module_& m);
void bind_topk_transfer(py::module_& m);
void bind_byte_span(py::module_& m);
}  // namespace fk::bind

PYBIND11_MODULE(_C, m) {
  m.doc() = "fusekernels native alignment core (private; use fusekernels.align)";
  // A call stopped by a pending signal: the signal handler's exception (KeyboardInterrupt for
  // Ctrl-C) is already set by PyErr_CheckSignals; keep it.
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const fk::Interrupted&) {
      if (!PyErr_Occurred()) PyErr_SetNone(PyExc_KeyboardInterrupt);
    }
  });
  fk::bind::bind_levenshtein(m);
  fk::bind::bind_mined(m);
  fk::bind::bind_dtw(m);
  fk::bind::bind_topk_transfer(m);
  fk::bind::bind_byte_span(m);
}
