// 2-D convolution on the GPU, NCHW, as implicit GEMMs (no cuBLAS, no materialized im2col):
// one shared-memory tiled GEMM kernel, C[m, n] = sum_t A[m, t] * B[t, n], whose A and B operands
// are functors that gather from the tensors on the fly (zero outside the padded input), and whose
// epilogue is a functor too. The three passes (docs/KERNELS.md) are three choices of operands:
//   fwd:        y[n,k,p,q]  M = K,  cols = N*P*Q,  reduce over C*R*S   A = w,  B = im2col(x)
//   bwd_data:   dx[n,c,h,w] M = C,  cols = N*H*W,  reduce over K*R*S   A = w^T (per c), B = gather of dy
//               (dx[h] takes dy[p] where h + ph - r = p*sh, so a direct gather: no col buffer, no
//               col2im, no atomics; for stride > 1 most taps are zeros, which costs FLOPs, not correctness)
//   bwd_weight: dw[k,c,r,s] M = K,  cols = C*R*S,  reduce over N*P*Q   A = dy, B = im2col(x)^T
//               (the long reduction is split over blockIdx.z and accumulated with atomicAdd into dw,
//               which the contract accumulates into anyway; the summation order is not deterministic)
//
// Groups: each group is its own GEMM of K/G rows over C/G*R*S (one launch per group; the operand
// pointers are offset to the group's channels, the strides stay those of the whole tensors).
// Dilation spaces the taps: input row p*sh - ph + r*dilh.
//
// Tiling: a 64x64 output tile per 256-thread block, each thread owning a 4x4 micro-tile, K-tile 16.
// Per K-tile a block stages 64*16 + 16*64 floats = 8 KiB of shared memory and every staged value is
// reused 64 times, i.e. 16 FMAs per 8 shared loads per thread in the inner loop (the 4x4 register
// micro-tile is what turns the kernel from shared-memory-bound into FMA-bound). 64x64 keeps enough
// blocks for small layers (K = 64, N*P*Q = 8*32*32 gives 128 blocks); ptxas reports 80-92 registers
// per thread (the 16 accumulators plus the gather index math), so two blocks fit per SM.
// A thread's micro-tile rows/cols are strided by 16 (m = ty + 16 i, n = tx + 16 j), so the 16 threads
// of a half-warp read 16 consecutive shared words (no bank conflicts) and the stores of a warp hit
// consecutive n, i.e. mostly consecutive addresses of y/dx.
#include "fasttrain/cuda.h"

