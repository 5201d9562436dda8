// Fused CPU scan for every CE-LIF-family neuron (lif, alif, plif, celif and its ce_modes).
//
// One generalised recurrence (DESIGN.md section 3; see celif_core/functional/reference.py):
//
//   U[t]     = alpha[n] * U[t-1] * (1 - S[t-1]) + I[t]
//   eta[t]   = rho * eta[t-1] + gain * CE[t]          CE by mode (below)
//   theta[t] = theta0 + scale * eta[t]
//   S[t]     = H(U[t] - theta[t]),  dS/dv = (1/a) * 1{|v| < a/2}
//
// The membrane modes come in two timings (CE-LIF's ce_timing): MEMBRANE / MEMBRANE_TE read this
// step's U[t]; MEMBRANE_PREV / MEMBRANE_TE_PREV read the previous step's U[t-1] before its reset
// (U[-1] = the initial state's u). In reverse mode the PREV modes send dL/deta[t] to U[t-1].
//
// Layout: all [T, B, N] tensors are contiguous and time-major. The batch is split into one
// contiguous chunk per thread (at::parallel_for); each thread runs T sequentially and, at every
// t, sweeps its rows [b0, b1) x [0, N), a contiguous block of memory, so the inner loop along N
// vectorises. Each tensor is read or written once per pass.
//
// Saved for backward (memory="save"): U as scalar_t and one uint8 per element packing
// bit 0 = S[t] and bit 1 = (|v| < a/2), the surrogate window. That is all the reverse loop needs.

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace {

// Must match CE_MODE_IDS in celif_core/kernels/__init__.py.
enum CeMode : int {
  NONE = 0, SPIKE = 1, MEMBRANE = 2, TE = 3, SPIKE_TE = 4, MEMBRANE_TE = 5,
  MEMBRANE_PREV = 6, MEMBRANE_TE_PREV = 7
};

constexpr bool uses_te(int mode) {
  return mode == TE || mode == SPIKE_TE || mode == MEMBRANE_TE || mode == MEMBRANE_TE_PREV;
}

struct Coefs {
  double rho, gain, scale, theta0, width;
};

// Split B into at most `threads` contiguous chunks.
inline int64_t num_chunks(int64_t B) {
  return std::max<int64_t>(1, std::min<int64_t>(B, at::get_num_threads()));
}
inline int64_t chunk_begin(int64_t c, int64_t nchunks, int64_t B) { return (B * c) / nchunks; }

// One thread's share of the forward: batch rows [b0, b1), all T steps. Every pointer and size
// is a by-value parameter so the compiler knows stores cannot change them (values captured by
// reference in a lambda are re-read after every store, which blocks vectorisation).
template <typename scalar_t, int MODE, bool SAVE>
void forward_chunk(const scalar_t* __restrict__ cur,    // [T, B, N]
                   const scalar_t* __restrict__ te,     // [T, N] or nullptr
                   const scalar_t* __restrict__ alpha,  // [N]
                   const scalar_t* __restrict__ u0,     // [B, N]
                   const scalar_t* __restrict__ s0,     // [B, N]
                   const scalar_t* __restrict__ eta0,   // [B, N]
                   scalar_t* __restrict__ spikes,       // [T, B, N]
                   scalar_t* __restrict__ u_out,        // [T, B, N] or nullptr
                   uint8_t* __restrict__ code_out,      // [T, B, N] or nullptr
                   scalar_t* __restrict__ theta_out,    // [T, B, N] or nullptr
                   scalar_t* __restrict__ uT, scalar_t* __restrict__ sT,
                   scalar_t* __restrict__ etaT,  // [B, N]
                   const int64_t T, const int64_t B, const int64_t N, const Coefs k,
                   const int64_t b0, const int64_t b1) {
  const scalar_t rho = k.rho, gain = k.gain, scale = k.scale, theta0 = k.theta0;
  const scalar_t half = k.width / 2;
  const int64_t rows = b1 - b0;
  const int64_t len = rows * N;  // this chunk's rows are contiguous in every [B, N] slab
  std::vector<scalar_t> u(u0 + b0 * N, u0 + b0 * N + len);
  std::vector<scalar_t> s(s0 + b0 * N, s0 + b0 * N + len);
  std::vector<scalar_t> eta(eta0 + b0 * N, eta0 + b0 * N + len);
  scalar_t* __restrict__ pu = u.data();
  scalar_t* __restrict__ ps = s.data();
  scalar_t* __restrict__ pe = eta.data();
  for (int64_t t = 0; t < T; ++t) {
    const int64_t base = (t * B + b0) * N;
    const scalar_t* __restrict__ te_row = uses_te(MODE) ? te + t * N : nullptr;
    const scalar_t* __restrict__ in = cur + base;
    scalar_t* __restrict__ out = spikes + base;
    scalar_t* __restrict__ u_save = SAVE ? u_out + base : nullptr;
    uint8_t* __restrict__ code_save = SAVE ? code_out + base : nullptr;
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t o = r * N;
      for (int64_t n = 0; n < N; ++n) {
        const scalar_t s_prev = ps[o + n];
        const scalar_t un = alpha[n] * pu[o + n] * (scalar_t(1) - s_prev) + in[o + n];
        scalar_t ce = 0;
        if constexpr (MODE == SPIKE) ce = s_prev;
        if constexpr (MODE == MEMBRANE) ce = un;
        if constexpr (MODE == TE) ce = te_row[n];
        if constexpr (MODE == SPIKE_TE) ce = s_prev * te_row[n];
        if constexpr (MODE == MEMBRANE_TE) ce = un * te_row[n];
        if constexpr (MODE == MEMBRANE_PREV) ce = pu[o + n];  // U[t-1], before its reset
        if constexpr (MODE == MEMBRANE_TE_PREV) ce = pu[o + n] * te_row[n];
        const scalar_t en = MODE == NONE ? rho * pe[o + n] : rho * pe[o + n] + gain * ce;
        const scalar_t theta = theta0 + scale * en;
        const scalar_t v = un - theta;
        const scalar_t sn = v >= scalar_t(0) ? scalar_t(1) : scalar_t(0);
        out[o + n] = sn;
        if constexpr (SAVE) {  // what backward needs: U, and S + surrogate window in one byte
          u_save[o + n] = un;
          code_save[o + n] = static_cast<uint8_t>(sn != scalar_t(0)) |
                             static_cast<uint8_t>(static_cast<uint8_t>(std::abs(v) < half) << 1);
        }
        pu[o + n] = un;
        ps[o + n] = sn;
        pe[o + n] = en;
      }
    }
    // The theta trace (telemetry only) in its own sweep so the hot loop stays lean; the
    // chunk's state for step t is still in cache.
    if (theta_out != nullptr) {
      scalar_t* __restrict__ th = theta_out + base;
      for (int64_t i = 0; i < len; ++i) th[i] = theta0 + scale * pe[i];
    }
  }
  std::copy(pu, pu + len, uT + b0 * N);
  std::copy(ps, ps + len, sT + b0 * N);
  std::copy(pe, pe + len, etaT + b0 * N);
}

