// Linear layers for few rows on pre-packed weights: y = x @ W.T (+ bias, GELU, residual).
//
// Decoding reads every weight once per token, so the kernel is a stream over the packed
// tiles (layout in linear.h) at the memory's read bandwidth: one FMA per weight per row,
// no horizontal sums, the 4 x 64 block of sums in registers. The instruction set is chosen
// at run time (common.h): AVX-512 with VDPBF16PS on bf16 pairs where the CPU has it,
// AVX-512 FMA on widened bf16 / int8 otherwise, and a portable C++ fallback; no flag ties
// the build to one CPU. bf16 weights multiply bf16-rounded activations (as a bf16 matmul
// does) and sum in fp32. Limits: K >= 1; any N (columns past N are padding).
#include <ATen/ops/empty.h>
#include <torch/library.h>

#if defined(__x86_64__) || defined(_M_X64)
#define LLM_X86 1
#include <immintrin.h>
#endif

#include <cmath>
#include <vector>

#include "common.h"
#include "linear.h"

namespace llm {

namespace {

using Kernel = void (*)(const void* x, int64_t ldx, const void* w, int64_t k, float* acc);

// Sums run in blocks of kBlockK inputs, each block's partial sum then added to the total:
// the rounding error grows with K / kBlockK + kBlockK instead of K (as in a blocked GEMM).
constexpr int64_t kBlockK = 64;

inline void add_block(float* acc, const float* a, int rows) {
  for (int64_t i = 0; i < rows * kTileN; ++i) acc[i] += a[i];
}

// -- portable ------------------------------------------------------------------------------

template <int MR>
void f32_portable(const void* xv, int64_t ldx, const void* wv, int64_t K, float* acc) {
  const float* x = static_cast<const float*>(xv);
  const float* w = static_cast<const float*>(wv);
  std::memset(acc, 0, sizeof(float) * MR * kTileN);
  for (int64_t k0 = 0; k0 < K; k0 += kBlockK) {
    float a[MR][kTileN] = {};
    for (int64_t k = k0; k < std::min(K, k0 + kBlockK); ++k) {
      const float* wk = w + k * kTileN;
      for (int m = 0; m < MR; ++m) {
        float xm = x[m * ldx + k];
        for (int j = 0; j < kTileN; ++j) a[m][j] += xm * wk[j];
      }
    }
    add_block(acc, &a[0][0], MR);
  }
}

template <int MR>
void bf16_portable(const void* xv, int64_t ldx, const void* wv, int64_t kp, float* acc) {
  const uint16_t* x = static_cast<const uint16_t*>(xv);
  const uint16_t* w = static_cast<const uint16_t*>(wv);
  std::memset(acc, 0, sizeof(float) * MR * kTileN);
  for (int64_t k0 = 0; k0 < kp / 2; k0 += kBlockK / 2) {
    float a[MR][kTileN] = {};
    for (int64_t kk = k0; kk < std::min(kp / 2, k0 + kBlockK / 2); ++kk) {
      const uint16_t* wk = w + kk * 2 * kTileN;
      float w0[kTileN], w1[kTileN];
      for (int j = 0; j < kTileN; ++j) {
        w0[j] = bf16_to_float(wk[2 * j]);
        w1[j] = bf16_to_float(wk[2 * j + 1]);
      }
      for (int m = 0; m < MR; ++m) {
        float x0 = bf16_to_float(x[m * ldx + 2 * kk]), x1 = bf16_to_float(x[m * ldx + 2 * kk + 1]);
        for (int j = 0; j < kTileN; ++j) a[m][j] += x0 * w0[j] + x1 * w1[j];
      }
    }
    add_block(acc, &a[0][0], MR);
  }
}

template <int MR>
void int8_portable(const void* xv, int64_t ldx, const void* wv, int64_t K, float* acc) {
  const float* x = static_cast<const float*>(xv);
  const int8_t* w = static_cast<const int8_t*>(wv);
  std::memset(acc, 0, sizeof(float) * MR * kTileN);
  for (int64_t k0 = 0; k0 < K; k0 += kBlockK) {
    float a[MR][kTileN] = {};
    for (int64_t k = k0; k < std::min(K, k0 + kBlockK); ++k) {
      const int8_t* wk = w + k * kTileN;
      for (int m = 0; m < MR; ++m) {
        float xm = x[m * ldx + k];
        for (int j = 0; j < kTileN; ++j) a[m][j] += xm * static_cast<float>(wk[j]);
      }
    }
    add_block(acc, &a[0][0], MR);
  }
}

#ifdef LLM_X86
// -- AVX-512 -------------------------------------------------------------------------------
// Each k step loads one 64-column row of the tile (4 registers) and updates MR x 4 sums.

#define LLM_AVX512 __attribute__((target("avx512f")))
#define LLM_AVX512_BF16 __attribute__((target("avx512f,avx512bf16")))

template <int MR>
LLM_AVX512 void f32_avx512(const void* xv, int64_t ldx, const void* wv, int64_t K, float* acc) {
  const float* x = static_cast<const float*>(xv);
  const float* w = static_cast<const float*>(wv);
  std::memset(acc, 0, sizeof(float) * MR * kTileN);
  for (int64_t k0 = 0; k0 < K; k0 += kBlockK) {
    __m512 a[MR][4];
    for (int m = 0; m < MR; ++m)
      for (int i = 0; i < 4; ++i) a[m][i] = _mm512_setzero_ps();
    for (int64_t k = k0; k < std::min(K, k0 + kBlockK); ++k) {
      const float* wk = w + k * kTileN;
      __m512 w0 = _mm512_loadu_ps(wk), w1 = _mm512_loadu_ps(wk + 16);
      __m512 w2 = _mm512_loadu_ps(wk + 32), w3 = _mm512_loadu_ps(wk + 48);
      for (int m = 0; m < MR; ++m) {
        __m512 xm = _mm512_set1_ps(x[m * ldx + k]);
        a[m][0] = _mm512_fmadd_ps(xm, w0, a[m][0]);
        a[m][1] = _mm512_fmadd_ps(xm, w1, a[m][1]);
        a[m][2] = _mm512_fmadd_ps(xm, w2, a[m][2]);
        a[m][3] = _mm512_fmadd_ps(xm, w3, a[m][3]);
      }
    }
    for (int m = 0; m < MR; ++m)
      for (int i = 0; i < 4; ++i) {
        float* t = acc + m * kTileN + 16 * i;
        _mm512_storeu_ps(t, _mm512_add_ps(_mm512_loadu_ps(t), a[m][i]));
      }
  }
}

// bf16 pairs widened to fp32: the low half of each 32-bit lane is k, the high half k + 1.
template <int MR>
LLM_AVX512 void bf16_avx512(const void* xv, int64_t ldx, const void* wv, int64_t kp, float* acc) {
  const uint16_t* x = static_cast<const uint16_t*>(xv);
  const uint16_t* w = static_cast<const uint16_t*>(wv);
  const __m512i hi_mask = _mm512_set1_epi32(static_cast<int>(0xffff0000u));
  std::memset(acc, 0, sizeof(float) * MR * kTileN);
  for (int64_t k0 = 0; k0 < kp / 2; k0 += kBlockK / 2) {
    __m512 a[MR][4];
    for (int m = 0; m < MR; ++m)
      for (int i = 0; i < 4; ++i) a[m][i] = _mm512_setzero_ps();
    for (int64_t kk = k0; kk < std::min(kp / 2, k0 + kBlockK / 2); ++kk) {
      const uint16_t* wk = w + kk * 2 * kTileN;
      __m512 x0[MR], x1[MR];
      for (int m = 0; m < MR; ++m) {
        x0[m] = _mm512_set1_ps(bf16_to_float(x[m * ldx + 2 * kk]));
        x1[m] = _mm512_set1_ps(bf16_to_float(x[m * ldx + 2 * kk + 1]));
      }
      for (int i = 0; i < 4; ++i) {
        __m512i v = _mm512_loadu_si512(wk + 32 * i);
        __m512 we = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
        __m512 wo = _mm512_castsi512_ps(_mm512_and_si512(v, hi_mask));
        for (int m = 0; m < MR; ++m) {
          a[m][i] = _mm512_fmadd_ps(x0[m], we, a[m][i]);
          a[m][i] = _mm512_fmadd_ps(x1[m], wo, a[m][i]);
        }
      }
    }
    for (int m = 0; m < MR; ++m)
      for (int i = 0; i < 4; ++i) {
        float* t = acc + m * kTileN + 16 * i;
        _mm512_storeu_ps(t, _mm512_add_ps(_mm512_loadu_ps(t), a[m][i]));
      }
  }
}

// VDPBF16PS: each fp32 lane adds the two products of one bf16 pair of x and of w.
template <int MR>
LLM_AVX512_BF16 void bf16_avx512bf16(const void* xv, int64_t ldx, const void* wv, int64_t kp, float* acc) {
  const uint16_t* x = static_cast<const uint16_t*>(xv);
  const uint16_t* w = static_cast<const uint16_t*>(wv);
  std::memset(acc, 0, sizeof(float) * MR * kTileN);
  for (int64_t k0 = 0; k0 < kp / 2; k0 += kBlockK / 2) {
    __m512 a[MR][4];
    for (int m = 0; m < MR; ++m)
      for (int i = 0; i < 4; ++i) a[m][i] = _mm512_setzero_ps();
    for (int64_t kk = k0; kk < std::min(kp / 2, k0 + kBlockK / 2); ++kk) {
      const uint16_t* wk = w + kk * 2 * kTileN;
      __m512i w0 = _mm512_loadu_si512(wk), w1 = _mm512_loadu_si512(wk + 32);
      __m512i w2 = _mm512_loadu_si512(wk + 64), w3 = _mm512_loadu_si512(wk + 96);
      for (int m = 0; m < MR; ++m) {
        uint32_t pair;
        std::memcpy(&pair, x + m * ldx + 2 * kk, 4);
        __m512bh xm = (__m512bh)_mm512_set1_epi32(static_cast<int>(pair));
        a[m][0] = _mm512_dpbf16_ps(a[m][0], xm, (__m512bh)w0);
        a[m][1] = _mm512_dpbf16_ps(a[m][1], xm, (__m512bh)w1);
        a[m][2] = _mm512_dpbf16_ps(a[m][2], xm, (__m512bh)w2);
        a[m][3] = _mm512_dpbf16_ps(a[m][3], xm, (__m512bh)w3);
      }
    }
    for (int m = 0; m < MR; ++m)
      for (int i = 0; i < 4; ++i) {
        float* t = acc + m * kTileN + 16 * i;
        _mm512_storeu_ps(t, _mm512_add_ps(_mm512_loadu_ps(t), a[m][i]));
      }
  }
}

template <int MR>
LLM_AVX512 void int8_avx512(const void* xv, int64_t ldx, const void* wv, int64_t K, float* acc) {
  const float* x = static_cast<const float*>(xv);
  const int8_t* w = static_cast<const int8_t*>(wv);
  std::memset(acc, 0, sizeof(float) * MR * kTileN);
  for (int64_t k0 = 0; k0 < K; k0 += kBlockK) {
    __m512 a[MR][4];
    for (int m = 0; m < MR; ++m)
      for (int i = 0; i < 4; ++i) a[m][i] = _mm512_setzero_ps();
    for (int64_t k = k0; k < std::min(K, k0 + kBlockK); ++k) {
      const int8_t* wk = w + k * kTileN;
      __m512 wf[4];
      for (int i = 0; i < 4; ++i)
        wf[i] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wk + 16 * i))));
      for (int m = 0; m < MR; ++m) {
        __m512 xm = _mm512_set1_ps(x[m * ldx + k]);
        for (int i = 0; i < 4; ++i) a[m][i] = _mm512_fmadd_ps(xm, wf[i], a[m][i]);
      }
    }
    for (int m = 0; m < MR; ++m)
      for (int i = 0; i < 4; ++i) {
        float* t = acc + m * kTileN + 16 * i;
        _mm512_storeu_ps(t, _mm512_add_ps(_mm512_loadu_ps(t), a[m][i]));
      }
  }
}

