// pybind11 module fasttrain._cuda: takes CuPy (or any __cuda_array_interface__) arrays.
#include <pybind11/pybind11.h>
#include <cuda_runtime.h>

#include <string>

#include "fasttrain/check.h"
#include "fasttrain/cuda.h"

namespace py = pybind11;

namespace {

struct DevArray {
  void* ptr;
  int64_t size;
};

// Reads __cuda_array_interface__ (v2/v3): float32 ('<f4'), C-contiguous (strides None).
DevArray dev_array(const py::object& a, const char* name) {
  FT_CHECK(py::hasattr(a, "__cuda_array_interface__"),
           name << ": expected a GPU array with __cuda_array_interface__ (e.g. a CuPy array)");
  py::dict cai = a.attr("__cuda_array_interface__");
  std::string typestr = py::str(cai["typestr"]);
  FT_CHECK(typestr == "<f4", name << ": expected dtype float32 ('<f4'), got '" << typestr << "'");
  FT_CHECK(!cai.contains("strides") || cai["strides"].is_none(),
           name << ": expected a C-contiguous array");
  int64_t size = 1;
  for (auto d : py::tuple(cai["shape"])) size *= d.cast<int64_t>();
  py::tuple data = cai["data"];
  return {reinterpret_cast<void*>(data[0].cast<uintptr_t>()), size};
}

cudaStream_t stream_of(uintptr_t handle) { return reinterpret_cast<cudaStream_t>(handle); }

}  // namespace

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "fasttrain CUDA kernels";
  m.def("device_count", [] {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) { cudaGetLastError(); return 0; }
    return n;
  });
  m.def("build_info", [] {
    py::dict d;
    d["cuda_runtime"] = CUDART_VERSION;
    d["architectures"] = FT_CUDA_ARCHS;
    return d;
  });
  m.def("relu_fwd", [](py::object x, py::object y, uintptr_t stream) {
    DevArray dx = dev_array(x, "x"), dy = dev_array(y, "y");
    FT_CHECK(dx.size == dy.size, "y: expected " << dx.size << " elements, got " << dy.size);
    ft::cuda::relu_fwd(static_cast<const float*>(dx.ptr), static_cast<float*>(dy.ptr), dx.size,
                       stream_of(stream));
  }, py::arg("x"), py::arg("y"), py::arg("stream") = 0);
}
