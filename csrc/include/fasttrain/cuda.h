// Declarations and helpers of the CUDA kernels. Launches go to the caller's stream (CuPy's
// current stream, passed as an integer handle from Python).
#pragma once
#include <cuda_runtime.h>
#include <cstdint>
#include <sstream>
#include <stdexcept>

#define CUDA_CHECK(expr)                                                                 \
  do {                                                                                   \
    cudaError_t ft_err_ = (expr);                                                        \
    if (ft_err_ != cudaSuccess) {                                                        \
      std::ostringstream ft_os_;                                                         \
      ft_os_ << #expr << " failed: " << cudaGetErrorString(ft_err_);                     \
      throw std::runtime_error(ft_os_.str());                                            \
    }                                                                                    \
  } while (0)

namespace ft::cuda {
constexpr int kBlock = 256;
inline int grid_for(int64_t n) {
  int64_t blocks = (n + kBlock - 1) / kBlock;
  return static_cast<int>(blocks < 65535 * 8 ? blocks : 65535 * 8);
}

// activations.cu; op: "relu" | "leaky_relu" | "elu" | "sigmoid" | "tanh"
void activation_fwd(const char* op, const float* x, float* y, int64_t n, float alpha, cudaStream_t st);
void activation_bwd(const char* op, const float* a, const float* dy, float* dx, int64_t n, float alpha,
                    cudaStream_t st);

// dropout.cu: y = x * keep / (1-p) (also the backward, on dy); mask: 1 = kept
void dropout_apply(const float* x, float* y, int64_t n, double p, uint64_t seed, uint32_t step, uint32_t layer,
                   cudaStream_t st);
void dropout_mask(uint8_t* mask, int64_t n, double p, uint64_t seed, uint32_t step, uint32_t layer, cudaStream_t st);

// optim.cu
void sgd_step(float* p, const float* g, int64_t n, float lr, float l2, float l1, cudaStream_t st);
void momentum_step(float* p, const float* g, float* v, int64_t n, float lr, float mu, float dampening, float l2,
                   float l1, bool nesterov, cudaStream_t st);
void adagrad_step(float* p, const float* g, float* h, int64_t n, float lr, float eps, float l2, float l1,
                  cudaStream_t st);
// mg: centered (or null); b: momentum buffer (or null)
void rmsprop_step(float* p, const float* g, float* s, float* mg, float* b, int64_t n, float lr, float rho, float eps,
                  float mu, float l2, float l1, cudaStream_t st);
// vmax: AMSGrad's running maximum of v (or null)
void adam_step(float* p, const float* g, float* m, float* v, float* vmax, int64_t n, float lr, float b1, float b2, float eps,
               float bc1, float bc2, float l2, float l1, float decoupled_wd, cudaStream_t st);

// losses.cu: row_loss is an (N,) workspace the caller sums
void softmax_xent(const float* logits, const int64_t* labels, float* dlogits, float* row_loss, int64_t n, int64_t c,
                  cudaStream_t st);
// class weights (C,), label smoothing, an ignored label; big_w = sum of the weights (host)
void softmax_xent_weighted(const float* logits, const int64_t* labels, const float* weight, float label_smoothing,
                           int64_t ignore_index, float scale, float big_w, float* dlogits, double* row_loss,
                           int64_t n, int64_t c, cudaStream_t st);

// batchnorm.cu: x viewed as (N, C, S); relu: y = max(0, bn(x)); bwd's y: that output (dy masked by
// y > 0) when the forward applied the ReLU, nullptr otherwise; residual (or nullptr) is added before
// the ReLU, and bwd's dres (or nullptr) receives the masked dy (the residual's gradient)
void batchnorm_fwd_train(const float* x, const float* gamma, const float* beta, float eps, float* y, float* mean,
                         float* invstd, int64_t n, int64_t c, int64_t s, bool relu, const float* residual,
                         cudaStream_t st);
void batchnorm_fwd_eval(const float* x, const float* gamma, const float* beta, const float* rmean, const float* rvar,
                        float eps, float* y, int64_t n, int64_t c, int64_t s, bool relu, const float* residual,
                        cudaStream_t st);
void batchnorm_bwd(const float* x, const float* dy, const float* gamma, const float* mean, const float* invstd,
                   float* dx, float* dgamma, float* dbeta, int64_t n, int64_t c, int64_t s, const float* y,
                   float* dres, cudaStream_t st);
// pooling.cu (NCHW, nc = N*C planes; argmax: flat index into the H*W plane)
void maxpool2d_fwd(const float* x, float* y, int64_t* argmax, int64_t nc, int64_t H, int64_t W, int64_t P, int64_t Q,
                   int kh, int kw, int sh, int sw, int ph, int pw, int dh, int dw, cudaStream_t st);
void maxpool2d_bwd(const float* dy, const int64_t* argmax, float* dx, int64_t nc, int64_t HW, int64_t PQ,
                   cudaStream_t st);
void avgpool2d_fwd(const float* x, float* y, int64_t nc, int64_t H, int64_t W, int64_t P, int64_t Q, int kh, int kw,
                   int sh, int sw, int ph, int pw, bool include_pad, int64_t divisor_override, cudaStream_t st);
void avgpool2d_bwd(const float* dy, float* dx, int64_t nc, int64_t H, int64_t W, int64_t P, int64_t Q, int kh, int kw,
                   int sh, int sw, int ph, int pw, bool include_pad, int64_t divisor_override, cudaStream_t st);

// conv2d.cu (NCHW; x (N,C,H,W), w (K,C/G,R,S), y (N,K,P,Q); G groups, dilation dilh, dilw):
// implicit-GEMM kernels
struct ConvShape {
  int64_t N, C, H, W, K, R, S, P, Q;
  int sh, sw, ph, pw;
  int dilh = 1, dilw = 1;
  int64_t G = 1;
};
void conv2d_fwd(const float* x, const float* w, const float* b, float* y, const ConvShape& g, bool relu,
                cudaStream_t st);
void conv2d_bwd_data(const float* dy, const float* w, float* dx, const ConvShape& g, cudaStream_t st);
void conv2d_bwd_weight(const float* x, const float* dy, float* dw, float* db, const ConvShape& g, cudaStream_t st);
}  // namespace ft::cuda