#endif  // LLM_X86

#define LLM_KERNEL_TABLE(fn) \
  { fn<1>, fn<2>, fn<3>, fn<4> }

Kernel pick_kernel(WFormat format, Isa isa, int64_t mr) {
#ifdef LLM_X86
  static const Kernel f32[3][4] = {LLM_KERNEL_TABLE(f32_portable), LLM_KERNEL_TABLE(f32_avx512),
                                   LLM_KERNEL_TABLE(f32_avx512)};
  static const Kernel bf16[3][4] = {LLM_KERNEL_TABLE(bf16_portable), LLM_KERNEL_TABLE(bf16_avx512),
                                    LLM_KERNEL_TABLE(bf16_avx512bf16)};
  static const Kernel int8[3][4] = {LLM_KERNEL_TABLE(int8_portable), LLM_KERNEL_TABLE(int8_avx512),
                                    LLM_KERNEL_TABLE(int8_avx512)};
  const int i = static_cast<int>(isa);
#else  // other CPUs: the portable kernels only (best_isa() is portable there)
  static const Kernel f32[1][4] = {LLM_KERNEL_TABLE(f32_portable)};
  static const Kernel bf16[1][4] = {LLM_KERNEL_TABLE(bf16_portable)};
  static const Kernel int8[1][4] = {LLM_KERNEL_TABLE(int8_portable)};
  const int i = 0;
  (void)isa;
#endif
  switch (format) {
    case WFormat::f32: return f32[i][mr - 1];
    case WFormat::bf16: return bf16[i][mr - 1];
    default: return int8[i][mr - 1];
  }
}

}  // namespace