namespace ft::cuda {
namespace {

constexpr int kTM = 64, kTN = 64, kTK = 16, kThreads = 256;

template <class LoadA, class LoadB, class Store>
__global__ void __launch_bounds__(kThreads)
    implicit_gemm_kernel(int64_t M, int64_t Ncols, int64_t Kred, int64_t chunk, LoadA la, LoadB lb, Store out) {
  __shared__ float As[kTK][kTM];  // transposed: As[t][m], so the inner loop reads a row of m
  __shared__ float Bs[kTK][kTN];
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const int64_t m0 = (int64_t)blockIdx.y * kTM, n0 = (int64_t)blockIdx.x * kTN;
  const int64_t t_begin = (int64_t)blockIdx.z * chunk;
  const int64_t t_end = t_begin + chunk < Kred ? t_begin + chunk : Kred;

  float acc[4][4] = {};
  for (int64_t t0 = t_begin; t0 < t_end; t0 += kTK) {
    // stage A (64 x 16): t fastest, which is the contiguous axis of every A operand used here
#pragma unroll
    for (int l = 0; l < 4; ++l) {
      int e = tid + l * kThreads, tt = e % kTK, mm = e / kTK;
      int64_t m = m0 + mm, t = t0 + tt;
      As[tt][mm] = (m < M && t < t_end) ? la(m, t) : 0.f;
    }
    // stage B (16 x 64): n fastest, the contiguous (or stride-sw) axis of the gathered tensor
#pragma unroll
    for (int l = 0; l < 4; ++l) {
      int e = tid + l * kThreads, nn = e % kTN, tt = e / kTN;
      int64_t n = n0 + nn, t = t0 + tt;
      Bs[tt][nn] = (n < Ncols && t < t_end) ? lb(t, n) : 0.f;
    }
    __syncthreads();
#pragma unroll
    for (int tt = 0; tt < kTK; ++tt) {
      float a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = As[tt][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < 4; ++j) b[j] = Bs[tt][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    int64_t m = m0 + ty + 16 * i;
    if (m >= M) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      int64_t n = n0 + tx + 16 * j;
      if (n < Ncols) out(m, n, acc[i][j]);
    }
  }
}

// ---- operands. Index names: t = reduction index, n = GEMM column ----

// w viewed as (K, C*R*S), row-major: contiguous already
struct WeightRows {
  const float* w;
  int64_t crs;
  __device__ float operator()(int64_t k, int64_t t) const { return w[k * crs + t]; }
};

// im2col(x)[(c,r,s), (n,p,q)] = x[n, c, p*sh - ph + r*dilh, q*sw - pw + s*dilw], 0 in the padding
// (x offset to the group's first channel; c < C/G, the image stride is that of all C channels)
struct Im2col {
  const float* x;
  ConvShape g;
  __device__ float at(int64_t crs, int64_t npq) const {
    int64_t s = crs % g.S, r = (crs / g.S) % g.R, c = crs / (g.R * g.S);
    int64_t q = npq % g.Q, p = (npq / g.Q) % g.P, n = npq / (g.P * g.Q);
    int64_t h = p * g.sh - g.ph + r * g.dilh, w = q * g.sw - g.pw + s * g.dilw;
    if (h < 0 || h >= g.H || w < 0 || w >= g.W) return 0.f;
    return x[((n * g.C + c) * g.H + h) * g.W + w];
  }
  __device__ float operator()(int64_t t, int64_t n) const { return at(t, n); }
};

struct Im2colT {  // B[t = npq, n = crs] for bwd_weight
  Im2col col;
  __device__ float operator()(int64_t t, int64_t n) const { return col.at(n, t); }
};

// fwd epilogue: bias + optional ReLU, written to y[n, k, p, q]
struct StoreY {
  float* y;
  const float* b;
  int64_t K, PQ;
  bool relu;
  __device__ void operator()(int64_t k, int64_t npq, float v) const {
    v += b[k];
    if (relu) v = fmaxf(v, 0.f);
    int64_t n = npq / PQ, pq = npq % PQ;
    y[(n * K + k) * PQ + pq] = v;
  }
};

// bwd_data A: A[c, (k,r,s)] = w[k, c, r, s]
struct WeightT {
  const float* w;
  int64_t C, RS;
  __device__ float operator()(int64_t c, int64_t krs) const {
    int64_t k = krs / RS, rs = krs % RS;
    return w[(k * C + c) * RS + rs];
  }
};

// bwd_data B: B[(k,r,s), (n,h,w)] = dy[n, k, p, q] where h + ph - r*dilh = p*sh (same for w), else 0
// (dy offset to the group's first channel)
struct DyGather {
  const float* dy;
  ConvShape g;
  __device__ float operator()(int64_t krs, int64_t nhw) const {
    int64_t s = krs % g.S, r = (krs / g.S) % g.R, k = krs / (g.R * g.S);
    int64_t w = nhw % g.W, h = (nhw / g.W) % g.H, n = nhw / (g.H * g.W);
    int64_t hp = h + g.ph - r * g.dilh, wp = w + g.pw - s * g.dilw;
    if (hp < 0 || wp < 0 || hp % g.sh || wp % g.sw) return 0.f;
    int64_t p = hp / g.sh, q = wp / g.sw;
    if (p >= g.P || q >= g.Q) return 0.f;
    return dy[((n * g.K + k) * g.P + p) * g.Q + q];
  }
};

struct StoreDx {  // dx[n, c, h, w] overwritten
  float* dx;
  int64_t C, HW;
  __device__ void operator()(int64_t c, int64_t nhw, float v) const {
    int64_t n = nhw / HW, hw = nhw % HW;
    dx[(n * C + c) * HW + hw] = v;
  }
};

// bwd_weight A: A[k, (n,p,q)] = dy[n, k, p, q]
struct DyRows {
  const float* dy;
  int64_t K, PQ;
  __device__ float operator()(int64_t k, int64_t npq) const {
    int64_t n = npq / PQ, pq = npq % PQ;
    return dy[(n * K + k) * PQ + pq];
  }
};

struct AccumulateDw {  // dw[k, crs] += partial sum of this block's slice of the reduction
  float* dw;
  int64_t crs;
  __device__ void operator()(int64_t k, int64_t n, float v) const { atomicAdd(dw + k * crs + n, v); }
};

// db[k] += sum over (n, p, q) of dy[n, k, p, q]: one block per channel, tree reduction in shared memory
__global__ void bias_grad_kernel(const float* __restrict__ dy, float* __restrict__ db, int64_t N, int64_t K,
                                 int64_t PQ) {
  __shared__ float smem[kBlock];
  const int64_t k = blockIdx.x;
  float acc = 0.f;
  for (int64_t i = threadIdx.x; i < N * PQ; i += blockDim.x) acc += dy[((i / PQ) * K + k) * PQ + i % PQ];
  smem[threadIdx.x] = acc;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) smem[threadIdx.x] += smem[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) db[k] += smem[0];
}

template <class LoadA, class LoadB, class Store>
void launch_gemm(int64_t M, int64_t Ncols, int64_t Kred, int splits, LoadA la, LoadB lb, Store out, cudaStream_t st) {
  if (M == 0 || Ncols == 0) return;
  int64_t gx = (Ncols + kTN - 1) / kTN, gy = (M + kTM - 1) / kTM;
  if (gy > 65535) throw std::invalid_argument("conv2d: more than 65535*64 GEMM rows (channels) is not supported");
  int64_t chunk = (Kred + splits - 1) / splits;
  chunk = (chunk + kTK - 1) / kTK * kTK;  // whole K-tiles per split
  if (chunk == 0) chunk = kTK;
  int64_t gz = (Kred + chunk - 1) / chunk;
  if (gz == 0) gz = 1;  // an empty reduction still runs the epilogue (fwd: bias only; dx: zeros)
  dim3 grid((unsigned)gx, (unsigned)gy, (unsigned)gz);
  implicit_gemm_kernel<<<grid, kThreads, 0, st>>>(M, Ncols, Kred, chunk, la, lb, out);
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace

void conv2d_fwd(const float* x, const float* w, const float* b, float* y, const ConvShape& g, bool relu,
                cudaStream_t st) {
  const int64_t cg = g.C / g.G, kg = g.K / g.G, crs = cg * g.R * g.S, PQ = g.P * g.Q;
  for (int64_t grp = 0; grp < g.G; ++grp)
    launch_gemm(kg, g.N * PQ, crs, 1, WeightRows{w + grp * kg * crs, crs}, Im2col{x + grp * cg * g.H * g.W, g},
                StoreY{y + grp * kg * PQ, b + grp * kg, g.K, PQ, relu}, st);
}

void conv2d_bwd_data(const float* dy, const float* w, float* dx, const ConvShape& g, cudaStream_t st) {
  const int64_t cg = g.C / g.G, kg = g.K / g.G, HW = g.H * g.W, RS = g.R * g.S;
  for (int64_t grp = 0; grp < g.G; ++grp)
    launch_gemm(cg, g.N * HW, kg * RS, 1, WeightT{w + grp * kg * cg * RS, cg, RS},
                DyGather{dy + grp * kg * g.P * g.Q, g}, StoreDx{dx + grp * cg * HW, g.C, HW}, st);
}

void conv2d_bwd_weight(const float* x, const float* dy, float* dw, float* db, const ConvShape& g, cudaStream_t st) {
  const int64_t cg = g.C / g.G, kg = g.K / g.G, crs = cg * g.R * g.S, PQ = g.P * g.Q, npq = g.N * PQ;
  if (g.K == 0 || npq == 0) return;  // nothing to accumulate
  // The output (K/G x C/G*R*S) is small and the reduction (N*P*Q) long: split it so that about 1024
  // blocks run (several waves on 132 SMs), keeping each split at least 256 long so that the
  // atomicAdd traffic stays small next to the FMAs.
  int64_t tiles = g.G * ((kg + kTM - 1) / kTM) * ((crs + kTN - 1) / kTN);
  int64_t splits = (1024 + tiles - 1) / tiles, max_splits = (npq + 255) / 256;
  if (splits > max_splits) splits = max_splits;
  if (splits > 65535) splits = 65535;
  if (splits < 1) splits = 1;
  for (int64_t grp = 0; grp < g.G; ++grp)
    launch_gemm(kg, crs, npq, (int)splits, DyRows{dy + grp * kg * PQ, g.K, PQ},
                Im2colT{Im2col{x + grp * cg * g.H * g.W, g}}, AccumulateDw{dw + grp * kg * crs, crs}, st);
  bias_grad_kernel<<<(unsigned)g.K, kBlock, 0, st>>>(dy, db, g.N, g.K, PQ);
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace ft::cuda
