// The whole-model decode step of GPT-2 in C++: `llm.GPTWeights` holds the weights packed
// once (linear.h layout, fp32 / bf16 / int8), `llm.Decoder` a static fp32 KV cache for B rows
// and S slots. One call runs embeddings, every layer and the lm_head for T new tokens per row
// inside a single OpenMP parallel region: the threads claim each linear layer's column tiles
// and the attention's (row, head) pairs from shared counters, moving on when a step's items
// are all done (see Phase), so a token costs one Python call and no thread start-up per op.
// Fusions: bias (+ GELU) and the residual add in the linear epilogue; layernorm writes the
// bf16 copy the next bf16 layer reads; with int8 weights each thread quantizes a layer's
// input rows itself (cpu/linear.h) before taking that layer's tiles. Semantics match the
// model's modules over a KVCache per layer (llm.model.ModuleDecoder): token t of row b sits
// at cache slot pos[t] (or pos[b, t], rows at different depths) with learned position
// position_ids[b, t] and sees the slots <= that slot that key_valid[b] marks (and its own).
// A call may name the cache rows it runs on (`rows`: the slots of a continuous batch);
// select_rows keeps some batch rows of the cache (finished rows dropped, or reordered).
#include <ATen/ops/empty.h>
#include <torch/custom_class.h>
#include <torch/library.h>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

#include <atomic>
#include <cmath>
#include <memory>
#include <thread>
#include <vector>

#include "common.h"
#include "linear.h"

