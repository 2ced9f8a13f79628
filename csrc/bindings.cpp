// pybind11 module fasttrain._C: argument checks and calls only, no math here.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <omp.h>

#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

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

// A C-contiguous float32 array starting on a 64-byte line, freed with its last reference. A
// blocked pixel (16 floats) is then one cache line; NumPy's allocator aligns to 16 bytes, which
// splits every pixel vector a kernel loads or stores over two lines (fasttrain/nn/layout.py's
// aligned_empty does the same for the arrays Python allocates).
f32arr line_aligned(std::vector<py::ssize_t> shape) {
  py::ssize_t n = 1;
  for (py::ssize_t d : shape) n *= d;
  const size_t bytes = ((static_cast<size_t>(n) * sizeof(float) + 63) / 64) * 64;
  void* p = std::aligned_alloc(64, bytes == 0 ? 64 : bytes);
  if (p == nullptr) throw std::bad_alloc();
  py::capsule owner(p, [](void* q) { std::free(q); });
  return f32arr(std::move(shape), static_cast<float*>(p), owner);
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

// A (2, C) float64 array of per-channel sums (a convolution's batchnorm statistics, a batchnorm's
// backward sums), or nullptr for None; keep holds the array while the kernel runs (a list would be
// converted into a temporary).
double* sums_ptr(const char* op, const char* name, const py::object& obj, int64_t C, bool writeable,
                 py::array& keep) {
  if (obj.is_none()) return nullptr;
  keep = obj.cast<py::array>();
  expect_shape(op, name, keep, {2, C});
  FT_CHECK(keep.dtype().is(py::dtype::of<double>()) && (keep.flags() & py::array::c_style) &&
               (!writeable || keep.writeable()),
           op << "(" << name << "): expected a " << (writeable ? "writeable " : "")
              << "C-contiguous float64 array, got dtype " << std::string(py::str(keep.dtype())));
  return static_cast<double*>(writeable ? keep.mutable_data() : const_cast<void*>(keep.data()));
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

uint8_t* u8_ptr(py::array& a, const char* name, bool write) {
  FT_CHECK(a.dtype().is(py::dtype::of<uint8_t>()),
           name << ": expected dtype uint8, got " << std::string(py::str(a.dtype())));
  FT_CHECK(a.flags() & py::array::c_style, name << ": expected a C-contiguous array");
  FT_CHECK(!write || a.writeable(), name << ": expected a writeable array");
  return static_cast<uint8_t*>(write ? a.mutable_data() : const_cast<void*>(a.data()));
}

void check_window(const char* op, int64_t sh, int64_t sw, int64_t ph, int64_t pw) {
  FT_CHECK(sh >= 1 && sw >= 1, op << "(sh, sw): expected strides >= 1, got (" << sh << ", " << sw << ")");
  FT_CHECK(ph >= 0 && pw >= 0, op << "(ph, pw): expected paddings >= 0, got (" << ph << ", " << pw << ")");
}

// Output extent of a window sweep; raises when the window does not fit the padded input. `dil`:
// the distance between taps, so the window spans dil * (k - 1) + 1 inputs.
int64_t out_extent(const char* op, const char* what, int64_t in, int64_t k, int64_t s, int64_t p,
                   int64_t dil = 1) {
  const int64_t span = dil * (k - 1) + 1;
  FT_CHECK(k >= 1 && in + 2 * p >= span, op << ": " << what << " window " << span
                                             << " does not fit input " << in << " with padding " << p);
  return (in + 2 * p - span) / s + 1;
}

// A pooling window sweep's output extent (PyTorch's rule): with ceil_mode the last partial
// window counts unless it would start beyond the input and its top/left padding.
int64_t pool_extent(const char* op, const char* what, int64_t in, int64_t k, int64_t s, int64_t p,
                    int64_t dil, bool ceil_mode) {
  const int64_t floor_out = out_extent(op, what, in, k, s, p, dil);
  if (!ceil_mode) return floor_out;
  int64_t out = (in + 2 * p - dil * (k - 1) - 1 + s - 1) / s + 1;
  if ((out - 1) * s >= in + p) --out;
  return out;
}

// The output extents (P, Q) of a max pool that names each maximum by its window tap (one byte, so
// at most 256 taps), after checking the window's arguments.
std::pair<int64_t, int64_t> tap_pool_extents(const char* op, int64_t H, int64_t W, int64_t kh, int64_t kw,
                                             int64_t sh, int64_t sw, int64_t ph, int64_t pw, bool ceil_mode,
                                             int64_t dh, int64_t dw) {
  check_window(op, sh, sw, ph, pw);
  FT_CHECK(dh >= 1 && dw >= 1, op << "(dil_h, dil_w): expected dilations >= 1, got (" << dh << ", " << dw << ")");
  FT_CHECK(kh * kw <= 256, op << "(kh, kw): expected a window of at most 256 taps (a tap is one byte), got "
                              << kh << " x " << kw);
  return {pool_extent(op, "height", H, kh, sh, ph, dh, ceil_mode), pool_extent(op, "width", W, kw, sw, pw, dw, ceil_mode)};
}

// The NCHW tap form's planes (N * C), input plane (H, W) and output plane (P, Q), after checking the
// window and the shapes: `image` the 4-d input-sized array (x, or dx), `pooled` and taps (N, C, P, Q).
struct TapPoolDims {
  int64_t NC, H, W, P, Q;
};

TapPoolDims tap_pool_dims(const char* op, const char* image_name, const py::array& image, const char* pooled_name,
                          const py::array& pooled, const py::array& taps, int64_t kh, int64_t kw, int64_t sh,
                          int64_t sw, int64_t ph, int64_t pw, bool ceil_mode, int64_t dh, int64_t dw) {
  expect_ndim(op, image_name, image, 4);
  const int64_t N = image.shape(0), C = image.shape(1), H = image.shape(2), W = image.shape(3);
  const auto [P, Q] = tap_pool_extents(op, H, W, kh, kw, sh, sw, ph, pw, ceil_mode, dh, dw);
  expect_shape(op, pooled_name, pooled, {N, C, P, Q});
  expect_shape(op, "taps", taps, {N, C, P, Q});
  return {N * C, H, W, P, Q};
}

struct Conv {
  int64_t N, C, H, W, K, R, S, P, Q;
};

// x (N,C,H,W) and w (K,C/groups,R,S) define the convolution; y/dy must be (N,K,P,Q).
Conv conv_geom(const char* op, const py::array& x, const py::array& w, int64_t sh, int64_t sw,
               int64_t ph, int64_t pw, int64_t dilh, int64_t dilw, int64_t groups,
               const char* xname) {
  expect_ndim(op, xname, x, 4);
  expect_ndim(op, "w", w, 4);
  check_window(op, sh, sw, ph, pw);
  FT_CHECK(dilh >= 1 && dilw >= 1,
           op << "(dil_h, dil_w): expected dilations >= 1, got (" << dilh << ", " << dilw << ")");
  Conv g{x.shape(0), x.shape(1), x.shape(2), x.shape(3), w.shape(0), w.shape(2), w.shape(3), 0, 0};
  FT_CHECK(groups >= 1 && g.C % groups == 0 && g.K % groups == 0,
           op << "(groups): expected a positive divisor of the input channels " << g.C
              << " and of the output channels " << g.K << ", got " << groups);
  FT_CHECK(w.shape(1) == g.C / groups, op << "(w): expected shape (K, " << g.C / groups
                                          << ", R, S) to match " << xname << " " << shape_str(x)
                                          << " with groups " << groups << ", got " << shape_str(w));
  g.P = out_extent(op, "height", g.H, g.R, sh, ph, dilh);
  g.Q = out_extent(op, "width", g.W, g.S, sw, pw, dilw);
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
                         int64_t ph, int64_t pw, bool relu, int64_t dilh, int64_t dilw, int64_t groups) {
    const char* op = "conv2d_fwd";
    Conv g = conv_geom(op, x, w, sh, sw, ph, pw, dilh, dilw, groups, "x");
    expect_shape(op, "b", b, {g.K});
    expect_shape(op, "y", y, {g.N, g.K, g.P, g.Q});
    const float *px = ptr_of(x, "x"), *pw_ = ptr_of(w, "w"), *pb = ptr_of(b, "b");
    float* py_ = ptr_of(y, "y");
    py::gil_scoped_release nogil;
    ft::cpu::conv2d_fwd(px, pw_, pb, py_, g.N, g.C, g.H, g.W, g.K, g.R, g.S, sh, sw, ph, pw, relu,
                        dilh, dilw, groups);
  }, py::arg("x"), py::arg("w"), py::arg("b"), py::arg("y"), py::arg("sh"), py::arg("sw"),
     py::arg("ph"), py::arg("pw"), py::arg("relu"), py::arg("dil_h") = 1, py::arg("dil_w") = 1,
     py::arg("groups") = 1);

  m.def("conv2d_bwd_data", [](py::array dy, py::array w, py::array dx, int64_t sh, int64_t sw,
                              int64_t ph, int64_t pw, int64_t dilh, int64_t dilw, int64_t groups) {
    const char* op = "conv2d_bwd_data";
    Conv g = conv_geom(op, dx, w, sh, sw, ph, pw, dilh, dilw, groups, "dx");
    expect_shape(op, "dy", dy, {g.N, g.K, g.P, g.Q});
    const float *pdy = ptr_of(dy, "dy"), *pw_ = ptr_of(w, "w");
    float* pdx = ptr_of(dx, "dx");
    py::gil_scoped_release nogil;
    ft::cpu::conv2d_bwd_data(pdy, pw_, pdx, g.N, g.C, g.H, g.W, g.K, g.R, g.S, sh, sw, ph, pw, dilh,
                             dilw, groups);
  }, py::arg("dy"), py::arg("w"), py::arg("dx"), py::arg("sh"), py::arg("sw"), py::arg("ph"),
     py::arg("pw"), py::arg("dil_h") = 1, py::arg("dil_w") = 1, py::arg("groups") = 1);

  m.def("conv2d_bwd_weight", [](py::array x, py::array dy, py::array dw, py::array db, int64_t sh,
                                int64_t sw, int64_t ph, int64_t pw, int64_t dilh, int64_t dilw,
                                int64_t groups) {
    const char* op = "conv2d_bwd_weight";
    Conv g = conv_geom(op, x, dw, sh, sw, ph, pw, dilh, dilw, groups, "x");
    expect_shape(op, "dy", dy, {g.N, g.K, g.P, g.Q});
    expect_shape(op, "db", db, {g.K});
    const float *px = ptr_of(x, "x"), *pdy = ptr_of(dy, "dy");
    float *pdw = ptr_of(dw, "dw"), *pdb = ptr_of(db, "db");
    py::gil_scoped_release nogil;
    ft::cpu::conv2d_bwd_weight(px, pdy, pdw, pdb, g.N, g.C, g.H, g.W, g.K, g.R, g.S, sh, sw, ph, pw,
                               dilh, dilw, groups);
  }, py::arg("x"), py::arg("dy"), py::arg("dw"), py::arg("db"), py::arg("sh"), py::arg("sw"),
     py::arg("ph"), py::arg("pw"), py::arg("dil_h") = 1, py::arg("dil_w") = 1, py::arg("groups") = 1);

  m.def("set_conv2d_algo", &ft::cpu::set_conv2d_algo, py::arg("name"),
        "conv2d algorithm: 'auto', 'im2col', 'winograd' (3x3 stride-1 ungrouped only), 'depthwise' "
        "(groups == in_channels only; an error elsewhere), 'direct' (groups 1, no dilation) or "
        "'winograd-blocked' (the direct engine's entry points by Winograd F(2x2, 3x3) on the blocked "
        "layout: 3x3 stride-1 padding-1 groups-1 undilated only, AVX-512 kernels only) or "
        "'winograd43-blocked' (the same by F(4x4, 3x3), forward and both gradients) or "
        "'pointwise' (1x1 kernels with padding 0, any stride, groups 1, no dilation: products on the "
        "NCHW arrays themselves)");
  m.def("conv2d_algo", &ft::cpu::conv2d_algo);
  m.def("conv2d_choice", &ft::cpu::conv2d_choice, py::arg("op"), py::arg("N"), py::arg("C"),
        py::arg("H"), py::arg("W"), py::arg("K"), py::arg("R"), py::arg("S"), py::arg("sh"),
        py::arg("sw"), py::arg("ph"), py::arg("pw"), py::arg("dil_h") = 1, py::arg("dil_w") = 1,
        py::arg("groups") = 1, py::arg("blocked") = false,
        "the algorithm conv2d_<op> runs for this shape under the current setting; blocked=True: for "
        "activations kept in the blocked layout ('direct': the conv2d_blocked_* entry points, or "
        "conv2d_stem_* for the network's NCHW input; 'winograd-blocked' / 'winograd43-blocked': the "
        "same entry points, which run Winograd F(2x2, 3x3) / F(4x4, 3x3) on the blocked layout)");
  m.def("set_conv2d_isa", &ft::cpu::set_conv2d_isa, py::arg("name"),
        "direct conv2d instruction set: 'auto', 'avx512', 'avx2' or 'portable'");
  m.def("conv2d_isa", &ft::cpu::conv2d_isa);
  // The direct convolution on its blocked layout (N, ceil(C/16), H', W', 16), see fasttrain/cpu.h.
  m.def("to_blocked", [](py::array x, int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
    expect_ndim("to_blocked", "x", x, 4);
    FT_CHECK(pt >= 0 && pb >= 0 && pl >= 0 && pr >= 0, "to_blocked(pads): expected pads >= 0");
    const float* px = ptr_of(x, "x");
    const int64_t N = x.shape(0), C = x.shape(1), H = x.shape(2), W = x.shape(3);
    f32arr xb = line_aligned({N, (C + 15) / 16, pt + H + pb, pl + W + pr, int64_t{16}});
    float* pxb = xb.mutable_data();
    py::gil_scoped_release nogil;
    ft::cpu::conv2d_to_blocked(px, pxb, N, C, H, W, pt, pb, pl, pr);
    return xb;
  }, py::arg("x"), py::arg("pt") = 0, py::arg("pb") = 0, py::arg("pl") = 0, py::arg("pr") = 0);
  m.def("from_blocked", [](py::array xb, int64_t C) {
    expect_ndim("from_blocked", "xb", xb, 5);
    FT_CHECK(C >= 1 && (C + 15) / 16 == xb.shape(1) && xb.shape(4) == 16,
             "from_blocked(C): expected " << xb.shape(1) * 16 - 15 << ".." << xb.shape(1) * 16
                                         << " channels for xb " << shape_str(xb) << ", got " << C);
    const float* pxb = ptr_of(xb, "xb");
    const int64_t N = xb.shape(0), H = xb.shape(2), W = xb.shape(3);
    f32arr x({N, C, H, W});
    float* px = x.mutable_data();
    py::gil_scoped_release nogil;
    ft::cpu::conv2d_from_blocked(pxb, px, N, C, H, W);
    return x;
  }, py::arg("xb"), py::arg("C"));
  m.def("conv2d_blocked_dy_pads", [](int64_t H, int64_t W, int64_t R, int64_t S, int64_t sh,
                                     int64_t sw, int64_t ph, int64_t pw) {
    check_window("conv2d_blocked_dy_pads", sh, sw, ph, pw);
    int64_t p[4];
    ft::cpu::conv2d_blocked_dy_pads(H, W, R, S, sh, sw, ph, pw, p);
    return py::make_tuple(p[0], p[1], p[2], p[3]);
  });
  // Blocked geometry: xb (N, Cb, H + 2ph, W + 2pw, 16) for the forward input; dy and y (N, Kb, ., ., 16).
  auto blocked_geom = [](const char* op, const py::array& xb, const py::array& w, int64_t sh,
                         int64_t sw, int64_t ph, int64_t pw, int64_t xpad_h, int64_t xpad_w) {
    expect_ndim(op, "xb", xb, 5);
    expect_ndim(op, "w", w, 4);
    check_window(op, sh, sw, ph, pw);
    Conv g{xb.shape(0), w.shape(1), xb.shape(2) - 2 * xpad_h, xb.shape(3) - 2 * xpad_w,
           w.shape(0), w.shape(2), w.shape(3), 0, 0};
    FT_CHECK(xb.shape(1) == (g.C + 15) / 16 && xb.shape(4) == 16 && g.H >= 1 && g.W >= 1,
             op << "(xb): expected shape (N, " << (g.C + 15) / 16 << ", H" << (xpad_h ? " + 2ph" : "")
                << ", W" << (xpad_w ? " + 2pw" : "") << ", 16) for w " << shape_str(w) << ", got "
                << shape_str(xb));
    g.P = out_extent(op, "height", g.H, g.R, sh, ph);
    g.Q = out_extent(op, "width", g.W, g.S, sw, pw);
    return g;
  };
  // halo_dy: -1, dyb padded by conv2d_blocked_dy_pads; else dyb's symmetric zero halo, which the
  // data gradient (covers_pads) needs at least as wide as every one of those pads.
  auto expect_dyp = [](const char* op, const py::array& dyp, const Conv& g, int64_t sh, int64_t sw,
                       int64_t ph, int64_t pw, int64_t halo_dy = -1, bool covers_pads = false) {
    int64_t p[4];
    ft::cpu::conv2d_blocked_dy_pads(g.H, g.W, g.R, g.S, sh, sw, ph, pw, p);
    const int64_t need = std::max(std::max(p[0], p[1]), std::max(p[2], p[3]));
    FT_CHECK(halo_dy >= -1 && (!covers_pads || halo_dy == -1 || halo_dy >= need),
             op << "(halo_dy): expected -1 (dyb padded by conv2d_blocked_dy_pads) or a halo >= "
                << (covers_pads ? need : 0) << ", got " << halo_dy);
    if (halo_dy >= 0) p[0] = p[1] = p[2] = p[3] = halo_dy;
    expect_shape(op, "dyb", dyp, {g.N, (g.K + 15) / 16, p[0] + g.P + p[1], p[2] + g.Q + p[3], 16});
  };
  // halo_x: the zero halo xb carries (-1: exactly the padding ph, pw); it may be wider than the
  // padding, so one blocked activation serves a padded 3x3 and an unpadded 1x1 convolution.
  auto x_halo = [](const char* op, int64_t halo_x, int64_t ph, int64_t pw) {
    FT_CHECK(halo_x == -1 || (halo_x >= ph && halo_x >= pw),
             op << "(halo_x): expected -1 (the padding) or a halo >= the padding (" << ph << ", " << pw
                << "), got " << halo_x);
    return halo_x == -1 ? std::pair<int64_t, int64_t>{ph, pw} : std::pair<int64_t, int64_t>{halo_x, halo_x};
  };
  // The batchnorm statistics the forwards fill: None or a (2, K) float64 array.
  m.def("conv2d_blocked_fwd", [=](py::array xb, py::array w, py::array b, py::array yb, int64_t sh,
                                  int64_t sw, int64_t ph, int64_t pw, bool relu, py::object stats,
                                  int64_t halo_x) {
    const char* op = "conv2d_blocked_fwd";
    const auto hx = x_halo(op, halo_x, ph, pw);
    Conv g = blocked_geom(op, xb, w, sh, sw, ph, pw, hx.first, hx.second);
    expect_shape(op, "b", b, {g.K});
    expect_shape(op, "yb", yb, {g.N, (g.K + 15) / 16, g.P, g.Q, 16});
    py::array keep_stats;
    double* pst = sums_ptr(op, "stats", stats, g.K, true, keep_stats);
    const float *px = ptr_of(xb, "xb"), *pw_ = ptr_of(w, "w"), *pb = ptr_of(b, "b");
    float* py_ = ptr_of(yb, "yb");
    py::gil_scoped_release nogil;
    ft::cpu::conv2d_blocked_fwd(px, pw_, pb, py_, g.N, g.C, g.H, g.W, g.K, g.R, g.S, sh, sw, ph, pw, relu,
                                pst, hx.first, hx.second);
  }, py::arg("xb"), py::arg("w"), py::arg("b"), py::arg("yb"), py::arg("sh"), py::arg("sw"),
     py::arg("ph"), py::arg("pw"), py::arg("relu"), py::arg("stats") = py::none(), py::kw_only(),
     py::arg("halo_x") = -1,
     "y = conv(x) (+ ReLU); stats, if given: (2, K) float64 overwritten with the sum and the sum of "
     "squares of each output channel of y (after the ReLU), deterministic for any thread count");
  m.def("conv2d_blocked_bwd_data", [=](py::array dyb, py::array w, py::array dxb, int64_t sh,
                                       int64_t sw, int64_t ph, int64_t pw, int64_t halo_dy,
                                       bool accumulate, py::object bn_sums, py::object bn_x,
                                       py::object bn_mean, py::object bn_invstd, py::object bn_gamma,
                                       py::object bn_beta, int64_t halo_bn_x) {
    const char* op = "conv2d_blocked_bwd_data";
    Conv g = blocked_geom(op, dxb, w, sh, sw, ph, pw, 0, 0);
    expect_dyp(op, dyb, g, sh, sw, ph, pw, halo_dy, true);
    const float *pdy = ptr_of(dyb, "dyb"), *pw_ = ptr_of(w, "w");
    float* pdx = ptr_of(dxb, "dxb");
    // the consuming batchnorm's backward sums (BnGradSums): all of its arrays or none
    ft::cpu::BnGradSums bn{};
    py::array keep[6];
    const bool with_bn = !bn_sums.is_none();
    if (with_bn) {
      FT_CHECK(!bn_x.is_none() && !bn_mean.is_none() && !bn_invstd.is_none() && !bn_gamma.is_none(),
               op << "(bn_sums): expected bn_x, bn_mean, bn_invstd and bn_gamma with bn_sums, got None for one");
      FT_CHECK(halo_bn_x >= 0, op << "(halo_bn_x): expected a halo >= 0, got " << halo_bn_x);
      keep[0] = bn_x.cast<py::array>();
      expect_shape(op, "bn_x", keep[0], {g.N, (g.C + 15) / 16, g.H + 2 * halo_bn_x, g.W + 2 * halo_bn_x, 16});
      bn.x = ptr_of(keep[0], "bn_x");
      FT_CHECK(bn.x != pdx, op << "(bn_x): expected an array distinct from dxb, got the same one");
      bn.hx = halo_bn_x;
      const std::pair<py::object*, const float**> vecs[] = {
          {&bn_mean, &bn.mean}, {&bn_invstd, &bn.invstd}, {&bn_gamma, &bn.gamma}, {&bn_beta, &bn.beta}};
      const char* names[] = {"bn_mean", "bn_invstd", "bn_gamma", "bn_beta"};
      for (int i = 0; i < 4; ++i) {
        if (vecs[i].first->is_none()) continue;  // only bn_beta may be (no ReLU mask)
        keep[1 + i] = vecs[i].first->cast<py::array>();
        expect_shape(op, names[i], keep[1 + i], {g.C});
        *vecs[i].second = ptr_of(keep[1 + i], names[i]);
      }
      bn.sums = sums_ptr(op, "bn_sums", bn_sums, g.C, true, keep[5]);
    } else {
      FT_CHECK(bn_x.is_none() && bn_mean.is_none() && bn_invstd.is_none() && bn_gamma.is_none() && bn_beta.is_none(),
               op << "(bn_sums): expected bn_sums with the batchnorm's arrays (bn_x, ...), got None");
    }
    py::gil_scoped_release nogil;
    ft::cpu::conv2d_blocked_bwd_data(pdy, pw_, pdx, g.N, g.C, g.H, g.W, g.K, g.R, g.S, sh, sw, ph, pw,
                                     halo_dy, accumulate, with_bn ? &bn : nullptr);
  }, py::arg("dyb"), py::arg("w"), py::arg("dxb"), py::arg("sh"), py::arg("sw"), py::arg("ph"),
     py::arg("pw"), py::kw_only(), py::arg("halo_dy") = -1, py::arg("accumulate") = false,
     py::arg("bn_sums") = py::none(), py::arg("bn_x") = py::none(), py::arg("bn_mean") = py::none(),
     py::arg("bn_invstd") = py::none(), py::arg("bn_gamma") = py::none(), py::arg("bn_beta") = py::none(),
     py::arg("halo_bn_x") = 0,
     "dx = (or, accumulate=True, dx +=) the data gradient; halo_dy: dyb's symmetric zero halo (-1: the "
     "pads of conv2d_blocked_dy_pads). bn_sums ((2, C) float64, overwritten): the backward sums of the "
     "training batchnorm whose output gradient dx is, [sum m*g, sum m*g*(x - mean)] over the final dx "
     "g, with x = bn_x (its input, zero halo halo_bn_x) and m = (x*a + b > 0) (a = gamma*invstd, "
     "b = beta - mean*a: its fused ReLU) when bn_beta is given, else 1");
  m.def("conv2d_blocked_bwd_weight", [=](py::array xb, py::array dyb, py::array dw, py::array db,
                                         int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t halo_x,
                                         int64_t halo_dy) {
    const char* op = "conv2d_blocked_bwd_weight";
    const auto hx = x_halo(op, halo_x, ph, pw);
    Conv g = blocked_geom(op, xb, dw, sh, sw, ph, pw, hx.first, hx.second);
    expect_dyp(op, dyb, g, sh, sw, ph, pw, halo_dy);
    expect_shape(op, "db", db, {g.K});
    const float *px = ptr_of(xb, "xb"), *pdy = ptr_of(dyb, "dyb");
    float *pdw = ptr_of(dw, "dw"), *pdb = ptr_of(db, "db");
    py::gil_scoped_release nogil;
    ft::cpu::conv2d_blocked_bwd_weight(px, pdy, pdw, pdb, g.N, g.C, g.H, g.W, g.K, g.R, g.S, sh, sw, ph, pw,
                                       hx.first, hx.second, halo_dy);
  }, py::arg("xb"), py::arg("dyb"), py::arg("dw"), py::arg("db"), py::arg("sh"), py::arg("sw"),
     py::arg("ph"), py::arg("pw"), py::kw_only(), py::arg("halo_x") = -1, py::arg("halo_dy") = -1);
  // Depthwise on blocked arrays (groups == C == K): C from w (C, 1, R, S); `xname` (the forward
  // input, or dx) gives H and W through its halo; the other blocked array must match.
  auto dw_geom = [](const char* op, const char* xname, const py::array& xb, int64_t hx, const py::array& w,
                    int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw) {
    expect_ndim(op, xname, xb, 5);
    expect_ndim(op, "w", w, 4);
    check_window(op, sh, sw, ph, pw);
    FT_CHECK(dh >= 1 && dw >= 1, op << "(dil_h, dil_w): expected dilations >= 1, got (" << dh << ", " << dw << ")");
    FT_CHECK(hx >= 0, op << ": expected halos >= 0, got " << hx);
    Conv g{xb.shape(0), w.shape(0), xb.shape(2) - 2 * hx, xb.shape(3) - 2 * hx, w.shape(0), w.shape(2), w.shape(3), 0, 0};
    FT_CHECK(w.shape(1) == 1, op << "(w): expected shape (C, 1, R, S), got " << shape_str(w));
    FT_CHECK(xb.shape(1) == (g.C + 15) / 16 && xb.shape(4) == 16 && g.H >= 1 && g.W >= 1,
             op << "(" << xname << "): expected shape (N, " << (g.C + 15) / 16 << ", H + 2*halo, W + 2*halo, 16) "
                << "with halo " << hx << " for w " << shape_str(w) << ", got " << shape_str(xb));
    g.P = out_extent(op, "height", g.H, g.R, sh, ph, dh);
    g.Q = out_extent(op, "width", g.W, g.S, sw, pw, dw);
    return g;
  };
  auto dw_other = [](const char* op, const char* name, const py::array& a, const Conv& g, int64_t P, int64_t Q,
                     int64_t halo) {
    FT_CHECK(halo >= 0, op << ": expected halos >= 0, got " << halo);
    expect_shape(op, name, a, {g.N, (g.C + 15) / 16, P + 2 * halo, Q + 2 * halo, 16});
  };
  m.def("depthwise_blocked_fwd", [=](py::array xb, py::array w, py::array b, py::array yb, int64_t sh, int64_t sw,
                                     int64_t ph, int64_t pw, bool relu, int64_t dh, int64_t dw, int64_t hx,
                                     int64_t hy, py::object stats) {
    const char* op = "depthwise_blocked_fwd";
    Conv g = dw_geom(op, "xb", xb, hx, w, sh, sw, ph, pw, dh, dw);
    expect_shape(op, "b", b, {g.C});
    dw_other(op, "yb", yb, g, g.P, g.Q, hy);
    const float *px = ptr_of(xb, "xb"), *pw_ = ptr_of(w, "w"), *pb = ptr_of(b, "b");
    float* py_ = ptr_of(yb, "yb");
    py::array keep_stats;
    double* pst = sums_ptr(op, "stats", stats, g.C, true, keep_stats);
    py::gil_scoped_release nogil;
    ft::cpu::depthwise_blocked_fwd(px, pw_, pb, py_, g.N, g.C, g.H, g.W, g.R, g.S, sh, sw, ph, pw, dh, dw, relu, hx, hy,
                                   pst);
  }, py::arg("xb"), py::arg("w"), py::arg("b"), py::arg("yb"), py::arg("sh"), py::arg("sw"), py::arg("ph"),
     py::arg("pw"), py::arg("relu") = false, py::arg("dil_h") = 1, py::arg("dil_w") = 1, py::kw_only(),
     py::arg("halo_x") = 0, py::arg("halo_y") = 0, py::arg("stats") = py::none(),
     "y = depthwise conv(x) (+ ReLU); stats, if given: (2, C) float64 overwritten with the sum and the sum of "
     "squares of each channel of y's interior (the same bits for any thread count)");
  m.def("depthwise_blocked_bwd_data", [=](py::array dyb, py::array w, py::array dxb, int64_t sh, int64_t sw,
                                          int64_t ph, int64_t pw, int64_t dh, int64_t dw, int64_t hdy, int64_t hdx) {
    const char* op = "depthwise_blocked_bwd_data";
    Conv g = dw_geom(op, "dxb", dxb, hdx, w, sh, sw, ph, pw, dh, dw);
    dw_other(op, "dyb", dyb, g, g.P, g.Q, hdy);
    const float *pdy = ptr_of(dyb, "dyb"), *pw_ = ptr_of(w, "w");
    float* pdx = ptr_of(dxb, "dxb");
    py::gil_scoped_release nogil;
    ft::cpu::depthwise_blocked_bwd_data(pdy, pw_, pdx, g.N, g.C, g.H, g.W, g.R, g.S, sh, sw, ph, pw, dh, dw, hdy, hdx);
  }, py::arg("dyb"), py::arg("w"), py::arg("dxb"), py::arg("sh"), py::arg("sw"), py::arg("ph"), py::arg("pw"),
     py::arg("dil_h") = 1, py::arg("dil_w") = 1, py::kw_only(), py::arg("halo_dy") = 0, py::arg("halo_dx") = 0);
  m.def("depthwise_blocked_bwd_weight", [=](py::array xb, py::array dyb, py::array dwt, py::array db, int64_t sh,
                                            int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw, int64_t hx,
                                            int64_t hdy) {
    const char* op = "depthwise_blocked_bwd_weight";
    Conv g = dw_geom(op, "xb", xb, hx, dwt, sh, sw, ph, pw, dh, dw);
    dw_other(op, "dyb", dyb, g, g.P, g.Q, hdy);
    expect_shape(op, "db", db, {g.C});
    const float *px = ptr_of(xb, "xb"), *pdy = ptr_of(dyb, "dyb");
    float *pdw = ptr_of(dwt, "dw"), *pdb = ptr_of(db, "db");
    py::gil_scoped_release nogil;
    ft::cpu::depthwise_blocked_bwd_weight(px, pdy, pdw, pdb, g.N, g.C, g.H, g.W, g.R, g.S, sh, sw, ph, pw, dh, dw,
                                          hx, hdy);
  }, py::arg("xb"), py::arg("dyb"), py::arg("dw"), py::arg("db"), py::arg("sh"), py::arg("sw"), py::arg("ph"),
     py::arg("pw"), py::arg("dil_h") = 1, py::arg("dil_w") = 1, py::kw_only(), py::arg("halo_x") = 0,
     py::arg("halo_dy") = 0);

  m.def("depthwise_blocked_bwd", [=](py::array xb, py::array dyb, py::array w, py::array dxb, py::array dwt,
                                     py::array db, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh,
                                     int64_t dw, int64_t hx, int64_t hdy, int64_t hdx) {
    const char* op = "depthwise_blocked_bwd";
    Conv g = dw_geom(op, "xb", xb, hx, w, sh, sw, ph, pw, dh, dw);
    dw_other(op, "dyb", dyb, g, g.P, g.Q, hdy);
    dw_other(op, "dxb", dxb, g, g.H, g.W, hdx);
    expect_shape(op, "dw", dwt, {g.C, 1, g.R, g.S});
    expect_shape(op, "db", db, {g.C});
    const float *px = ptr_of(xb, "xb"), *pdy = ptr_of(dyb, "dyb"), *pw_ = ptr_of(w, "w");
    float *pdx = ptr_of(dxb, "dxb"), *pdw = ptr_of(dwt, "dw"), *pdb = ptr_of(db, "db");
    // dx is written while x and dy are still read for the weight gradient: no aliasing
    FT_CHECK(pdx != px && pdx != pdy, op << "(dxb): expected an array distinct from xb and dyb, got the same one");
    py::gil_scoped_release nogil;
    ft::cpu::depthwise_blocked_bwd(px, pdy, pw_, pdx, pdw, pdb, g.N, g.C, g.H, g.W, g.R, g.S, sh, sw, ph, pw, dh, dw,
                                   hx, hdy, hdx);
  }, py::arg("xb"), py::arg("dyb"), py::arg("w"), py::arg("dxb"), py::arg("dw"), py::arg("db"), py::arg("sh"),
     py::arg("sw"), py::arg("ph"), py::arg("pw"), py::arg("dil_h") = 1, py::arg("dil_w") = 1, py::kw_only(),
     py::arg("halo_x") = 0, py::arg("halo_dy") = 0, py::arg("halo_dx") = 0,
     "bwd_data's dx and bwd_weight's dw, db (accumulated) in one pass over dy: the same bits as the two calls");

  // The stem: NCHW x (few channels) in, blocked y out; its weight gradient from x and the blocked dy.
  m.def("conv2d_stem_fwd", [=](py::array x, py::array w, py::array b, py::array yb, int64_t sh,
                               int64_t sw, int64_t ph, int64_t pw, bool relu, py::object stats) {
    const char* op = "conv2d_stem_fwd";
    Conv g = conv_geom(op, x, w, sh, sw, ph, pw, 1, 1, 1, "x");
    expect_shape(op, "b", b, {g.K});
    expect_shape(op, "yb", yb, {g.N, (g.K + 15) / 16, g.P, g.Q, 16});
    py::array keep_stats;
    double* pst = sums_ptr(op, "stats", stats, g.K, true, keep_stats);
    const float *px = ptr_of(x, "x"), *pw_ = ptr_of(w, "w"), *pb = ptr_of(b, "b");
    float* py_ = ptr_of(yb, "yb");
    py::gil_scoped_release nogil;
    ft::cpu::conv2d_stem_fwd(px, pw_, pb, py_, g.N, g.C, g.H, g.W, g.K, g.R, g.S, sh, sw, ph, pw, relu, pst);
  }, py::arg("x"), py::arg("w"), py::arg("b"), py::arg("yb"), py::arg("sh"), py::arg("sw"),
     py::arg("ph"), py::arg("pw"), py::arg("relu"), py::arg("stats") = py::none(),
     "conv2d_blocked_fwd for an NCHW x of few channels (the network's input): y blocked, halo 0");
  m.def("conv2d_stem_bwd_weight", [=](py::array x, py::array dyb, py::array dw, py::array db,
                                      int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t halo_dy) {
    const char* op = "conv2d_stem_bwd_weight";
    Conv g = conv_geom(op, x, dw, sh, sw, ph, pw, 1, 1, 1, "x");
    expect_dyp(op, dyb, g, sh, sw, ph, pw, halo_dy);
    expect_shape(op, "db", db, {g.K});
    const float *px = ptr_of(x, "x"), *pdy = ptr_of(dyb, "dyb");
    float *pdw = ptr_of(dw, "dw"), *pdb = ptr_of(db, "db");
    py::gil_scoped_release nogil;
    ft::cpu::conv2d_stem_bwd_weight(px, pdy, pdw, pdb, g.N, g.C, g.H, g.W, g.K, g.R, g.S, sh, sw, ph, pw, halo_dy);
  }, py::arg("x"), py::arg("dyb"), py::arg("dw"), py::arg("db"), py::arg("sh"), py::arg("sw"),
     py::arg("ph"), py::arg("pw"), py::kw_only(), py::arg("halo_dy") = -1);

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

  // The fused residual of a ResNet block: an optional array of x's size, distinct from `other`
  // (the output it is read beside or written beside), or nullptr.
  auto residual_of = [](py::object r, py::array& keep, const py::array& x, const py::array& other,
                        const char* name, const char* other_name) -> float* {
    if (r.is_none()) return nullptr;
    keep = r.cast<py::array>();
    same_size(x, keep, "x", name);
    float* p = ptr_of(keep, name);
    FT_CHECK(p != static_cast<const float*>(other.data()),
             name << ": expected an array distinct from " << other_name << ", got the same one");
    return p;
  };
  m.def("batchnorm_fwd_train", [residual_of](py::array x, py::array gamma, py::array beta, double eps,
                                  py::array y, py::array mean, py::array invstd, bool relu,
                                  py::object residual) {
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
    py::array res;
    const float* pr = residual_of(residual, res, x, y, "residual", "y");
    py::gil_scoped_release nogil;
    ft::cpu::batchnorm_fwd_train(px, pg, pb, static_cast<float>(eps), py_, pm, pi, N, C, S, relu, pr);
  }, py::arg("x"), py::arg("gamma"), py::arg("beta"), py::arg("eps"), py::arg("y"),
     py::arg("mean"), py::arg("invstd"), py::arg("relu") = false, py::arg("residual") = py::none());

  m.def("batchnorm_fwd_eval", [residual_of](py::array x, py::array gamma, py::array beta,
                                 py::array running_mean, py::array running_var, double eps,
                                 py::array y, bool relu, py::object residual) {
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
    py::array res;
    const float* pr = residual_of(residual, res, x, y, "residual", "y");
    py::gil_scoped_release nogil;
    ft::cpu::batchnorm_fwd_eval(px, pg, pb, prm, prv, static_cast<float>(eps), py_, N, C, S, relu, pr);
  }, py::arg("x"), py::arg("gamma"), py::arg("beta"), py::arg("running_mean"),
     py::arg("running_var"), py::arg("eps"), py::arg("y"), py::arg("relu") = false,
     py::arg("residual") = py::none());

  m.def("batchnorm_bwd", [residual_of](py::array x, py::array dy, py::array gamma, py::array mean,
                            py::array invstd, py::array dx, py::array dgamma, py::array dbeta,
                            py::object y, py::object dres) {
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
    const float* pyo = nullptr;  // the fused ReLU's output, when the forward applied it
    py::array ya;
    if (!y.is_none()) {
      ya = y.cast<py::array>();
      same_size(x, ya, "x", "y");
      pyo = ptr_of(ya, "y");
    }
    py::array dr;
    float* pdr = residual_of(dres, dr, x, dx, "dres", "dx");
    FT_CHECK(pdr == nullptr || pdr != pdy, "dres: expected an array distinct from dy, got the same one");
    py::gil_scoped_release nogil;
    ft::cpu::batchnorm_bwd(px, pdy, pg, pm, pi, pdx, pdg, pdb, N, C, S, pyo, pdr);
  }, py::arg("x"), py::arg("dy"), py::arg("gamma"), py::arg("mean"), py::arg("invstd"),
     py::arg("dx"), py::arg("dgamma"), py::arg("dbeta"), py::arg("y") = py::none(),
     py::arg("dres") = py::none());

  m.def("maxpool2d_fwd", [](py::array x, py::array y, py::array argmax, int64_t kh, int64_t kw,
                            int64_t sh, int64_t sw, int64_t ph, int64_t pw, bool ceil_mode, int64_t dh,
                            int64_t dw) {
    const char* op = "maxpool2d_fwd";
    expect_ndim(op, "x", x, 4);
    check_window(op, sh, sw, ph, pw);
    FT_CHECK(dh >= 1 && dw >= 1, op << "(dil_h, dil_w): expected dilations >= 1, got (" << dh << ", " << dw << ")");
    const int64_t N = x.shape(0), C = x.shape(1), H = x.shape(2), W = x.shape(3);
    const int64_t P = pool_extent(op, "height", H, kh, sh, ph, dh, ceil_mode),
                  Q = pool_extent(op, "width", W, kw, sw, pw, dw, ceil_mode);
    expect_shape(op, "y", y, {N, C, P, Q});
    expect_shape(op, "argmax", argmax, {N, C, P, Q});
    FT_CHECK(argmax.writeable(), "argmax: expected a writeable array");
    const float* px = ptr_of(x, "x");
    float* py_ = ptr_of(y, "y");
    int64_t* pa = const_cast<int64_t*>(i64_ptr(argmax, "argmax"));
    py::gil_scoped_release nogil;
    ft::cpu::maxpool2d_fwd(px, py_, pa, N * C, H, W, P, Q, kh, kw, sh, sw, ph, pw, dh, dw);
  }, py::arg("x"), py::arg("y"), py::arg("argmax"), py::arg("kh"), py::arg("kw"), py::arg("sh"),
     py::arg("sw"), py::arg("ph"), py::arg("pw"), py::arg("ceil_mode") = false, py::arg("dil_h") = 1,
     py::arg("dil_w") = 1);

  m.def("maxpool2d_bwd", [](py::array dy, py::array argmax, py::array dx) {
    const char* op = "maxpool2d_bwd";
    expect_ndim(op, "dy", dy, 4);
    expect_ndim(op, "dx", dx, 4);
    const int64_t N = dy.shape(0), C = dy.shape(1);
    expect_shape(op, "argmax", argmax, {N, C, dy.shape(2), dy.shape(3)});
    FT_CHECK(dx.shape(0) == N && dx.shape(1) == C,
             op << "(dx): expected shape (" << N << ", " << C << ", H, W), got " << shape_str(dx));
    const int64_t H = dx.shape(2), W = dx.shape(3);
    const float* pdy = ptr_of(dy, "dy");
    const int64_t* pa = i64_ptr(argmax, "argmax");
    float* pdx = ptr_of(dx, "dx");
    int64_t bad;
    {
      py::gil_scoped_release nogil;
      bad = ft::cpu::maxpool2d_bwd(pdy, pa, pdx, N * C, H, W, dy.shape(2), dy.shape(3));
    }
    FT_CHECK(bad < 0, op << "(argmax): expected indices in [0, " << H * W << "), got " << pa[bad]
                         << " at flat position " << bad);
  }, py::arg("dy"), py::arg("argmax"), py::arg("dx"));

  // The tap form (see cpu.h): each maximum named by its window tap r * kw + s in one byte
  m.def("maxpool2d_taps_fwd", [](py::array x, py::array y, py::array taps, int64_t kh, int64_t kw, int64_t sh,
                                 int64_t sw, int64_t ph, int64_t pw, bool ceil_mode, int64_t dh, int64_t dw) {
    const char* op = "maxpool2d_taps_fwd";
    const auto d = tap_pool_dims(op, "x", x, "y", y, taps, kh, kw, sh, sw, ph, pw, ceil_mode, dh, dw);
    const float* px = ptr_of(x, "x");
    float* py_ = ptr_of(y, "y");
    uint8_t* pt = u8_ptr(taps, "taps", true);
    py::gil_scoped_release nogil;
    ft::cpu::maxpool2d_taps_fwd(px, py_, pt, d.NC, d.H, d.W, d.P, d.Q, kh, kw, sh, sw, ph, pw, dh, dw);
  }, py::arg("x"), py::arg("y"), py::arg("taps"), py::arg("kh"), py::arg("kw"), py::arg("sh"), py::arg("sw"),
     py::arg("ph"), py::arg("pw"), py::arg("ceil_mode") = false, py::arg("dil_h") = 1, py::arg("dil_w") = 1);

  m.def("maxpool2d_taps_bwd", [](py::array dy, py::array taps, py::array dx, int64_t kh, int64_t kw, int64_t sh,
                                 int64_t sw, int64_t ph, int64_t pw, bool ceil_mode, int64_t dh, int64_t dw) {
    const char* op = "maxpool2d_taps_bwd";
    const auto d = tap_pool_dims(op, "dx", dx, "dy", dy, taps, kh, kw, sh, sw, ph, pw, ceil_mode, dh, dw);
    const float* pdy = ptr_of(dy, "dy");
    const uint8_t* pt = u8_ptr(taps, "taps", false);
    float* pdx = ptr_of(dx, "dx");
    int64_t bad;
    {
      py::gil_scoped_release nogil;
      bad = ft::cpu::maxpool2d_taps_bwd(pdy, pt, pdx, d.NC, d.H, d.W, d.P, d.Q, kh, kw, sh, sw, ph, pw, dh, dw);
    }
    FT_CHECK(bad < 0, op << "(taps): expected window taps r*kw + s of a tap inside the image (kh=" << kh << ", kw="
                         << kw << "), got " << int(pt[bad]) << " at flat position " << bad);
  }, py::arg("dy"), py::arg("taps"), py::arg("dx"), py::arg("kh"), py::arg("kw"), py::arg("sh"), py::arg("sw"),
     py::arg("ph"), py::arg("pw"), py::arg("ceil_mode") = false, py::arg("dil_h") = 1, py::arg("dil_w") = 1);

  m.def("avgpool2d_fwd", [](py::array x, py::array y, int64_t kh, int64_t kw, int64_t sh,
                            int64_t sw, int64_t ph, int64_t pw, bool ceil_mode, bool count_include_pad,
                            int64_t divisor_override) {
    const char* op = "avgpool2d_fwd";
    expect_ndim(op, "x", x, 4);
    check_window(op, sh, sw, ph, pw);
    const int64_t N = x.shape(0), C = x.shape(1), H = x.shape(2), W = x.shape(3);
    const int64_t P = pool_extent(op, "height", H, kh, sh, ph, 1, ceil_mode),
                  Q = pool_extent(op, "width", W, kw, sw, pw, 1, ceil_mode);
    expect_shape(op, "y", y, {N, C, P, Q});
    const float* px = ptr_of(x, "x");
    float* py_ = ptr_of(y, "y");
    py::gil_scoped_release nogil;
    ft::cpu::avgpool2d_fwd(px, py_, N * C, H, W, P, Q, kh, kw, sh, sw, ph, pw, count_include_pad, divisor_override);
  }, py::arg("x"), py::arg("y"), py::arg("kh"), py::arg("kw"), py::arg("sh"), py::arg("sw"),
     py::arg("ph"), py::arg("pw"), py::arg("ceil_mode") = false, py::arg("count_include_pad") = true,
     py::arg("divisor_override") = 0);

  m.def("avgpool2d_bwd", [](py::array dy, py::array dx, int64_t kh, int64_t kw, int64_t sh,
                            int64_t sw, int64_t ph, int64_t pw, bool ceil_mode, bool count_include_pad,
                            int64_t divisor_override) {
    const char* op = "avgpool2d_bwd";
    expect_ndim(op, "dx", dx, 4);
    check_window(op, sh, sw, ph, pw);
    const int64_t N = dx.shape(0), C = dx.shape(1), H = dx.shape(2), W = dx.shape(3);
    const int64_t P = pool_extent(op, "height", H, kh, sh, ph, 1, ceil_mode),
                  Q = pool_extent(op, "width", W, kw, sw, pw, 1, ceil_mode);
    expect_shape(op, "dy", dy, {N, C, P, Q});
    const float* pdy = ptr_of(dy, "dy");
    float* pdx = ptr_of(dx, "dx");
    py::gil_scoped_release nogil;
    ft::cpu::avgpool2d_bwd(pdy, pdx, N * C, H, W, P, Q, kh, kw, sh, sw, ph, pw, count_include_pad, divisor_override);
  }, py::arg("dy"), py::arg("dx"), py::arg("kh"), py::arg("kw"), py::arg("sh"), py::arg("sw"),
     py::arg("ph"), py::arg("pw"), py::arg("ceil_mode") = false, py::arg("count_include_pad") = true,
     py::arg("divisor_override") = 0);
}

}  // namespace layers