void rows_to_bf16(const float* x, int64_t ldx, int64_t M, int64_t K, uint16_t* out, int64_t kp) {
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t k = 0; k < K; ++k) out[m * kp + k] = float_to_bf16(x[m * ldx + k]);
    for (int64_t k = K; k < kp; ++k) out[m * kp + k] = 0;
  }
}

void linear_tiles(const PackedView& w, const float* x, int64_t ldx, const uint16_t* xb, int64_t M,
                  const Epilogue& e, int64_t t0, int64_t t1, Isa isa) {
  const bool bf16 = w.format == WFormat::bf16;
  const int64_t klen = bf16 ? w.kp : w.k;
  const size_t esize = w.format == WFormat::f32 ? 4 : (bf16 ? 2 : 1);
  alignas(64) float acc[kRowBlock * kTileN];
  for (int64_t t = t0; t < t1; ++t) {
    const char* wt = static_cast<const char*>(w.data) + t * w.tile_elems() * esize;
    const int64_t n0 = t * kTileN;
    const int64_t cols = std::min<int64_t>(kTileN, w.n - n0);
    for (int64_t m0 = 0; m0 < M; m0 += kRowBlock) {
      const int64_t mr = std::min<int64_t>(kRowBlock, M - m0);
      const void* xrows = bf16 ? static_cast<const void*>(xb + m0 * w.kp) : static_cast<const void*>(x + m0 * ldx);
      pick_kernel(w.format, isa, mr)(xrows, bf16 ? w.kp : ldx, wt, klen, acc);
      for (int64_t m = 0; m < mr; ++m) {
        const float* a = acc + m * kTileN;
        const int64_t row = m0 + m;
        float* out = e.out + row * e.ld_out + n0;
        const float* res = e.residual ? e.residual + row * e.ld_residual + n0 : nullptr;
        uint16_t* ob = e.out_bf16 ? e.out_bf16 + row * e.ld_out_bf16 + n0 : nullptr;
        for (int64_t j = 0; j < cols; ++j) {
          float y = a[j];
          if (w.scales) y *= w.scales[n0 + j];
          if (e.bias) y += e.bias[n0 + j];
          if (e.gelu) y = gelu_tanh(y);
          if (res) y += res[j];
          out[j] = y;
          if (ob) ob[j] = float_to_bf16(y);
        }
      }
    }
  }
}

