#include "engine/generate.h"

#include <algorithm>
#include <chrono>

#include "common/errors.h"
#include "kvcache/kv_cache_manager.h"
#include "engine/sampler.h"
#include "engine/tokenizer.h"

namespace sparseserve {

GenerateResult generate(CpuForward& fwd, std::span<const int32_t> prompt, const GenerateOptions& opts,
                        const std::function<void(std::string_view)>& on_text) {
  const Model& model = fwd.model();
  const ModelConfig& c = model.config;
  if (prompt.empty()) throw InvalidArgument("the prompt is empty");
  if (static_cast<int64_t>(prompt.size()) >= c.max_context) {
    throw InvalidArgument("prompt of " + std::to_string(prompt.size()) + " tokens leaves no room in the model's context of " +
                          std::to_string(c.max_context) + " tokens");
  }
  if (opts.max_tokens < 0) throw InvalidArgument("max_tokens must be non-negative");
  if (opts.prefill_chunk <= 0) throw InvalidArgument("prefill_chunk must be positive");
  opts.sampling.validate(c.vocab_size);

  std::vector<int32_t> stops = opts.stop_ids;
  if (!opts.ignore_eos) stops.insert(stops.end(), c.eos_ids.begin(), c.eos_ids.end());
  const int64_t budget = std::min<int64_t>(opts.max_tokens, c.max_context - static_cast<int64_t>(prompt.size()));

  GenerateResult res;
  res.finish_reason = "length";
  const kvcache::SparsityProfile dense = kvcache::SparsityProfile::dense(static_cast<int32_t>(c.n_layers),
                                                                        static_cast<int32_t>(c.n_kv_heads));
  const kvcache::SparsityProfile& profile = opts.profile != nullptr ? *opts.profile : dense;
  // A cache sized for exactly this sequence: its pages at the longest length it can reach.
  const auto layout = kvcache::SequenceLayout::from_roles(profile.roles, profile.streaming);
  const int64_t max_len = static_cast<int64_t>(prompt.size()) + budget;
  std::optional<kvcache::StreamingGeometry> geometry;
  if (layout.streaming) geometry.emplace(opts.kv_cache.page_tokens, *layout.streaming);
  const int32_t pages = std::max<int32_t>(
      1, kvcache::SequenceKv(opts.kv_cache.page_tokens, layout.retrieval_slots, layout.streaming_slots, geometry)
             .pages_needed(max_len));
  kvcache::KvCacheManager manager(opts.kv_cache, pages);
  manager.add_sequence(0, layout);
  PagedKvBackend kv(c, manager);
  kv.add_sequence(0, profile);
  Sampler sampler(opts.sampling, prompt);
  IncrementalDetokenizer detok(model.tokenizer, /*skip_special=*/true);
  std::vector<float> logits;
  auto emit = [&](const std::string& piece) {
    if (piece.empty()) return;
    res.text += piece;
    if (on_text) on_text(piece);
  };

  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  for (size_t off = 0; off < prompt.size(); off += static_cast<size_t>(opts.prefill_chunk)) {
    const size_t n = std::min(prompt.size() - off, static_cast<size_t>(opts.prefill_chunk));
    const ForwardSeq seq{0, static_cast<int64_t>(off), prompt.subspan(off, n), false, static_cast<int64_t>(prompt.size())};
    manager.allocate(0, static_cast<int64_t>(off + n));
    fwd.forward(std::span(&seq, 1), kv, logits);
  }
  const auto t1 = clock::now();
  res.prefill_seconds = std::chrono::duration<double>(t1 - t0).count();

  for (int64_t i = 0; i < budget; ++i) {
    const int32_t tok = sampler.sample(logits);
    if (std::find(stops.begin(), stops.end(), tok) != stops.end()) {
      res.finish_reason = "stop";
      break;
    }
    res.tokens.push_back(tok);
    emit(detok.push(tok));
    if (i + 1 == budget) break;
    const ForwardSeq seq{0, static_cast<int64_t>(prompt.size() + res.tokens.size() - 1), std::span(&res.tokens.back(), 1),
                         false, static_cast<int64_t>(prompt.size())};
    manager.allocate(0, seq.start + 1);
    fwd.forward(std::span(&seq, 1), kv, logits);
  }
  emit(detok.flush());
  res.kv_pages_retrieval = manager.used_pages(kvcache::HeadRole::kRetrieval);
  res.kv_pages_streaming = manager.used_pages(kvcache::HeadRole::kStreaming);
  res.selection = kv.selection_stats();
  res.decode_seconds = std::chrono::duration<double>(clock::now() - t1).count();
  return res;
}

}  // namespace sparseserve