// ---- the blocked layout (N, ceil(C/16), H + 2h, W + 2h, 16) of csrc/cpu/blocked.cpp ----
namespace blocked_layout {
using namespace layers;

struct Geo {
  int64_t N, C, H, W;  // C: channels (a multiple of 16 where only the blocks are known)
};

void check_halo(const char* op, const char* halo_name, int64_t halo) {
  FT_CHECK(halo >= 0, op << "(" << halo_name << "): expected a halo >= 0, got " << halo);
}

// A blocked array of C channels with the given halo: its geometry (interior H, W >= 1).
Geo blocked_geo(const char* op, const char* name, const py::array& a, int64_t C, int64_t halo,
                const char* halo_name) {
  check_halo(op, halo_name, halo);
  expect_ndim(op, name, a, 5);
  const int64_t Cb = C > 0 ? (C + 15) / 16 : a.shape(1);
  const Geo g{a.shape(0), C > 0 ? C : Cb * 16, a.shape(2) - 2 * halo, a.shape(3) - 2 * halo};
  FT_CHECK(a.shape(1) == Cb && a.shape(4) == 16 && g.H >= 1 && g.W >= 1,
           op << "(" << name << "): expected shape (N, " << Cb << ", H + " << 2 * halo << ", W + "
              << 2 * halo << ", 16) with H, W >= 1 (" << (C > 0 ? std::to_string(C) + " channels, " : "")
              << halo_name << "=" << halo << "), got " << shape_str(a));
  return g;
}

// A blocked array with g's geometry and the given halo.
void expect_blocked(const char* op, const char* name, const py::array& a, const Geo& g, int64_t halo,
                    const char* halo_name) {
  check_halo(op, halo_name, halo);
  const int64_t Cb = (g.C + 15) / 16;
  bool ok = a.ndim() == 5 && a.shape(0) == g.N && a.shape(1) == Cb && a.shape(2) == g.H + 2 * halo &&
            a.shape(3) == g.W + 2 * halo && a.shape(4) == 16;
  FT_CHECK(ok, op << "(" << name << "): expected shape " << dims_str({g.N, Cb, g.H + 2 * halo, g.W + 2 * halo, 16})
                  << " (interior " << g.H << " x " << g.W << ", " << halo_name << "=" << halo << "), got "
                  << shape_str(a));
}

// An optional blocked float32 array (None: nullptr) distinct from the arrays in `others`.
float* optional_blocked(const char* op, const char* name, py::object o, py::array& keep, const Geo& g,
                        int64_t halo, const char* halo_name,
                        std::initializer_list<std::pair<const py::array*, const char*>> others) {
  if (o.is_none()) return nullptr;
  keep = o.cast<py::array>();
  expect_blocked(op, name, keep, g, halo, halo_name);
  float* p = ptr_of(keep, name);
  for (const auto& [other, other_name] : others)
    FT_CHECK(p != static_cast<const float*>(other->data()),
             name << ": expected an array distinct from " << other_name << ", got the same one");
  return p;
}

void expect_channels(const char* op, const char* name, const py::array& a, int64_t C) {
  expect_shape(op, name, a, {C});
}

void bind(py::module_& m) {
  m.def("batchnorm_blocked_fwd_train", [](py::array xb, py::array gamma, py::array beta, double eps,
                                          py::array yb, py::array mean, py::array invstd, bool relu,
                                          py::object residual, py::object stats, int64_t halo_x,
                                          int64_t halo_y, int64_t halo_res) {
    const char* op = "batchnorm_blocked_fwd_train";
    expect_ndim(op, "gamma", gamma, 1);
    const Geo g = blocked_geo(op, "xb", xb, gamma.shape(0), halo_x, "halo_x");
    FT_CHECK(eps >= 0, op << "(eps): expected eps >= 0, got " << eps);
    for (auto [a, n] : {std::pair{&beta, "beta"}, {&mean, "mean"}, {&invstd, "invstd"}}) expect_channels(op, n, *a, g.C);
    expect_blocked(op, "yb", yb, g, halo_y, "halo_y");
    const float *px = ptr_of(xb, "xb"), *pg = ptr_of(gamma, "gamma"), *pb = ptr_of(beta, "beta");
    float *py_ = ptr_of(yb, "yb"), *pm = ptr_of(mean, "mean"), *pi = ptr_of(invstd, "invstd");
    FT_CHECK(px != py_ || halo_x == halo_y, op << "(yb): an in-place call (yb is xb) needs halo_y == halo_x, got "
                                               << halo_y << " and " << halo_x);
    py::array res, st;
    const float* pr = optional_blocked(op, "residual", residual, res, g, halo_res, "halo_res", {{&yb, "yb"}});
    const double* ps = nullptr;
    if (!stats.is_none()) {
      st = stats.cast<py::array>();
      FT_CHECK(st.dtype().is(py::dtype::of<double>()) && (st.flags() & py::array::c_style),
               op << "(stats): expected a C-contiguous float64 array, got dtype " << std::string(py::str(st.dtype())));
      expect_shape(op, "stats", st, {2, g.C});
      ps = static_cast<const double*>(st.data());
    }
    py::gil_scoped_release nogil;
    ft::cpu::batchnorm_blocked_fwd_train(px, pg, pb, static_cast<float>(eps), py_, pm, pi, g.N, g.C, g.H, g.W,
                                         relu, pr, ps, halo_x, halo_y, halo_res);
  }, py::arg("xb"), py::arg("gamma"), py::arg("beta"), py::arg("eps"), py::arg("yb"), py::arg("mean"),
     py::arg("invstd"), py::arg("relu") = false, py::arg("residual") = py::none(), py::arg("stats") = py::none(),
     py::kw_only(), py::arg("halo_x") = 0, py::arg("halo_y") = 0, py::arg("halo_res") = 0);

  m.def("batchnorm_blocked_fwd_eval", [](py::array xb, py::array gamma, py::array beta, py::array running_mean,
                                         py::array running_var, double eps, py::array yb, bool relu,
                                         py::object residual, int64_t halo_x, int64_t halo_y, int64_t halo_res) {
    const char* op = "batchnorm_blocked_fwd_eval";
    expect_ndim(op, "gamma", gamma, 1);
    const Geo g = blocked_geo(op, "xb", xb, gamma.shape(0), halo_x, "halo_x");
    FT_CHECK(eps >= 0, op << "(eps): expected eps >= 0, got " << eps);
    for (auto [a, n] : {std::pair{&beta, "beta"}, {&running_mean, "running_mean"}, {&running_var, "running_var"}})
      expect_channels(op, n, *a, g.C);
    expect_blocked(op, "yb", yb, g, halo_y, "halo_y");
    const float *px = ptr_of(xb, "xb"), *pg = ptr_of(gamma, "gamma"), *pb = ptr_of(beta, "beta"),
                *prm = ptr_of(running_mean, "running_mean"), *prv = ptr_of(running_var, "running_var");
    float* py_ = ptr_of(yb, "yb");
    FT_CHECK(px != py_ || halo_x == halo_y, op << "(yb): an in-place call (yb is xb) needs halo_y == halo_x, got "
                                               << halo_y << " and " << halo_x);
    py::array res;
    const float* pr = optional_blocked(op, "residual", residual, res, g, halo_res, "halo_res", {{&yb, "yb"}});
    py::gil_scoped_release nogil;
    ft::cpu::batchnorm_blocked_fwd_eval(px, pg, pb, prm, prv, static_cast<float>(eps), py_, g.N, g.C, g.H, g.W,
                                        relu, pr, halo_x, halo_y, halo_res);
  }, py::arg("xb"), py::arg("gamma"), py::arg("beta"), py::arg("running_mean"), py::arg("running_var"),
     py::arg("eps"), py::arg("yb"), py::arg("relu") = false, py::arg("residual") = py::none(), py::kw_only(),
     py::arg("halo_x") = 0, py::arg("halo_y") = 0, py::arg("halo_res") = 0);

  m.def("batchnorm_blocked_bwd", [](py::array xb, py::array dyb, py::array gamma, py::array mean,
                                    py::array invstd, py::array dxb, py::array dgamma, py::array dbeta,
                                    py::object y, py::object dres, int64_t halo_x, int64_t halo_y,
                                    int64_t halo_dx, py::object beta, py::object sums) {
    const char* op = "batchnorm_blocked_bwd";
    expect_ndim(op, "gamma", gamma, 1);
    const Geo g = blocked_geo(op, "xb", xb, gamma.shape(0), halo_x, "halo_x");
    for (auto [a, n] : {std::pair{&mean, "mean"}, {&invstd, "invstd"}, {&dgamma, "dgamma"}, {&dbeta, "dbeta"}})
      expect_channels(op, n, *a, g.C);
    expect_blocked(op, "dyb", dyb, g, 0, "dy's halo");
    expect_blocked(op, "dxb", dxb, g, halo_dx, "halo_dx");
    const float *px = ptr_of(xb, "xb"), *pdy = ptr_of(dyb, "dyb"), *pg = ptr_of(gamma, "gamma"),
                *pm = ptr_of(mean, "mean"), *pi = ptr_of(invstd, "invstd");
    float *pdx = ptr_of(dxb, "dxb"), *pdg = ptr_of(dgamma, "dgamma"), *pdb = ptr_of(dbeta, "dbeta");
    // dx is written while x and dy are still read for later pixels of the same plane: no aliasing
    FT_CHECK(pdx != px && pdx != pdy, op << "(dxb): expected an array distinct from xb and dyb, got the same one");
    py::array ya, dr;
    const float* pyo = optional_blocked(op, "y", y, ya, g, halo_y, "halo_y", {{&dxb, "dxb"}});
    float* pdr = optional_blocked(op, "dres", dres, dr, g, 0, "dres's halo", {{&dxb, "dxb"}, {&dyb, "dyb"}});
    // beta: the fused ReLU's mask recomputed from x through the forward's affine map, instead of y
    py::array be;
    const float* pbe = nullptr;
    if (!beta.is_none()) {
      FT_CHECK(y.is_none(), op << "(beta): expected y=None with beta (both name the ReLU mask's source), got both");
      be = beta.cast<py::array>();
      expect_channels(op, "beta", be, g.C);
      pbe = ptr_of(be, "beta");
    }
    // sums: the two per-channel sums the first pass would form, precomputed (conv2d_blocked_bwd_data's bn_sums)
    FT_CHECK(sums.is_none() || dres.is_none(),
             op << "(sums): expected dres=None with sums (the sums pass writes dres), got both");
    py::array su;
    const double* psu = sums_ptr(op, "sums", sums, g.C, false, su);
    py::gil_scoped_release nogil;
    ft::cpu::batchnorm_blocked_bwd(px, pdy, pg, pm, pi, pdx, pdg, pdb, g.N, g.C, g.H, g.W, pyo, pdr, halo_x,
                                   halo_y, halo_dx, pbe, psu);
  }, py::arg("xb"), py::arg("dyb"), py::arg("gamma"), py::arg("mean"), py::arg("invstd"), py::arg("dxb"),
     py::arg("dgamma"), py::arg("dbeta"), py::arg("y") = py::none(), py::arg("dres") = py::none(), py::kw_only(),
     py::arg("halo_x") = 0, py::arg("halo_y") = 0, py::arg("halo_dx") = 0, py::arg("beta") = py::none(),
     py::arg("sums") = py::none());

  m.def("blocked_repad", [](py::array xb, int64_t channels, int64_t halo_in, py::array yb, int64_t halo_out) {
    const char* op = "blocked_repad";
    FT_CHECK(channels >= 1, op << "(channels): expected >= 1, got " << channels);
    const Geo g = blocked_geo(op, "xb", xb, channels, halo_in, "halo_in");
    expect_blocked(op, "yb", yb, g, halo_out, "halo_out");
    const float* px = ptr_of(xb, "xb");
    float* py_ = ptr_of(yb, "yb");
    FT_CHECK(px != py_, op << "(yb): expected an array distinct from xb, got the same one");
    py::gil_scoped_release nogil;
    ft::cpu::blocked_repad(px, py_, g.N, g.C, g.H, g.W, halo_in, halo_out);
  }, py::arg("xb"), py::arg("channels"), py::arg("halo_in"), py::arg("yb"), py::arg("halo_out"));

  m.def("global_avgpool_blocked_fwd", [](py::array xb, py::array y, int64_t channels, int64_t halo_x) {
    const char* op = "global_avgpool_blocked_fwd";
    FT_CHECK(channels >= 1, op << "(channels): expected >= 1, got " << channels);
    const Geo g = blocked_geo(op, "xb", xb, channels, halo_x, "halo_x");
    expect_shape(op, "y", y, {g.N, g.C});
    const float* px = ptr_of(xb, "xb");
    float* py_ = ptr_of(y, "y");
    py::gil_scoped_release nogil;
    ft::cpu::global_avgpool_blocked_fwd(px, py_, g.N, g.C, g.H, g.W, halo_x);
  }, py::arg("xb"), py::arg("y"), py::arg("channels"), py::kw_only(), py::arg("halo_x") = 0);

  m.def("global_avgpool_blocked_bwd", [](py::array dy, py::array dxb, int64_t halo_dx) {
    const char* op = "global_avgpool_blocked_bwd";
    expect_ndim(op, "dy", dy, 2);
    const Geo g = blocked_geo(op, "dxb", dxb, dy.shape(1), halo_dx, "halo_dx");
    expect_shape(op, "dy", dy, {g.N, g.C});
    const float* pdy = ptr_of(dy, "dy");
    float* pdx = ptr_of(dxb, "dxb");
    py::gil_scoped_release nogil;
    ft::cpu::global_avgpool_blocked_bwd(pdy, pdx, g.N, g.C, g.H, g.W, halo_dx);
  }, py::arg("dy"), py::arg("dxb"), py::kw_only(), py::arg("halo_dx") = 0);

  // The blocked max pool names each maximum by its window tap r * kw + s in one byte (see blocked.h).
  auto max_pool_out = [](const char* op, const Geo& g, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph,
                         int64_t pw, bool ceil_mode, int64_t dh, int64_t dw) {
    const auto [P, Q] = tap_pool_extents(op, g.H, g.W, kh, kw, sh, sw, ph, pw, ceil_mode, dh, dw);
    return Geo{g.N, g.C, P, Q};
  };

  m.def("maxpool2d_blocked_fwd", [max_pool_out](py::array xb, py::array yb, py::array taps, int64_t kh, int64_t kw,
                                                int64_t sh, int64_t sw, int64_t ph, int64_t pw, bool ceil_mode,
                                                int64_t dh, int64_t dw, int64_t halo_x, int64_t halo_y) {
    const char* op = "maxpool2d_blocked_fwd";
    const Geo g = blocked_geo(op, "xb", xb, 0, halo_x, "halo_x");
    const Geo go = max_pool_out(op, g, kh, kw, sh, sw, ph, pw, ceil_mode, dh, dw);
    expect_blocked(op, "yb", yb, go, halo_y, "halo_y");
    expect_shape(op, "taps", taps, {go.N, go.C / 16, go.H, go.W, 16});
    const float* px = ptr_of(xb, "xb");
    float* py_ = ptr_of(yb, "yb");
    uint8_t* pt = u8_ptr(taps, "taps", true);
    py::gil_scoped_release nogil;
    ft::cpu::maxpool2d_blocked_fwd(px, py_, pt, g.N, g.C, g.H, g.W, go.H, go.W, kh, kw, sh, sw, ph, pw, dh, dw,
                                   halo_x, halo_y);
  }, py::arg("xb"), py::arg("yb"), py::arg("taps"), py::arg("kh"), py::arg("kw"), py::arg("sh"), py::arg("sw"),
     py::arg("ph"), py::arg("pw"), py::arg("ceil_mode") = false, py::arg("dil_h") = 1, py::arg("dil_w") = 1,
     py::kw_only(), py::arg("halo_x") = 0, py::arg("halo_y") = 0);

  m.def("maxpool2d_blocked_bwd", [max_pool_out](py::array dyb, py::array taps, py::array dxb, int64_t kh, int64_t kw,
                                                int64_t sh, int64_t sw, int64_t ph, int64_t pw, bool ceil_mode,
                                                int64_t dh, int64_t dw, int64_t halo_dx) {
    const char* op = "maxpool2d_blocked_bwd";
    const Geo g = blocked_geo(op, "dxb", dxb, 0, halo_dx, "halo_dx");
    const Geo go = max_pool_out(op, g, kh, kw, sh, sw, ph, pw, ceil_mode, dh, dw);
    expect_blocked(op, "dyb", dyb, go, 0, "dy's halo");
    expect_shape(op, "taps", taps, {go.N, go.C / 16, go.H, go.W, 16});
    const float* pdy = ptr_of(dyb, "dyb");
    const uint8_t* pt = u8_ptr(taps, "taps", false);
    float* pdx = ptr_of(dxb, "dxb");
    py::gil_scoped_release nogil;
    ft::cpu::maxpool2d_blocked_bwd(pdy, pt, pdx, g.N, g.C, go.H, go.W, g.H, g.W, kh, kw, sh, sw, ph, pw, dh, dw,
                                   halo_dx);
  }, py::arg("dyb"), py::arg("taps"), py::arg("dxb"), py::arg("kh"), py::arg("kw"), py::arg("sh"), py::arg("sw"),
     py::arg("ph"), py::arg("pw"), py::arg("ceil_mode") = false, py::arg("dil_h") = 1, py::arg("dil_w") = 1,
     py::kw_only(), py::arg("halo_dx") = 0);

  m.def("avgpool2d_blocked_fwd", [](py::array xb, py::array yb, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                                    int64_t ph, int64_t pw, bool ceil_mode, bool count_include_pad,
                                    int64_t halo_x, int64_t halo_y) {
    const char* op = "avgpool2d_blocked_fwd";
    const Geo g = blocked_geo(op, "xb", xb, 0, halo_x, "halo_x");
    check_window(op, sh, sw, ph, pw);
    const Geo go{g.N, g.C, pool_extent(op, "height", g.H, kh, sh, ph, 1, ceil_mode),
                 pool_extent(op, "width", g.W, kw, sw, pw, 1, ceil_mode)};
    expect_blocked(op, "yb", yb, go, halo_y, "halo_y");
    const float* px = ptr_of(xb, "xb");
    float* py_ = ptr_of(yb, "yb");
    py::gil_scoped_release nogil;
    ft::cpu::avgpool2d_blocked_fwd(px, py_, g.N, g.C, g.H, g.W, go.H, go.W, kh, kw, sh, sw, ph, pw,
                                   count_include_pad, halo_x, halo_y);
  }, py::arg("xb"), py::arg("yb"), py::arg("kh"), py::arg("kw"), py::arg("sh"), py::arg("sw"), py::arg("ph"),
     py::arg("pw"), py::arg("ceil_mode") = false, py::arg("count_include_pad") = true, py::kw_only(),
     py::arg("halo_x") = 0, py::arg("halo_y") = 0);

  m.def("avgpool2d_blocked_bwd", [](py::array dyb, py::array dxb, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                                    int64_t ph, int64_t pw, bool ceil_mode, bool count_include_pad,
                                    int64_t halo_dx) {
    const char* op = "avgpool2d_blocked_bwd";
    const Geo g = blocked_geo(op, "dxb", dxb, 0, halo_dx, "halo_dx");
    check_window(op, sh, sw, ph, pw);
    const Geo go{g.N, g.C, pool_extent(op, "height", g.H, kh, sh, ph, 1, ceil_mode),
                 pool_extent(op, "width", g.W, kw, sw, pw, 1, ceil_mode)};
    expect_blocked(op, "dyb", dyb, go, 0, "dy's halo");
    const float* pdy = ptr_of(dyb, "dyb");
    float* pdx = ptr_of(dxb, "dxb");
    py::gil_scoped_release nogil;
    ft::cpu::avgpool2d_blocked_bwd(pdy, pdx, g.N, g.C, g.H, g.W, go.H, go.W, kh, kw, sh, sw, ph, pw,
                                   count_include_pad, halo_dx);
  }, py::arg("dyb"), py::arg("dxb"), py::arg("kh"), py::arg("kw"), py::arg("sh"), py::arg("sw"), py::arg("ph"),
     py::arg("pw"), py::arg("ceil_mode") = false, py::arg("count_include_pad") = true, py::kw_only(),
     py::arg("halo_dx") = 0);
}

}  // namespace blocked_layout

