// AVX2 + FMA micro-kernels (kernels.h), and the AVX-VNNI variant of the integer one.
//
// 16 vector registers of 8 lanes: a 64-column tile is 8 vectors per row, so one row keeps
// all 64 sums in registers, more rows take the tile in column passes (MR x NV vectors of
// sums, NV = 8 / passes) inside each block of kBlockK inputs, which L1 holds meanwhile.
//   f32       broadcast x[k], FMA with the 8 vectors of row k
//   bf16      a 32-bit lane holds one column's (k, k+1) pair: shift / mask widen to fp32
//   int8      a 32-bit lane holds one column's quad (k..k+3) of weights; vpmaddubsw needs
//             an unsigned operand: |x| times w with x's sign (vpsignb),
//             then vpmaddwd by ones sums the pairs to int32 (|x|, |w| <= 127: no
//             saturation); AVX-VNNI's vpdpbusd does it in one instruction on x + 128,
//             and the tile's column sums take the 128 * sum(w) back out
#include <algorithm>
#include <cstring>

#include "kernels.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#define LLM_AVX2 __attribute__((target("avx2,fma")))
#define LLM_AVX2_VNNI __attribute__((target("avx2,fma,avxvnni")))

namespace llm {

namespace {

// Vectors of 8 columns per pass for MR rows (MR * NV sums must fit the 16 registers).
template <int MR>
constexpr int kNV = MR == 1 ? 8 : (MR >= 4 ? 2 : 4);

template <int MR>
LLM_AVX2 void f32_avx2(const void* xv, int64_t ldx, const void* wv, int64_t K, void* accv) {
  constexpr int NV = kNV<MR>;
  const float* x = static_cast<const float*>(xv);
  const float* w = static_cast<const float*>(wv);
  float* acc = static_cast<float*>(accv);
  for (int64_t k0 = 0; k0 < K; k0 += kBlockK) {
    const int64_t k1 = std::min(K, k0 + kBlockK);
    for (int c0 = 0; c0 < kTileN; c0 += 8 * NV) {
      __m256 a[MR][NV];
      for (int m = 0; m < MR; ++m)
        for (int i = 0; i < NV; ++i) a[m][i] = _mm256_setzero_ps();
      for (int64_t k = k0; k < k1; ++k) {
        const float* wk = w + k * kTileN + c0;
        for (int m = 0; m < MR; ++m) {
          const __m256 xm = _mm256_broadcast_ss(x + m * ldx + k);
          for (int i = 0; i < NV; ++i) a[m][i] = _mm256_fmadd_ps(xm, _mm256_loadu_ps(wk + 8 * i), a[m][i]);
        }
      }
      for (int m = 0; m < MR; ++m)
        for (int i = 0; i < NV; ++i) {
          float* t = acc + m * kTileN + c0 + 8 * i;
          _mm256_storeu_ps(t, _mm256_add_ps(_mm256_loadu_ps(t), a[m][i]));
        }
    }
  }
}

template <int MR>
LLM_AVX2 void bf16_avx2(const void* xv, int64_t ldx, const void* wv, int64_t kp, void* accv) {
  constexpr int NV = kNV<MR>;
  const uint16_t* x = static_cast<const uint16_t*>(xv);
  const uint16_t* w = static_cast<const uint16_t*>(wv);
  float* acc = static_cast<float*>(accv);
  const __m256i hi = _mm256_set1_epi32(static_cast<int>(0xffff0000u));
  for (int64_t p0 = 0; p0 < kp / 2; p0 += kBlockK / 2) {
    const int64_t p1 = std::min(kp / 2, p0 + kBlockK / 2);
    for (int c0 = 0; c0 < kTileN; c0 += 8 * NV) {
      __m256 a[MR][NV];
      for (int m = 0; m < MR; ++m)
        for (int i = 0; i < NV; ++i) a[m][i] = _mm256_setzero_ps();
      for (int64_t p = p0; p < p1; ++p) {
        const uint16_t* wp = w + (p * kTileN + c0) * 2;
        __m256 x0[MR], x1[MR];
        for (int m = 0; m < MR; ++m) {
          int32_t pair;
          std::memcpy(&pair, x + m * ldx + 2 * p, 4);
          const __m256i xp = _mm256_set1_epi32(pair);
          x0[m] = _mm256_castsi256_ps(_mm256_slli_epi32(xp, 16));
          x1[m] = _mm256_castsi256_ps(_mm256_and_si256(xp, hi));
        }
        for (int i = 0; i < NV; ++i) {
          const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wp + 16 * i));
          const __m256 we = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
          const __m256 wo = _mm256_castsi256_ps(_mm256_and_si256(v, hi));
          for (int m = 0; m < MR; ++m) {
            a[m][i] = _mm256_fmadd_ps(x0[m], we, a[m][i]);
            a[m][i] = _mm256_fmadd_ps(x1[m], wo, a[m][i]);
          }
        }
      }
      for (int m = 0; m < MR; ++m)
        for (int i = 0; i < NV; ++i) {
          float* t = acc + m * kTileN + c0 + 8 * i;
          _mm256_storeu_ps(t, _mm256_add_ps(_mm256_loadu_ps(t), a[m][i]));
        }
    }
  }
}