namespace llm {

namespace {

struct Linear {
  at::Tensor packed, scales, bias;  // bias fp32 or undefined
  PackedView view{};
};

struct Layer {
  at::Tensor ln1_w, ln1_b, ln2_w, ln2_b;  // fp32; bias may be undefined
  Linear attn, proj, fc, mproj;
};

at::Tensor f32_or_none(const at::Tensor& t) {
  if (!t.defined() || t.numel() == 0) return at::Tensor();
  return t.to(at::kFloat).contiguous();
}

const float* ptr_or_null(const at::Tensor& t) { return t.defined() ? t.const_data_ptr<float>() : nullptr; }

// One step of the decode (a linear layer, the attention, a layernorm): `total` items that
// threads claim in chunks from `next`, counting finished ones in `done`. A thread moves on
// once `done` reaches `total`, so a thread the OS has descheduled (the cores here may be
// shared) delays a step only by the chunk it holds, where a barrier would wait for it to
// run again; a late thread finds its missed steps claimed and skips them.
inline void cpu_relax() {
#if defined(__x86_64__) || defined(_M_X64)
  _mm_pause();
#endif
}

struct Phase {
  alignas(64) std::atomic<int64_t> next{0};
  alignas(64) std::atomic<int64_t> done{0};
};

template <typename Body>
void run_phase(Phase& ph, int64_t total, int64_t chunk, Body&& body) {
  for (;;) {
    const int64_t a = ph.next.fetch_add(chunk, std::memory_order_relaxed);
    if (a >= total) break;
    const int64_t z = std::min(total, a + chunk);
    body(a, z);
    ph.done.fetch_add(z - a, std::memory_order_release);
  }
  for (int spins = 0; ph.done.load(std::memory_order_acquire) < total; ++spins) {
    if (spins < 4096)
      cpu_relax();
    else
      std::this_thread::yield();
  }
}

}  // namespace

class GPTWeights : public torch::CustomClassHolder {
 public:
  // layer_tensors: per layer, in order, ln_1 weight, bias; c_attn weight [3C, C], bias;
  // attn c_proj weight [C, C], bias; ln_2 weight, bias; c_fc weight [H, C], bias;
  // mlp c_proj weight [C, H], bias. An absent bias is an empty tensor.
  // lm_head: the head's weight [vocab, C] when it is not wte (an untied head); absent: wte.
  GPTWeights(int64_t n_head, double eps, at::Tensor wte, at::Tensor wpe, std::vector<at::Tensor> layer_tensors,
             at::Tensor lnf_w, at::Tensor lnf_b, std::string format, std::optional<at::Tensor> lm_head)
      : n_head_(n_head), eps_(static_cast<float>(eps)), format_(format) {
    const char* op = "GPTWeights";
    check_cpu_tensor(wte, op, "wte");
    check_float_dtype(wte, op, "wte");
    check_dim(wte, 2, op, "wte");
    check_cpu_tensor(wpe, op, "wpe");
    check_dim(wpe, 2, op, "wpe");
    vocab_ = wte.size(0);
    C_ = wte.size(1);
    LLM_CHECK(wpe.size(1) == C_, "llm.", op, ": wpe ", shape_str(wpe), " does not match wte ", shape_str(wte));
    LLM_CHECK(n_head >= 1 && C_ % n_head == 0, "llm.", op, ": n_embd ", C_, " is not divisible by n_head ", n_head);
    LLM_CHECK(layer_tensors.size() % 12 == 0, "llm.", op, ": expected 12 tensors per layer, got ",
              layer_tensors.size());
    wte_ = wte.to(at::kFloat).contiguous();
    wpe_ = wpe.to(at::kFloat).contiguous();
    n_positions_ = wpe.size(0);
    const int64_t L = layer_tensors.size() / 12;
    for (int64_t l = 0; l < L; ++l) {
      const at::Tensor* t = layer_tensors.data() + 12 * l;
      Layer y;
      y.ln1_w = t[0].to(at::kFloat).contiguous();
      y.ln1_b = f32_or_none(t[1]);
      y.attn = pack(t[2], t[3], 3 * C_, C_);
      y.proj = pack(t[4], t[5], C_, C_);
      y.ln2_w = t[6].to(at::kFloat).contiguous();
      y.ln2_b = f32_or_none(t[7]);
      H_ = t[8].size(0);
      y.fc = pack(t[8], t[9], H_, C_);
      y.mproj = pack(t[10], t[11], C_, H_);
      for (const at::Tensor* t : {&y.ln1_w, &y.ln1_b, &y.ln2_w, &y.ln2_b})
        LLM_CHECK(!t->defined() || t->numel() == C_, "llm.", op, ": layernorm parameters of layer ", l,
                  " must have ", C_, " elements, got ", t->numel());
      layers_.push_back(std::move(y));
    }
    lnf_w_ = lnf_w.to(at::kFloat).contiguous();
    lnf_b_ = f32_or_none(lnf_b);
    for (const at::Tensor* t : {&lnf_w_, &lnf_b_})
      LLM_CHECK(!t->defined() || t->numel() == C_, "llm.", op, ": ln_f parameters must have ", C_,
                " elements, got ", t->numel());
    if (lm_head.has_value()) {
      check_cpu_tensor(*lm_head, op, "lm_head");
      check_float_dtype(*lm_head, op, "lm_head");
    }
    head_ = pack(lm_head.has_value() ? *lm_head : wte, at::Tensor(), vocab_, C_);
  }

  int64_t streamed_bytes() const {  // weight bytes one decode step reads
    int64_t n = head_.packed.nbytes();
    for (const auto& y : layers_) n += y.attn.packed.nbytes() + y.proj.packed.nbytes() + y.fc.packed.nbytes() + y.mproj.packed.nbytes();
    return n;
  }
  std::string format() const { return format_; }

  int64_t n_head_, C_ = 0, H_ = 0, vocab_ = 0, n_positions_ = 0;
  float eps_;
  std::string format_;
  at::Tensor wte_, wpe_, lnf_w_, lnf_b_;
  std::vector<Layer> layers_;
  Linear head_;

