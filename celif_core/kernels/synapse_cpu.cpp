// Event-driven synaptic currents on the CPU: y = x W^T + b for a sparse input x, in time
// proportional to x's nonzeros (spikes), not to its size.
//
// A spiking layer's input is the previous layer's spikes: rows of 0s and 1s, most of them 0
// (firing rates of 0.2-0.4 in trained CE-LIF networks). A dense GEMM spends K x N
// multiply-adds per row whatever the spikes; here a row costs nnz x N adds: for each nonzero
// x[m, k], the k-th row of W^T (contiguous) is added into the output row. A row of 0s and 1s
// adds the rows as they are (1 * w == w exactly); any other row multiplies first, so the
// result is right for every input, only faster for sparse ones.
//
// Rounding: y[m, n] = b[n] + the terms x[m, k] * W[n, k] in increasing k, in float, no fused
// multiply-add (-ffp-contract=off). Each row depends on that row only, never on how many rows
// came with it: a sequence's currents are bit-identical alone and in a batch. (They may differ
// from a BLAS GEMM's in the last bits: BLAS sums in blocks, with FMA.)
//
// Layout: x [M, K] contiguous; wt = W^T [K, P] and bias [P] zero-padded to P columns, a
// multiple of 16 (one 512-bit vector), so every load is a whole vector; y [M, N], N <= P.
// Columns go in blocks of up to 8 vectors (128 floats) whose accumulators stay in registers
// while the row's nonzeros are added (GCC vector extensions: AVX-512 with -march=native, split
// into narrower instructions on other CPUs). Rows are split over threads (at::parallel_for).

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

constexpr int64_t LANES = 16;      // floats per vector
constexpr int64_t MAX_VECTORS = 8;  // accumulators per column block

typedef float vec __attribute__((vector_size(LANES * sizeof(float))));

inline vec load(const float* p) {
  vec v;
  std::memcpy(&v, p, sizeof(vec));
  return v;
}

// Columns [c0, c0 + NV * LANES) of one output row (the last vector may be cut at N).
template <int NV, bool ONES>
inline void column_block(float* __restrict__ out, const float* __restrict__ bias,
                         const float* __restrict__ wt, const int64_t* __restrict__ idx,
                         const float* __restrict__ val, int64_t nnz, int64_t P, int64_t c0,
                         int64_t N) {
  vec acc[NV];
  for (int v = 0; v < NV; ++v) acc[v] = load(bias + c0 + v * LANES);
  for (int64_t i = 0; i < nnz; ++i) {
    const float* __restrict__ w = wt + idx[i] * P + c0;
    if (ONES) {
      for (int v = 0; v < NV; ++v) acc[v] += load(w + v * LANES);
    } else {
      const float x = val[i];
      for (int v = 0; v < NV; ++v) acc[v] += x * load(w + v * LANES);
    }
  }
  for (int v = 0; v < NV; ++v) {
    const int64_t c = c0 + v * LANES;
    const int64_t width = std::min<int64_t>(LANES, N - c);
    if (width == LANES)
      std::memcpy(out + c, &acc[v], sizeof(vec));
    else if (width > 0)
      std::memcpy(out + c, &acc[v], width * sizeof(float));
  }
}

template <bool ONES>
void row_blocks(float* out, const float* bias, const float* wt, const int64_t* idx,
                const float* val, int64_t nnz, int64_t P, int64_t N) {
  for (int64_t c0 = 0; c0 < N; c0 += MAX_VECTORS * LANES) {
    const int64_t nv = std::min<int64_t>(MAX_VECTORS, (N - c0 + LANES - 1) / LANES);
    switch (nv) {
#define CELIF_BLOCK(n) \
  case n:              \
    column_block<n, ONES>(out, bias, wt, idx, val, nnz, P, c0, N); \
    break;
      CELIF_BLOCK(1) CELIF_BLOCK(2) CELIF_BLOCK(3) CELIF_BLOCK(4)
      CELIF_BLOCK(5) CELIF_BLOCK(6) CELIF_BLOCK(7) CELIF_BLOCK(8)
#undef CELIF_BLOCK
    }
  }
}

void event_linear_rows(const float* __restrict__ x, const float* __restrict__ wt,
                       const float* __restrict__ bias, float* __restrict__ y, int64_t m0,
                       int64_t m1, int64_t K, int64_t P, int64_t N) {
  std::vector<int64_t> idx(K);
  std::vector<float> val(K);
  for (int64_t m = m0; m < m1; ++m) {
    const float* row = x + m * K;
    // Branch-free: a branch on each input mispredicts at firing rates of 0.2-0.5 and cost
    // more than the adds (measured: 1 us a row of 256 inputs).
    int64_t nnz = 0;
    bool ones = true;
    for (int64_t k = 0; k < K; ++k) {
      const float v = row[k];
      idx[nnz] = k;
      val[nnz] = v;
      nnz += v != 0.0f;
      ones &= (v == 0.0f) | (v == 1.0f);
    }
    float* out = y + m * N;
    if (ones)
      row_blocks<true>(out, bias, wt, idx.data(), val.data(), nnz, P, N);
    else
      row_blocks<false>(out, bias, wt, idx.data(), val.data(), nnz, P, N);
  }
}

}  // namespace

// x [M, K]; wt [K, P] (the weight transposed, zero-padded to P columns, P % 16 == 0); bias
// [P] (zeros where the layer has none); n: the output's columns (<= P). Returns y [M, n].
at::Tensor event_linear(const at::Tensor& x, const at::Tensor& wt, const at::Tensor& bias,
                        int64_t n) {
  TORCH_CHECK(x.dim() == 2 && wt.dim() == 2 && x.size(1) == wt.size(0),
              "event_linear: x must be [M, K] and wt [K, P], got ", x.sizes(), " and ",
              wt.sizes());
  TORCH_CHECK(!x.is_cuda() && !wt.is_cuda() && !bias.is_cuda(), "event_linear: CPU tensors only");
  TORCH_CHECK(x.scalar_type() == at::kFloat && wt.scalar_type() == at::kFloat &&
                  bias.scalar_type() == at::kFloat,
              "event_linear: float32 tensors only");
  const int64_t P = wt.size(1);
  TORCH_CHECK(P % LANES == 0 && n >= 0 && n <= P && bias.dim() == 1 && bias.size(0) == P,
              "event_linear: wt must have a multiple of 16 columns, bias [P], n <= P");
  auto xc = x.contiguous();
  auto wc = wt.contiguous();
  auto bc = bias.contiguous();
  const int64_t M = xc.size(0), K = xc.size(1);
  auto y = at::empty({M, n}, xc.options());
  if (M == 0 || n == 0) return y;
  const float* xp = xc.data_ptr<float>();
  const float* wp = wc.data_ptr<float>();
  const float* bp = bc.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, M, 64, [&](int64_t m0, int64_t m1) {
    event_linear_rows(xp, wp, bp, yp, m0, m1, K, P, n);
  });
  return y;
}