template <typename scalar_t, int MODE>
void forward_kernel(const scalar_t* cur, const scalar_t* te, const scalar_t* alpha,
                    const scalar_t* u0, const scalar_t* s0, const scalar_t* eta0,
                    scalar_t* spikes, scalar_t* u_out, uint8_t* code_out, scalar_t* theta_out,
                    scalar_t* uT, scalar_t* sT, scalar_t* etaT, int64_t T, int64_t B, int64_t N,
                    Coefs k) {
  const int64_t nchunks = num_chunks(B);
  at::parallel_for(0, nchunks, 1, [&](int64_t c_begin, int64_t c_end) {
    for (int64_t c = c_begin; c < c_end; ++c) {
      const int64_t b0 = chunk_begin(c, nchunks, B), b1 = chunk_begin(c + 1, nchunks, B);
      if (u_out != nullptr) {
        forward_chunk<scalar_t, MODE, true>(cur, te, alpha, u0, s0, eta0, spikes, u_out,
                                            code_out, theta_out, uT, sT, etaT, T, B, N, k, b0, b1);
      } else {
        forward_chunk<scalar_t, MODE, false>(cur, te, alpha, u0, s0, eta0, spikes, u_out,
                                             code_out, theta_out, uT, sT, etaT, T, B, N, k, b0,
                                             b1);
      }
    }
  });
}

