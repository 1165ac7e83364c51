// Standalone check of the torch-free CPU kernels (csrc/cpu) against scalar references, on
// every instruction set this CPU runs (or those named with --isa). Built and run by
// tests/native/test_cpu_kernels.py: natively, under qemu-x86_64 (a CPU without AVX-512, so
// the AVX2 paths are the best), and cross-compiled for aarch64 under qemu-aarch64.
//
// Checked per instruction set, on odd sizes (K, N not multiples of a block, 1..9 rows):
//   packing       f32 exact, bf16 rounded to nearest even, int8 per-channel + column sums
//   f32, bf16     against float64 sums, within the fp32 error bound of a blocked sum:
//                 (K / 64 + 64 + 2) * 2^-24 * sum |x w|
//   int8          quantize_rows against its definition; outputs bit-equal to exact int64
//                 sums put through the same epilogue arithmetic
//   epilogue      bias, GELU, residual and bf16 copy against the plain output
//   rows          gelu_tanh, layer_norm_row and attend_query against float64
// Prints "isas: ..." (supported), "checked: ..." and one line per failure; exit 1 on any.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "cpu/linear.h"
#include "cpu/rows.h"

using namespace llm;

namespace {

int g_failures = 0;
int64_t g_checks = 0;

void fail(const std::string& what) {
  if (++g_failures <= 20) std::printf("FAIL %s\n", what.c_str());
}

struct Rng {
  uint64_t s = 88172645463325252ull;
  float uniform() {  // [-1, 1)
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return static_cast<float>((s >> 40) * (1.0 / (1ull << 24))) * 2.0f - 1.0f;
  }
  std::vector<float> vec(size_t n, float scale = 1.0f) {
    std::vector<float> v(n);
    for (auto& x : v) x = uniform() * scale;
    return v;
  }
};

std::string where(Isa isa, const char* fmt, int64_t M, int64_t K, int64_t N) {
  char buf[160];
  std::snprintf(buf, sizeof buf, "%s %s M=%lld K=%lld N=%lld", isa_name(isa), fmt, (long long)M, (long long)K,
                (long long)N);
  return buf;
}

struct Packed {
  PackedView view;
  std::vector<uint8_t> bytes;
  std::vector<float> scales;
};

Packed pack(WFormat f, const std::vector<float>& w, int64_t N, int64_t K) {
  Packed p;
  p.bytes.resize(packed_bytes(f, N, K) + 64);
  p.scales.resize(((N + 63) / 64) * 64);
  // 64-byte aligned start, as torch's allocator gives
  uint8_t* base = p.bytes.data() + (64 - reinterpret_cast<uintptr_t>(p.bytes.data()) % 64) % 64;
  pack_weight(f, w.data(), false, N, K, base, p.scales.data());
  p.view = {f, N, K, padded_k(f, K), (N + 63) / 64, base, f == WFormat::int8 ? p.scales.data() : nullptr};
  return p;
}

// The weight the packed tiles hold, as float64 [N, K] (int8: q * scale), checking the layout.
std::vector<double> unpack(const Packed& p, const std::vector<float>& w, const std::string& at) {
  const PackedView& v = p.view;
  std::vector<double> out(v.n * v.k);
  for (int64_t n = 0; n < v.n; ++n) {
    const char* tile = static_cast<const char*>(v.data) + (n / 64) * v.tile_bytes();
    const int64_t j = n % 64;
    int64_t qsum = 0;
    for (int64_t k = 0; k < v.k; ++k) {
      double got;
      if (v.format == WFormat::f32) {
        got = reinterpret_cast<const float*>(tile)[k * 64 + j];
        if (got != w[n * v.k + k]) fail("f32 packing " + at);
      } else if (v.format == WFormat::bf16) {
        got = bf16_to_float(reinterpret_cast<const uint16_t*>(tile)[(k / 2) * 128 + j * 2 + k % 2]);
        if (got != bf16_to_float(float_to_bf16(w[n * v.k + k]))) fail("bf16 packing " + at);
      } else {
        const int8_t q = reinterpret_cast<const int8_t*>(tile)[(k / 4) * 256 + j * 4 + k % 4];
        qsum += q;
        got = q * static_cast<double>(v.scales[n]);
        if (std::fabs(got - w[n * v.k + k]) > v.scales[n] * 0.5000001 + 1e-30) fail("int8 packing " + at);
      }
      out[n * v.k + k] = got;
    }
    if (v.format == WFormat::int8 && reinterpret_cast<const int32_t*>(tile + v.kp * 64)[j] != qsum)
      fail("int8 column sums " + at);
  }
  ++g_checks;
  return out;
}

// One linear call through linear_tiles over every tile, plain epilogue.
std::vector<float> run(const Packed& p, const std::vector<float>& x, int64_t M, Isa isa,
                       std::vector<int8_t>* xq_out = nullptr, std::vector<float>* xs_out = nullptr) {
  const PackedView& v = p.view;
  std::vector<uint16_t> xb(M * v.kp);
  std::vector<int8_t> xq(M * v.kp);
  std::vector<float> xs(M), y(M * v.n, NAN);
  LinearInput in;
  in.x = x.data();
  in.ldx = v.k;
  if (v.format == WFormat::bf16) {
    rows_to_bf16(x.data(), v.k, M, v.k, xb.data(), v.kp);
    in.xb = xb.data();
  }
  if (v.format == WFormat::int8) {
    quantize_rows(x.data(), v.k, M, v.k, v.kp, isa, xq.data(), xs.data());
    in.xq = xq.data();
    in.xq_scale = xs.data();
  }
  Epilogue e;
  e.out = y.data();
  e.ld_out = v.n;
  linear_tiles(v, in, M, e, 0, v.tiles, isa);
  if (xq_out) *xq_out = xq;
  if (xs_out) *xs_out = xs;
  return y;
}

void check_float_path(const Packed& p, const std::vector<double>& wd, const std::vector<float>& x, int64_t M,
                      Isa isa, const std::string& at) {
  const PackedView& v = p.view;
  const std::vector<float> y = run(p, x, M, isa);
  const double u = std::ldexp(1.0, -24), bound = (v.k / 64 + 64 + 2) * u;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < v.n; ++n) {
      double ref = 0, mag = 0;
      for (int64_t k = 0; k < v.k; ++k) {
        const double xk = v.format == WFormat::bf16 ? bf16_to_float(float_to_bf16(x[m * v.k + k])) : x[m * v.k + k];
        ref += xk * wd[n * v.k + k];
        mag += std::fabs(xk * wd[n * v.k + k]);
      }
      if (!(std::fabs(y[m * v.n + n] - ref) <= bound * mag + 1e-30)) {
        fail(at + " row " + std::to_string(m) + " col " + std::to_string(n) + ": " + std::to_string(y[m * v.n + n]) +
             " vs " + std::to_string(ref));
        return;
      }
    }
  ++g_checks;
}

