// pybind11 module fasttrain._cuda: takes CuPy (or any __cuda_array_interface__) arrays and the
// integer handle of the stream to launch on (CuPy's current stream: cupy.cuda.get_current_stream().ptr).
// Argument checks and calls only, no math here.
#include <pybind11/pybind11.h>
#include <cuda_runtime.h>

#include <string>
#include <vector>

#include "fasttrain/check.h"
#include "fasttrain/cuda.h"

namespace py = pybind11;

namespace {

struct DevArray {
  void* ptr;
  int64_t size;
  std::vector<int64_t> shape;
};

// Reads __cuda_array_interface__ (v2/v3): the expected dtype, C-contiguous (strides None).
DevArray dev_array(const py::object& a, const char* name, const char* typestr = "<f4") {
  FT_CHECK(py::hasattr(a, "__cuda_array_interface__"),
           name << ": expected a GPU array with __cuda_array_interface__ (e.g. a CuPy array)");
  py::dict cai = a.attr("__cuda_array_interface__");
  std::string got = py::str(cai["typestr"]);
  FT_CHECK(got == typestr, name << ": expected dtype '" << typestr << "', got '" << got << "'");
  FT_CHECK(!cai.contains("strides") || cai["strides"].is_none(), name << ": expected a C-contiguous array");
  DevArray d{nullptr, 1, {}};
  for (auto s : py::tuple(cai["shape"])) {
    d.shape.push_back(s.cast<int64_t>());
    d.size *= d.shape.back();
  }
  py::tuple data = cai["data"];
  d.ptr = reinterpret_cast<void*>(data[0].cast<uintptr_t>());
  return d;
}

float* f32(const DevArray& d) { return static_cast<float*>(d.ptr); }
cudaStream_t stream_of(uintptr_t handle) { return reinterpret_cast<cudaStream_t>(handle); }

void same_size(const DevArray& a, const DevArray& b, const char* bn) {
  FT_CHECK(a.size == b.size, bn << ": expected " << a.size << " elements, got " << b.size);
}

// (N, C, S) view of an NCHW or NC array, for batchnorm
void ncs(const DevArray& x, int64_t& n, int64_t& c, int64_t& s) {
  FT_CHECK(x.shape.size() >= 2, "x: expected (N, C, ...), got " << x.shape.size() << " dims");
  n = x.shape[0];
  c = x.shape[1];
  s = c && n ? x.size / (n * c) : 0;
}

void bind_activation(py::module_& m, const char* op, bool has_alpha, bool bwd_uses_output) {
  std::string fwd = std::string(op) + "_fwd", bwd = std::string(op) + "_bwd";
  std::string opname = op;
  if (has_alpha) {
    m.def(fwd.c_str(), [opname](py::object x, py::object y, float alpha, uintptr_t st) {
      auto dx = dev_array(x, "x"), dy = dev_array(y, "y");
      same_size(dx, dy, "y");
      ft::cuda::activation_fwd(opname.c_str(), f32(dx), f32(dy), dx.size, alpha, stream_of(st));
    }, py::arg("x"), py::arg("y"), py::arg("alpha"), py::arg("stream") = 0);
    m.def(bwd.c_str(), [opname](py::object x, py::object dy, py::object dx, float alpha, uintptr_t st) {
      auto a = dev_array(x, "x"), g = dev_array(dy, "dy"), o = dev_array(dx, "dx");
      same_size(a, g, "dy"); same_size(a, o, "dx");
      ft::cuda::activation_bwd(opname.c_str(), f32(a), f32(g), f32(o), a.size, alpha, stream_of(st));
    }, py::arg("x"), py::arg("dy"), py::arg("dx"), py::arg("alpha"), py::arg("stream") = 0);
  } else {
    m.def(fwd.c_str(), [opname](py::object x, py::object y, uintptr_t st) {
      auto dx = dev_array(x, "x"), dy = dev_array(y, "y");
      same_size(dx, dy, "y");
      ft::cuda::activation_fwd(opname.c_str(), f32(dx), f32(dy), dx.size, 0.f, stream_of(st));
    }, py::arg("x"), py::arg("y"), py::arg("stream") = 0);
    const char* first = bwd_uses_output ? "y" : "x";
    m.def(bwd.c_str(), [opname, first](py::object a_, py::object dy, py::object dx, uintptr_t st) {
      auto a = dev_array(a_, first), g = dev_array(dy, "dy"), o = dev_array(dx, "dx");
      same_size(a, g, "dy"); same_size(a, o, "dx");
      ft::cuda::activation_bwd(opname.c_str(), f32(a), f32(g), f32(o), a.size, 0.f, stream_of(st));
    }, py::arg(first), py::arg("dy"), py::arg("dx"), py::arg("stream") = 0);
  }
}

// ---- pooling / conv2d geometry: errors name the op, the argument, what was got and expected ----
std::string dims(const std::vector<int64_t>& d) {
  std::string s = "(";
  for (size_t i = 0; i < d.size(); ++i) s += (i ? ", " : "") + std::to_string(d[i]);
  return s + (d.size() == 1 ? ",)" : ")");
}

void expect_dims(const char* op, const char* name, const DevArray& a, const std::vector<int64_t>& d) {
  FT_CHECK(a.shape == d, op << "(" << name << "): expected shape " << dims(d) << ", got " << dims(a.shape));
}

void expect_4d(const char* op, const char* name, const DevArray& a) {
  FT_CHECK(a.shape.size() == 4, op << "(" << name << "): expected a 4-D (N, C, H, W) array, got shape "
                                   << dims(a.shape));
}

void check_window(const char* op, int64_t sh, int64_t sw, int64_t ph, int64_t pw) {
  FT_CHECK(sh >= 1 && sw >= 1, op << "(sh, sw): expected strides >= 1, got (" << sh << ", " << sw << ")");
  FT_CHECK(ph >= 0 && pw >= 0, op << "(ph, pw): expected paddings >= 0, got (" << ph << ", " << pw << ")");
}

// `dil`: the distance between taps, so the window spans dil * (k - 1) + 1 inputs
int64_t out_extent(const char* op, const char* what, int64_t in, int64_t k, int64_t s, int64_t p, int64_t dil = 1) {
  const int64_t span = dil * (k - 1) + 1;
  FT_CHECK(k >= 1 && in + 2 * p >= span, op << ": " << what << " window " << span << " does not fit input " << in
                                             << " with padding " << p);
  return (in + 2 * p - span) / s + 1;
}

// A pooling window sweep's output extent (PyTorch's rule): with ceil_mode the last partial window
// counts unless it would start beyond the input and its top/left padding.
int64_t pool_extent(const char* op, const char* what, int64_t in, int64_t k, int64_t s, int64_t p, int64_t dil,
                    bool ceil_mode) {
  const int64_t floor_out = out_extent(op, what, in, k, s, p, dil);
  if (!ceil_mode) return floor_out;
  int64_t out = (in + 2 * p - dil * (k - 1) - 1 + s - 1) / s + 1;
  if ((out - 1) * s >= in + p) --out;
  return out;
}

// x (N,C,H,W) and w (K,C/groups,R,S) define the convolution
ft::cuda::ConvShape conv_geom(const char* op, const DevArray& x, const DevArray& w, int64_t sh, int64_t sw,
                              int64_t ph, int64_t pw, int64_t dilh, int64_t dilw, int64_t groups, const char* xname) {
  expect_4d(op, xname, x);
  FT_CHECK(w.shape.size() == 4, op << "(w): expected a 4-D (K, C, R, S) array, got shape " << dims(w.shape));
  check_window(op, sh, sw, ph, pw);
  FT_CHECK(dilh >= 1 && dilw >= 1, op << "(dil_h, dil_w): expected dilations >= 1, got (" << dilh << ", " << dilw
                                      << ")");
  FT_CHECK(groups >= 1 && x.shape[1] % groups == 0 && w.shape[0] % groups == 0,
           op << "(groups): expected a positive divisor of the input channels " << x.shape[1]
              << " and of the output channels " << w.shape[0] << ", got " << groups);
  FT_CHECK(w.shape[1] == x.shape[1] / groups, op << "(w): expected shape (K, " << x.shape[1] / groups
                                                 << ", R, S) to match " << xname << " " << dims(x.shape)
                                                 << " with groups " << groups << ", got " << dims(w.shape));
  ft::cuda::ConvShape g{x.shape[0], x.shape[1], x.shape[2], x.shape[3], w.shape[0], w.shape[2], w.shape[3], 0, 0,
                        (int)sh, (int)sw, (int)ph, (int)pw, (int)dilh, (int)dilw, groups};
  g.P = out_extent(op, "height", g.H, g.R, sh, ph, dilh);
  g.Q = out_extent(op, "width", g.W, g.S, sw, pw, dilw);
  return g;
}

}  // namespace

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "fasttrain CUDA kernels (arrays through __cuda_array_interface__, launches on the given stream)";
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

  bind_activation(m, "relu", false, false);
  bind_activation(m, "leaky_relu", true, false);
  bind_activation(m, "elu", true, false);
  bind_activation(m, "sigmoid", false, true);
  bind_activation(m, "tanh", false, true);

  // ---- dropout: Philox masks regenerated from (seed, step, layer) ----
  for (const char* name : {"dropout_fwd", "dropout_bwd"}) {
    m.def(name, [](py::object x, py::object y, double p, uint64_t seed, uint32_t step, uint32_t layer, uintptr_t st) {
      auto X = dev_array(x, "x"), Y = dev_array(y, "y");
      same_size(X, Y, "y");
      FT_CHECK(p >= 0.0 && p < 1.0, "p: expected a drop probability in [0, 1), got " << p);
      ft::cuda::dropout_apply(f32(X), f32(Y), X.size, p, seed, step, layer, stream_of(st));
    }, py::arg("x"), py::arg("y"), py::arg("p"), py::arg("seed"), py::arg("step"), py::arg("layer"),
       py::arg("stream") = 0);
  }
  m.def("dropout_mask", [](py::object mask, double p, uint64_t seed, uint32_t step, uint32_t layer, uintptr_t st) {
    auto M = dev_array(mask, "mask", "|u1");
    FT_CHECK(p >= 0.0 && p < 1.0, "p: expected a drop probability in [0, 1), got " << p);
    ft::cuda::dropout_mask(static_cast<uint8_t*>(M.ptr), M.size, p, seed, step, layer, stream_of(st));
  }, py::arg("mask"), py::arg("p"), py::arg("seed"), py::arg("step"), py::arg("layer"), py::arg("stream") = 0);

  // ---- optimizers: one launch per call over a flat range ----
  m.def("sgd_step", [](py::object p, py::object g, float lr, float l2, float l1, uintptr_t st) {
    auto P = dev_array(p, "p"), G = dev_array(g, "g");
    same_size(P, G, "g");
    ft::cuda::sgd_step(f32(P), f32(G), P.size, lr, l2, l1, stream_of(st));
  }, py::arg("p"), py::arg("g"), py::arg("lr"), py::arg("l2"), py::arg("l1"), py::arg("stream") = 0);
  for (bool nesterov : {false, true}) {
    m.def(nesterov ? "nesterov_step" : "momentum_step",
          [nesterov](py::object p, py::object g, py::object v, float lr, float mu, float dampening, float l2, float l1,
                     uintptr_t st) {
      auto P = dev_array(p, "p"), G = dev_array(g, "g"), V = dev_array(v, "v");
      same_size(P, G, "g"); same_size(P, V, "v");
      ft::cuda::momentum_step(f32(P), f32(G), f32(V), P.size, lr, mu, dampening, l2, l1, nesterov, stream_of(st));
    }, py::arg("p"), py::arg("g"), py::arg("v"), py::arg("lr"), py::arg("mu"), py::arg("dampening"), py::arg("l2"),
       py::arg("l1"), py::arg("stream") = 0);
  }
  m.def("adagrad_step", [](py::object p, py::object g, py::object h, float lr, float eps, float l2, float l1,
                           uintptr_t st) {
    auto P = dev_array(p, "p"), G = dev_array(g, "g"), H = dev_array(h, "h");
    same_size(P, G, "g"); same_size(P, H, "h");
    ft::cuda::adagrad_step(f32(P), f32(G), f32(H), P.size, lr, eps, l2, l1, stream_of(st));
  }, py::arg("p"), py::arg("g"), py::arg("h"), py::arg("lr"), py::arg("eps"), py::arg("l2"), py::arg("l1"),
     py::arg("stream") = 0);
  // the four RMSProp variants: one kernel; mg (centered) and b (momentum) are None when unused
  auto rmsprop = [](py::object p, py::object g, py::object s, py::object mg, py::object b, float lr, float rho,
                    float eps, float mu, float l2, float l1, uintptr_t st) {
    auto P = dev_array(p, "p"), G = dev_array(g, "g"), S = dev_array(s, "s");
    same_size(P, G, "g"); same_size(P, S, "s");
    float *pm = nullptr, *pb = nullptr;
    if (!mg.is_none()) {
      auto M = dev_array(mg, "mg");
      same_size(P, M, "mg");
      pm = f32(M);
    }
    if (!b.is_none()) {
      auto B = dev_array(b, "b");
      same_size(P, B, "b");
      pb = f32(B);
    }
    ft::cuda::rmsprop_step(f32(P), f32(G), f32(S), pm, pb, P.size, lr, rho, eps, mu, l2, l1, stream_of(st));
  };
  m.def("rmsprop_step", [rmsprop](py::object p, py::object g, py::object s, float lr, float rho, float eps,
                                        float l2, float l1, uintptr_t st) {
    rmsprop(p, g, s, py::none(), py::none(), lr, rho, eps, 0.f, l2, l1, st);
  }, py::arg("p"), py::arg("g"), py::arg("s"), py::arg("lr"), py::arg("rho"), py::arg("eps"), py::arg("l2"),
     py::arg("l1"), py::arg("stream") = 0);
  m.def("rmsprop_centered_step", [rmsprop](py::object p, py::object g, py::object s, py::object mg, float lr,
                                                 float rho, float eps, float l2, float l1, uintptr_t st) {
    rmsprop(p, g, s, mg, py::none(), lr, rho, eps, 0.f, l2, l1, st);
  }, py::arg("p"), py::arg("g"), py::arg("s"), py::arg("mg"), py::arg("lr"), py::arg("rho"), py::arg("eps"),
     py::arg("l2"), py::arg("l1"), py::arg("stream") = 0);
  m.def("rmsprop_momentum_step", [rmsprop](py::object p, py::object g, py::object s, py::object b, float lr,
                                                 float rho, float eps, float mu, float l2, float l1, uintptr_t st) {
    rmsprop(p, g, s, py::none(), b, lr, rho, eps, mu, l2, l1, st);
  }, py::arg("p"), py::arg("g"), py::arg("s"), py::arg("b"), py::arg("lr"), py::arg("rho"), py::arg("eps"),
     py::arg("mu"), py::arg("l2"), py::arg("l1"), py::arg("stream") = 0);
  m.def("rmsprop_centered_momentum_step", [rmsprop](py::object p, py::object g, py::object s, py::object mg,
                                                    py::object b, float lr, float rho, float eps, float mu, float l2,
                                                    float l1, uintptr_t st) {
    rmsprop(p, g, s, mg, b, lr, rho, eps, mu, l2, l1, st);
  }, py::arg("p"), py::arg("g"), py::arg("s"), py::arg("mg"), py::arg("b"), py::arg("lr"), py::arg("rho"),
     py::arg("eps"), py::arg("mu"), py::arg("l2"), py::arg("l1"), py::arg("stream") = 0);
  // adam_step and adam_amsgrad_step (vmax: the running maximum of v, None for plain Adam)
  auto adam = [](py::object p, py::object g, py::object mm, py::object v, py::object vmax, float lr, float b1,
                 float b2, float eps, float bc1, float bc2, float l2, float l1, float decoupled_wd, uintptr_t st) {
    auto P = dev_array(p, "p"), G = dev_array(g, "g"), M = dev_array(mm, "m"), V = dev_array(v, "v");
    same_size(P, G, "g"); same_size(P, M, "m"); same_size(P, V, "v");
    float* px = nullptr;
    if (!vmax.is_none()) {
      auto X = dev_array(vmax, "vmax");
      same_size(P, X, "vmax");
      px = f32(X);
    }
    FT_CHECK(bc1 > 0.f && bc2 > 0.f, "bc1, bc2: expected bias corrections in (0, 1], got " << bc1 << ", " << bc2);
    ft::cuda::adam_step(f32(P), f32(G), f32(M), f32(V), px, P.size, lr, b1, b2, eps, bc1, bc2, l2, l1, decoupled_wd,
                        stream_of(st));
  };
  m.def("adam_step", [adam](py::object p, py::object g, py::object mm, py::object v, float lr, float b1,
                                  float b2, float eps, float bc1, float bc2, float l2, float l1, float decoupled_wd,
                                  uintptr_t st) {
    adam(p, g, mm, v, py::none(), lr, b1, b2, eps, bc1, bc2, l2, l1, decoupled_wd, st);
  }, py::arg("p"), py::arg("g"), py::arg("m"), py::arg("v"), py::arg("lr"), py::arg("beta1"), py::arg("beta2"),
     py::arg("eps"), py::arg("bc1"), py::arg("bc2"), py::arg("l2"), py::arg("l1"), py::arg("decoupled_wd"),
     py::arg("stream") = 0);
  m.def("adam_amsgrad_step", [adam](py::object p, py::object g, py::object mm, py::object v, py::object vmax,
                                    float lr, float b1, float b2, float eps, float bc1, float bc2, float l2, float l1,
                                    float decoupled_wd, uintptr_t st) {
    adam(p, g, mm, v, vmax, lr, b1, b2, eps, bc1, bc2, l2, l1, decoupled_wd, st);
  }, py::arg("p"), py::arg("g"), py::arg("m"), py::arg("v"), py::arg("vmax"), py::arg("lr"), py::arg("beta1"),
     py::arg("beta2"), py::arg("eps"), py::arg("bc1"), py::arg("bc2"), py::arg("l2"), py::arg("l1"),
     py::arg("decoupled_wd"), py::arg("stream") = 0);

  // ---- softmax cross-entropy: row_loss (N,) float32 workspace; returns nothing, caller sums it ----
  m.def("softmax_xent_rows", [](py::object logits, py::object labels, py::object dlogits, py::object row_loss,
                                uintptr_t st) {
    auto L = dev_array(logits, "logits"), Y = dev_array(labels, "labels", "<i8"), D = dev_array(dlogits, "dlogits"),
         R = dev_array(row_loss, "row_loss");
    FT_CHECK(L.shape.size() == 2, "logits: expected (N, C), got " << L.shape.size() << " dims");
    same_size(L, D, "dlogits");
    FT_CHECK(Y.size == L.shape[0], "labels: expected " << L.shape[0] << " labels, got " << Y.size);
    FT_CHECK(R.size == L.shape[0], "row_loss: expected " << L.shape[0] << " elements, got " << R.size);
    ft::cuda::softmax_xent(f32(L), static_cast<const int64_t*>(Y.ptr), f32(D), f32(R), L.shape[0], L.shape[1],
                           stream_of(st));
  }, py::arg("logits"), py::arg("labels"), py::arg("dlogits"), py::arg("row_loss"), py::arg("stream") = 0);
  // labels in [0, C) or == ignore_index: checked by the caller (fasttrain.losses), as for softmax_xent_rows
  m.def("softmax_xent_weighted", [](py::object logits, py::object labels, py::object weight, float label_smoothing,
                                    int64_t ignore_index, float scale, float weight_sum, py::object dlogits,
                                    py::object row_loss, uintptr_t st) {
    auto L = dev_array(logits, "logits"), Y = dev_array(labels, "labels", "<i8"), W = dev_array(weight, "weight"),
         D = dev_array(dlogits, "dlogits"), R = dev_array(row_loss, "row_loss", "<f8");
    FT_CHECK(L.shape.size() == 2, "logits: expected (N, C), got " << L.shape.size() << " dims");
    same_size(L, D, "dlogits");
    FT_CHECK(Y.size == L.shape[0], "labels: expected " << L.shape[0] << " labels, got " << Y.size);
    FT_CHECK(W.size == L.shape[1], "weight: expected " << L.shape[1] << " class weights, got " << W.size);
    FT_CHECK(R.size == L.shape[0], "row_loss: expected " << L.shape[0] << " elements, got " << R.size);
    ft::cuda::softmax_xent_weighted(f32(L), static_cast<const int64_t*>(Y.ptr), f32(W), label_smoothing, ignore_index,
                                    scale, weight_sum, f32(D), static_cast<double*>(R.ptr), L.shape[0], L.shape[1],
                                    stream_of(st));
  }, py::arg("logits"), py::arg("labels"), py::arg("weight"), py::arg("label_smoothing"), py::arg("ignore_index"),
     py::arg("scale"), py::arg("weight_sum"), py::arg("dlogits"), py::arg("row_loss"), py::arg("stream") = 0);

  // ---- batchnorm ----
  // the fused residual (a ResNet block's shortcut) or its gradient: an optional array of x's size
  auto optional_like = [](py::object a, const DevArray& X, const char* name) -> float* {
    if (a.is_none()) return nullptr;
    auto A = dev_array(a, name);
    same_size(X, A, name);
    return f32(A);
  };
  m.def("batchnorm_fwd_train", [optional_like](py::object x, py::object gamma, py::object beta, float eps, py::object y,
                                  py::object mean, py::object invstd, bool relu, py::object residual, uintptr_t st) {
    auto X = dev_array(x, "x"), Gm = dev_array(gamma, "gamma"), Bt = dev_array(beta, "beta"), Y = dev_array(y, "y"),
         M = dev_array(mean, "mean"), I = dev_array(invstd, "invstd");
    int64_t n, c, s;
    ncs(X, n, c, s);
    same_size(X, Y, "y");
    FT_CHECK(Gm.size == c && Bt.size == c && M.size == c && I.size == c, "gamma/beta/mean/invstd: expected " << c << " elements");
    ft::cuda::batchnorm_fwd_train(f32(X), f32(Gm), f32(Bt), eps, f32(Y), f32(M), f32(I), n, c, s, relu,
                                  optional_like(residual, X, "residual"), stream_of(st));
  }, py::arg("x"), py::arg("gamma"), py::arg("beta"), py::arg("eps"), py::arg("y"), py::arg("mean"),
     py::arg("invstd"), py::arg("relu") = false, py::arg("residual") = py::none(), py::arg("stream") = 0);
  m.def("batchnorm_fwd_eval", [optional_like](py::object x, py::object gamma, py::object beta, py::object rmean, py::object rvar,
                                 float eps, py::object y, bool relu, py::object residual, uintptr_t st) {
    auto X = dev_array(x, "x"), Gm = dev_array(gamma, "gamma"), Bt = dev_array(beta, "beta"),
         RM = dev_array(rmean, "running_mean"), RV = dev_array(rvar, "running_var"), Y = dev_array(y, "y");
    int64_t n, c, s;
    ncs(X, n, c, s);
    same_size(X, Y, "y");
    FT_CHECK(Gm.size == c && Bt.size == c && RM.size == c && RV.size == c, "gamma/beta/running stats: expected " << c << " elements");
    ft::cuda::batchnorm_fwd_eval(f32(X), f32(Gm), f32(Bt), f32(RM), f32(RV), eps, f32(Y), n, c, s, relu,
                                 optional_like(residual, X, "residual"), stream_of(st));
  }, py::arg("x"), py::arg("gamma"), py::arg("beta"), py::arg("running_mean"), py::arg("running_var"), py::arg("eps"),
     py::arg("y"), py::arg("relu") = false, py::arg("residual") = py::none(), py::arg("stream") = 0);
  m.def("batchnorm_bwd", [optional_like](py::object x, py::object dy, py::object gamma, py::object mean, py::object invstd,
                            py::object dx, py::object dgamma, py::object dbeta, py::object y, py::object dres,
                            uintptr_t st) {
    auto X = dev_array(x, "x"), DY = dev_array(dy, "dy"), Gm = dev_array(gamma, "gamma"), M = dev_array(mean, "mean"),
         I = dev_array(invstd, "invstd"), DX = dev_array(dx, "dx"), DG = dev_array(dgamma, "dgamma"),
         DB = dev_array(dbeta, "dbeta");
    int64_t n, c, s;
    ncs(X, n, c, s);
    same_size(X, DY, "dy"); same_size(X, DX, "dx");
    FT_CHECK(Gm.size == c && M.size == c && I.size == c && DG.size == c && DB.size == c,
             "gamma/mean/invstd/dgamma/dbeta: expected " << c << " elements");
    const float* py_out = nullptr;  // the fused ReLU's output, when the forward applied it
    if (!y.is_none()) {
      auto Yo = dev_array(y, "y");
      same_size(X, Yo, "y");
      py_out = f32(Yo);
    }
    ft::cuda::batchnorm_bwd(f32(X), f32(DY), f32(Gm), f32(M), f32(I), f32(DX), f32(DG), f32(DB), n, c, s, py_out,
                            optional_like(dres, X, "dres"), stream_of(st));
  }, py::arg("x"), py::arg("dy"), py::arg("gamma"), py::arg("mean"), py::arg("invstd"), py::arg("dx"),
     py::arg("dgamma"), py::arg("dbeta"), py::arg("y") = py::none(), py::arg("dres") = py::none(),
     py::arg("stream") = 0);

  // ---- pooling (NCHW) ----
  m.def("maxpool2d_fwd", [](py::object x, py::object y, py::object argmax, int64_t kh, int64_t kw, int64_t sh,
                            int64_t sw, int64_t ph, int64_t pw, bool ceil_mode, int64_t dh, int64_t dw, uintptr_t st) {
    const char* op = "maxpool2d_fwd";
    auto X = dev_array(x, "x"), Y = dev_array(y, "y"), A = dev_array(argmax, "argmax", "<i8");
    expect_4d(op, "x", X);
    check_window(op, sh, sw, ph, pw);
    FT_CHECK(dh >= 1 && dw >= 1, op << "(dil_h, dil_w): expected dilations >= 1, got (" << dh << ", " << dw << ")");
    int64_t N = X.shape[0], C = X.shape[1], H = X.shape[2], W = X.shape[3];
    int64_t P = pool_extent(op, "height", H, kh, sh, ph, dh, ceil_mode),
            Q = pool_extent(op, "width", W, kw, sw, pw, dw, ceil_mode);
    expect_dims(op, "y", Y, {N, C, P, Q});
    expect_dims(op, "argmax", A, {N, C, P, Q});
    ft::cuda::maxpool2d_fwd(f32(X), f32(Y), static_cast<int64_t*>(A.ptr), N * C, H, W, P, Q, (int)kh, (int)kw,
                            (int)sh, (int)sw, (int)ph, (int)pw, (int)dh, (int)dw, stream_of(st));
  }, py::arg("x"), py::arg("y"), py::arg("argmax"), py::arg("kh"), py::arg("kw"), py::arg("sh"), py::arg("sw"),
     py::arg("ph"), py::arg("pw"), py::arg("ceil_mode") = false, py::arg("dil_h") = 1, py::arg("dil_w") = 1,
     py::arg("stream") = 0);
  m.def("maxpool2d_bwd", [](py::object dy, py::object argmax, py::object dx, uintptr_t st) {
    const char* op = "maxpool2d_bwd";
    auto DY = dev_array(dy, "dy"), A = dev_array(argmax, "argmax", "<i8"), DX = dev_array(dx, "dx");
    expect_4d(op, "dy", DY);
    expect_4d(op, "dx", DX);
    expect_dims(op, "argmax", A, DY.shape);
    FT_CHECK(DX.shape[0] == DY.shape[0] && DX.shape[1] == DY.shape[1],
             op << "(dx): expected shape (" << DY.shape[0] << ", " << DY.shape[1] << ", H, W), got " << dims(DX.shape));
    // argmax indices are not range-checked on the host (that would copy it back); the kernel skips
    // any index outside [0, H*W) instead of writing out of bounds
    ft::cuda::maxpool2d_bwd(f32(DY), static_cast<const int64_t*>(A.ptr), f32(DX), DX.shape[0] * DX.shape[1],
                            DX.shape[2] * DX.shape[3], DY.shape[2] * DY.shape[3], stream_of(st));
  }, py::arg("dy"), py::arg("argmax"), py::arg("dx"), py::arg("stream") = 0);
  m.def("avgpool2d_fwd", [](py::object x, py::object y, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph,
                            int64_t pw, bool ceil_mode, bool count_include_pad, int64_t divisor_override, uintptr_t st) {
    const char* op = "avgpool2d_fwd";
    auto X = dev_array(x, "x"), Y = dev_array(y, "y");
    expect_4d(op, "x", X);
    check_window(op, sh, sw, ph, pw);
    int64_t N = X.shape[0], C = X.shape[1], H = X.shape[2], W = X.shape[3];
    int64_t P = pool_extent(op, "height", H, kh, sh, ph, 1, ceil_mode),
            Q = pool_extent(op, "width", W, kw, sw, pw, 1, ceil_mode);
    expect_dims(op, "y", Y, {N, C, P, Q});
    ft::cuda::avgpool2d_fwd(f32(X), f32(Y), N * C, H, W, P, Q, (int)kh, (int)kw, (int)sh, (int)sw, (int)ph, (int)pw,
                            count_include_pad, divisor_override, stream_of(st));
  }, py::arg("x"), py::arg("y"), py::arg("kh"), py::arg("kw"), py::arg("sh"), py::arg("sw"), py::arg("ph"),
     py::arg("pw"), py::arg("ceil_mode") = false, py::arg("count_include_pad") = true,
     py::arg("divisor_override") = 0, py::arg("stream") = 0);
  m.def("avgpool2d_bwd", [](py::object dy, py::object dx, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph,
                            int64_t pw, bool ceil_mode, bool count_include_pad, int64_t divisor_override, uintptr_t st) {
    const char* op = "avgpool2d_bwd";
    auto DY = dev_array(dy, "dy"), DX = dev_array(dx, "dx");
    expect_4d(op, "dx", DX);
    check_window(op, sh, sw, ph, pw);
    int64_t N = DX.shape[0], C = DX.shape[1], H = DX.shape[2], W = DX.shape[3];
    int64_t P = pool_extent(op, "height", H, kh, sh, ph, 1, ceil_mode),
            Q = pool_extent(op, "width", W, kw, sw, pw, 1, ceil_mode);
    expect_dims(op, "dy", DY, {N, C, P, Q});
    ft::cuda::avgpool2d_bwd(f32(DY), f32(DX), N * C, H, W, P, Q, (int)kh, (int)kw, (int)sh, (int)sw, (int)ph,
                            (int)pw, count_include_pad, divisor_override, stream_of(st));
  }, py::arg("dy"), py::arg("dx"), py::arg("kh"), py::arg("kw"), py::arg("sh"), py::arg("sw"), py::arg("ph"),
     py::arg("pw"), py::arg("ceil_mode") = false, py::arg("count_include_pad") = true,
     py::arg("divisor_override") = 0, py::arg("stream") = 0);

  // ---- conv2d (NCHW): implicit-GEMM kernels ----
  m.def("conv2d_fwd", [](py::object x, py::object w, py::object b, py::object y, int64_t sh, int64_t sw, int64_t ph,
                         int64_t pw, bool relu, int64_t dilh, int64_t dilw, int64_t groups, uintptr_t st) {
    const char* op = "conv2d_fwd";
    auto X = dev_array(x, "x"), Wt = dev_array(w, "w"), B = dev_array(b, "b"), Y = dev_array(y, "y");
    auto g = conv_geom(op, X, Wt, sh, sw, ph, pw, dilh, dilw, groups, "x");
    expect_dims(op, "b", B, {g.K});
    expect_dims(op, "y", Y, {g.N, g.K, g.P, g.Q});
    ft::cuda::conv2d_fwd(f32(X), f32(Wt), f32(B), f32(Y), g, relu, stream_of(st));
  }, py::arg("x"), py::arg("w"), py::arg("b"), py::arg("y"), py::arg("sh"), py::arg("sw"), py::arg("ph"),
     py::arg("pw"), py::arg("relu"), py::arg("dil_h") = 1, py::arg("dil_w") = 1, py::arg("groups") = 1,
     py::arg("stream") = 0);
  m.def("conv2d_bwd_data", [](py::object dy, py::object w, py::object dx, int64_t sh, int64_t sw, int64_t ph,
                              int64_t pw, int64_t dilh, int64_t dilw, int64_t groups, uintptr_t st) {
    const char* op = "conv2d_bwd_data";
    auto DY = dev_array(dy, "dy"), Wt = dev_array(w, "w"), DX = dev_array(dx, "dx");
    auto g = conv_geom(op, DX, Wt, sh, sw, ph, pw, dilh, dilw, groups, "dx");
    expect_dims(op, "dy", DY, {g.N, g.K, g.P, g.Q});
    ft::cuda::conv2d_bwd_data(f32(DY), f32(Wt), f32(DX), g, stream_of(st));
  }, py::arg("dy"), py::arg("w"), py::arg("dx"), py::arg("sh"), py::arg("sw"), py::arg("ph"), py::arg("pw"),
     py::arg("dil_h") = 1, py::arg("dil_w") = 1, py::arg("groups") = 1, py::arg("stream") = 0);
  m.def("conv2d_bwd_weight", [](py::object x, py::object dy, py::object dw, py::object db, int64_t sh, int64_t sw,
                                int64_t ph, int64_t pw, int64_t dilh, int64_t dilw, int64_t groups, uintptr_t st) {
    const char* op = "conv2d_bwd_weight";
    auto X = dev_array(x, "x"), DY = dev_array(dy, "dy"), DW = dev_array(dw, "dw"), DB = dev_array(db, "db");
    auto g = conv_geom(op, X, DW, sh, sw, ph, pw, dilh, dilw, groups, "x");
    expect_dims(op, "dy", DY, {g.N, g.K, g.P, g.Q});
    expect_dims(op, "db", DB, {g.K});
    ft::cuda::conv2d_bwd_weight(f32(X), f32(DY), f32(DW), f32(DB), g, stream_of(st));
  }, py::arg("x"), py::arg("dy"), py::arg("dw"), py::arg("db"), py::arg("sh"), py::arg("sw"), py::arg("ph"),
     py::arg("pw"), py::arg("dil_h") = 1, py::arg("dil_w") = 1, py::arg("groups") = 1, py::arg("stream") = 0);
}