// -- packing ---------------------------------------------------------------------------------

static float weight_at(const at::Tensor& w, int64_t idx) {
  if (w.scalar_type() == at::kFloat) return w.const_data_ptr<float>()[idx];
  return bf16_to_float(reinterpret_cast<const uint16_t*>(w.const_data_ptr<at::BFloat16>())[idx]);
}

std::tuple<at::Tensor, at::Tensor> pack_linear_weight(const at::Tensor& weight, c10::string_view format) {
  const char* op = "pack_linear_weight";
  check_cpu_tensor(weight, op, "weight");
  check_float_dtype(weight, op, "weight");
  check_contiguous(weight, op, "weight");
  check_dim(weight, 2, op, "weight");
  const int64_t N = weight.size(0), K = weight.size(1);
  LLM_CHECK(N >= 1 && K >= 1, "llm.", op, ": weight must be non-empty, got shape ", shape_str(weight));
  const int64_t tiles = (N + kTileN - 1) / kTileN;
  auto opts = weight.options();
  if (format == "float32") {
    at::Tensor p = at::empty({tiles, K, kTileN}, opts.dtype(at::kFloat));
    float* d = p.data_ptr<float>();
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < tiles; ++t)
      for (int64_t k = 0; k < K; ++k)
        for (int64_t j = 0; j < kTileN; ++j) {
          int64_t n = t * kTileN + j;
          d[(t * K + k) * kTileN + j] = n < N ? weight_at(weight, n * K + k) : 0.0f;
        }
    return {p, at::empty({0}, opts.dtype(at::kFloat))};
  }
  if (format == "bfloat16") {
    const int64_t kp = (K + 1) / 2 * 2;
    at::Tensor p = at::empty({tiles, kp / 2, kTileN, 2}, opts.dtype(at::kBFloat16));
    uint16_t* d = reinterpret_cast<uint16_t*>(p.data_ptr<at::BFloat16>());
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < tiles; ++t)
      for (int64_t k = 0; k < kp; ++k)
        for (int64_t j = 0; j < kTileN; ++j) {
          int64_t n = t * kTileN + j;
          float v = (n < N && k < K) ? weight_at(weight, n * K + k) : 0.0f;
          d[t * kp * kTileN + (k / 2) * 2 * kTileN + j * 2 + (k % 2)] = float_to_bf16(v);
        }
    return {p, at::empty({0}, opts.dtype(at::kFloat))};
  }
  if (format == "int8") {
    at::Tensor p = at::empty({tiles, K, kTileN}, opts.dtype(at::kChar));
    at::Tensor s = at::empty({tiles * kTileN}, opts.dtype(at::kFloat));
    int8_t* d = p.data_ptr<int8_t>();
    float* sc = s.data_ptr<float>();
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < tiles; ++t) {
      for (int64_t j = 0; j < kTileN; ++j) {
        int64_t n = t * kTileN + j;
        float amax = 0.0f;
        for (int64_t k = 0; n < N && k < K; ++k) amax = std::max(amax, std::fabs(weight_at(weight, n * K + k)));
        float scale = amax / 127.0f, inv = amax > 0.0f ? 127.0f / amax : 0.0f;
        sc[n] = scale;
        for (int64_t k = 0; k < K; ++k) {
          float q = n < N ? std::nearbyint(weight_at(weight, n * K + k) * inv) : 0.0f;
          d[(t * K + k) * kTileN + j] = static_cast<int8_t>(std::max(-127.0f, std::min(127.0f, q)));
        }
      }
    }
    return {p, s};
  }
  TORCH_CHECK_VALUE(false, "llm.", op, ": unknown format '", std::string(format),
                    "'; choose 'float32', 'bfloat16' or 'int8'");
}

