// Declarations of the CPU kernels. Kernels trust their inputs: shapes, dtypes and contiguity are
// checked in bindings.cpp (and at the Python API boundary) before a kernel is called.
#pragma once
#include <cstdint>
#include <string>

namespace ft::cpu {

// Thread count handed to every OpenMP region explicitly (Numba resets the shared runtime's
// default, so relying on omp_get_max_threads() would silently change our thread count).
void set_num_threads(int n);
int num_threads();

// stream.cpp: c = a + b, the bench's memory-bandwidth probe
void stream_add(const float* a, const float* b, float* c, int64_t n);
// b += a, c += a, d += a: the many-stream probe (4 reads + 3 writes per element)
// b = s * a (a, b distinct): the 1-read 1-write out-of-place probe
void stream_scale(const float* a, float* b, float s, int64_t n);
void stream_update3(const float* a, float* b, float* c, float* d, int64_t n);
// the sum of a's and b's n elements each: the read-only probe (every byte read, none written)
float stream_sum(const float* a, const float* b, int64_t n);
// peak.cpp: FLOP/s of a register-only FMA loop on every thread ("avx512" or "avx2"; call only
// where fma_isa_supported says the CPU has it)
bool fma_isa_supported(const std::string& isa);
double fma_peak_flops(const std::string& isa, int64_t iters);

// activations.cpp (n elements; PReLU: x viewed as N,C,S with one slope per channel)
void relu_fwd(const float* x, float* y, int64_t n);
void relu_bwd(const float* x, const float* dy, float* dx, int64_t n);
void leaky_relu_fwd(const float* x, float* y, int64_t n, float alpha);
void leaky_relu_bwd(const float* x, const float* dy, float* dx, int64_t n, float alpha);
void elu_fwd(const float* x, float* y, int64_t n, float alpha);
void elu_bwd(const float* x, const float* dy, float* dx, int64_t n, float alpha);
void sigmoid_fwd(const float* x, float* y, int64_t n);
void sigmoid_bwd(const float* y, const float* dy, float* dx, int64_t n);
void tanh_fwd(const float* x, float* y, int64_t n);
void tanh_bwd(const float* y, const float* dy, float* dx, int64_t n);
void prelu_fwd(const float* x, const float* alpha, float* y, int64_t N, int64_t C, int64_t S);
void prelu_bwd(const float* x, const float* alpha, const float* dy, float* dx, float* dalpha,
               int64_t N, int64_t C, int64_t S);
// fasttrain/vmath.h's exp and expm1 over an array (bound for the accuracy test; not kernels)
void vmath_exp(const float* x, float* y, int64_t n);
void vmath_expm1(const float* x, float* y, int64_t n);

// optim.cpp (flat arrays of n elements, updated in place)
void sgd_step(float* p, const float* g, int64_t n, float lr, float l2, float l1);
void momentum_step(float* p, const float* g, float* v, int64_t n, float lr, float mu,
                   float dampening, float l2, float l1);
void nesterov_step(float* p, const float* g, float* v, int64_t n, float lr, float mu,
                   float dampening, float l2, float l1);
void adagrad_step(float* p, const float* g, float* h, int64_t n, float lr, float eps, float l2,
                  float l1);
void rmsprop_step(float* p, const float* g, float* s, int64_t n, float lr, float rho, float eps,
                  float l2, float l1);
void rmsprop_centered_step(float* p, const float* g, float* s, float* mg, int64_t n, float lr,
                           float rho, float eps, float l2, float l1);
void rmsprop_momentum_step(float* p, const float* g, float* s, float* b, int64_t n, float lr,
                           float rho, float eps, float mu, float l2, float l1);
void rmsprop_centered_momentum_step(float* p, const float* g, float* s, float* mg, float* b,
                                    int64_t n, float lr, float rho, float eps, float mu, float l2,
                                    float l1);
void adam_step(float* p, const float* g, float* m, float* v, int64_t n, float lr, float beta1,
               float beta2, float eps, float bc1, float bc2, float l2, float l1,
               float decoupled_wd);
void adam_amsgrad_step(float* p, const float* g, float* m, float* v, float* vmax, int64_t n,
                       float lr, float beta1, float beta2, float eps, float bc1, float bc2,
                       float l2, float l1, float decoupled_wd);

// dropout.cpp (Philox-4x32-10; seed = key, counter = (block lo, block hi, step, layer))
void philox4x32(const uint32_t* counter, const uint32_t* key, uint32_t* out, int64_t n_rows);
void dropout_mask(uint8_t* mask, int64_t n, double p, uint64_t seed, uint32_t step, uint32_t layer);
void dropout_fwd(const float* x, float* y, int64_t n, double p, uint64_t seed, uint32_t step,
                 uint32_t layer);
void dropout_bwd(const float* dy, float* dx, int64_t n, double p, uint64_t seed, uint32_t step,
                 uint32_t layer);

// losses.cpp (logits N,C; labels in [0, C), checked by the binding) -> mean loss
double softmax_xent(const float* logits, const int64_t* labels, float* dlogits, int64_t N,
                    int64_t C);
// with class weights (C,), label smoothing and an ignored label (torch's cross_entropy): row
// losses (unscaled) to row_loss (N,), dlogits = scale * each row's gradient (0 for ignored rows)
void softmax_xent_weighted(const float* logits, const int64_t* labels, const float* weight,
                           float label_smoothing, int64_t ignore_index, float scale,
                           float* dlogits, double* row_loss, int64_t N, int64_t C);

// conv2d.cpp (x N,C,H,W; w K,C/groups,R,S; y N,K,P,Q with
// P = (H + 2ph - dilh(R-1) - 1)/sh + 1; groups divides C and K, checked by the binding)
void conv2d_fwd(const float* x, const float* w, const float* b, float* y, int64_t N, int64_t C,
                int64_t H, int64_t W, int64_t K, int64_t R, int64_t S, int64_t sh, int64_t sw,
                int64_t ph, int64_t pw, bool relu, int64_t dilh = 1, int64_t dilw = 1,
                int64_t groups = 1);
void conv2d_bwd_data(const float* dy, const float* w, float* dx, int64_t N, int64_t C, int64_t H,
                     int64_t W, int64_t K, int64_t R, int64_t S, int64_t sh, int64_t sw, int64_t ph,
                     int64_t pw, int64_t dilh = 1, int64_t dilw = 1, int64_t groups = 1);
void conv2d_bwd_weight(const float* x, const float* dy, float* dw, float* db, int64_t N, int64_t C,
                       int64_t H, int64_t W, int64_t K, int64_t R, int64_t S, int64_t sh,
                       int64_t sw, int64_t ph, int64_t pw, int64_t dilh = 1, int64_t dilw = 1,
                       int64_t groups = 1);
// "auto" (depthwise kernel when groups == C; Winograd for 3x3 stride-1 layers with enough
// channels; else im2col), "im2col", "winograd", "depthwise", "direct", "winograd-blocked" (the
// direct engine with its 3x3 stride-1 padding-1 layers by Winograd on the blocked layout,
// conv2d_wino_blocked.h), "winograd43-blocked" or "pointwise" (conv2d_pointwise_*) (an error on a
// convolution it cannot do); process-wide, for tests and benchmarks.
void set_conv2d_algo(const std::string& name);
std::string conv2d_algo();
// The algorithm conv2d_<op> (op: "fwd", "bwd_data", "bwd_weight") runs for this shape now;
// blocked: for a caller that keeps activations in the blocked layout (and gives the network's
// first convolution its NCHW input through conv2d_stem_fwd): "direct" means the blocked entry
// points (the stem's for an NCHW input), anything else NCHW through conv2d_<op>.
std::string conv2d_choice(const std::string& op, int64_t N, int64_t C, int64_t H, int64_t W,
                          int64_t K, int64_t R, int64_t S, int64_t sh, int64_t sw, int64_t ph,
                          int64_t pw, int64_t dilh, int64_t dilw, int64_t groups, bool blocked);
// conv2d_direct.cpp: the same three convolutions by direct convolution on the NCHW16c layout
// (register-blocked micro-kernels per instruction set), converting NCHW in and out inside the call.
void conv2d_direct_fwd(const float* x, const float* w, const float* b, float* y, int64_t N,
                       int64_t C, int64_t H, int64_t W, int64_t K, int64_t R, int64_t S, int64_t sh,
                       int64_t sw, int64_t ph, int64_t pw, bool relu);
void conv2d_direct_bwd_data(const float* dy, const float* w, float* dx, int64_t N, int64_t C,
                            int64_t H, int64_t W, int64_t K, int64_t R, int64_t S, int64_t sh,
                            int64_t sw, int64_t ph, int64_t pw);
void conv2d_direct_bwd_weight(const float* x, const float* dy, float* dw, float* db, int64_t N,
                              int64_t C, int64_t H, int64_t W, int64_t K, int64_t R, int64_t S,
                              int64_t sh, int64_t sw, int64_t ph, int64_t pw);
// The same three convolutions for a 1x1 kernel with padding 0 and any stride, on the NCHW arrays
// themselves (pixels along the vectors, the current instruction set's kernels, no conversion).
void conv2d_pointwise_fwd(const float* x, const float* w, const float* b, float* y, int64_t N, int64_t C, int64_t H,
                          int64_t W, int64_t K, int64_t sh, int64_t sw, bool relu);
void conv2d_pointwise_bwd_data(const float* dy, const float* w, float* dx, int64_t N, int64_t C, int64_t H, int64_t W,
                               int64_t K, int64_t sh, int64_t sw);
void conv2d_pointwise_bwd_weight(const float* x, const float* dy, float* dw, float* db, int64_t N, int64_t C,
                                 int64_t H, int64_t W, int64_t K, int64_t sh, int64_t sw);
// The blocked layout itself ([N][ceil(C/16)][pt+H+pb][pl+W+pr][16], zero border and channel
// tail), for callers that keep activations blocked: x is the forward input padded by (ph, pw);
// dy (the gradients' input) is padded by conv2d_blocked_dy_pads (top, bottom, left, right);
// outputs y and dx are unpadded. The forward input x may carry a wider zero halo (hxh rows,
// hxw columns, >= ph and pw) than the convolution's padding, as a blocked activation shared with
// a padded 3x3 convolution does. stats (or null): (2, K) float64 sum and sum of squares of y.
// hdy >= 0: dy instead carries a symmetric zero halo of hdy pixels ([N][Kb][hdy+P+hdy][hdy+Q+hdy]
// [16]), at least the largest of the pads for the data gradient (any for the weight gradients,
// which read only the interior): the halo a producer can write, so no copy pads dy.
// accumulate: the data gradient adds into dxb (a residual block's two branches into one dx)
// instead of overwriting it.
void conv2d_to_blocked(const float* x, float* xb, int64_t N, int64_t C, int64_t H, int64_t W,
                       int64_t pt, int64_t pb, int64_t pl, int64_t pr);
void conv2d_from_blocked(const float* xb, float* x, int64_t N, int64_t C, int64_t H, int64_t W);
void conv2d_blocked_dy_pads(int64_t H, int64_t W, int64_t R, int64_t S, int64_t sh, int64_t sw,
                            int64_t ph, int64_t pw, int64_t pads[4]);
void conv2d_blocked_fwd(const float* xp, const float* w, const float* b, float* yb, int64_t N,
                        int64_t C, int64_t H, int64_t W, int64_t K, int64_t R, int64_t S, int64_t sh,
                        int64_t sw, int64_t ph, int64_t pw, bool relu, double* stats, int64_t hxh,
                        int64_t hxw);
// The backward sums of a training batchnorm whose output gradient a data gradient writes (its
// epilogue computes them, so the batchnorm's backward skips its own pass over x and dy):
//   sums[0][c] = sum m * g,  sums[1][c] = sum m * g * (x - mean[c])   over the batch's pixels,
// g the data gradient as finally written (after accumulate's add), x the batchnorm's input (blocked
// like dx, zero halo hx), m = (x * a + b > 0) with the forward's a = gamma * invstd and
// b = beta - mean * a (the fused ReLU's mask, as batchnorm_blocked_bwd forms it) when beta is given,
// else 1. Added in double per tile (direct) or per chunk (Winograd) in a fixed order: the same bits
// for any thread count.
struct BnGradSums {
  const float* x;
  int64_t hx;
  const float *mean, *invstd, *gamma;
  const float* beta;  // nullptr: no ReLU mask
  double* sums;       // (2, C) out
};
void conv2d_blocked_bwd_data(const float* dyp, const float* w, float* dxb, int64_t N, int64_t C,
                             int64_t H, int64_t W, int64_t K, int64_t R, int64_t S, int64_t sh,
                             int64_t sw, int64_t ph, int64_t pw, int64_t hdy = -1,
                             bool accumulate = false, const BnGradSums* bn = nullptr);
void conv2d_blocked_bwd_weight(const float* xp, const float* dyp, float* dw, float* db, int64_t N,
                               int64_t C, int64_t H, int64_t W, int64_t K, int64_t R, int64_t S,
                               int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t hxh,
                               int64_t hxw, int64_t hdy = -1);
// The stem: a convolution of few input channels (C < 16, e.g. an RGB image) from an NCHW x to a
// blocked y, with a kernel whose taps run over (channel, r, s) instead of 16-channel blocks;
// stats as for conv2d_blocked_fwd. Its weight gradient reads the same NCHW x and the blocked dy
// of conv2d_blocked_bwd_weight. No data gradient: the stem's input is the network's input.
void conv2d_stem_fwd(const float* x, const float* w, const float* b, float* yb, int64_t N,
                     int64_t C, int64_t H, int64_t W, int64_t K, int64_t R, int64_t S, int64_t sh,
                     int64_t sw, int64_t ph, int64_t pw, bool relu, double* stats);
void conv2d_stem_bwd_weight(const float* x, const float* dyp, float* dw, float* db, int64_t N,
                            int64_t C, int64_t H, int64_t W, int64_t K, int64_t R, int64_t S,
                            int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t hdy = -1);
// The direct convolution's instruction set: "auto" (the best this CPU runs), "avx512", "avx2" or
// "portable" (an error if this build or CPU lacks it); process-wide, for tests and benchmarks.
void set_conv2d_isa(const std::string& name);
std::string conv2d_isa();
// depthwise_blocked.cpp: depthwise convolution (groups == C == K, w (C, 1, R, S)) on blocked arrays
// with symmetric zero halos: x/dy are the inputs (halo_x / halo_dy), y/dx the outputs (halo_y /
// halo_dx, written zero by the kernel); padding needs no halo (taps past the halo read zero). The
// instruction set follows set_conv2d_isa. bwd_weight accumulates into dw and db. fwd's stats, if not
// null: (2, C) doubles overwritten with the sum and the sum of squares of each channel of y's
// interior (after the ReLU), for a training batchnorm that reads y; the same bits for any thread count.
void depthwise_blocked_fwd(const float* xb, const float* w, const float* b, float* yb, int64_t N, int64_t C,
                           int64_t H, int64_t W, int64_t R, int64_t S, int64_t sh, int64_t sw, int64_t ph,
                           int64_t pw, int64_t dh, int64_t dw, bool relu, int64_t halo_x, int64_t halo_y,
                           double* stats = nullptr);
void depthwise_blocked_bwd_data(const float* dyb, const float* w, float* dxb, int64_t N, int64_t C, int64_t H,
                                int64_t W, int64_t R, int64_t S, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
                                int64_t dh, int64_t dw, int64_t halo_dy, int64_t halo_dx);
void depthwise_blocked_bwd_weight(const float* xb, const float* dyb, float* dwt, float* db, int64_t N, int64_t C,
                                  int64_t H, int64_t W, int64_t R, int64_t S, int64_t sh, int64_t sw, int64_t ph,
                                  int64_t pw, int64_t dh, int64_t dw, int64_t halo_x, int64_t halo_dy);
// Both gradients in one pass: bwd_data's dx and bwd_weight's dw / db (accumulated), each group of
// dy planes read from memory once (the weight gradient re-reads it from cache right after the data
// gradient wrote that group's dx); the same bits as the two kernels called one after the other.
void depthwise_blocked_bwd(const float* xb, const float* dyb, const float* w, float* dxb, float* dwt, float* db,
                           int64_t N, int64_t C, int64_t H, int64_t W, int64_t R, int64_t S, int64_t sh, int64_t sw,
                           int64_t ph, int64_t pw, int64_t dh, int64_t dw, int64_t halo_x, int64_t halo_dy,
                           int64_t halo_dx);

// linear.cpp (x N,I; w O,I; y N,O)
void linear_fwd(const float* x, const float* w, const float* b, float* y, int64_t N, int64_t I,
                int64_t O);
void linear_bwd(const float* x, const float* w, const float* dy, float* dx, float* dw, float* db,
                int64_t N, int64_t I, int64_t O);

// batchnorm.cpp (x viewed as N,C,S). relu: y = max(0, bn(x)); bwd's y: that output when the
// forward applied the ReLU (dy is masked by y > 0), nullptr otherwise. residual (or nullptr):
// y = [max(0,] bn(x) + residual [)]; bwd's dres (or nullptr) receives the masked dy (the
// residual's gradient).
void batchnorm_fwd_train(const float* x, const float* gamma, const float* beta, float eps, float* y,
                         float* mean, float* invstd, int64_t N, int64_t C, int64_t S, bool relu,
                         const float* residual = nullptr);
void batchnorm_fwd_eval(const float* x, const float* gamma, const float* beta,
                        const float* running_mean, const float* running_var, float eps, float* y,
                        int64_t N, int64_t C, int64_t S, bool relu, const float* residual = nullptr);
void batchnorm_bwd(const float* x, const float* dy, const float* gamma, const float* mean,
                   const float* invstd, float* dx, float* dgamma, float* dbeta, int64_t N,
                   int64_t C, int64_t S, const float* y, float* dres = nullptr);
// The running statistics' update after a training forward, from the batch's mean and
// invstd = 1/sqrt(var + eps), in the operations (and so with the roundings) of the NumPy code in
// fasttrain/nn/norm.py: rmean = (1-mom)*rmean + mom*mean in float, and
// rvar = (1-mom)*rvar + mom*max(1/invstd^2 - eps, 0)*unbias in double (unbias = M/(M-1)).
void batchnorm_update_running(float* running_mean, float* running_var, const float* mean,
                              const float* invstd, int64_t C, double eps, double momentum,
                              double unbias);

// pooling.cpp (NC planes of H,W -> P,Q; P, Q from the binding, ceil mode included; dh, dw:
// max pooling's dilation; count_include_pad: average pooling's divisor rule)
void maxpool2d_fwd(const float* x, float* y, int64_t* argmax, int64_t NC, int64_t H, int64_t W,
                   int64_t P, int64_t Q, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                   int64_t ph, int64_t pw, int64_t dh = 1, int64_t dw = 1);
// returns -1, or a flat position of argmax holding an index outside its plane (dx is then partly written)
int64_t maxpool2d_bwd(const float* dy, const int64_t* argmax, float* dx, int64_t NC, int64_t H,
                      int64_t W, int64_t P, int64_t Q);
// The tap form: taps (NC, P, Q) uint8, each maximum's window tap r * kw + s (kh * kw <= 256), the
// same choice as maxpool2d_fwd. The 2x2 stride-2 rows of both run 8 outputs a step with AVX2 unless
// set_conv2d_isa("portable") forces the plain loops.
void maxpool2d_taps_fwd(const float* x, float* y, uint8_t* taps, int64_t NC, int64_t H, int64_t W, int64_t P,
                        int64_t Q, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
                        int64_t dh = 1, int64_t dw = 1);
// returns -1, or the first flat position of taps holding no real tap of its window (dx is then partly written)
int64_t maxpool2d_taps_bwd(const float* dy, const uint8_t* taps, float* dx, int64_t NC, int64_t H, int64_t W,
                           int64_t P, int64_t Q, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph,
                           int64_t pw, int64_t dh = 1, int64_t dw = 1);
void avgpool2d_fwd(const float* x, float* y, int64_t NC, int64_t H, int64_t W, int64_t P, int64_t Q,
                   int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
                   bool count_include_pad = true, int64_t divisor_override = 0);
void avgpool2d_bwd(const float* dy, float* dx, int64_t NC, int64_t H, int64_t W, int64_t P,
                   int64_t Q, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph,
                   int64_t pw, bool count_include_pad = true, int64_t divisor_override = 0);

// blocked.cpp: batch norm, pooling and the halo copy on the direct convolution's blocked layout
// [N][ceil(C/16)][H + 2h][W + 2h][16] (h: each array's halo, a zero border; H, W: the interior).
// Same semantics as the NCHW kernels above; every output's halo is written (zeros) and its pad
// lanes stay zero. dy / dres of the backward kernels have no halo; argmax is
// [N][ceil(C/16)][P][Q][16] of flat interior indices h*W + w (the NCHW kernel's). stats: (2, C)
// double [sum, sum of squares] of x's interior, or nullptr to compute them (shifted sums). Follow
// set_conv2d_isa's instruction set.
void batchnorm_blocked_fwd_train(const float* x, const float* gamma, const float* beta, float eps,
                                 float* y, float* mean, float* invstd, int64_t N, int64_t C, int64_t H,
                                 int64_t W, bool relu, const float* residual, const double* stats,
                                 int64_t hx, int64_t hy, int64_t hr);
void batchnorm_blocked_fwd_eval(const float* x, const float* gamma, const float* beta,
                                const float* running_mean, const float* running_var, float eps, float* y,
                                int64_t N, int64_t C, int64_t H, int64_t W, bool relu,
                                const float* residual, int64_t hx, int64_t hy, int64_t hr);
// beta (with y nullptr): the fused ReLU's mask recomputed from x through the forward's affine map
// (the same bits as its y > 0, without reading y); dres written in the statistics pass, which the
// dx pass then reads instead of dy and y.
void batchnorm_blocked_bwd(const float* x, const float* dy, const float* gamma, const float* mean,
                           const float* invstd, float* dx, float* dgamma, float* dbeta, int64_t N,
                           int64_t C, int64_t H, int64_t W, const float* y, float* dres, int64_t hx,
                           int64_t hy, int64_t hdx, const float* beta = nullptr,
                           const double* sums = nullptr);
void blocked_repad(const float* x, float* y, int64_t N, int64_t C, int64_t H, int64_t W, int64_t hin,
                   int64_t hout);
void global_avgpool_blocked_fwd(const float* x, float* y, int64_t N, int64_t C, int64_t H, int64_t W,
                                int64_t hx);
void global_avgpool_blocked_bwd(const float* dy, float* dx, int64_t N, int64_t C, int64_t H, int64_t W,
                                int64_t hdx);
// tap: (N, Cb, P, Q, 16) uint8, the window tap r * kw + s of each maximum (kh * kw <= 256)
void maxpool2d_blocked_fwd(const float* x, float* y, uint8_t* tap, int64_t N, int64_t C, int64_t H, int64_t W,
                           int64_t P, int64_t Q, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph,
                           int64_t pw, int64_t dh, int64_t dw, int64_t hx, int64_t hy);
void maxpool2d_blocked_bwd(const float* dy, const uint8_t* tap, float* dx, int64_t N, int64_t C, int64_t P,
                           int64_t Q, int64_t H, int64_t W, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                           int64_t ph, int64_t pw, int64_t dh, int64_t dw, int64_t hdx);
void avgpool2d_blocked_fwd(const float* x, float* y, int64_t N, int64_t C, int64_t H, int64_t W, int64_t P,
                           int64_t Q, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
                           bool count_include_pad, int64_t hx, int64_t hy);
void avgpool2d_blocked_bwd(const float* dy, float* dx, int64_t N, int64_t C, int64_t H, int64_t W, int64_t P,
                           int64_t Q, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
                           bool count_include_pad, int64_t hdx);

// codecs.cpp (dist gradient codecs; residual may be null, else error feedback is fused in)
void codec_half_encode(const float* x, float* residual, uint16_t* out, int64_t n, bool bf16);
void codec_half_decode(const uint16_t* in, float* out, int64_t n, bool bf16);
void codec_int_encode(const float* x, float* residual, uint8_t* out, int64_t n, int64_t block,
                      int bits, uint64_t seed);
void codec_int_decode(const uint8_t* in, float* out, int64_t n, int64_t block, int bits);
void codec_sign_encode(const float* x, float* residual, uint8_t* out, int64_t n, int64_t block);
void codec_sign_decode(const uint8_t* in, float* out, int64_t n, int64_t block);

}  // namespace ft::cpu
