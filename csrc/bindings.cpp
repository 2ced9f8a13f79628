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

// ---- layers: conv2d, linear, batchnorm, pooling (shape checks here; kernels trust them) ----
namespace layers {

std::string shape_str(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  return s + (a.ndim() == 1 ? ",)" : ")");
}

std::string dims_str(std::initializer_list<int64_t> d) {
  std::string s = "(";
  size_t i = 0;
  for (int64_t v : d) s += (i++ ? ", " : "") + std::to_string(v);
  return s + (d.size() == 1 ? ",)" : ")");
}

void expect_shape(const char* op, const char* name, const py::array& a,
                  std::initializer_list<int64_t> d) {
  bool ok = a.ndim() == static_cast<py::ssize_t>(d.size());
  size_t i = 0;
  for (int64_t v : d) ok = ok && a.shape(i++) == v;
  FT_CHECK(ok, op << "(" << name << "): expected shape " << dims_str(d) << ", got " << shape_str(a));
}

void expect_ndim(const char* op, const char* name, const py::array& a, py::ssize_t nd) {
  FT_CHECK(a.ndim() == nd, op << "(" << name << "): expected a " << nd << "-D array, got shape "
                              << shape_str(a));
}

const int64_t* i64_ptr(py::array& a, const char* name) {
  FT_CHECK(a.dtype().is(py::dtype::of<int64_t>()),
           name << ": expected dtype int64, got " << std::string(py::str(a.dtype())));
  FT_CHECK(a.flags() & py::array::c_style, name << ": expected a C-contiguous array");
  return static_cast<const int64_t*>(a.data());
}

void check_window(const char* op, int64_t sh, int64_t sw, int64_t ph, int64_t pw) {
  FT_CHECK(sh >= 1 && sw >= 1, op << "(sh, sw): expected strides >= 1, got (" << sh << ", " << sw << ")");
  FT_CHECK(ph >= 0 && pw >= 0, op << "(ph, pw): expected paddings >= 0, got (" << ph << ", " << pw << ")");
}

// Output extent of a window sweep; raises when the window does not fit the padded input.
int64_t out_extent(const char* op, const char* what, int64_t in, int64_t k, int64_t s, int64_t p) {
  FT_CHECK(k >= 1 && in + 2 * p >= k, op << ": " << what << " window " << k << " does not fit input "
                                         << in << " with padding " << p);
  return (in + 2 * p - k) / s + 1;
}

struct Conv {
  int64_t N, C, H, W, K, R, S, P, Q;
};

// x (N,C,H,W) and w (K,C,R,S) define the convolution; y/dy must be (N,K,P,Q).
Conv conv_geom(const char* op, const py::array& x, const py::array& w, int64_t sh, int64_t sw,
               int64_t ph, int64_t pw, const char* xname) {
  expect_ndim(op, xname, x, 4);
  expect_ndim(op, "w", w, 4);
  check_window(op, sh, sw, ph, pw);
  Conv g{x.shape(0), x.shape(1), x.shape(2), x.shape(3), w.shape(0), w.shape(2), w.shape(3), 0, 0};
  FT_CHECK(w.shape(1) == g.C, op << "(w): expected shape (K, " << g.C << ", R, S) to match "
                                 << xname << " " << shape_str(x) << ", got " << shape_str(w));
  g.P = out_extent(op, "height", g.H, g.R, sh, ph);
  g.Q = out_extent(op, "width", g.W, g.S, sw, pw);
  return g;
}

// x (N, C, ...) viewed as (N, C, S)
void bn_geom(const char* op, const py::array& x, int64_t& N, int64_t& C, int64_t& S) {
  FT_CHECK(x.ndim() >= 2, op << "(x): expected shape (N, C, ...), got " << shape_str(x));
  N = x.shape(0);
  C = x.shape(1);
  S = 1;
  for (py::ssize_t i = 2; i < x.ndim(); ++i) S *= x.shape(i);
}

void bind(py::module_& m) {
  m.def("conv2d_fwd", [](py::array x, py::array w, py::array b, py::array y, int64_t sh, int64_t sw,
                         int64_t ph, int64_t pw, bool relu) {
    const char* op = "conv2d_fwd";
    Conv g = conv_geom(op, x, w, sh, sw, ph, pw, "x");
    expect_shape(op, "b", b, {g.K});
    expect_shape(op, "y", y, {g.N, g.K, g.P, g.Q});
    const float *px = ptr_of(x, "x"), *pw_ = ptr_of(w, "w"), *pb = ptr_of(b, "b");
    float* py_ = ptr_of(y, "y");
    py::gil_scoped_release nogil;
    ft::cpu::conv2d_fwd(px, pw_, pb, py_, g.N, g.C, g.H, g.W, g.K, g.R, g.S, sh, sw, ph, pw, relu);
  }, py::arg("x"), py::arg("w"), py::arg("b"), py::arg("y"), py::arg("sh"), py::arg("sw"),
     py::arg("ph"), py::arg("pw"), py::arg("relu"));

  m.def("conv2d_bwd_data", [](py::array dy, py::array w, py::array dx, int64_t sh, int64_t sw,
                              int64_t ph, int64_t pw) {
    const char* op = "conv2d_bwd_data";
    Conv g = conv_geom(op, dx, w, sh, sw, ph, pw, "dx");
    expect_shape(op, "dy", dy, {g.N, g.K, g.P, g.Q});
    const float *pdy = ptr_of(dy, "dy"), *pw_ = ptr_of(w, "w");
    float* pdx = ptr_of(dx, "dx");
    py::gil_scoped_release nogil;
    ft::cpu::conv2d_bwd_data(pdy, pw_, pdx, g.N, g.C, g.H, g.W, g.K, g.R, g.S, sh, sw, ph, pw);
  }, py::arg("dy"), py::arg("w"), py::arg("dx"), py::arg("sh"), py::arg("sw"), py::arg("ph"),
     py::arg("pw"));

  m.def("conv2d_bwd_weight", [](py::array x, py::array dy, py::array dw, py::array db, int64_t sh,
                                int64_t sw, int64_t ph, int64_t pw) {
    const char* op = "conv2d_bwd_weight";
    Conv g = conv_geom(op, x, dw, sh, sw, ph, pw, "x");
    expect_shape(op, "dy", dy, {g.N, g.K, g.P, g.Q});
    expect_shape(op, "db", db, {g.K});
    const float *px = ptr_of(x, "x"), *pdy = ptr_of(dy, "dy");
    float *pdw = ptr_of(dw, "dw"), *pdb = ptr_of(db, "db");
    py::gil_scoped_release nogil;
    ft::cpu::conv2d_bwd_weight(px, pdy, pdw, pdb, g.N, g.C, g.H, g.W, g.K, g.R, g.S, sh, sw, ph, pw);
  }, py::arg("x"), py::arg("dy"), py::arg("dw"), py::arg("db"), py::arg("sh"), py::arg("sw"),
     py::arg("ph"), py::arg("pw"));

  m.def("linear_fwd", [](py::array x, py::array w, py::array b, py::array y) {
    const char* op = "linear_fwd";
    expect_ndim(op, "x", x, 2);
    expect_ndim(op, "w", w, 2);
    const int64_t N = x.shape(0), I = x.shape(1), O = w.shape(0);
    expect_shape(op, "w", w, {O, I});
    expect_shape(op, "b", b, {O});
    expect_shape(op, "y", y, {N, O});
    const float *px = ptr_of(x, "x"), *pw_ = ptr_of(w, "w"), *pb = ptr_of(b, "b");
    float* py_ = ptr_of(y, "y");
    py::gil_scoped_release nogil;
    ft::cpu::linear_fwd(px, pw_, pb, py_, N, I, O);
  }, py::arg("x"), py::arg("w"), py::arg("b"), py::arg("y"));

  m.def("linear_bwd", [](py::array x, py::array w, py::array dy, py::array dx, py::array dw,
                         py::array db) {
    const char* op = "linear_bwd";
    expect_ndim(op, "x", x, 2);
    expect_ndim(op, "w", w, 2);
    const int64_t N = x.shape(0), I = x.shape(1), O = w.shape(0);
    expect_shape(op, "w", w, {O, I});
    expect_shape(op, "dy", dy, {N, O});
    expect_shape(op, "dx", dx, {N, I});
    expect_shape(op, "dw", dw, {O, I});
    expect_shape(op, "db", db, {O});
    const float *px = ptr_of(x, "x"), *pw_ = ptr_of(w, "w"), *pdy = ptr_of(dy, "dy");
    float *pdx = ptr_of(dx, "dx"), *pdw = ptr_of(dw, "dw"), *pdb = ptr_of(db, "db");
    py::gil_scoped_release nogil;
    ft::cpu::linear_bwd(px, pw_, pdy, pdx, pdw, pdb, N, I, O);
  }, py::arg("x"), py::arg("w"), py::arg("dy"), py::arg("dx"), py::arg("dw"), py::arg("db"));

  m.def("batchnorm_fwd_train", [](py::array x, py::array gamma, py::array beta, double eps,
                                  py::array y, py::array mean, py::array invstd) {
    const char* op = "batchnorm_fwd_train";
    int64_t N, C, S;
    bn_geom(op, x, N, C, S);
    FT_CHECK(eps >= 0, op << "(eps): expected eps >= 0, got " << eps);
    expect_shape(op, "gamma", gamma, {C});
    expect_shape(op, "beta", beta, {C});
    expect_shape(op, "mean", mean, {C});
    expect_shape(op, "invstd", invstd, {C});
    same_size(x, y, "x", "y");
    const float *px = ptr_of(x, "x"), *pg = ptr_of(gamma, "gamma"), *pb = ptr_of(beta, "beta");
    float *py_ = ptr_of(y, "y"), *pm = ptr_of(mean, "mean"), *pi = ptr_of(invstd, "invstd");
    py::gil_scoped_release nogil;
    ft::cpu::batchnorm_fwd_train(px, pg, pb, static_cast<float>(eps), py_, pm, pi, N, C, S);
  }, py::arg("x"), py::arg("gamma"), py::arg("beta"), py::arg("eps"), py::arg("y"),
     py::arg("mean"), py::arg("invstd"));

  m.def("batchnorm_fwd_eval", [](py::array x, py::array gamma, py::array beta,
                                 py::array running_mean, py::array running_var, double eps,
                                 py::array y) {
    const char* op = "batchnorm_fwd_eval";
    int64_t N, C, S;
    bn_geom(op, x, N, C, S);
    FT_CHECK(eps >= 0, op << "(eps): expected eps >= 0, got " << eps);
    expect_shape(op, "gamma", gamma, {C});
    expect_shape(op, "beta", beta, {C});
    expect_shape(op, "running_mean", running_mean, {C});
    expect_shape(op, "running_var", running_var, {C});
    same_size(x, y, "x", "y");
    const float *px = ptr_of(x, "x"), *pg = ptr_of(gamma, "gamma"), *pb = ptr_of(beta, "beta"),
                *prm = ptr_of(running_mean, "running_mean"), *prv = ptr_of(running_var, "running_var");
    float* py_ = ptr_of(y, "y");
    py::gil_scoped_release nogil;
    ft::cpu::batchnorm_fwd_eval(px, pg, pb, prm, prv, static_cast<float>(eps), py_, N, C, S);
  }, py::arg("x"), py::arg("gamma"), py::arg("beta"), py::arg("running_mean"),
     py::arg("running_var"), py::arg("eps"), py::arg("y"));

  m.def("batchnorm_bwd", [](py::array x, py::array dy, py::array gamma, py::array mean,
                            py::array invstd, py::array dx, py::array dgamma, py::array dbeta) {
    const char* op = "batchnorm_bwd";
    int64_t N, C, S;
    bn_geom(op, x, N, C, S);
    same_size(x, dy, "x", "dy");
    same_size(x, dx, "x", "dx");
    expect_shape(op, "gamma", gamma, {C});
    expect_shape(op, "mean", mean, {C});
    expect_shape(op, "invstd", invstd, {C});
    expect_shape(op, "dgamma", dgamma, {C});
    expect_shape(op, "dbeta", dbeta, {C});
    const float *px = ptr_of(x, "x"), *pdy = ptr_of(dy, "dy"), *pg = ptr_of(gamma, "gamma"),
                *pm = ptr_of(mean, "mean"), *pi = ptr_of(invstd, "invstd");
    float *pdx = ptr_of(dx, "dx"), *pdg = ptr_of(dgamma, "dgamma"), *pdb = ptr_of(dbeta, "dbeta");
    py::gil_scoped_release nogil;
    ft::cpu::batchnorm_bwd(px, pdy, pg, pm, pi, pdx, pdg, pdb, N, C, S);
  }, py::arg("x"), py::arg("dy"), py::arg("gamma"), py::arg("mean"), py::arg("invstd"),
     py::arg("dx"), py::arg("dgamma"), py::arg("dbeta"));

  m.def("maxpool2d_fwd", [](py::array x, py::array y, py::array argmax, int64_t kh, int64_t kw,
                            int64_t sh, int64_t sw, int64_t ph, int64_t pw) {
    const char* op = "maxpool2d_fwd";
    expect_ndim(op, "x", x, 4);
    check_window(op, sh, sw, ph, pw);
    const int64_t N = x.shape(0), C = x.shape(1), H = x.shape(2), W = x.shape(3);
    const int64_t P = out_extent(op, "height", H, kh, sh, ph), Q = out_extent(op, "width", W, kw, sw, pw);
    expect_shape(op, "y", y, {N, C, P, Q});
    expect_shape(op, "argmax", argmax, {N, C, P, Q});
    FT_CHECK(argmax.writeable(), "argmax: expected a writeable array");
    const float* px = ptr_of(x, "x");
    float* py_ = ptr_of(y, "y");
    int64_t* pa = const_cast<int64_t*>(i64_ptr(argmax, "argmax"));
    py::gil_scoped_release nogil;
    ft::cpu::maxpool2d_fwd(px, py_, pa, N * C, H, W, P, Q, kh, kw, sh, sw, ph, pw);
  }, py::arg("x"), py::arg("y"), py::arg("argmax"), py::arg("kh"), py::arg("kw"), py::arg("sh"),
     py::arg("sw"), py::arg("ph"), py::arg("pw"));

  m.def("maxpool2d_bwd", [](py::array dy, py::array argmax, py::array dx) {
    const char* op = "maxpool2d_bwd";
    expect_ndim(op, "dy", dy, 4);
    expect_ndim(op, "dx", dx, 4);
    const int64_t N = dy.shape(0), C = dy.shape(1), PQ = dy.shape(2) * dy.shape(3);
    expect_shape(op, "argmax", argmax, {N, C, dy.shape(2), dy.shape(3)});
    FT_CHECK(dx.shape(0) == N && dx.shape(1) == C,
             op << "(dx): expected shape (" << N << ", " << C << ", H, W), got " << shape_str(dx));
    const int64_t HW = dx.shape(2) * dx.shape(3);
    const float* pdy = ptr_of(dy, "dy");
    const int64_t* pa = i64_ptr(argmax, "argmax");
    for (int64_t i = 0; i < N * C * PQ; ++i)  // an index outside the plane would write out of bounds
      FT_CHECK(pa[i] >= 0 && pa[i] < HW, op << "(argmax): expected indices in [0, " << HW
                                             << "), got " << pa[i] << " at flat position " << i);
    float* pdx = ptr_of(dx, "dx");
    py::gil_scoped_release nogil;
    ft::cpu::maxpool2d_bwd(pdy, pa, pdx, N * C, HW, PQ);
  }, py::arg("dy"), py::arg("argmax"), py::arg("dx"));

  m.def("avgpool2d_fwd", [](py::array x, py::array y, int64_t kh, int64_t kw, int64_t sh,
                            int64_t sw, int64_t ph, int64_t pw) {
    const char* op = "avgpool2d_fwd";
    expect_ndim(op, "x", x, 4);
    check_window(op, sh, sw, ph, pw);
    const int64_t N = x.shape(0), C = x.shape(1), H = x.shape(2), W = x.shape(3);
    const int64_t P = out_extent(op, "height", H, kh, sh, ph), Q = out_extent(op, "width", W, kw, sw, pw);
    expect_shape(op, "y", y, {N, C, P, Q});
    const float* px = ptr_of(x, "x");
    float* py_ = ptr_of(y, "y");
    py::gil_scoped_release nogil;
    ft::cpu::avgpool2d_fwd(px, py_, N * C, H, W, P, Q, kh, kw, sh, sw, ph, pw);
  }, py::arg("x"), py::arg("y"), py::arg("kh"), py::arg("kw"), py::arg("sh"), py::arg("sw"),
     py::arg("ph"), py::arg("pw"));

  m.def("avgpool2d_bwd", [](py::array dy, py::array dx, int64_t kh, int64_t kw, int64_t sh,
                            int64_t sw, int64_t ph, int64_t pw) {
    const char* op = "avgpool2d_bwd";
    expect_ndim(op, "dx", dx, 4);
    check_window(op, sh, sw, ph, pw);
    const int64_t N = dx.shape(0), C = dx.shape(1), H = dx.shape(2), W = dx.shape(3);
    const int64_t P = out_extent(op, "height", H, kh, sh, ph), Q = out_extent(op, "width", W, kw, sw, pw);
    expect_shape(op, "dy", dy, {N, C, P, Q});
    const float* pdy = ptr_of(dy, "dy");
    float* pdx = ptr_of(dx, "dx");
    py::gil_scoped_release nogil;
    ft::cpu::avgpool2d_bwd(pdy, pdx, N * C, H, W, P, Q, kh, kw, sh, sw, ph, pw);
  }, py::arg("dy"), py::arg("dx"), py::arg("kh"), py::arg("kw"), py::arg("sh"), py::arg("sw"),
     py::arg("ph"), py::arg("pw"));
}

}  // namespace layers

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
  layers::bind(m);  // conv2d, linear, batchnorm, pooling
}