 private:
  Linear pack(const at::Tensor& w, const at::Tensor& b, int64_t n, int64_t k) {
    LLM_CHECK(w.dim() == 2 && w.size(0) == n && w.size(1) == k, "llm.GPTWeights: expected a weight of shape [", n,
              ", ", k, "], got ", shape_str(w));
    Linear lin;
    std::tie(lin.packed, lin.scales) = pack_linear_weight(w.contiguous(), format_);
    lin.bias = f32_or_none(b);
    LLM_CHECK(!lin.bias.defined() || lin.bias.numel() == n, "llm.GPTWeights: bias of ", n, " features has ",
              lin.bias.numel(), " elements");
    lin.view = packed_view(lin.packed, lin.scales, n, k, "GPTWeights");
    return lin;
  }
};

class Decoder : public torch::CustomClassHolder {
 public:
  Decoder(c10::intrusive_ptr<GPTWeights> w, int64_t batch_size, int64_t max_seq_len)
      : w_(std::move(w)), B_(batch_size), S_(max_seq_len) {
    LLM_CHECK(B_ >= 1, "llm.Decoder: batch_size must be >= 1, got ", B_);
    LLM_CHECK(S_ >= 1 && S_ <= w_->n_positions_, "llm.Decoder: max_seq_len must be in [1, ", w_->n_positions_,
              "], got ", S_);
    const int64_t L = w_->layers_.size(), hs = w_->C_ / w_->n_head_;
    auto opts = w_->wte_.options().dtype(at::kFloat);
    k_cache_ = at::empty({L, B_, w_->n_head_, S_, hs}, opts);
    v_cache_ = at::empty({L, B_, w_->n_head_, S_, hs}, opts);
  }

  at::Tensor prefill(const at::Tensor& tokens, const at::Tensor& pos, const at::Tensor& position_ids,
                     const std::optional<at::Tensor>& key_valid, const std::optional<at::Tensor>& rows) {
    return step(tokens, pos, position_ids, key_valid, rows);
  }