// Checks that `packed` (+ `scales`) came from pack_linear_weight for an [n, k] weight.
PackedView packed_view(const at::Tensor& packed, const at::Tensor& scales, int64_t n, int64_t k, const char* op) {
  check_cpu_tensor(packed, op, "packed");
  check_contiguous(packed, op, "packed");
  PackedView v{};
  v.n = n;
  v.k = k;
  v.kp = k;
  v.scales = nullptr;
  const auto dt = packed.scalar_type();
  LLM_CHECK(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kChar, "llm.", op,
            ": packed must come from llm.pack_linear_weight (float32, bfloat16 or int8), got dtype ", dt);
  v.format = dt == at::kFloat ? WFormat::f32 : (dt == at::kBFloat16 ? WFormat::bf16 : WFormat::int8);
  if (v.format == WFormat::bf16) v.kp = (k + 1) / 2 * 2;
  const int64_t want_dim = v.format == WFormat::bf16 ? 4 : 3;
  LLM_CHECK(packed.dim() == want_dim && packed.size(-1) == (v.format == WFormat::bf16 ? 2 : kTileN) &&
                packed.size(1) == (v.format == WFormat::bf16 ? v.kp / 2 : k),
            "llm.", op, ": packed weight of shape ", shape_str(packed), " does not fit inputs with ", k,
            " features (pack the [n, ", k, "] weight with llm.pack_linear_weight)");
  v.tiles = packed.size(0);
  LLM_CHECK(n >= 1 && n <= v.tiles * kTileN && n > (v.tiles - 1) * kTileN, "llm.", op, ": n=", n,
            " does not match the packed weight (", v.tiles, " tiles of ", kTileN, " columns)");
  v.data = packed.const_data_ptr();
  if (v.format == WFormat::int8) {
    check_cpu_tensor(scales, op, "scales");
    LLM_CHECK(scales.scalar_type() == at::kFloat && scales.is_contiguous() && scales.dim() == 1 &&
                  scales.numel() == v.tiles * kTileN,
              "llm.", op, ": int8 weights need the float32 scales [", v.tiles * kTileN,
              "] from llm.pack_linear_weight, got ", scales.scalar_type(), " ", shape_str(scales));
    v.scales = scales.const_data_ptr<float>();
  }
  return v;
}

