// pybind11 module fasttrain._C: argument checks and calls only, no math here.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <omp.h>

#include <string>

#include "fasttrain/check.h"
#include "fasttrain/cpu.h"

namespace py = pybind11;
using f32arr = py::array_t<float, py::array::c_style>;  // no forcecast: wrong dtypes are rejected

namespace {

// Accept only C-contiguous float32 arrays: a silent copy would hide a slow path and would make
// in-place kernels write into a temporary.
float* ptr_of(py::array& a, const char* name) {
  FT_CHECK(a.dtype().is(py::dtype::of<float>()),
           name << ": expected dtype float32, got " << std::string(py::str(a.dtype())));
  FT_CHECK(a.flags() & py::array::c_style, name << ": expected a C-contiguous array");
  FT_CHECK(a.writeable(), name << ": expected a writeable array");
  return static_cast<float*>(a.mutable_data());
}

void same_size(const py::array& a, const py::array& b, const char* an, const char* bn) {
  FT_CHECK(a.size() == b.size(),
           bn << ": expected " << a.size() << " elements (like " << an << "), got " << b.size());
}

std::string simd_level() {
#if defined(__AVX512F__)
  return "AVX-512";
#elif defined(__AVX2__)
  return "AVX2";
#elif defined(__SSE4_2__)
  return "SSE4.2";
#elif defined(__ARM_NEON)
  return "NEON";
#else
  return "scalar";
#endif
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "fasttrain C++/OpenMP kernels";

  m.def("build_info", [] {
    py::dict d;
    d["compiler"] = FT_COMPILER;
    d["arch_flags"] = FT_ARCH_FLAGS;
    d["openmp"] = FT_OPENMP_VERSION;
    d["openmp_max_threads"] = omp_get_max_threads();
    d["simd"] = simd_level();
    return d;
  });
  m.def("set_num_threads", [](int n) {
    FT_CHECK(n >= 1, "set_num_threads(n): expected n >= 1, got " << n);
    ft::cpu::set_num_threads(n);
  });
  m.def("num_threads", &ft::cpu::num_threads);

  m.def("relu_fwd", [](py::array x, py::array y) {
    same_size(x, y, "x", "y");
    const float* px = ptr_of(x, "x"); float* py_ = ptr_of(y, "y");
    py::gil_scoped_release nogil;
    ft::cpu::relu_fwd(px, py_, x.size());
  }, py::arg("x"), py::arg("y"));
  m.def("relu_bwd", [](py::array x, py::array dy, py::array dx) {
    same_size(x, dy, "x", "dy"); same_size(x, dx, "x", "dx");
    const float* px = ptr_of(x, "x"); const float* pdy = ptr_of(dy, "dy"); float* pdx = ptr_of(dx, "dx");
    py::gil_scoped_release nogil;
    ft::cpu::relu_bwd(px, pdy, pdx, x.size());
  }, py::arg("x"), py::arg("dy"), py::arg("dx"));
}
