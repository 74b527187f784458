#include "engine/cuda/cuda_step_runner.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <vector>

#include "common/errors.h"
#include "engine/cuda/cuda_forward.h"
#include "kernels/cuda/attention_plan.h"
#include "kernels/cuda/block_sparse.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/decode_attention.h"
#include "kernels/cuda/page_select.h"

namespace sparseserve {

namespace {

// Room kept free next to the weights and the KV cache besides the step buffers: cuBLASLt's
// workspace and the CUDA context's own allocations after start.
constexpr size_t kFixedHeadroomBytes = size_t{384} << 20;

// A non-blocking stream on `device`, destroyed with the runner.
class Stream {
 public:
  Stream() { CUDA_CHECK(cudaStreamCreateWithFlags(&s_, cudaStreamNonBlocking)); }
  ~Stream() { (void)cudaStreamDestroy(s_); }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  cudaStream_t get() const { return s_; }

 private:
  cudaStream_t s_ = nullptr;
};

// {free, total} bytes of `device` (which becomes the thread's current device); InvalidArgument when
// there is no such device.
std::pair<size_t, size_t> device_memory(int device) {
  const int n = kernels::cuda::cuda_device_count();
  if (device < 0 || device >= n) {
    throw InvalidArgument(fmt::format("backend cuda: no CUDA device {} ({} visible)", device, n));
  }
  CUDA_CHECK(cudaSetDevice(device));
  size_t free = 0, total = 0;
  CUDA_CHECK(cudaMemGetInfo(&free, &total));
  return {free, total};
}

size_t model_weight_bytes(const Model& model) {
  return cuda_weight_bytes(model.config, model.weights.lm_head.data == model.weights.embed.data);
}

class CudaStepRunner final : public StepRunner {
 public:
  CudaStepRunner(const Model& model, kvcache::KvCacheManager& manager, int device, const StepLimits& limits)
      : model_(model), device_(device), forward_(model, manager, stream_.get()) {
    forward_.reserve_sequences(limits.max_sequences);
    forward_.warm_up(limits.max_tokens, limits.max_sequences);
  }

  void add_sequence(uint64_t id, const kvcache::SparsityProfile& profile, int64_t stored) override {
    if (const std::string why = cuda_unsupported_profile(model_.config, profile); !why.empty()) {
      throw InternalError("CudaStepRunner: sequence " + std::to_string(id) + ": " + why);
    }
    forward_.add_sequence(id, profile, stored);
  }
  void release(uint64_t id) override { forward_.release(id); }
  void copy_pages(std::span<const kvcache::PageCopy> copies) override {
    CUDA_CHECK(cudaSetDevice(device_));
    forward_.copy_pages(copies);
  }
  void forward(std::span<const ForwardSeq> batch, std::span<const DeviceDraw> draws, std::vector<float>& logits,
               std::vector<int32_t>& drawn) override {
    // The engine's loop thread calls this; the current device is per thread.
    CUDA_CHECK(cudaSetDevice(device_));
    forward_.forward(batch, draws, logits, drawn);
  }
  bool draws_on_device() const override { return true; }
  SelectionStats selection_stats() const override { return forward_.selection_stats(); }
  StepGraphStats graph_stats() const override { return forward_.graph_stats(); }