// One thread's share of the backward: batch rows [b0, b1), one reverse loop over T.
template <typename scalar_t, int MODE>
void backward_chunk(const scalar_t* __restrict__ grad_s,   // [T, B, N]
                    const scalar_t* __restrict__ u,        // [T, B, N] saved U
                    const uint8_t* __restrict__ code,      // [T, B, N] saved spike / window bits
                    const scalar_t* __restrict__ te,       // [T, N] or nullptr
                    const scalar_t* __restrict__ alpha,    // [N]
                    const scalar_t* __restrict__ u0,       // [B, N]
                    const scalar_t* __restrict__ s0,       // [B, N]
                    scalar_t* __restrict__ grad_cur,       // [T, B, N]
                    scalar_t* __restrict__ gte,            // this chunk's [T, N] or nullptr
                    scalar_t* __restrict__ galpha,         // this chunk's [N] or nullptr
                    const int64_t T, const int64_t B, const int64_t N, const Coefs k,
                    const bool detach_reset, const int64_t b0, const int64_t b1) {
  const scalar_t rho = k.rho, gain = k.gain, scale = k.scale;
  const scalar_t inv_w = scalar_t(1) / scalar_t(k.width);
  const scalar_t reset_grad = detach_reset ? scalar_t(0) : scalar_t(1);
  const int64_t rows = b1 - b0;
  const int64_t len = rows * N;
  // this chunk's partial sums, zeroed here (inside the parallel region, no extra aten op)
  if (gte != nullptr) std::fill(gte, gte + T * N, scalar_t(0));
  if (galpha != nullptr) std::fill(galpha, galpha + N, scalar_t(0));
  // Reverse-mode carries from step t+1: dL/dU[t+1], dL/deta[t+1], and the gradient that step
  // t+1 sends to S[t] (through the reset and, for spike modes, through eta).
  std::vector<scalar_t> gu(len, 0), geta(len, 0), gs_next(len, 0), s_prev(len);
  scalar_t* __restrict__ pgu = gu.data();
  scalar_t* __restrict__ pge = geta.data();
  scalar_t* __restrict__ pgs = gs_next.data();
  scalar_t* __restrict__ psp = s_prev.data();
  for (int64_t t = T - 1; t >= 0; --t) {
    const int64_t base = (t * B + b0) * N;
    // U[t-1] and S[t-1] of this chunk (the initial state at t = 0)
    const scalar_t* __restrict__ up = t > 0 ? u + base - B * N : u0 + b0 * N;
    if (t > 0) {
      const uint8_t* __restrict__ cp = code + base - B * N;
      for (int64_t i = 0; i < len; ++i) psp[i] = static_cast<scalar_t>(cp[i] & 1);
    } else {
      std::copy(s0 + b0 * N, s0 + b0 * N + len, psp);
    }
    const scalar_t* __restrict__ te_row = uses_te(MODE) ? te + t * N : nullptr;
    // TE[t+1], read by MEMBRANE_TE_PREV's eta[t+1] -> U[t] term (at t = T-1 that term's
    // dL/deta[T] is 0; any valid row serves)
    const scalar_t* __restrict__ te_after =
        MODE == MEMBRANE_TE_PREV ? te + std::min<int64_t>(t + 1, T - 1) * N : nullptr;
    const scalar_t* __restrict__ gs_in = grad_s + base;
    const scalar_t* __restrict__ ut = u + base;
    const uint8_t* __restrict__ ct = code + base;
    scalar_t* __restrict__ gi = grad_cur + base;
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t o = r * N;
      for (int64_t n = 0; n < N; ++n) {
        const int64_t i = o + n;
        const uint8_t cc = ct[i];
        const scalar_t s_t = static_cast<scalar_t>(cc & 1);
        const scalar_t win = static_cast<scalar_t>((cc >> 1) & 1);
        const scalar_t gv = (gs_in[i] + pgs[i]) * win * inv_w;  // dL/dv[t]
        const scalar_t ge_after = pge[i];                        // dL/deta[t+1]
        const scalar_t ge = rho * ge_after - scale * gv;         // dL/deta[t]
        scalar_t gut = gv + pgu[i] * alpha[n] * (scalar_t(1) - s_t);  // dL/dU[t]
        if constexpr (MODE == MEMBRANE) gut += gain * ge;
        if constexpr (MODE == MEMBRANE_TE) gut += gain * ge * te_row[n];
        if constexpr (MODE == MEMBRANE_PREV) gut += gain * ge_after;  // eta[t+1] read U[t]
        if constexpr (MODE == MEMBRANE_TE_PREV) gut += gain * ge_after * te_after[n];
        gi[i] = gut;
        // what step t sends to S[t-1]: the reset path, then the spike-driven eta input
        scalar_t gsp = -reset_grad * alpha[n] * up[i] * gut;
        if constexpr (MODE == SPIKE) gsp += gain * ge;
        if constexpr (MODE == SPIKE_TE) gsp += gain * ge * te_row[n];
        pgu[i] = gut;
        pge[i] = ge;
        pgs[i] = gsp;
      }
    }
    if (uses_te(MODE) && gte != nullptr) {  // dL/dTE[t], reduced over this chunk's rows
      scalar_t* __restrict__ gte_row = gte + t * N;
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t o = r * N;
        for (int64_t n = 0; n < N; ++n) {
          scalar_t x = gain * pge[o + n];
          if constexpr (MODE == SPIKE_TE) x *= psp[o + n];
          if constexpr (MODE == MEMBRANE_TE) x *= ut[o + n];
          if constexpr (MODE == MEMBRANE_TE_PREV) x *= up[o + n];
          gte_row[n] += x;
        }
      }
    }
    if (galpha != nullptr) {  // dL/dalpha = sum dU[t] * U[t-1] * (1 - S[t-1])
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t o = r * N;
        for (int64_t n = 0; n < N; ++n)
          galpha[n] += pgu[o + n] * up[o + n] * (scalar_t(1) - psp[o + n]);
      }
    }
  }
}