void check_integer_path(const Packed& p, const std::vector<float>& x, int64_t M, Isa isa, const std::string& at) {
  const PackedView& v = p.view;
  std::vector<int8_t> xq;
  std::vector<float> xs;
  const std::vector<float> y = run(p, x, M, isa, &xq, &xs);
  const int offset = isa == Isa::avx2_vnni || isa == Isa::avx512_vnni || isa == Isa::avx512_bf16 ? 128 : 0;
  for (int64_t m = 0; m < M; ++m) {
    float amax = 0;
    for (int64_t k = 0; k < v.k; ++k) amax = std::max(amax, std::fabs(x[m * v.k + k]));
    const float inv = amax > 0 ? 127.0f / amax : 0.0f;
    if (xs[m] != amax / 127.0f) fail(at + " row scale");
    for (int64_t k = 0; k < v.kp; ++k) {
      const int want = k < v.k ? static_cast<int>(std::nearbyint(x[m * v.k + k] * inv)) : 0;
      const int got = static_cast<int8_t>(static_cast<uint8_t>(xq[m * v.kp + k]) - offset);
      if (got != want) {
        fail(at + " quantized row " + std::to_string(m) + " k " + std::to_string(k));
        return;
      }
    }
    for (int64_t n = 0; n < v.n; ++n) {
      const char* tile = static_cast<const char*>(v.data) + (n / 64) * v.tile_bytes();
      int64_t sum = 0;
      for (int64_t k = 0; k < v.k; ++k)
        sum += static_cast<int64_t>(static_cast<int8_t>(static_cast<uint8_t>(xq[m * v.kp + k]) - offset)) *
               reinterpret_cast<const int8_t*>(tile)[(k / 4) * 256 + (n % 64) * 4 + k % 4];
      const float want = static_cast<float>(sum) * xs[m] * v.scales[n];
      if (std::memcmp(&want, &y[m * v.n + n], 4) != 0) {
        fail(at + " integer sum row " + std::to_string(m) + " col " + std::to_string(n));
        return;
      }
    }
  }
  ++g_checks;
}