 private:
  const Model& model_;
  int device_;
  Stream stream_;  // declared before forward_: destroyed after it
  CudaForward forward_;
};

}  // namespace

std::string cuda_unsupported_model(const ModelConfig& c, const kvcache::KvCacheConfig& kv) {
  if (c.head_dim != 64 && c.head_dim != 128) {
    return fmt::format("head_dim {}: the GPU's attention kernels take 64 or 128", c.head_dim);
  }
  if (kv.page_tokens != 16 && kv.page_tokens != 32 && kv.page_tokens != 64 && kv.page_tokens != 128) {
    return fmt::format("page_tokens {}: the GPU's attention kernels take 16, 32, 64 or 128", kv.page_tokens);
  }
  if (c.n_kv_heads < 1 || c.n_heads % c.n_kv_heads != 0 || c.n_heads / c.n_kv_heads > 16) {
    return fmt::format("{} query heads over {} KV heads: the GPU's attention takes groups of 1 to 16", c.n_heads,
                       c.n_kv_heads);
  }
  return {};
}

std::string cuda_unsupported_profile(const ModelConfig& c, const kvcache::SparsityProfile& p) {
  if (p.decode.enabled && c.n_kv_heads > 0 && c.n_heads / c.n_kv_heads > kernels::cuda::kPageSelectMaxGroup) {
    return fmt::format("it uses decode page selection, which the GPU runs for at most {} query heads per KV head "
                       "(this model has {})",
                       kernels::cuda::kPageSelectMaxGroup, c.n_heads / c.n_kv_heads);
  }
  if (p.prefill.dynamic && p.prefill.block_tokens > 0 &&
      (c.max_context + p.prefill.block_tokens - 1) / p.prefill.block_tokens > kernels::cuda::kMaxMaskKeyBlocks) {
    return fmt::format("it uses dynamic prefill sparsity with {}-token blocks, which the GPU runs for contexts of at "
                       "most {} blocks ({} tokens; this model's context is {})",
                       p.prefill.block_tokens, kernels::cuda::kMaxMaskKeyBlocks,
                       int64_t{kernels::cuda::kMaxMaskKeyBlocks} * p.prefill.block_tokens, c.max_context);
  }
  return {};
}

size_t cuda_step_bytes(const ModelConfig& c, const StepLimits& limits) {
  const int64_t q = c.n_heads * c.head_dim, kv = c.n_kv_heads * c.head_dim;
  // Per row: h, xn, proj (hidden each), Q|K|V, attention output, gate|up, the activation (bf16).
  const int64_t row_bytes = 2 * (3 * c.hidden + q + 2 * kv + q + 3 * c.intermediate);
  // Logits rows (bf16 and fp32, and the host's pinned copy is not device memory): at most one per
  // token of a step (prompt logprobs), plus the gathered hidden rows.
  const int64_t logit_bytes = 6 * c.vocab_size + 2 * c.hidden;
  // Per row, the step's int32 tables (engine/cuda/step_tables.h): token, position and slot, and the
  // page its K/V goes to in each lane of each kind (3 per layer and KV head), padded up to 2×.
  const int64_t table_bytes = 2 * 4 * (3 + 3 * c.n_layers * c.n_kv_heads);
  // Per sequence: its region of the block store (engine/cuda/block_store.h), every KV head of every
  // layer with the whole context's blocks, int32, counted at the smallest page size (16 tokens).
  const int64_t store_bytes = 4 * c.n_layers * c.n_kv_heads * ((c.max_context + 15) / 16);
  const int64_t tokens = std::max<int64_t>(limits.max_tokens, 1), seqs = std::max<int64_t>(limits.max_sequences, 1);
  // Each layer's decode attention, made at warm-up for a row per sequence and KV head (CudaForward).
  const auto group = static_cast<int32_t>(c.n_heads / std::max<int64_t>(c.n_kv_heads, 1));
  kernels::cuda::DecodeConfig dc;
  dc.head_dim = static_cast<int32_t>(c.head_dim);
  dc.group = group;
  dc.max_rows = static_cast<int32_t>(std::max<int64_t>(seqs * c.n_kv_heads, 64));
  const auto decode_bytes = static_cast<size_t>(c.n_layers) * kernels::cuda::DecodeAttention::device_bytes_bound(dc);
  // The estimate of dynamic prefill sparsity, one row per sequence's chunk and KV head at most.
  int64_t mask_bytes = 0;
  for (const auto& [block, stride] : limits.dynamic_prefill) {
    using kernels::cuda::XAttentionSelect;
    const int64_t rows = seqs * c.n_kv_heads, row_tokens = tokens * c.n_kv_heads;
    mask_bytes = std::max(mask_bytes, 4 * XAttentionSelect::workspace_floats_bound(group, block, stride, rows, row_tokens,
                                                                                   c.max_context) +
                                          XAttentionSelect::mask_bytes_bound(block, rows, row_tokens, c.max_context));
  }
  // The prefill's key split: its partials, shared by the layers, at most kPrefillSplitMaxPieces pieces.
  const int64_t split_bytes = kernels::cuda::prefill_split_workspace_bytes(static_cast<int32_t>(c.head_dim));
  return kFixedHeadroomBytes + decode_bytes +
         static_cast<size_t>(tokens * (row_bytes + logit_bytes + table_bytes) + seqs * store_bytes + mask_bytes +
                             split_bytes);
}

size_t cuda_list_bytes(const ModelConfig& c, size_t kv_bytes) {
  constexpr size_t kListBytesPerPage = 64;
  const auto smallest_page = static_cast<size_t>(16 * std::max<int64_t>(c.head_dim, 1) * 2 * 2);
  return (kv_bytes + smallest_page - 1) / smallest_page * kListBytesPerPage;
}

size_t cuda_weight_bytes(const ModelConfig& c, bool tied) {
  const int64_t q = c.n_heads * c.head_dim, kv = c.n_kv_heads * c.head_dim;
  const int64_t per_layer = (q + 2 * kv) * c.hidden + (c.qkv_bias ? q + 2 * kv : 0) + q * c.hidden +
                            3 * c.intermediate * c.hidden + 2 * c.hidden;
  const int64_t params = per_layer * c.n_layers + c.vocab_size * c.hidden * (tied ? 1 : 2) + c.hidden;
  return static_cast<size_t>(params) * 2;
}

StepBackend cuda_step_backend(int device) {
  StepBackend b;
  b.name = "cuda";
  b.bytes_per_element = 2;
  b.with_metadata = true;  // K's min/max per sub-page, bf16, for decode page selection
  b.unsupported_model = [](const Model& model, const kvcache::KvCacheConfig& kv) {
    return cuda_unsupported_model(model.config, kv);
  };
  b.unsupported = [](const Model& model, const kvcache::SparsityProfile& profile) {
    return cuda_unsupported_profile(model.config, profile);
  };
  b.device_kv_bytes = [device](const Model& model, double utilization, const StepLimits& limits) {
    const auto [free, total] = device_memory(device);
    const size_t weights = model_weight_bytes(model), steps = cuda_step_bytes(model.config, limits);
    constexpr double GiB = 1 << 30;
    // What is left after the weights and the steps, less the share the step's lists take of it
    // were it all KV cache.
    const double after = static_cast<double>(free) - static_cast<double>(weights + steps);
    const double left = after - static_cast<double>(cuda_list_bytes(model.config, static_cast<size_t>(std::max(after, 0.0))));
    if (left <= 0) {
      throw InvalidArgument(fmt::format("backend cuda: CUDA device {} has {:.2f} GiB free, not more than the {:.2f} GiB "
                                        "of bf16 weights and {:.2f} GiB for the steps: no room for a KV cache",
                                        device, static_cast<double>(free) / GiB, static_cast<double>(weights) / GiB,
                                        static_cast<double>(steps) / GiB));
    }
    const auto bytes = static_cast<size_t>(left * utilization);
    spdlog::info("backend cuda: KV cache {:.2f} GiB = gpu_memory_utilization {} of the {:.2f} GiB left after the "
                 "weights and the steps' headroom",
                 static_cast<double>(bytes) / GiB, utilization, left / GiB);
    return bytes;
  };
  b.check_kv_bytes = [device](const Model& model, size_t kv_bytes, const StepLimits& limits) {
    const auto [free, total] = device_memory(device);
    const size_t weights = model_weight_bytes(model);
    const size_t steps = cuda_step_bytes(model.config, limits) + cuda_list_bytes(model.config, kv_bytes);
    const size_t need = weights + kv_bytes + steps;
    constexpr double GiB = 1 << 30;
    if (need > free) {
      throw InvalidArgument(fmt::format(
          "kv_cache_bytes: {:.2f} GiB of KV cache, {:.2f} GiB of bf16 weights and {:.2f} GiB for the steps need {:.2f} "
          "GiB, but CUDA device {} has {:.2f} GiB free (of {:.2f})",
          static_cast<double>(kv_bytes) / GiB, static_cast<double>(weights) / GiB,
          static_cast<double>(steps) / GiB, static_cast<double>(need) / GiB, device,
          static_cast<double>(free) / GiB, static_cast<double>(total) / GiB));
    }
    cudaDeviceProp prop{};
    CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
    spdlog::info("backend cuda: device {} ({}), {:.1f} GiB free; weights {:.2f} GiB, KV cache {:.2f} GiB", device,
                 prop.name, static_cast<double>(free) / GiB, static_cast<double>(weights) / GiB,
                 static_cast<double>(kv_bytes) / GiB);
  };
  b.make = [device](const Model& model, kvcache::KvCacheManager& manager,
                    const StepLimits& limits) -> std::unique_ptr<StepRunner> {
    CUDA_CHECK(cudaSetDevice(device));
    return std::make_unique<CudaStepRunner>(model, manager, device, limits);
  };
  return b;
}

}  // namespace sparseserve