template <typename scalar_t, int MODE>
void backward_kernel(const scalar_t* grad_s, const scalar_t* u, const uint8_t* code,
                     const scalar_t* te, const scalar_t* alpha, const scalar_t* u0,
                     const scalar_t* s0, scalar_t* grad_cur,
                     scalar_t* grad_te_part,     // [nchunks, T, N] or nullptr
                     scalar_t* grad_alpha_part,  // [nchunks, N] or nullptr
                     int64_t T, int64_t B, int64_t N, Coefs k, bool detach_reset) {
  const int64_t nchunks = num_chunks(B);
  at::parallel_for(0, nchunks, 1, [&](int64_t c_begin, int64_t c_end) {
    for (int64_t c = c_begin; c < c_end; ++c) {
      backward_chunk<scalar_t, MODE>(
          grad_s, u, code, te, alpha, u0, s0, grad_cur,
          grad_te_part ? grad_te_part + c * T * N : nullptr,
          grad_alpha_part ? grad_alpha_part + c * N : nullptr, T, B, N, k, detach_reset,
          chunk_begin(c, nchunks, B), chunk_begin(c + 1, nchunks, B));
    }
  });
}

template <typename F>
void dispatch_mode(int64_t mode, F&& f) {
  switch (mode) {
    case NONE: f(std::integral_constant<int, NONE>{}); break;
    case SPIKE: f(std::integral_constant<int, SPIKE>{}); break;
    case MEMBRANE: f(std::integral_constant<int, MEMBRANE>{}); break;
    case TE: f(std::integral_constant<int, TE>{}); break;
    case SPIKE_TE: f(std::integral_constant<int, SPIKE_TE>{}); break;
    case MEMBRANE_TE: f(std::integral_constant<int, MEMBRANE_TE>{}); break;
    case MEMBRANE_PREV: f(std::integral_constant<int, MEMBRANE_PREV>{}); break;
    case MEMBRANE_TE_PREV: f(std::integral_constant<int, MEMBRANE_TE_PREV>{}); break;
    default: TORCH_CHECK(false, "celif scan: unknown ce mode id ", mode);
  }
}