void check_epilogue(Isa isa, WFormat f, Rng& rng) {
  const int64_t M = 3, K = 45, N = 70;
  const std::vector<float> w = rng.vec(N * K), x = rng.vec(M * K), bias = rng.vec(N), res = rng.vec(M * N);
  const Packed p = pack(f, w, N, K);
  const bool integer = f == WFormat::int8;
  const std::vector<float> plain = run(p, x, M, isa);
  std::vector<uint16_t> xb(M * p.view.kp);
  std::vector<int8_t> xq(M * p.view.kp);
  std::vector<float> xs(M), out(M * N);
  std::vector<uint16_t> ob(M * N);
  rows_to_bf16(x.data(), K, M, K, xb.data(), p.view.kp);
  if (integer) quantize_rows(x.data(), K, M, K, p.view.kp, isa, xq.data(), xs.data());
  LinearInput in{x.data(), K, xb.data(), integer ? xq.data() : nullptr, xs.data()};
  Epilogue e{bias.data(), true, res.data(), N, out.data(), N, ob.data(), N};
  linear_tiles(p.view, in, M, e, 0, p.view.tiles, isa);
  // A few fp32 roundings apart at most (the compiler may fuse a multiply and an add).
  for (int64_t i = 0; i < M * N; ++i) {
    const float g = gelu_tanh(plain[i] + bias[i % N]), want = g + res[i];
    const double tol = std::ldexp(1.0, -20) * (std::fabs(g) + std::fabs(res[i]) + std::fabs(plain[i]) + 1);
    if (!(std::fabs(out[i] - want) <= tol) || ob[i] != float_to_bf16(out[i])) {
      fail(where(isa, "epilogue", M, K, N));
      return;
    }
  }
  ++g_checks;
}

void check_linear(Isa isa) {
  Rng rng;
  const int64_t shapes[][2] = {{1, 1}, {3, 65}, {37, 131}, {64, 64}, {65, 63}, {130, 129}, {257, 200}, {768, 70}};
  const int64_t rows[] = {1, 2, 3, 4, 5, 6, 9, 13};  // 13: blocks of 5, 4, 4 rows (or 4 + 4 + 5)
  for (auto [K, N] : shapes) {
    const std::vector<float> w = rng.vec(N * K);
    for (WFormat f : {WFormat::f32, WFormat::bf16, WFormat::int8}) {
      const char* name = f == WFormat::f32 ? "f32" : (f == WFormat::bf16 ? "bf16" : "int8");
      const Packed p = pack(f, w, N, K);
      const std::vector<double> wd = unpack(p, w, where(isa, name, 0, K, N));
      for (int64_t M : rows) {
        std::vector<float> x = rng.vec(M * K, 2.0f);
        if (M > 4) std::fill(x.begin() + K, x.begin() + 2 * K, 0.0f);  // an all-zero row
        if (f == WFormat::int8)
          check_integer_path(p, x, M, isa, where(isa, name, M, K, N));
        else
          check_float_path(p, wd, x, M, isa, where(isa, name, M, K, N));
      }
    }
  }
  for (WFormat f : {WFormat::f32, WFormat::bf16, WFormat::int8}) check_epilogue(isa, f, rng);
}