  // tokens [b, T] int64; pos [T] cache slots of every row, or [b, T] per row; position_ids
  // [b, T]; key_valid [b, S] bool or None; rows [b] int64: the cache rows the b input rows
  // go to (distinct; None: all B rows in order, b = B) -> logits [b, vocab] fp32 of each
  // row's last token. Cache rows not named are neither read nor written.
  at::Tensor step(const at::Tensor& tokens, const at::Tensor& pos, const at::Tensor& position_ids,
                  const std::optional<at::Tensor>& key_valid, const std::optional<at::Tensor>& rows) {
    const GPTWeights& W = *w_;
    const StepArgs a = check_args(tokens, pos, position_ids, key_valid, rows);
    const int64_t nb = a.rows.size(), T = a.T, M = nb * T, C = W.C_, H = W.H_, nh = W.n_head_, hs = C / nh;
    const int64_t* tk = a.tokens.const_data_ptr<int64_t>();
    const int64_t* pp = a.pos.const_data_ptr<int64_t>();
    const int64_t* pi = a.position_ids.const_data_ptr<int64_t>();
    const int64_t pos_stride = a.pos.dim() == 2 ? T : 0;  // row b's slots: pp + b * pos_stride
    const int64_t* cache_row = a.rows.data();
    const bool* vld = a.valid.defined() ? a.valid.const_data_ptr<bool>() : nullptr;
    const bool bf16 = W.head_.view.format == WFormat::bf16, int8 = W.head_.view.format == WFormat::int8;
    const int64_t kpC = (C + 1) / 2 * 2, kpH = (H + 1) / 2 * 2, kq = padded_k(WFormat::int8, std::max(C, H));

    const Isa isa = current_isa();  // may raise: outside the parallel region
    const int nthreads = max_threads();
    resize(M, C, H, kpC, kpH, kq, bf16, int8, nthreads);
    float* x = x_.data();
    // Embeddings: x[r] = wte[token] + wpe[position].
    const float* wte = W.wte_.const_data_ptr<float>();
    const float* wpe = W.wpe_.const_data_ptr<float>();
    for (int64_t r = 0; r < M; ++r)
      for (int64_t c = 0; c < C; ++c) x[r * C + c] = wte[tk[r] * C + c] + wpe[pi[r] * C + c];

    at::Tensor logits = at::empty({nb, W.vocab_}, W.wte_.options().dtype(at::kFloat));
    float* lg = logits.data_ptr<float>();
    float* qkv = qkv_.data();
    float* att = att_.data();
    float* fc = fc_.data();
    uint16_t* attb = bf16 ? attb_.data() : nullptr;
    uint16_t* fcb = bf16 ? fcb_.data() : nullptr;
    const float scale = 1.0f / std::sqrt(static_cast<float>(hs));
    scores_.assign(static_cast<size_t>(nthreads) * S_, 0.0f);
    float* kc_all = k_cache_.data_ptr<float>();
    float* vc_all = v_cache_.data_ptr<float>();
    const int64_t layer_cache = B_ * nh * S_ * hs;

    // Phases in order, the same list on every thread: 5 per layer, then the lm_head.
    const int64_t n_phases = 5 * static_cast<int64_t>(W.layers_.size()) + 1;
    std::unique_ptr<Phase[]> phases(new Phase[n_phases]);
    const int64_t tile_chunk = 2;

#pragma omp parallel num_threads(nthreads)
    {
      const int tid = thread_id();
      float* scores = scores_.data() + static_cast<size_t>(tid) * S_;
      // Each thread normalizes the rows itself into its own buffer: a layernorm is tiny
      // next to the layer after it, and this way it needs no step of its own to wait on.
      float* ln = ln_.data() + tid * M * C;
      uint16_t* lnb = bf16 ? lnb_.data() + tid * M * kpC : nullptr;
      int8_t* xq = int8 ? xq_.data() + tid * M * kq : nullptr;  // this thread's quantized input rows
      float* xq_scale = int8 ? xq_scale_.data() + tid * M : nullptr;
      Phase* ph = phases.get();
      auto linear = [&](const Linear& lin, const float* in, const uint16_t* inb, int64_t rows, int64_t ld_in,
                        const Epilogue& e) {
        LinearInput li;
        li.x = in;
        li.ldx = ld_in;
        li.xb = inb;
        if (xq) {
          quantize_rows(in, ld_in, rows, lin.view.k, lin.view.kp, isa, xq, xq_scale);
          li.xq = xq;
          li.xq_scale = xq_scale;
        }
        run_phase(*ph++, lin.view.tiles, tile_chunk,
                  [&](int64_t a, int64_t z) { linear_tiles(lin.view, li, rows, e, a, z, isa); });
      };
      auto norm_rows = [&](const at::Tensor& w, const at::Tensor& b, int64_t rows, int64_t stride_rows) {
        for (int64_t r = 0; r < rows; ++r)
          layer_norm_row(x + (r * stride_rows + stride_rows - 1) * C, w.const_data_ptr<float>(), ptr_or_null(b),
                         W.eps_, C, ln + r * C, lnb ? lnb + r * kpC : nullptr);
      };
      for (const Layer& y : W.layers_) {
        const int64_t l = &y - W.layers_.data();
        norm_rows(y.ln1_w, y.ln1_b, M, 1);
        Epilogue e_qkv;
        e_qkv.bias = ptr_or_null(y.attn.bias);
        e_qkv.out = qkv;
        e_qkv.ld_out = 3 * C;
        linear(y.attn, ln, lnb, M, C, e_qkv);
        // Append this step's keys and values, then attend: one (row, head) per task.
        float* kc = kc_all + l * layer_cache;
        float* vc = vc_all + l * layer_cache;
        run_phase(*ph++, nb * nh, 1, [&](int64_t first, int64_t end) {
          for (int64_t bh = first; bh < end; ++bh) {
            const int64_t b = bh / nh, h = bh % nh;
            const int64_t* slot = pp + b * pos_stride;
            float* kh = kc + (cache_row[b] * nh + h) * S_ * hs;
            float* vh = vc + (cache_row[b] * nh + h) * S_ * hs;
            for (int64_t t = 0; t < T; ++t) {
              const float* row = qkv + (b * T + t) * 3 * C;
              std::memcpy(kh + slot[t] * hs, row + C + h * hs, hs * sizeof(float));
              std::memcpy(vh + slot[t] * hs, row + 2 * C + h * hs, hs * sizeof(float));
            }
            for (int64_t t = 0; t < T; ++t) {
              const int64_t r = b * T + t;
              float* o = att + r * C + h * hs;
              attend_query(qkv + r * 3 * C + h * hs, kh, vh, hs, hs, slot[t], vld ? vld + b * S_ : nullptr, scale,
                           scores, o);
              if (attb)
                for (int64_t d = 0; d < hs; ++d) attb[r * kpC + h * hs + d] = float_to_bf16(o[d]);
            }
          }
        });
        Epilogue e_proj;
        e_proj.bias = ptr_or_null(y.proj.bias);
        e_proj.residual = x;
        e_proj.ld_residual = C;
        e_proj.out = x;
        e_proj.ld_out = C;
        linear(y.proj, att, attb, M, C, e_proj);
        norm_rows(y.ln2_w, y.ln2_b, M, 1);
        Epilogue e_fc;
        e_fc.bias = ptr_or_null(y.fc.bias);
        e_fc.gelu = true;
        e_fc.out = fc;
        e_fc.ld_out = H;
        e_fc.out_bf16 = fcb;
        e_fc.ld_out_bf16 = kpH;
        linear(y.fc, ln, lnb, M, C, e_fc);
        Epilogue e_mp;
        e_mp.bias = ptr_or_null(y.mproj.bias);
        e_mp.residual = x;
        e_mp.ld_residual = C;
        e_mp.out = x;
        e_mp.ld_out = C;
        linear(y.mproj, fc, fcb, M, H, e_mp);
      }
      // Final layernorm of each row's last token, then the tied lm_head.
      norm_rows(W.lnf_w_, W.lnf_b_, nb, T);
      Epilogue e_head;
      e_head.out = lg;
      e_head.ld_out = W.vocab_;
      linear(W.head_, ln, lnb, nb, C, e_head);
    }
    return logits;
  }

