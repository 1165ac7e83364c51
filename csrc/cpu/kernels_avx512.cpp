// AVX-512 micro-kernels (kernels.h): F/BW/DQ/VL, with VNNI (vpdpbusd) and BF16 (vdpbf16ps)
// variants. A 64-column tile is 4 vectors of 16 lanes, so MR <= 4 rows keep their 4 x MR
// sums in registers (32 of them) and each weight loaded serves every row.
//   f32       broadcast x[k], FMA with the 4 vectors of row k
//   bf16      pairs widened by shift / mask; with AVX512_BF16, vdpbf16ps multiplies a bf16
//             pair of x by each column's pair and adds both products to the fp32 lane
//   int8      AVX-512 has no vpsignb: w is negated under the mask of x's sign bits, then
//             vpmaddubsw(|x|, w) and vpmaddwd by ones; with VNNI, vpdpbusd on x + 128 and
//             the tile's column sums take the 128 * sum(w) back out
#include <algorithm>
#include <cstring>

#include "kernels.h"
#include "rows.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#define LLM_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")))
#define LLM_AVX512_VNNI __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,avx512vnni")))
#define LLM_AVX512_BF16 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,avx512bf16")))

namespace llm {

namespace {

template <int MR>
LLM_AVX512 inline void add_sums(float* acc, __m512 (&a)[MR][4]) {
  for (int m = 0; m < MR; ++m)
    for (int i = 0; i < 4; ++i) {
      float* t = acc + m * kTileN + 16 * i;
      _mm512_storeu_ps(t, _mm512_add_ps(_mm512_loadu_ps(t), a[m][i]));
    }
}

template <int MR>
LLM_AVX512 inline void add_sums(int32_t* acc, __m512i (&a)[MR][4]) {
  for (int m = 0; m < MR; ++m)
    for (int i = 0; i < 4; ++i) {
      int32_t* t = acc + m * kTileN + 16 * i;
      _mm512_storeu_si512(t, _mm512_add_epi32(_mm512_loadu_si512(t), a[m][i]));
    }
}

template <int MR>
LLM_AVX512 inline void zero_sums(__m512 (&a)[MR][4]) {
  for (int m = 0; m < MR; ++m)
    for (int i = 0; i < 4; ++i) a[m][i] = _mm512_setzero_ps();
}

template <int MR>
LLM_AVX512 void f32_avx512(const void* xv, int64_t ldx, const void* wv, int64_t K, void* accv) {
  const float* x = static_cast<const float*>(xv);
  const float* w = static_cast<const float*>(wv);
  float* acc = static_cast<float*>(accv);
  for (int64_t k0 = 0; k0 < K; k0 += kBlockK) {
    __m512 a[MR][4];
    zero_sums<MR>(a);
    for (int64_t k = k0; k < std::min(K, k0 + kBlockK); ++k) {
      const float* wk = w + k * kTileN;
      const __m512 w0 = _mm512_loadu_ps(wk), w1 = _mm512_loadu_ps(wk + 16);
      const __m512 w2 = _mm512_loadu_ps(wk + 32), w3 = _mm512_loadu_ps(wk + 48);
      for (int m = 0; m < MR; ++m) {
        const __m512 xm = _mm512_set1_ps(x[m * ldx + k]);
        a[m][0] = _mm512_fmadd_ps(xm, w0, a[m][0]);
        a[m][1] = _mm512_fmadd_ps(xm, w1, a[m][1]);
        a[m][2] = _mm512_fmadd_ps(xm, w2, a[m][2]);
        a[m][3] = _mm512_fmadd_ps(xm, w3, a[m][3]);
      }
    }
    add_sums<MR>(acc, a);
  }
}

// bf16 pairs widened to fp32: the low half of each 32-bit lane is k, the high half k + 1.
template <int MR>
LLM_AVX512 void bf16_avx512(const void* xv, int64_t ldx, const void* wv, int64_t kp, void* accv) {
  const uint16_t* x = static_cast<const uint16_t*>(xv);
  const uint16_t* w = static_cast<const uint16_t*>(wv);
  float* acc = static_cast<float*>(accv);
  const __m512i hi = _mm512_set1_epi32(static_cast<int>(0xffff0000u));
  for (int64_t p0 = 0; p0 < kp / 2; p0 += kBlockK / 2) {
    __m512 a[MR][4];
    zero_sums<MR>(a);
    for (int64_t p = p0; p < std::min(kp / 2, p0 + kBlockK / 2); ++p) {
      const uint16_t* wp = w + p * 2 * kTileN;
      __m512 x0[MR], x1[MR];
      for (int m = 0; m < MR; ++m) {
        x0[m] = _mm512_set1_ps(bf16_to_float(x[m * ldx + 2 * p]));
        x1[m] = _mm512_set1_ps(bf16_to_float(x[m * ldx + 2 * p + 1]));
      }
      for (int i = 0; i < 4; ++i) {
        const __m512i v = _mm512_loadu_si512(wp + 32 * i);
        const __m512 we = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
        const __m512 wo = _mm512_castsi512_ps(_mm512_and_si512(v, hi));
        for (int m = 0; m < MR; ++m) {
          a[m][i] = _mm512_fmadd_ps(x0[m], we, a[m][i]);
          a[m][i] = _mm512_fmadd_ps(x1[m], wo, a[m][i]);
        }
      }
    }
    add_sums<MR>(acc, a);
  }
}

template <int MR>
LLM_AVX512_BF16 void bf16_avx512bf16(const void* xv, int64_t ldx, const void* wv, int64_t kp, void* accv) {
  const uint16_t* x = static_cast<const uint16_t*>(xv);
  const uint16_t* w = static_cast<const uint16_t*>(wv);
  float* acc = static_cast<float*>(accv);
  for (int64_t p0 = 0; p0 < kp / 2; p0 += kBlockK / 2) {
    __m512 a[MR][4];
    zero_sums<MR>(a);
    for (int64_t p = p0; p < std::min(kp / 2, p0 + kBlockK / 2); ++p) {
      const uint16_t* wp = w + p * 2 * kTileN;
      const __m512i w0 = _mm512_loadu_si512(wp), w1 = _mm512_loadu_si512(wp + 32);
      const __m512i w2 = _mm512_loadu_si512(wp + 64), w3 = _mm512_loadu_si512(wp + 96);
      for (int m = 0; m < MR; ++m) {
        int32_t pair;
        std::memcpy(&pair, x + m * ldx + 2 * p, 4);
        const __m512bh xm = (__m512bh)_mm512_set1_epi32(pair);
        a[m][0] = _mm512_dpbf16_ps(a[m][0], xm, (__m512bh)w0);
        a[m][1] = _mm512_dpbf16_ps(a[m][1], xm, (__m512bh)w1);
        a[m][2] = _mm512_dpbf16_ps(a[m][2], xm, (__m512bh)w2);
        a[m][3] = _mm512_dpbf16_ps(a[m][3], xm, (__m512bh)w3);
      }
    }
    add_sums<MR>(acc, a);
  }
}

LLM_AVX512 inline __m512i quad_broadcast(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm512_set1_epi32(v);
}

template <int MR>
LLM_AVX512 void int8_avx512(const void* xv, int64_t ldx, const void* wv, int64_t kp, void* accv) {
  const int8_t* x = static_cast<const int8_t*>(xv);
  const int8_t* w = static_cast<const int8_t*>(wv);
  const __m512i ones = _mm512_set1_epi16(1), zero = _mm512_setzero_si512();
  __m512i a[MR][4];
  for (int m = 0; m < MR; ++m)
    for (int i = 0; i < 4; ++i) a[m][i] = _mm512_setzero_si512();
  for (int64_t q = 0; q < kp / 4; ++q) {
    const int8_t* wq = w + q * 4 * kTileN;
    __m512i xa[MR];
    __mmask64 neg[MR];
    for (int m = 0; m < MR; ++m) {
      const __m512i xs = quad_broadcast(x + m * ldx + 4 * q);
      xa[m] = _mm512_abs_epi8(xs);
      neg[m] = _mm512_movepi8_mask(xs);
    }
    for (int i = 0; i < 4; ++i) {
      const __m512i v = _mm512_loadu_si512(wq + 64 * i);
      for (int m = 0; m < MR; ++m) {
        const __m512i p = _mm512_maddubs_epi16(xa[m], _mm512_mask_sub_epi8(v, neg[m], zero, v));
        a[m][i] = _mm512_add_epi32(a[m][i], _mm512_madd_epi16(p, ones));
      }
    }
  }
  add_sums<MR>(static_cast<int32_t*>(accv), a);
}

template <int MR>
LLM_AVX512_VNNI void int8_avx512vnni(const void* xv, int64_t ldx, const void* wv, int64_t kp, void* accv) {
  const int8_t* x = static_cast<const int8_t*>(xv);
  const int8_t* w = static_cast<const int8_t*>(wv);
  __m512i a[MR][4];
  for (int m = 0; m < MR; ++m)
    for (int i = 0; i < 4; ++i) a[m][i] = _mm512_setzero_si512();
  for (int64_t q = 0; q < kp / 4; ++q) {
    const int8_t* wq = w + q * 4 * kTileN;
    const __m512i w0 = _mm512_loadu_si512(wq), w1 = _mm512_loadu_si512(wq + 64);
    const __m512i w2 = _mm512_loadu_si512(wq + 128), w3 = _mm512_loadu_si512(wq + 192);
    for (int m = 0; m < MR; ++m) {
      const __m512i xu = quad_broadcast(x + m * ldx + 4 * q);
      a[m][0] = _mm512_dpbusd_epi32(a[m][0], xu, w0);
      a[m][1] = _mm512_dpbusd_epi32(a[m][1], xu, w1);
      a[m][2] = _mm512_dpbusd_epi32(a[m][2], xu, w2);
      a[m][3] = _mm512_dpbusd_epi32(a[m][3], xu, w3);
    }
  }
  add_sums<MR>(static_cast<int32_t*>(accv), a);
}

const KernelTable kAvx512 = {LLM_KERNEL_ROWS6(f32_avx512), LLM_KERNEL_ROWS(bf16_avx512),
                             LLM_KERNEL_ROWS(int8_avx512), 0};
const KernelTable kAvx512Vnni = {LLM_KERNEL_ROWS6(f32_avx512), LLM_KERNEL_ROWS(bf16_avx512),
                                 LLM_KERNEL_ROWS6(int8_avx512vnni), 128};
const KernelTable kAvx512Bf16 = {LLM_KERNEL_ROWS6(f32_avx512), LLM_KERNEL_ROWS(bf16_avx512bf16),
                                 LLM_KERNEL_ROWS6(int8_avx512vnni), 128};

}  // namespace

const KernelTable* avx512_kernels(Isa isa) {
  return isa == Isa::avx512_bf16 ? &kAvx512Bf16 : (isa == Isa::avx512_vnni ? &kAvx512Vnni : &kAvx512);
}

}  // namespace llm

#else  // not x86-64

namespace llm {
const KernelTable* avx512_kernels(Isa) { return nullptr; }
}  // namespace llm

#endif