// ---- training ops: activations, optimizers, dropout, softmax cross-entropy ----
namespace train_ops {

// Arrays of other dtypes (uint8 masks, uint32 Philox words, int64 labels): same rules as ptr_of.
template <class T>
T* typed_ptr(py::array& a, const char* name, const char* dtype_name, bool write) {
  FT_CHECK(a.dtype().is(py::dtype::of<T>()),
           name << ": expected dtype " << dtype_name << ", got " << std::string(py::str(a.dtype())));
  FT_CHECK(a.flags() & py::array::c_style, name << ": expected a C-contiguous array");
  FT_CHECK(!write || a.writeable(), name << ": expected a writeable array");
  return static_cast<T*>(write ? a.mutable_data() : const_cast<void*>(a.data()));
}

// Python ints of any size reduced like the reference does (seed & (2^64 - 1), word & (2^32 - 1)).
uint64_t masked_int(const py::int_& v, uint64_t mask) {
  py::object r = v.attr("__and__")(py::int_(mask));
  return r.cast<uint64_t>();
}

void check_p(const char* op, double p) {
  FT_CHECK(p >= 0.0 && p < 1.0, op << "(p): expected a probability in [0, 1), got " << p);
}

void bind_activations(py::module_& m) {
  // f(x, y) and f(x, y, alpha): y = f(x)
  auto unary = [&m](const char* name, void (*fn)(const float*, float*, int64_t)) {
    m.def(name, [fn](py::array x, py::array y) {
      same_size(x, y, "x", "y");
      const float* px = ptr_of(x, "x");
      float* py_ = ptr_of(y, "y");
      py::gil_scoped_release nogil;
      fn(px, py_, x.size());
    }, py::arg("x"), py::arg("y"));
  };
  auto unary_a = [&m](const char* name, void (*fn)(const float*, float*, int64_t, float)) {
    m.def(name, [fn](py::array x, py::array y, double alpha) {
      same_size(x, y, "x", "y");
      const float* px = ptr_of(x, "x");
      float* py_ = ptr_of(y, "y");
      py::gil_scoped_release nogil;
      fn(px, py_, x.size(), static_cast<float>(alpha));
    }, py::arg("x"), py::arg("y"), py::arg("alpha"));
  };
  // g(a, dy, dx) and g(a, dy, dx, alpha), a = x or y as the op's signature names it
  auto grad = [&m](const char* name, const char* an,
                   void (*fn)(const float*, const float*, float*, int64_t)) {
    m.def(name, [fn, an](py::array a, py::array dy, py::array dx) {
      same_size(a, dy, an, "dy");
      same_size(a, dx, an, "dx");
      const float *pa = ptr_of(a, an), *pdy = ptr_of(dy, "dy");
      float* pdx = ptr_of(dx, "dx");
      py::gil_scoped_release nogil;
      fn(pa, pdy, pdx, a.size());
    }, py::arg(an), py::arg("dy"), py::arg("dx"));
  };
  auto grad_a = [&m](const char* name,
                     void (*fn)(const float*, const float*, float*, int64_t, float)) {
    m.def(name, [fn](py::array x, py::array dy, py::array dx, double alpha) {
      same_size(x, dy, "x", "dy");
      same_size(x, dx, "x", "dx");
      const float *px = ptr_of(x, "x"), *pdy = ptr_of(dy, "dy");
      float* pdx = ptr_of(dx, "dx");
      py::gil_scoped_release nogil;
      fn(px, pdy, pdx, x.size(), static_cast<float>(alpha));
    }, py::arg("x"), py::arg("dy"), py::arg("dx"), py::arg("alpha"));
  };
  unary("relu_fwd", ft::cpu::relu_fwd);
  grad("relu_bwd", "x", ft::cpu::relu_bwd);
  unary_a("leaky_relu_fwd", ft::cpu::leaky_relu_fwd);
  grad_a("leaky_relu_bwd", ft::cpu::leaky_relu_bwd);
  unary_a("elu_fwd", ft::cpu::elu_fwd);
  grad_a("elu_bwd", ft::cpu::elu_bwd);
  unary("sigmoid_fwd", ft::cpu::sigmoid_fwd);
  grad("sigmoid_bwd", "y", ft::cpu::sigmoid_bwd);
  unary("tanh_fwd", ft::cpu::tanh_fwd);
  grad("tanh_bwd", "y", ft::cpu::tanh_bwd);
  // not kernels: fasttrain/vmath.h elementwise, for its accuracy test (tests/test_vmath.py)
  unary("vmath_exp", ft::cpu::vmath_exp);
  unary("vmath_expm1", ft::cpu::vmath_expm1);

  // x (N, C, ...) viewed as (N, C, S); alpha (C,)
  auto prelu_geom = [](const char* op, const py::array& x, const py::array& alpha, int64_t& N,
                       int64_t& C, int64_t& S) {
    layers::bn_geom(op, x, N, C, S);
    layers::expect_shape(op, "alpha", alpha, {C});
  };
  m.def("prelu_fwd", [prelu_geom](py::array x, py::array alpha, py::array y) {
    int64_t N, C, S;
    prelu_geom("prelu_fwd", x, alpha, N, C, S);
    same_size(x, y, "x", "y");
    const float *px = ptr_of(x, "x"), *pa = ptr_of(alpha, "alpha");
    float* py_ = ptr_of(y, "y");
    py::gil_scoped_release nogil;
    ft::cpu::prelu_fwd(px, pa, py_, N, C, S);
  }, py::arg("x"), py::arg("alpha"), py::arg("y"));
  m.def("prelu_bwd", [prelu_geom](py::array x, py::array alpha, py::array dy, py::array dx,
                                  py::array dalpha) {
    int64_t N, C, S;
    prelu_geom("prelu_bwd", x, alpha, N, C, S);
    same_size(x, dy, "x", "dy");
    same_size(x, dx, "x", "dx");
    layers::expect_shape("prelu_bwd", "dalpha", dalpha, {C});
    const float *px = ptr_of(x, "x"), *pa = ptr_of(alpha, "alpha"), *pdy = ptr_of(dy, "dy");
    float *pdx = ptr_of(dx, "dx"), *pda = ptr_of(dalpha, "dalpha");
    py::gil_scoped_release nogil;
    ft::cpu::prelu_bwd(px, pa, pdy, pdx, pda, N, C, S);
  }, py::arg("x"), py::arg("alpha"), py::arg("dy"), py::arg("dx"), py::arg("dalpha"));
}

void bind_optim(py::module_& m) {
  using A = py::array;
  auto f = [](double v) { return static_cast<float>(v); };
  m.def("sgd_step", [f](A p, A g, double lr, double l2, double l1) {
    same_size(p, g, "p", "g");
    float* pp = ptr_of(p, "p");
    const float* pg = ptr_of(g, "g");
    py::gil_scoped_release nogil;
    ft::cpu::sgd_step(pp, pg, p.size(), f(lr), f(l2), f(l1));
  }, py::arg("p"), py::arg("g"), py::arg("lr"), py::arg("l2"), py::arg("l1"));
  for (const bool nesterov : {false, true}) {
    m.def(nesterov ? "nesterov_step" : "momentum_step",
          [f, nesterov](A p, A g, A v, double lr, double mu, double dampening, double l2, double l1) {
      same_size(p, g, "p", "g");
      same_size(p, v, "p", "v");
      float *pp = ptr_of(p, "p"), *pv = ptr_of(v, "v");
      const float* pg = ptr_of(g, "g");
      py::gil_scoped_release nogil;
      (nesterov ? ft::cpu::nesterov_step : ft::cpu::momentum_step)(pp, pg, pv, p.size(), f(lr), f(mu),
                                                                   f(dampening), f(l2), f(l1));
    }, py::arg("p"), py::arg("g"), py::arg("v"), py::arg("lr"), py::arg("mu"), py::arg("dampening"),
       py::arg("l2"), py::arg("l1"));
  }
  m.def("adagrad_step", [f](A p, A g, A h, double lr, double eps, double l2, double l1) {
    same_size(p, g, "p", "g");
    same_size(p, h, "p", "h");
    float *pp = ptr_of(p, "p"), *ph = ptr_of(h, "h");
    const float* pg = ptr_of(g, "g");
    py::gil_scoped_release nogil;
    ft::cpu::adagrad_step(pp, pg, ph, p.size(), f(lr), f(eps), f(l2), f(l1));
  }, py::arg("p"), py::arg("g"), py::arg("h"), py::arg("lr"), py::arg("eps"), py::arg("l2"),
     py::arg("l1"));
  m.def("rmsprop_step", [f](A p, A g, A s, double lr, double rho, double eps, double l2,
                            double l1) {
    same_size(p, g, "p", "g");
    same_size(p, s, "p", "s");
    float *pp = ptr_of(p, "p"), *ps = ptr_of(s, "s");
    const float* pg = ptr_of(g, "g");
    py::gil_scoped_release nogil;
    ft::cpu::rmsprop_step(pp, pg, ps, p.size(), f(lr), f(rho), f(eps), f(l2), f(l1));
  }, py::arg("p"), py::arg("g"), py::arg("s"), py::arg("lr"), py::arg("rho"), py::arg("eps"),
     py::arg("l2"), py::arg("l1"));
  m.def("rmsprop_centered_step", [f](A p, A g, A s, A mg, double lr, double rho, double eps,
                                     double l2, double l1) {
    same_size(p, g, "p", "g");
    same_size(p, s, "p", "s");
    same_size(p, mg, "p", "mg");
    float *pp = ptr_of(p, "p"), *ps = ptr_of(s, "s"), *pm = ptr_of(mg, "mg");
    const float* pg = ptr_of(g, "g");
    py::gil_scoped_release nogil;
    ft::cpu::rmsprop_centered_step(pp, pg, ps, pm, p.size(), f(lr), f(rho), f(eps), f(l2), f(l1));
  }, py::arg("p"), py::arg("g"), py::arg("s"), py::arg("mg"), py::arg("lr"), py::arg("rho"),
     py::arg("eps"), py::arg("l2"), py::arg("l1"));
  m.def("rmsprop_momentum_step", [f](A p, A g, A s, A b, double lr, double rho, double eps,
                                     double mu, double l2, double l1) {
    same_size(p, g, "p", "g");
    same_size(p, s, "p", "s");
    same_size(p, b, "p", "b");
    float *pp = ptr_of(p, "p"), *ps = ptr_of(s, "s"), *pb = ptr_of(b, "b");
    const float* pg = ptr_of(g, "g");
    py::gil_scoped_release nogil;
    ft::cpu::rmsprop_momentum_step(pp, pg, ps, pb, p.size(), f(lr), f(rho), f(eps), f(mu), f(l2), f(l1));
  }, py::arg("p"), py::arg("g"), py::arg("s"), py::arg("b"), py::arg("lr"), py::arg("rho"),
     py::arg("eps"), py::arg("mu"), py::arg("l2"), py::arg("l1"));
  m.def("rmsprop_centered_momentum_step", [f](A p, A g, A s, A mg, A b, double lr, double rho,
                                              double eps, double mu, double l2, double l1) {
    same_size(p, g, "p", "g");
    same_size(p, s, "p", "s");
    same_size(p, mg, "p", "mg");
    same_size(p, b, "p", "b");
    float *pp = ptr_of(p, "p"), *ps = ptr_of(s, "s"), *pm = ptr_of(mg, "mg"), *pb = ptr_of(b, "b");
    const float* pg = ptr_of(g, "g");
    py::gil_scoped_release nogil;
    ft::cpu::rmsprop_centered_momentum_step(pp, pg, ps, pm, pb, p.size(), f(lr), f(rho), f(eps), f(mu),
                                            f(l2), f(l1));
  }, py::arg("p"), py::arg("g"), py::arg("s"), py::arg("mg"), py::arg("b"), py::arg("lr"),
     py::arg("rho"), py::arg("eps"), py::arg("mu"), py::arg("l2"), py::arg("l1"));
  // adam_step(p, g, m, v, ...) and adam_amsgrad_step(p, g, m, v, vmax, ...): vmax is None for the former
  auto adam = [f](const char* op, A p, A g, A mm, A v, py::object vmax, double lr, double beta1,
                  double beta2, double eps, double bc1, double bc2, double l2, double l1,
                  double decoupled_wd) {
    same_size(p, g, "p", "g");
    same_size(p, mm, "p", "m");
    same_size(p, v, "p", "v");
    FT_CHECK(bc1 > 0 && bc2 > 0, op << "(bc1, bc2): expected bias corrections 1 - beta^t > 0, got ("
                                    << bc1 << ", " << bc2 << ")");
    float *pp = ptr_of(p, "p"), *pm = ptr_of(mm, "m"), *pv = ptr_of(v, "v");
    const float* pg = ptr_of(g, "g");
    float* px = nullptr;
    A vm;
    if (!vmax.is_none()) {
      vm = vmax.cast<A>();
      same_size(p, vm, "p", "vmax");
      px = ptr_of(vm, "vmax");
    }
    py::gil_scoped_release nogil;
    if (px == nullptr)
      ft::cpu::adam_step(pp, pg, pm, pv, p.size(), f(lr), f(beta1), f(beta2), f(eps), f(bc1), f(bc2),
                         f(l2), f(l1), f(decoupled_wd));
    else
      ft::cpu::adam_amsgrad_step(pp, pg, pm, pv, px, p.size(), f(lr), f(beta1), f(beta2), f(eps),
                                 f(bc1), f(bc2), f(l2), f(l1), f(decoupled_wd));
  };
  m.def("adam_step", [adam](A p, A g, A mm, A v, double lr, double beta1, double beta2, double eps,
                            double bc1, double bc2, double l2, double l1, double decoupled_wd) {
    adam("adam_step", p, g, mm, v, py::none(), lr, beta1, beta2, eps, bc1, bc2, l2, l1, decoupled_wd);
  }, py::arg("p"), py::arg("g"), py::arg("m"), py::arg("v"), py::arg("lr"), py::arg("beta1"),
     py::arg("beta2"), py::arg("eps"), py::arg("bc1"), py::arg("bc2"), py::arg("l2"),
     py::arg("l1"), py::arg("decoupled_wd"));
  m.def("adam_amsgrad_step", [adam](A p, A g, A mm, A v, A vmax, double lr, double beta1,
                                    double beta2, double eps, double bc1, double bc2, double l2,
                                    double l1, double decoupled_wd) {
    adam("adam_amsgrad_step", p, g, mm, v, vmax, lr, beta1, beta2, eps, bc1, bc2, l2, l1,
         decoupled_wd);
  }, py::arg("p"), py::arg("g"), py::arg("m"), py::arg("v"), py::arg("vmax"), py::arg("lr"),
     py::arg("beta1"), py::arg("beta2"), py::arg("eps"), py::arg("bc1"), py::arg("bc2"),
     py::arg("l2"), py::arg("l1"), py::arg("decoupled_wd"));
}

void bind_dropout(py::module_& m) {
  m.def("philox4x32", [](py::array counter, py::array key, py::array out) {
    const char* op = "philox4x32";
    layers::expect_ndim(op, "counter", counter, 2);
    const int64_t N = counter.shape(0);
    layers::expect_shape(op, "counter", counter, {N, 4});
    layers::expect_shape(op, "key", key, {2});
    layers::expect_shape(op, "out", out, {N, 4});
    const uint32_t* pc = typed_ptr<uint32_t>(counter, "counter", "uint32", false);
    const uint32_t* pk = typed_ptr<uint32_t>(key, "key", "uint32", false);
    uint32_t* po = typed_ptr<uint32_t>(out, "out", "uint32", true);
    py::gil_scoped_release nogil;
    ft::cpu::philox4x32(pc, pk, po, N);
  }, py::arg("counter"), py::arg("key"), py::arg("out"));
  m.def("dropout_mask", [](py::array mask, double p, py::int_ seed, py::int_ step, py::int_ layer) {
    check_p("dropout_mask", p);
    const uint64_t s = masked_int(seed, ~0ull);
    const auto st = static_cast<uint32_t>(masked_int(step, 0xFFFFFFFFull));
    const auto ly = static_cast<uint32_t>(masked_int(layer, 0xFFFFFFFFull));
    uint8_t* pm = typed_ptr<uint8_t>(mask, "mask", "uint8", true);
    py::gil_scoped_release nogil;
    ft::cpu::dropout_mask(pm, mask.size(), p, s, st, ly);
  }, py::arg("mask"), py::arg("p"), py::arg("seed"), py::arg("step"), py::arg("layer"));
  auto apply = [&m](const char* name, const char* in, const char* out,
                    void (*fn)(const float*, float*, int64_t, double, uint64_t, uint32_t, uint32_t)) {
    m.def(name, [name, in, out, fn](py::array x, py::array y, double p, py::int_ seed,
                                    py::int_ step, py::int_ layer) {
      check_p(name, p);
      same_size(x, y, in, out);
      const uint64_t s = masked_int(seed, ~0ull);
      const auto st = static_cast<uint32_t>(masked_int(step, 0xFFFFFFFFull));
      const auto ly = static_cast<uint32_t>(masked_int(layer, 0xFFFFFFFFull));
      const float* px = ptr_of(x, in);
      float* py_ = ptr_of(y, out);
      py::gil_scoped_release nogil;
      fn(px, py_, x.size(), p, s, st, ly);
    }, py::arg(in), py::arg(out), py::arg("p"), py::arg("seed"), py::arg("step"), py::arg("layer"));
  };
  apply("dropout_fwd", "x", "y", ft::cpu::dropout_fwd);
  apply("dropout_bwd", "dy", "dx", ft::cpu::dropout_bwd);
}

void bind_losses(py::module_& m) {
  m.def("softmax_xent", [](py::array logits, py::array labels, py::array dlogits) {
    const char* op = "softmax_xent";
    layers::expect_ndim(op, "logits", logits, 2);
    const int64_t N = logits.shape(0), C = logits.shape(1);
    layers::expect_shape(op, "labels", labels, {N});
    layers::expect_shape(op, "dlogits", dlogits, {N, C});
    const float* px = ptr_of(logits, "logits");
    const int64_t* pl = typed_ptr<int64_t>(labels, "labels", "int64", false);
    float* pd = ptr_of(dlogits, "dlogits");
    for (int64_t r = 0; r < N; ++r)  // an out-of-range label would read/write out of bounds
      FT_CHECK(pl[r] >= 0 && pl[r] < C, op << "(labels): expected class indices in [0, " << C
                                            << "), got " << pl[r] << " at row " << r);
    double loss;
    {
      py::gil_scoped_release nogil;
      loss = ft::cpu::softmax_xent(px, pl, pd, N, C);
    }
    return loss;
  }, py::arg("logits"), py::arg("labels"), py::arg("dlogits"));
  m.def("softmax_xent_weighted", [](py::array logits, py::array labels, py::array weight,
                                    double label_smoothing, int64_t ignore_index, double scale,
                                    py::array dlogits, py::array row_loss) {
    const char* op = "softmax_xent_weighted";
    layers::expect_ndim(op, "logits", logits, 2);
    const int64_t N = logits.shape(0), C = logits.shape(1);
    layers::expect_shape(op, "labels", labels, {N});
    layers::expect_shape(op, "weight", weight, {C});
    layers::expect_shape(op, "dlogits", dlogits, {N, C});
    layers::expect_shape(op, "row_loss", row_loss, {N});
    FT_CHECK(label_smoothing >= 0.0 && label_smoothing <= 1.0,
             op << "(label_smoothing): expected a number in [0, 1], got " << label_smoothing);
    const float *px = ptr_of(logits, "logits"), *pw = ptr_of(weight, "weight");
    const int64_t* pl = typed_ptr<int64_t>(labels, "labels", "int64", false);
    float* pd = ptr_of(dlogits, "dlogits");
    double* pr = typed_ptr<double>(row_loss, "row_loss", "float64", true);
    for (int64_t r = 0; r < N; ++r)  // an out-of-range label would read/write out of bounds
      FT_CHECK((pl[r] >= 0 && pl[r] < C) || pl[r] == ignore_index,
               op << "(labels): expected class indices in [0, " << C << ") or the ignore_index "
                  << ignore_index << ", got " << pl[r] << " at row " << r);
    py::gil_scoped_release nogil;
    ft::cpu::softmax_xent_weighted(px, pl, pw, static_cast<float>(label_smoothing), ignore_index,
                                   static_cast<float>(scale), pd, pr, N, C);
  }, py::arg("logits"), py::arg("labels"), py::arg("weight"), py::arg("label_smoothing"),
     py::arg("ignore_index"), py::arg("scale"), py::arg("dlogits"), py::arg("row_loss"));
}

void bind(py::module_& m) {
  bind_activations(m);
  bind_optim(m);
  bind_dropout(m);
  bind_losses(m);
}

}  // namespace train_ops