static at::Tensor as_float_contiguous(const at::Tensor& t) {
  return t.scalar_type() == at::kFloat ? t.contiguous() : t.to(at::kFloat).contiguous();
}

at::Tensor packed_linear(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scales, int64_t n,
                         const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& residual,
                         c10::string_view activation) {
  const char* op = "packed_linear";
  check_cpu_tensor(x, op, "x");
  check_float_dtype(x, op, "x");
  LLM_CHECK(x.dim() >= 1, "llm.", op, ": x must have at least one dimension");
  const int64_t K = x.size(-1);
  LLM_CHECK(K >= 1, "llm.", op, ": x has no features (last dimension is 0)");
  PackedView w = packed_view(packed, scales, n, K, op);
  TORCH_CHECK_VALUE(activation == "none" || activation == "gelu_tanh", "llm.", op, ": unknown activation '",
                    std::string(activation), "'; choose 'none' or 'gelu_tanh'");
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = n;
  const int64_t M = x.numel() / K;
  at::Tensor xf = as_float_contiguous(x);
  at::Tensor bf, rf;
  Epilogue e;
  if (bias.has_value()) {
    check_cpu_tensor(*bias, op, "bias");
    check_float_dtype(*bias, op, "bias");
    LLM_CHECK(bias->dim() == 1 && bias->size(0) == n, "llm.", op, ": bias must have shape [", n, "], got ",
              shape_str(*bias));
    bf = as_float_contiguous(*bias);
    e.bias = bf.const_data_ptr<float>();
  }
  if (residual.has_value()) {
    check_cpu_tensor(*residual, op, "residual");
    check_float_dtype(*residual, op, "residual");
    LLM_CHECK(residual->sizes() == c10::IntArrayRef(out_shape), "llm.", op, ": residual must have the output's shape ",
              c10::IntArrayRef(out_shape), ", got ", shape_str(*residual));
    rf = as_float_contiguous(*residual);
    e.residual = rf.const_data_ptr<float>();
    e.ld_residual = n;
  }
  e.gelu = activation == "gelu_tanh";
  at::Tensor out = at::empty(out_shape, x.options().dtype(at::kFloat));
  e.out = out.data_ptr<float>();
  e.ld_out = n;
  if (M == 0) return out.to(x.scalar_type());
  std::vector<uint16_t> xb;
  if (w.format == WFormat::bf16) {
    xb.resize(M * w.kp);
    rows_to_bf16(xf.const_data_ptr<float>(), K, M, K, xb.data(), w.kp);
  }
  const float* xp = xf.const_data_ptr<float>();
  const Isa isa = current_isa();
#pragma omp parallel
  {
    int64_t t0, t1;
    split_range(w.tiles, thread_id(), num_threads_in_team(), &t0, &t1);
    linear_tiles(w, xp, K, xb.data(), M, e, t0, t1, isa);
  }
  return x.scalar_type() == at::kFloat ? out : out.to(x.scalar_type());
}

}  // namespace llm

TORCH_LIBRARY_IMPL(llm, CPU, m) {
  m.impl("pack_linear_weight", &llm::pack_linear_weight);
  m.impl("packed_linear", &llm::packed_linear);
}