void check_rows() {
  Rng rng;
  for (int i = -4000; i <= 4000; ++i) {  // GELU (exp-based) against float64, x in [-20, 20]
    const double x = i * 0.005, u = 0.7978845608028654 * (x + 0.044715 * x * x * x);
    const double want = x / (1 + std::exp(-2 * u));  // = 0.5 x (1 + tanh(u)), without cancellation
    const float got = gelu_tanh(static_cast<float>(x));
    // a few fp32 ulp, plus those of u amplified by exp's condition number |2u| (the tail
    // x < -4, where the result is below 1e-5 |x|); below fp32's normal range, absolute
    if (std::fabs(got - want) > std::fabs(want) * (4e-7 + 3e-7 * std::fabs(2 * u)) + 1e-36)
      return fail("gelu_tanh x=" + std::to_string(x));
  }
  ++g_checks;
  for (int64_t C : {1, 7, 16, 45, 768}) {
    const std::vector<float> x = rng.vec(C, 3.0f), w = rng.vec(C), b = rng.vec(C);
    std::vector<float> out(C);
    layer_norm_row(x.data(), w.data(), b.data(), 1e-5f, C, out.data(), nullptr);
    double mean = 0, var = 0;
    for (float v : x) mean += v / C;
    for (float v : x) var += (v - mean) * (v - mean) / C;
    for (int64_t c = 0; c < C; ++c) {
      const double want = (x[c] - mean) / std::sqrt(var + 1e-5) * w[c] + b[c];
      if (std::fabs(out[c] - want) > 1e-5 * (1 + std::fabs(want))) return fail("layer_norm_row C=" + std::to_string(C));
    }
    ++g_checks;
  }
  for (int64_t hs : {1, 13, 64}) {
    const int64_t S = 21, pos = 17;
    const std::vector<float> q = rng.vec(hs), k = rng.vec(S * hs), v = rng.vec(S * hs);
    bool valid[S];
    for (int64_t j = 0; j < S; ++j) valid[j] = j % 3 != 1;
    std::vector<float> scores(S), out(hs);
    const float scale = 1.0f / std::sqrt(static_cast<float>(hs));
    attend_query(q.data(), k.data(), v.data(), hs, hs, pos, valid, scale, scores.data(), out.data());
    std::vector<double> p(pos + 1, 0.0);
    double mx = -1e300, sum = 0;
    for (int64_t j = 0; j <= pos; ++j) {
      if (!valid[j] && j != pos) continue;
      double s = 0;
      for (int64_t d = 0; d < hs; ++d) s += static_cast<double>(q[d]) * k[j * hs + d];
      p[j] = s * scale;
      mx = std::max(mx, p[j]);
    }
    for (int64_t j = 0; j <= pos; ++j) sum += (valid[j] || j == pos) ? std::exp(p[j] - mx) : 0.0;
    for (int64_t d = 0; d < hs; ++d) {
      double want = 0;
      for (int64_t j = 0; j <= pos; ++j)
        if (valid[j] || j == pos) want += std::exp(p[j] - mx) / sum * v[j * hs + d];
      if (std::fabs(out[d] - want) > 1e-5) return fail("attend_query hs=" + std::to_string(hs));
    }
    ++g_checks;
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<Isa> isas;
  for (int i = 1; i < argc; ++i) {
    Isa isa;
    if (std::strcmp(argv[i], "--isa") == 0 && i + 1 < argc && parse_isa(argv[++i], &isa)) {
      if (!isa_supported(isa)) {
        std::printf("this CPU does not run %s\n", isa_name(isa));
        return 2;
      }
      isas.push_back(isa);
    } else {
      std::printf("usage: %s [--isa NAME]...  (names: %s)\n", argv[0], isa_choices().c_str());
      return 2;
    }
  }
  std::printf("isas:");
  for (Isa isa : supported_isas()) std::printf(" %s", isa_name(isa));
  std::printf("\nbest: %s\nbf16 arithmetic: %s\n", isa_name(best_isa()), cpu_has_bf16_arithmetic() ? "yes" : "no");
  if (isas.empty()) isas = supported_isas();
  check_rows();
  std::printf("checked:");
  for (Isa isa : isas) {
    check_linear(isa);
    std::printf(" %s", isa_name(isa));
  }
  std::printf("\n%lld checks, %d failures\n", static_cast<long long>(g_checks), g_failures);
  return g_failures == 0 ? 0 : 1;
}