  // Keeps batch rows index[0], index[1], ... (int64 [b], each in [0, B); any order, repeats
  // allowed) of the KV cache: row i of later calls is old row index[i], and they take b rows.
  void select_rows(const at::Tensor& index) {
    const char* op = "Decoder.select_rows";
    check_cpu_tensor(index, op, "index");
    LLM_CHECK(index.scalar_type() == at::kLong && index.dim() == 1 && index.size(0) >= 1, "llm.", op,
              ": index must be int64 [b >= 1], got ", index.scalar_type(), " ", shape_str(index));
    at::Tensor idx = index.contiguous();
    const int64_t* ip = idx.const_data_ptr<int64_t>();
    for (int64_t i = 0; i < idx.size(0); ++i)
      LLM_CHECK(ip[i] >= 0 && ip[i] < B_, "llm.", op, ": index[", i, "] = ", ip[i], " is outside the batch [0, ",
                B_, ")");
    // index_select makes new contiguous [L, b, nh, S, hs] buffers, so no row is overwritten
    // before it is read (the index may reorder or repeat rows).
    k_cache_ = k_cache_.index_select(1, idx);
    v_cache_ = v_cache_.index_select(1, idx);
    B_ = idx.size(0);
    rows_ = -1;  // the next step sizes its buffers for b rows
  }

  int64_t batch_size() const { return B_; }
  at::Tensor k_cache() const { return k_cache_; }
  at::Tensor v_cache() const { return v_cache_; }