void check_input(const at::Tensor& x, const char* name, const at::Tensor& like) {
  TORCH_CHECK(x.device().is_cpu(), "celif scan: ", name, " must be on CPU");
  TORCH_CHECK(x.is_contiguous(), "celif scan: ", name, " must be contiguous");
  TORCH_CHECK(x.scalar_type() == like.scalar_type(), "celif scan: ", name, " dtype mismatch");
}

}  // namespace

// Returns (spikes, u, code, theta, uT, sT, etaT); u/code/theta are empty unless requested.
std::vector<at::Tensor> scan_forward(const at::Tensor& current, const at::Tensor& te,
                                     const at::Tensor& alpha, const at::Tensor& u0,
                                     const at::Tensor& s0, const at::Tensor& eta0, int64_t mode,
                                     double rho, double gain, double scale, double theta0,
                                     double width, bool save, bool want_theta) {
  TORCH_CHECK(current.dim() == 3, "celif scan: current must be [T, B, N]");
  const int64_t T = current.size(0), B = current.size(1), N = current.size(2);
  for (auto* p : {&alpha, &u0, &s0, &eta0}) check_input(*p, "state/alpha", current);
  check_input(current, "current", current);
  if (uses_te(static_cast<int>(mode))) {
    check_input(te, "te", current);
    TORCH_CHECK(te.dim() == 2 && te.size(0) == T && te.size(1) == N, "celif scan: te must be [T, N]");
  }
  auto spikes = at::empty_like(current);
  at::Tensor u_out, code_out, theta_out;
  if (save) {
    u_out = at::empty_like(current);
    code_out = at::empty(current.sizes(), current.options().dtype(at::kByte));
  }
  if (want_theta) theta_out = at::empty_like(current);
  auto uT = at::empty_like(u0), sT = at::empty_like(u0), etaT = at::empty_like(u0);
  const Coefs k{rho, gain, scale, theta0, width};
  AT_DISPATCH_FLOATING_TYPES(current.scalar_type(), "celif_scan_forward", [&] {
    dispatch_mode(mode, [&](auto m) {
      forward_kernel<scalar_t, decltype(m)::value>(
          current.data_ptr<scalar_t>(),
          uses_te(decltype(m)::value) ? te.data_ptr<scalar_t>() : nullptr,
          alpha.data_ptr<scalar_t>(), u0.data_ptr<scalar_t>(), s0.data_ptr<scalar_t>(),
          eta0.data_ptr<scalar_t>(), spikes.data_ptr<scalar_t>(),
          save ? u_out.data_ptr<scalar_t>() : nullptr,
          save ? code_out.data_ptr<uint8_t>() : nullptr,
          want_theta ? theta_out.data_ptr<scalar_t>() : nullptr, uT.data_ptr<scalar_t>(),
          sT.data_ptr<scalar_t>(), etaT.data_ptr<scalar_t>(), T, B, N, k);
    });
  });
  auto none = at::Tensor();
  return {spikes, save ? u_out : none, save ? code_out : none, want_theta ? theta_out : none,
          uT, sT, etaT};
}