LLM_AVX2 inline __m256i quad_broadcast(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm256_set1_epi32(v);
}

// Quads of inputs per block of the integer kernels: 256 inputs, 16 KB of a tile, in L1
// while the column passes run over it (integer sums are exact, so blocks are only for L1).
constexpr int64_t kDotBlockQ = 64;

template <int MR>
LLM_AVX2 void int8_avx2(const void* xv, int64_t ldx, const void* wv, int64_t kp, void* accv) {
  constexpr int NV = kNV<MR>;
  const int8_t* x = static_cast<const int8_t*>(xv);
  const int8_t* w = static_cast<const int8_t*>(wv);
  int32_t* acc = static_cast<int32_t*>(accv);
  const __m256i ones = _mm256_set1_epi16(1);
  for (int64_t q0 = 0; q0 < kp / 4; q0 += kDotBlockQ) {
    const int64_t q1 = std::min(kp / 4, q0 + kDotBlockQ);
    for (int c0 = 0; c0 < kTileN; c0 += 8 * NV) {
      __m256i a[MR][NV];
      for (int m = 0; m < MR; ++m)
        for (int i = 0; i < NV; ++i) a[m][i] = _mm256_setzero_si256();
      for (int64_t q = q0; q < q1; ++q) {
        const int8_t* wq = w + (q * kTileN + c0) * 4;
        __m256i xs[MR], xa[MR];
        for (int m = 0; m < MR; ++m) {
          xs[m] = quad_broadcast(x + m * ldx + 4 * q);
          xa[m] = _mm256_abs_epi8(xs[m]);
        }
        for (int i = 0; i < NV; ++i) {
          const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wq + 32 * i));
          for (int m = 0; m < MR; ++m) {
            const __m256i p = _mm256_maddubs_epi16(xa[m], _mm256_sign_epi8(v, xs[m]));
            a[m][i] = _mm256_add_epi32(a[m][i], _mm256_madd_epi16(p, ones));
          }
        }
      }
      for (int m = 0; m < MR; ++m)
        for (int i = 0; i < NV; ++i) {
          __m256i* t = reinterpret_cast<__m256i*>(acc + m * kTileN + c0 + 8 * i);
          _mm256_storeu_si256(t, _mm256_add_epi32(_mm256_loadu_si256(t), a[m][i]));
        }
    }
  }
}

template <int MR>
LLM_AVX2_VNNI void int8_avx2_vnni(const void* xv, int64_t ldx, const void* wv, int64_t kp, void* accv) {
  constexpr int NV = kNV<MR>;
  const int8_t* x = static_cast<const int8_t*>(xv);
  const int8_t* w = static_cast<const int8_t*>(wv);
  int32_t* acc = static_cast<int32_t*>(accv);
  for (int64_t q0 = 0; q0 < kp / 4; q0 += kDotBlockQ) {
    const int64_t q1 = std::min(kp / 4, q0 + kDotBlockQ);
    for (int c0 = 0; c0 < kTileN; c0 += 8 * NV) {
      __m256i a[MR][NV];
      for (int m = 0; m < MR; ++m)
        for (int i = 0; i < NV; ++i)
          a[m][i] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(acc + m * kTileN + c0 + 8 * i));
      for (int64_t q = q0; q < q1; ++q) {
        const int8_t* wq = w + (q * kTileN + c0) * 4;
        __m256i xu[MR];
        for (int m = 0; m < MR; ++m) xu[m] = quad_broadcast(x + m * ldx + 4 * q);
        for (int i = 0; i < NV; ++i) {
          const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wq + 32 * i));
          for (int m = 0; m < MR; ++m) a[m][i] = _mm256_dpbusd_avx_epi32(a[m][i], xu[m], v);
        }
      }
      for (int m = 0; m < MR; ++m)
        for (int i = 0; i < NV; ++i)
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(acc + m * kTileN + c0 + 8 * i), a[m][i]);
    }
  }
}

const KernelTable kAvx2 = {LLM_KERNEL_ROWS6(f32_avx2), LLM_KERNEL_ROWS(bf16_avx2), LLM_KERNEL_ROWS(int8_avx2), 0};
const KernelTable kAvx2Vnni = {LLM_KERNEL_ROWS6(f32_avx2), LLM_KERNEL_ROWS(bf16_avx2), LLM_KERNEL_ROWS(int8_avx2_vnni), 128};

}  // namespace

const KernelTable* avx2_kernels(Isa isa) { return isa == Isa::avx2_vnni ? &kAvx2Vnni : &kAvx2; }

}  // namespace llm

#else  // not x86-64

namespace llm {
const KernelTable* avx2_kernels(Isa) { return nullptr; }
}  // namespace llm

#endif