 private:
  struct StepArgs {
    at::Tensor tokens, pos, position_ids, valid;  // contiguous; valid narrowed to [b, S] or undefined
    std::vector<int64_t> rows;                   // the cache row of each input row
    int64_t T;
  };

  StepArgs check_args(const at::Tensor& tokens, const at::Tensor& pos, const at::Tensor& position_ids,
                      const std::optional<at::Tensor>& key_valid, const std::optional<at::Tensor>& rows) const {
    const char* op = "Decoder";
    StepArgs a;
    a.rows = check_rows(rows);
    const int64_t nb = a.rows.size();
    check_cpu_tensor(tokens, op, "tokens");
    LLM_CHECK(tokens.scalar_type() == at::kLong && tokens.dim() == 2 && tokens.size(0) == nb && tokens.size(1) >= 1,
              "llm.Decoder: tokens must be int64 [", nb, ", T >= 1], got ", tokens.scalar_type(), " ",
              shape_str(tokens));
    const int64_t T = a.T = tokens.size(1);
    check_cpu_tensor(pos, op, "input_pos");
    LLM_CHECK(pos.scalar_type() == at::kLong &&
                  ((pos.dim() == 1 && pos.size(0) == T) || (pos.dim() == 2 && pos.size(0) == nb && pos.size(1) == T)),
              "llm.Decoder: input_pos must be int64 [", T, "] or [", nb, ", ", T, "], got ", pos.scalar_type(), " ",
              shape_str(pos));
    check_cpu_tensor(position_ids, op, "position_ids");
    LLM_CHECK(position_ids.scalar_type() == at::kLong && position_ids.dim() == 2 && position_ids.size(0) == nb &&
                  position_ids.size(1) == T,
              "llm.Decoder: position_ids must be int64 [", nb, ", ", T, "], got ", position_ids.scalar_type(), " ",
              shape_str(position_ids));
    a.tokens = tokens.contiguous();
    a.pos = pos.contiguous();
    a.position_ids = position_ids.contiguous();
    const int64_t* pp = a.pos.const_data_ptr<int64_t>();
    for (int64_t i = 0; i < a.pos.numel(); ++i)
      LLM_CHECK(pp[i] >= 0 && pp[i] < S_, "llm.Decoder: input_pos[", i, "] = ", pp[i], " is outside the cache [0, ",
                S_, ")");
    const int64_t* tk = a.tokens.const_data_ptr<int64_t>();
    const int64_t* pi = a.position_ids.const_data_ptr<int64_t>();
    for (int64_t r = 0; r < nb * T; ++r) {
      LLM_CHECK(tk[r] >= 0 && tk[r] < w_->vocab_, "llm.Decoder: token id ", tk[r], " is outside the vocabulary [0, ",
                w_->vocab_, ")");
      LLM_CHECK(pi[r] >= 0 && pi[r] < w_->n_positions_, "llm.Decoder: position id ", pi[r], " is outside [0, ",
                w_->n_positions_, ")");
    }
    if (key_valid.has_value()) {
      check_cpu_tensor(*key_valid, op, "key_valid");
      LLM_CHECK(key_valid->scalar_type() == at::kBool && key_valid->dim() == 2 && key_valid->size(0) == nb &&
                    key_valid->size(1) >= S_,
                "llm.Decoder: key_valid must be bool [", nb, ", >= ", S_, "], got ", key_valid->scalar_type(), " ",
                shape_str(*key_valid));
      a.valid = key_valid->narrow(1, 0, S_).contiguous();
    }
    return a;
  }

