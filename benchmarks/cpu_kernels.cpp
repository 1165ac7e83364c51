// Speed of the torch-free linear kernels (csrc/cpu) per instruction set and weight format,
// without torch or the decoder around them: for tuning the micro-kernels. The product's
// figures come from benchmarks/bench_cpu_isa.py, through llm._C.
//
//   g++ -O3 -std=c++20 -fopenmp -Icsrc csrc/cpu/*.cpp benchmarks/cpu_kernels.cpp -o /tmp/cpu_kernels
//   OMP_NUM_THREADS=2 /tmp/cpu_kernels [rows...]     (default rows: 1 8 64 512)
//
// Rows = 1 streams the linear weights of GPT-2 124M (12 layers + lm_head) and reports GB/s
// next to the read bandwidth of a plain sum over 1 GB; more rows run one layer's matrices
// and report GFLOP/s (2 * rows * n * k per matrix).
#include <omp.h>

#include <time.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "cpu/linear.h"
#include "cpu/rows.h"

using namespace llm;

namespace {

// Wall time, or with one thread the thread's CPU time: on a shared machine that leaves out
// the time other processes hold the core.
double now() {
  if (omp_get_max_threads() == 1) {
    timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
  }
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double read_gbs() {
  std::vector<float> buf((1ull << 30) / 4, 1.0f);
  double best = 0;
  for (int r = 0; r < 5; ++r) {
    const double t = now();
    float s = 0;
#pragma omp parallel for reduction(+ : s) schedule(static)
    for (size_t i = 0; i < buf.size(); ++i) s += buf[i];
    best = std::max(best, buf.size() * 4.0 / (now() - t) / 1e9);
    if (s < 0) std::printf("%f", s);
  }
  return best;
}

struct Matrix {
  PackedView view;
  std::vector<char> bytes;
  std::vector<float> scales;
};

std::vector<Matrix> build(WFormat f, int layers, bool head) {
  const int64_t C = 768, H = 3072, V = 50257;
  std::vector<std::pair<int64_t, int64_t>> shapes;
  for (int l = 0; l < layers; ++l) shapes.insert(shapes.end(), {{3 * C, C}, {C, C}, {H, C}, {C, H}});
  if (head) shapes.push_back({V, C});
  std::vector<Matrix> out(shapes.size());
  for (size_t i = 0; i < shapes.size(); ++i) {
    auto [n, k] = shapes[i];
    std::vector<float> w(n * k);
    for (int64_t j = 0; j < n * k; ++j) w[j] = ((j * 2654435761u) % 1000) / 1000.0f - 0.5f;
    Matrix& m = out[i];
    m.bytes.resize(packed_bytes(f, n, k));
    m.scales.resize((n + 63) / 64 * 64);
    pack_weight(f, w.data(), false, n, k, m.bytes.data(), m.scales.data());
    m.view = {f, n, k, padded_k(f, k), (n + 63) / 64, m.bytes.data(), f == WFormat::int8 ? m.scales.data() : nullptr};
  }
  return out;
}

// Seconds for one pass of M rows through every matrix (best of reps).
double time_pass(const std::vector<Matrix>& ms, int64_t M, Isa isa, int reps) {
  const int64_t K = 3072;
  std::vector<float> x(M * K, 0.5f), y(M * 50304);
  std::vector<uint16_t> xb(M * K);
  std::vector<int8_t> xq(M * K);
  std::vector<float> xs(M);
  rows_to_bf16(x.data(), K, M, K, xb.data(), K);
  quantize_rows(x.data(), K, M, K, K, isa, xq.data(), xs.data());
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const double t = now();
    for (const Matrix& m : ms) {
      LinearInput in;
      in.x = x.data();
      in.ldx = m.view.k;
      in.xb = xb.data();
      if (m.view.format == WFormat::int8) {
        in.xq = xq.data();
        in.xq_scale = xs.data();
      }
      Epilogue e;
      e.out = y.data();
      e.ld_out = m.view.n;
#pragma omp parallel for schedule(dynamic, 2)
      for (int64_t tile = 0; tile < m.view.tiles; ++tile) linear_tiles(m.view, in, M, e, tile, tile + 1, isa);
    }
    best = std::min(best, now() - t);
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int64_t> rows;
  for (int i = 1; i < argc; ++i) rows.push_back(std::atoll(argv[i]));
  if (rows.empty()) rows = {1, 8, 64, 512};
  std::printf("threads %d, read bandwidth %.1f GB/s\n", omp_get_max_threads(), read_gbs());
  const char* names[] = {"f32", "bf16", "int8"};
  for (int64_t M : rows)
    for (WFormat f : {WFormat::f32, WFormat::bf16, WFormat::int8}) {
      const std::vector<Matrix> ms = M == 1 ? build(f, 12, true) : build(f, 1, false);
      double bytes = 0, flops = 0;
      for (const Matrix& m : ms) {
        bytes += m.view.tiles * m.view.tile_bytes();
        flops += 2.0 * M * m.view.n * m.view.k;
      }
      for (Isa isa : supported_isas()) {
        const double t = time_pass(ms, M, isa, M >= 64 ? 3 : 10);
        std::printf("rows %4lld %-5s %-12s %8.3f ms  %6.1f GB/s  %7.1f GFLOP/s\n", (long long)M, names[(int)f],
                    isa_name(isa), t * 1e3, bytes / t / 1e9, flops / t / 1e9);
      }
    }
}