// [nchunks, ...] -> [...], summed over the first dimension in one serial pass.
at::Tensor sum_chunks(const at::Tensor& part) {
  if (part.size(0) == 1) return part.select(0, 0);
  auto out = at::empty(part.sizes().slice(1), part.options());
  const int64_t nchunks = part.size(0), m = out.numel();
  AT_DISPATCH_FLOATING_TYPES(part.scalar_type(), "celif_sum_chunks", [&] {
    const scalar_t* p = part.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    std::copy(p, p + m, o);
    for (int64_t c = 1; c < nchunks; ++c)
      for (int64_t i = 0; i < m; ++i) o[i] += p[c * m + i];
  });
  return out;
}

// Returns (grad_current, grad_te [T, N] or empty, grad_alpha [N] or empty).
std::vector<at::Tensor> scan_backward(const at::Tensor& grad_spikes, const at::Tensor& u,
                                      const at::Tensor& code, const at::Tensor& te,
                                      const at::Tensor& alpha, const at::Tensor& u0,
                                      const at::Tensor& s0, int64_t mode, double rho,
                                      double gain, double scale, double width, bool detach_reset,
                                      bool need_te, bool need_alpha) {
  const int64_t T = u.size(0), B = u.size(1), N = u.size(2);
  auto gs = grad_spikes.contiguous();
  check_input(gs, "grad_spikes", u);
  TORCH_CHECK(code.is_contiguous() && code.scalar_type() == at::kByte, "celif scan: bad code");
  const bool te_grad = need_te && uses_te(static_cast<int>(mode));
  const int64_t nchunks = num_chunks(B);
  auto grad_cur = at::empty_like(u);
  at::Tensor gte_part, galpha_part;
  if (te_grad) gte_part = at::empty({nchunks, T, N}, u.options());
  if (need_alpha) galpha_part = at::empty({nchunks, N}, u.options());
  const Coefs k{rho, gain, scale, 0.0, width};
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "celif_scan_backward", [&] {
    dispatch_mode(mode, [&](auto m) {
      backward_kernel<scalar_t, decltype(m)::value>(
          gs.data_ptr<scalar_t>(), u.data_ptr<scalar_t>(), code.data_ptr<uint8_t>(),
          uses_te(decltype(m)::value) ? te.data_ptr<scalar_t>() : nullptr,
          alpha.data_ptr<scalar_t>(), u0.data_ptr<scalar_t>(), s0.data_ptr<scalar_t>(),
          grad_cur.data_ptr<scalar_t>(), te_grad ? gte_part.data_ptr<scalar_t>() : nullptr,
          need_alpha ? galpha_part.data_ptr<scalar_t>() : nullptr, T, B, N, k, detach_reset);
    });
  });
  auto none = at::Tensor();
  // Sum the per-chunk partials serially: a few [T, N] rows, cheaper than launching a parallel
  // aten reduction (on a loaded machine every parallel region can wait for a time slice).
  return {grad_cur, te_grad ? sum_chunks(gte_part) : none,
          need_alpha ? sum_chunks(galpha_part) : none};
}

// synapse_cpu.cpp, compiled into the same module.
at::Tensor event_linear(const at::Tensor& x, const at::Tensor& wt, const at::Tensor& bias,
                        int64_t n);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Fused forward/backward scans for CE-LIF-family neurons, event-driven synapses (CPU)";
  m.def("forward", &scan_forward, "fused neuron scan forward");
  m.def("backward", &scan_backward, "fused neuron scan backward");
  m.def("event_linear", &event_linear, "x @ wt + bias in time proportional to x's nonzeros");
}