// ---- dist codecs: x float32 (n,), encoded bytes uint8 (nbytes(n),), optional residual (n,) ----
namespace dist_codecs {

float* residual_ptr(py::object r, int64_t n) {
  if (r.is_none()) return nullptr;
  py::array a = r.cast<py::array>();
  FT_CHECK(a.size() == n, "residual: expected " << n << " elements (like x), got " << a.size());
  return ptr_of(a, "residual");
}

uint8_t* bytes_ptr(py::array& a, int64_t want, bool write) {
  uint8_t* p = train_ops::typed_ptr<uint8_t>(a, "data", "uint8", write);
  FT_CHECK(a.size() == want, "data: expected " << want << " encoded bytes, got " << a.size());
  FT_CHECK(reinterpret_cast<uintptr_t>(p) % 4 == 0, "data: expected a 4-byte aligned buffer");
  return p;
}

int64_t block_bytes(int64_t n, int64_t block, int64_t payload) {
  FT_CHECK(block >= 1, "block: expected >= 1, got " << block);
  return 4 * ((n + block - 1) / block) + payload;
}

void bind(py::module_& m) {
  m.def("codec_half_encode", [](py::array x, py::array out, py::object residual, bool bf16) {
    const int64_t n = x.size();
    const float* px = ptr_of(x, "x");
    float* pr = residual_ptr(residual, n);
    uint8_t* po = bytes_ptr(out, 2 * n, true);
    py::gil_scoped_release nogil;
    ft::cpu::codec_half_encode(px, pr, reinterpret_cast<uint16_t*>(po), n, bf16);
  }, py::arg("x"), py::arg("out"), py::arg("residual"), py::arg("bf16"));
  m.def("codec_half_decode", [](py::array data, py::array out, bool bf16) {
    const int64_t n = out.size();
    float* po = ptr_of(out, "out");
    const uint8_t* pd = bytes_ptr(data, 2 * n, false);
    py::gil_scoped_release nogil;
    ft::cpu::codec_half_decode(reinterpret_cast<const uint16_t*>(pd), po, n, bf16);
  }, py::arg("data"), py::arg("out"), py::arg("bf16"));
  m.def("codec_int_encode", [](py::array x, py::array out, py::object residual, int64_t block,
                               int bits, py::int_ seed) {
    FT_CHECK(bits == 8 || bits == 4, "bits: expected 8 or 4, got " << bits);
    const int64_t n = x.size();
    const int64_t want = block_bytes(n, block, bits == 8 ? n : (n + 1) / 2);
    const float* px = ptr_of(x, "x");
    float* pr = residual_ptr(residual, n);
    uint8_t* po = bytes_ptr(out, want, true);
    const uint64_t s = train_ops::masked_int(seed, ~0ull);
    py::gil_scoped_release nogil;
    ft::cpu::codec_int_encode(px, pr, po, n, block, bits, s);
  }, py::arg("x"), py::arg("out"), py::arg("residual"), py::arg("block"), py::arg("bits"),
     py::arg("seed"));
  m.def("codec_int_decode", [](py::array data, py::array out, int64_t block, int bits) {
    FT_CHECK(bits == 8 || bits == 4, "bits: expected 8 or 4, got " << bits);
    const int64_t n = out.size();
    float* po = ptr_of(out, "out");
    const uint8_t* pd = bytes_ptr(data, block_bytes(n, block, bits == 8 ? n : (n + 1) / 2), false);
    py::gil_scoped_release nogil;
    ft::cpu::codec_int_decode(pd, po, n, block, bits);
  }, py::arg("data"), py::arg("out"), py::arg("block"), py::arg("bits"));
  m.def("codec_sign_encode", [](py::array x, py::array out, py::object residual, int64_t block) {
    const int64_t n = x.size();
    const float* px = ptr_of(x, "x");
    float* pr = residual_ptr(residual, n);
    uint8_t* po = bytes_ptr(out, block_bytes(n, block, (n + 7) / 8), true);
    py::gil_scoped_release nogil;
    ft::cpu::codec_sign_encode(px, pr, po, n, block);
  }, py::arg("x"), py::arg("out"), py::arg("residual"), py::arg("block"));
  m.def("codec_sign_decode", [](py::array data, py::array out, int64_t block) {
    const int64_t n = out.size();
    float* po = ptr_of(out, "out");
    const uint8_t* pd = bytes_ptr(data, block_bytes(n, block, (n + 7) / 8), false);
    py::gil_scoped_release nogil;
    ft::cpu::codec_sign_decode(pd, po, n, block);
  }, py::arg("data"), py::arg("out"), py::arg("block"));
}

}  // namespace dist_codecs

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
  m.def("batchnorm_update_running", [](py::array running_mean, py::array running_var, py::array mean,
                                       py::array invstd, double eps, double momentum, double unbias) {
    const char* op = "batchnorm_update_running";
    const int64_t C = running_mean.size();
    for (auto [a, n] : {std::pair{&running_var, "running_var"}, {&mean, "mean"}, {&invstd, "invstd"}})
      layers::expect_shape(op, n, *a, {C});
    float *prm = ptr_of(running_mean, "running_mean"), *prv = ptr_of(running_var, "running_var");
    ft::cpu::batchnorm_update_running(prm, prv, ptr_of(mean, "mean"), ptr_of(invstd, "invstd"), C, eps,
                                      momentum, unbias);
  }, py::arg("running_mean"), py::arg("running_var"), py::arg("mean"), py::arg("invstd"), py::arg("eps"),
     py::arg("momentum"), py::arg("unbias"));
  m.def("stream_add", [](py::array a, py::array b, py::array c) {
    same_size(a, b, "a", "b"); same_size(a, c, "a", "c");
    const float *pa = ptr_of(a, "a"), *pb = ptr_of(b, "b");
    float* pc = ptr_of(c, "c");
    py::gil_scoped_release nogil;
    ft::cpu::stream_add(pa, pb, pc, a.size());
  }, py::arg("a"), py::arg("b"), py::arg("c"));
  m.def("stream_scale", [](py::array a, py::array b, float s) {
    same_size(a, b, "a", "b");
    const float* pa = ptr_of(a, "a");
    float* pb = ptr_of(b, "b");
    FT_CHECK(pa != pb, "stream_scale: expected distinct arrays a and b (the out-of-place probe), got one array twice");
    py::gil_scoped_release nogil;
    ft::cpu::stream_scale(pa, pb, s, a.size());
  }, py::arg("a"), py::arg("b"), py::arg("s"));
  m.def("stream_update3", [](py::array a, py::array b, py::array c, py::array d) {
    same_size(a, b, "a", "b"); same_size(a, c, "a", "c"); same_size(a, d, "a", "d");
    const float* pa = ptr_of(a, "a");
    float *pb = ptr_of(b, "b"), *pc = ptr_of(c, "c"), *pd = ptr_of(d, "d");
    FT_CHECK(pa != pb && pa != pc && pa != pd && pb != pc && pb != pd && pc != pd,
             "stream_update3: expected four distinct arrays, got aliased ones");
    py::gil_scoped_release nogil;
    ft::cpu::stream_update3(pa, pb, pc, pd, a.size());
  }, py::arg("a"), py::arg("b"), py::arg("c"), py::arg("d"));
  m.def("stream_sum", [](py::array a, py::array b) {
    same_size(a, b, "a", "b");
    const float *pa = ptr_of(a, "a"), *pb = ptr_of(b, "b");
    py::gil_scoped_release nogil;
    return ft::cpu::stream_sum(pa, pb, a.size());
  }, py::arg("a"), py::arg("b"));
  m.def("fma_isa_supported", &ft::cpu::fma_isa_supported, py::arg("isa"));
  m.def("fma_peak_flops", [](const std::string& isa, int64_t iters) {
    FT_CHECK(isa == "avx512" || isa == "avx2", "fma_peak_flops(isa): expected 'avx512' or 'avx2', got '" << isa << "'");
    FT_CHECK(iters >= 1, "fma_peak_flops(iters): expected >= 1, got " << iters);
    FT_CHECK(ft::cpu::fma_isa_supported(isa), "fma_peak_flops(isa='" << isa << "'): this CPU lacks it");
    py::gil_scoped_release nogil;
    return ft::cpu::fma_peak_flops(isa, iters);
  }, py::arg("isa"), py::arg("iters") = 2000000);

  train_ops::bind(m);  // activations, optimizers, dropout, softmax cross-entropy
  dist_codecs::bind(m);  // gradient codecs of fasttrain.dist
  layers::bind(m);  // conv2d, linear, batchnorm, pooling
  blocked_layout::bind(m);  // batchnorm and pooling on the direct convolution's blocked layout
}