  // The cache row of each input row: rows' values (distinct, in [0, B)), or 0..B-1.
  std::vector<int64_t> check_rows(const std::optional<at::Tensor>& rows) const {
    std::vector<int64_t> out;
    if (!rows.has_value()) {
      for (int64_t b = 0; b < B_; ++b) out.push_back(b);
      return out;
    }
    const char* op = "Decoder";
    check_cpu_tensor(*rows, op, "rows");
    LLM_CHECK(rows->scalar_type() == at::kLong && rows->dim() == 1 && rows->size(0) >= 1 && rows->size(0) <= B_,
              "llm.Decoder: rows must be int64 [1 <= b <= ", B_, "], got ", rows->scalar_type(), " ",
              shape_str(*rows));
    at::Tensor r = rows->contiguous();
    const int64_t* rp = r.const_data_ptr<int64_t>();
    std::vector<bool> seen(B_, false);
    for (int64_t i = 0; i < r.size(0); ++i) {
      LLM_CHECK(rp[i] >= 0 && rp[i] < B_, "llm.Decoder: rows[", i, "] = ", rp[i], " is outside the cache rows [0, ",
                B_, ")");
      LLM_CHECK(!seen[rp[i]], "llm.Decoder: rows names cache row ", rp[i], " twice");
      seen[rp[i]] = true;
      out.push_back(rp[i]);
    }
    return out;
  }

  void resize(int64_t M, int64_t C, int64_t H, int64_t kpC, int64_t kpH, int64_t kq, bool bf16, bool int8,
              int nthreads) {
    if (rows_ == M && threads_ == nthreads) return;
    rows_ = M;
    threads_ = nthreads;
    x_.assign(M * C, 0.0f);
    ln_.assign(nthreads * M * C, 0.0f);
    qkv_.assign(M * 3 * C, 0.0f);
    att_.assign(M * C, 0.0f);
    fc_.assign(M * H, 0.0f);
    if (bf16) {  // the zero padding past C / H stays zero
      lnb_.assign(nthreads * M * kpC, 0);
      attb_.assign(M * kpC, 0);
      fcb_.assign(M * kpH, 0);
    }
    if (int8) {
      xq_.assign(nthreads * M * kq, 0);
      xq_scale_.assign(nthreads * M, 0.0f);
    }
  }

  c10::intrusive_ptr<GPTWeights> w_;
  int64_t B_, S_, rows_ = -1;
  int threads_ = 0;
  at::Tensor k_cache_, v_cache_;  // [L, B, nh, S, hs]
  std::vector<float> x_, ln_, qkv_, att_, fc_, scores_;
  std::vector<uint16_t> lnb_, attb_, fcb_;
  std::vector<int8_t> xq_;
  std::vector<float> xq_scale_;
};

}  // namespace llm

TORCH_LIBRARY_FRAGMENT(llm, m) {
  // key_valid and rows may be left out (None)
  const auto kStepArgs = {torch::arg("tokens"), torch::arg("input_pos"), torch::arg("position_ids"),
                          torch::arg("key_valid") = c10::IValue(), torch::arg("rows") = c10::IValue()};
  m.class_<llm::GPTWeights>("GPTWeights")
      .def(torch::init<int64_t, double, at::Tensor, at::Tensor, std::vector<at::Tensor>, at::Tensor, at::Tensor,
                       std::string, std::optional<at::Tensor>>(),
           "", {torch::arg("n_head"), torch::arg("eps"), torch::arg("wte"), torch::arg("wpe"),
                torch::arg("layer_tensors"), torch::arg("lnf_w"), torch::arg("lnf_b"), torch::arg("format"),
                torch::arg("lm_head") = c10::IValue()})
      .def("streamed_bytes", &llm::GPTWeights::streamed_bytes)
      .def("format", &llm::GPTWeights::format);
  m.class_<llm::Decoder>("Decoder")
      .def(torch::init<c10::intrusive_ptr<llm::GPTWeights>, int64_t, int64_t>())
      .def("prefill", &llm::Decoder::prefill, "", kStepArgs)
      .def("decode_one_token", &llm::Decoder::step, "", kStepArgs)
      .def("select_rows", &llm::Decoder::select_rows)
      .def("batch_size", &llm::Decoder::batch_size)
      .def("k_cache", &llm::Decoder::k_cache)
      .def("v_cache", &llm::Decoder::v_cache);
}
