// ARM64 NEON micro-kernels (kernels.h), with the dot-product (sdot) and BF16 (bfdot)
// extensions where the CPU has them. 32 vector registers of 4 lanes: a 64-column tile is
// 16 vectors per row, so one row keeps all its sums in registers and more rows take the
// tile in column passes inside each block of inputs, which L1 holds meanwhile.
//   f32       FMA by the scalar x[k] (fmla by element)
//   bf16      pairs widened by shift / mask; bfdot multiplies a bf16 pair of x by each
//             column's pair and adds both products to the fp32 lane
//   int8      sdot adds the 4 products of a quad of x and a column's quad to its int32
//             lane; without it, smull to int16 and sadalp pairwise into int32 lanes
#include <algorithm>
#include <cstring>

#include "kernels.h"

#if defined(__aarch64__)
#include <arm_neon.h>

#if defined(__clang__)
#define LLM_NEON_DOTPROD __attribute__((target("dotprod")))
#define LLM_NEON_BF16 __attribute__((target("bf16")))
#else
#define LLM_NEON_DOTPROD __attribute__((target("arch=armv8.2-a+dotprod")))
#define LLM_NEON_BF16 __attribute__((target("arch=armv8.2-a+bf16")))
#endif

namespace llm {

namespace {

// Vectors of 4 columns per pass for MR rows (MR * NQ sums within the 32 registers).
template <int MR>
constexpr int kNQ = MR == 1 ? 16 : (MR == 2 ? 8 : 4);
constexpr int64_t kDotBlockQ = 64;  // quads per block of the integer kernels (16 KB of a tile)

inline int32_t load_quad(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

template <int MR, int NQ>
inline void add_sums(float* acc, int c0, float32x4_t (&a)[MR][NQ]) {
  for (int m = 0; m < MR; ++m)
    for (int i = 0; i < NQ; ++i) {
      float* t = acc + m * kTileN + c0 + 4 * i;
      vst1q_f32(t, vaddq_f32(vld1q_f32(t), a[m][i]));
    }
}

template <int MR>
void f32_neon(const void* xv, int64_t ldx, const void* wv, int64_t K, void* accv) {
  constexpr int NQ = kNQ<MR>;
  const float* x = static_cast<const float*>(xv);
  const float* w = static_cast<const float*>(wv);
  float* acc = static_cast<float*>(accv);
  for (int64_t k0 = 0; k0 < K; k0 += kBlockK) {
    const int64_t k1 = std::min(K, k0 + kBlockK);
    for (int c0 = 0; c0 < kTileN; c0 += 4 * NQ) {
      float32x4_t a[MR][NQ];
      for (int m = 0; m < MR; ++m)
        for (int i = 0; i < NQ; ++i) a[m][i] = vdupq_n_f32(0.0f);
      for (int64_t k = k0; k < k1; ++k) {
        const float* wk = w + k * kTileN + c0;
        for (int i = 0; i < NQ; ++i) {
          const float32x4_t v = vld1q_f32(wk + 4 * i);
          for (int m = 0; m < MR; ++m) a[m][i] = vfmaq_n_f32(a[m][i], v, x[m * ldx + k]);
        }
      }
      add_sums<MR, NQ>(acc, c0, a);
    }
  }
}

template <int MR>
void bf16_neon(const void* xv, int64_t ldx, const void* wv, int64_t kp, void* accv) {
  constexpr int NQ = kNQ<MR>;
  const uint16_t* x = static_cast<const uint16_t*>(xv);
  const uint16_t* w = static_cast<const uint16_t*>(wv);
  float* acc = static_cast<float*>(accv);
  const uint32x4_t hi = vdupq_n_u32(0xffff0000u);
  for (int64_t p0 = 0; p0 < kp / 2; p0 += kBlockK / 2) {
    const int64_t p1 = std::min(kp / 2, p0 + kBlockK / 2);
    for (int c0 = 0; c0 < kTileN; c0 += 4 * NQ) {
      float32x4_t a[MR][NQ];
      for (int m = 0; m < MR; ++m)
        for (int i = 0; i < NQ; ++i) a[m][i] = vdupq_n_f32(0.0f);
      for (int64_t p = p0; p < p1; ++p) {
        const uint16_t* wp = w + (p * kTileN + c0) * 2;
        float x0[MR], x1[MR];
        for (int m = 0; m < MR; ++m) {
          uint32_t u0 = static_cast<uint32_t>(x[m * ldx + 2 * p]) << 16, u1 = static_cast<uint32_t>(x[m * ldx + 2 * p + 1]) << 16;
          std::memcpy(&x0[m], &u0, 4);
          std::memcpy(&x1[m], &u1, 4);
        }
        for (int i = 0; i < NQ; ++i) {
          const uint32x4_t v = vreinterpretq_u32_u16(vld1q_u16(wp + 8 * i));
          const float32x4_t we = vreinterpretq_f32_u32(vshlq_n_u32(v, 16));
          const float32x4_t wo = vreinterpretq_f32_u32(vandq_u32(v, hi));
          for (int m = 0; m < MR; ++m) {
            a[m][i] = vfmaq_n_f32(a[m][i], we, x0[m]);
            a[m][i] = vfmaq_n_f32(a[m][i], wo, x1[m]);
          }
        }
      }
      add_sums<MR, NQ>(acc, c0, a);
    }
  }
}

template <int MR>
LLM_NEON_BF16 void bf16_neon_bfdot(const void* xv, int64_t ldx, const void* wv, int64_t kp, void* accv) {
  constexpr int NQ = kNQ<MR>;
  const uint16_t* x = static_cast<const uint16_t*>(xv);
  const uint16_t* w = static_cast<const uint16_t*>(wv);
  float* acc = static_cast<float*>(accv);
  for (int64_t p0 = 0; p0 < kp / 2; p0 += kBlockK / 2) {
    const int64_t p1 = std::min(kp / 2, p0 + kBlockK / 2);
    for (int c0 = 0; c0 < kTileN; c0 += 4 * NQ) {
      float32x4_t a[MR][NQ];
      for (int m = 0; m < MR; ++m)
        for (int i = 0; i < NQ; ++i) a[m][i] = vdupq_n_f32(0.0f);
      for (int64_t p = p0; p < p1; ++p) {
        const uint16_t* wp = w + (p * kTileN + c0) * 2;
        bfloat16x8_t xp[MR];
        for (int m = 0; m < MR; ++m) {
          uint32_t pair;
          std::memcpy(&pair, x + m * ldx + 2 * p, 4);
          xp[m] = vreinterpretq_bf16_u32(vdupq_n_u32(pair));
        }
        for (int i = 0; i < NQ; ++i) {
          const bfloat16x8_t v = vreinterpretq_bf16_u16(vld1q_u16(wp + 8 * i));
          for (int m = 0; m < MR; ++m) a[m][i] = vbfdotq_f32(a[m][i], xp[m], v);
        }
      }
      add_sums<MR, NQ>(acc, c0, a);
    }
  }
}

// smull / sadalp: per group of 4 columns, lanes (c0 k01, c0 k23, c1 k01, c1 k23) and the
// same for c2, c3; addp folds them into (c0, c1, c2, c3) at the end of a block.
template <int MR>
void int8_neon(const void* xv, int64_t ldx, const void* wv, int64_t kp, void* accv) {
  constexpr int NG = kNQ<MR> / 2;  // groups of 4 columns per pass (2 sums each)
  const int8_t* x = static_cast<const int8_t*>(xv);
  const int8_t* w = static_cast<const int8_t*>(wv);
  int32_t* acc = static_cast<int32_t*>(accv);
  for (int64_t q0 = 0; q0 < kp / 4; q0 += kDotBlockQ) {
    const int64_t q1 = std::min(kp / 4, q0 + kDotBlockQ);
    for (int c0 = 0; c0 < kTileN; c0 += 4 * NG) {
      int32x4_t a[MR][2 * NG];
      for (int m = 0; m < MR; ++m)
        for (int i = 0; i < 2 * NG; ++i) a[m][i] = vdupq_n_s32(0);
      for (int64_t q = q0; q < q1; ++q) {
        const int8_t* wq = w + (q * kTileN + c0) * 4;
        int8x16_t xr[MR];
        for (int m = 0; m < MR; ++m) xr[m] = vreinterpretq_s8_s32(vdupq_n_s32(load_quad(x + m * ldx + 4 * q)));
        for (int g = 0; g < NG; ++g) {
          const int8x16_t v = vld1q_s8(wq + 16 * g);
          for (int m = 0; m < MR; ++m) {
            a[m][2 * g] = vpadalq_s16(a[m][2 * g], vmull_s8(vget_low_s8(v), vget_low_s8(xr[m])));
            a[m][2 * g + 1] = vpadalq_s16(a[m][2 * g + 1], vmull_high_s8(v, xr[m]));
          }
        }
      }
      for (int m = 0; m < MR; ++m)
        for (int g = 0; g < NG; ++g) {
          int32_t* t = acc + m * kTileN + c0 + 4 * g;
          vst1q_s32(t, vaddq_s32(vld1q_s32(t), vpaddq_s32(a[m][2 * g], a[m][2 * g + 1])));
        }
    }
  }
}

template <int MR>
LLM_NEON_DOTPROD void int8_neon_sdot(const void* xv, int64_t ldx, const void* wv, int64_t kp, void* accv) {
  constexpr int NQ = kNQ<MR>;
  const int8_t* x = static_cast<const int8_t*>(xv);
  const int8_t* w = static_cast<const int8_t*>(wv);
  int32_t* acc = static_cast<int32_t*>(accv);
  for (int64_t q0 = 0; q0 < kp / 4; q0 += kDotBlockQ) {
    const int64_t q1 = std::min(kp / 4, q0 + kDotBlockQ);
    for (int c0 = 0; c0 < kTileN; c0 += 4 * NQ) {
      int32x4_t a[MR][NQ];
      for (int m = 0; m < MR; ++m)
        for (int i = 0; i < NQ; ++i) a[m][i] = vdupq_n_s32(0);
      for (int64_t q = q0; q < q1; ++q) {
        const int8_t* wq = w + (q * kTileN + c0) * 4;
        int8x16_t xr[MR];
        for (int m = 0; m < MR; ++m) xr[m] = vreinterpretq_s8_s32(vdupq_n_s32(load_quad(x + m * ldx + 4 * q)));
        for (int i = 0; i < NQ; ++i) {
          const int8x16_t v = vld1q_s8(wq + 16 * i);
          for (int m = 0; m < MR; ++m) a[m][i] = vdotq_s32(a[m][i], v, xr[m]);
        }
      }
      for (int m = 0; m < MR; ++m)
        for (int i = 0; i < NQ; ++i) {
          int32_t* t = acc + m * kTileN + c0 + 4 * i;
          vst1q_s32(t, vaddq_s32(vld1q_s32(t), a[m][i]));
        }
    }
  }
}

const KernelTable kNeon = {LLM_KERNEL_ROWS(f32_neon), LLM_KERNEL_ROWS(bf16_neon), LLM_KERNEL_ROWS(int8_neon), 0};
const KernelTable kNeonDotprod = {LLM_KERNEL_ROWS(f32_neon), LLM_KERNEL_ROWS(bf16_neon),
                                  LLM_KERNEL_ROWS(int8_neon_sdot), 0};
const KernelTable kNeonBf16 = {LLM_KERNEL_ROWS(f32_neon), LLM_KERNEL_ROWS(bf16_neon_bfdot),
                               LLM_KERNEL_ROWS(int8_neon_sdot), 0};

}  // namespace

const KernelTable* neon_kernels(Isa isa) {
  return isa == Isa::neon_bf16 ? &kNeonBf16 : (isa == Isa::neon_dotprod ? &kNeonDotprod : &kNeon);
}

}  // namespace llm

#else  // not aarch64

namespace llm {
const KernelTable* neon_kernels(Isa) { return nullptr; }
}  // namespace llm

#endif
