#include "engine/paged_kv.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "common/errors.h"
#include "common/parallel_errors.h"
#include "engine/page_ranges.h"
#include "kernels/cpu/attention_block.h"
#include "kernels/cpu/block_sparse.h"
#include "kernels/cpu/page_select.h"
#include "kernels/cpu/span_attention.h"

namespace sparseserve {

namespace cpu = kernels::cpu;
using kvcache::HeadRole;

struct PagedKvBackend::HeadTask {
  size_t seq = 0;      // index in the batch
  int64_t row0 = 0;    // first row of the sequence in the step
  int32_t head = 0;    // KV head
  int32_t slot = 0;    // slot in the role's tables
  HeadRole role = HeadRole::kRetrieval;
  bool blocked = false;                  // prefill chunk: attend_block over gathered keys
  std::vector<cpu::KeySpan> spans;       // per-query path (decode, short chunks)
  std::vector<float> keys, values;       // blocked path: keys/values gathered in position order
  std::vector<int64_t> key_pos;          // their positions (empty: 0 .. keys-1)
  cpu::AttentionMask mask;
  std::optional<cpu::BlockMask> blocks;  // dynamic prefill
  int64_t selected_tokens = 0, context_tokens = 0;
  bool selected_now = false;
};

PagedKvBackend::PagedKvBackend(const ModelConfig& config, kvcache::KvCacheManager& manager,
                               kernels::cpu::Numerics numerics)
    : config_(config),
      numerics_(numerics),
      manager_(manager),
      storage_(manager.num_pages(), manager.config().page_tokens, manager.config().logical_page_tokens, config.head_dim) {}

void PagedKvBackend::add_sequence(uint64_t id, const kvcache::SparsityProfile& profile, int64_t stored) {
  check(manager_.has_sequence(id), "PagedKvBackend: sequence not registered with the KV cache manager");
  check(!seqs_.contains(id), "PagedKvBackend: sequence already bound");
  check(profile.roles.n_layers() == config_.n_layers && profile.roles.n_kv_heads() == config_.n_kv_heads,
        "PagedKvBackend: profile head roles do not match the model");
  check(stored >= 0 && stored <= manager_.sequence(id).length() && stored % storage_.page_tokens() == 0,
        "PagedKvBackend: stored tokens beyond the sequence's pages or inside a page");
  seqs_.emplace(id, SeqState(profile, config_.n_layers, config_.n_kv_heads, stored));
}

void PagedKvBackend::release(uint64_t id) { seqs_.erase(id); }

void PagedKvBackend::copy_pages(std::span<const kvcache::PageCopy> copies) {
  storage_.copy_pages(page_ranges(copies, manager_.num_pages(), storage_.page_tokens(), "PagedKvBackend"));
}

void PagedKvBackend::rewind(uint64_t id, int64_t length, const kvcache::SparsityProfile& profile) {
  SeqState& st = state(id);
  check(length >= 0 && length <= st.length(), "PagedKvBackend::rewind: length beyond the stored tokens");
  check(st.length() - length < storage_.page_tokens(), "PagedKvBackend::rewind: would drop a page or more of tokens");
  check(length % storage_.logical_page_tokens() == 0, "PagedKvBackend::rewind: length not on a sub-page boundary");
  const kvcache::HeadRoles& a = st.profile().roles;
  const kvcache::HeadRoles& b = profile.roles;
  for (int32_t l = 0; l < a.n_layers(); ++l) {
    for (int32_t h = 0; h < a.n_kv_heads(); ++h) check(a.role(l, h) == b.role(l, h), "PagedKvBackend::rewind: head roles differ");
  }
  const auto window = [](const kvcache::SparsityProfile& p) {
    return p.streaming ? std::pair(p.streaming->sink_tokens, p.streaming->local_tokens) : std::pair(-1, -1);
  };
  check(window(st.profile()) == window(profile), "PagedKvBackend::rewind: streaming windows differ");
  st.restart(length, profile);
}

PagedKvBackend::SeqState& PagedKvBackend::state(uint64_t id) {
  const auto it = seqs_.find(id);
  check(it != seqs_.end(), "PagedKvBackend: unknown sequence id");
  return it->second;
}

void PagedKvBackend::begin_step(std::span<const ForwardSeq> batch) {
  for (size_t i = 0; i < batch.size(); ++i) {
    const ForwardSeq& s = batch[i];
    check(state(s.id).length() == s.start, "PagedKvBackend: step start differs from the stored length");
    check(manager_.sequence(s.id).length() >= s.start + static_cast<int64_t>(s.tokens.size()),
          "PagedKvBackend: KV pages for the step were not allocated");
    for (size_t j = 0; j < i; ++j) check(batch[j].id != s.id, "PagedKvBackend: sequence twice in one step");
  }
}

void PagedKvBackend::write_retrieval(int64_t layer, const ForwardSeq& s, const kvcache::SequenceKv& kv, int32_t slot,
                                     int32_t head, const float* qkv, int64_t qkv_stride, int64_t row0) {
  const int64_t D = config_.head_dim, P = storage_.page_tokens();
  const int64_t q_dim = config_.n_heads * D, kv_dim = config_.n_kv_heads * D;
  const auto& pages = kv.retrieval_pages(slot);
  for (int64_t i = 0; i < static_cast<int64_t>(s.tokens.size()); ++i) {
    const int64_t pos = s.start + i;
    const float* row = qkv + (row0 + i) * qkv_stride;
    storage_.write(pages[static_cast<size_t>(pos / P)], pos % P, row + q_dim + head * D,
                   row + q_dim + kv_dim + head * D, /*with_metadata=*/true);
  }
}

void PagedKvBackend::write_streaming(int64_t layer, const ForwardSeq& s, const kvcache::SequenceKv& kv, int32_t slot,
                                     int32_t head, const float* qkv, int64_t qkv_stride, int64_t row0) {
  const int64_t D = config_.head_dim;
  const int64_t q_dim = config_.n_heads * D, kv_dim = config_.n_kv_heads * D;
  const auto& g = *kv.streaming_geometry();
  const auto& pages = kv.streaming_pages(slot);
  const auto n = static_cast<int64_t>(s.tokens.size());
  // Only positions the ring still holds after the chunk matter; earlier ones would be overwritten.
  // Those go to the prefix cache's snapshot of their block instead, where it reserved one.
  const int64_t P = storage_.page_tokens();
  const int64_t keep_from = std::max<int64_t>(s.start, s.start + n - int64_t{g.ring_pages()} * P);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t pos = s.start + i;
    const bool sink_block = pos < int64_t{g.sink_pages()} * P;
    int32_t page = -1;
    if (pos >= keep_from || sink_block) {
      page = pages[static_cast<size_t>(g.locate(pos).index)];
    } else if (const std::vector<int32_t>* snapshot = manager_.snapshot_target(s.id, pos / P)) {
      page = (*snapshot)[static_cast<size_t>(slot)];
    } else {
      continue;
    }
    const float* row = qkv + (row0 + i) * qkv_stride;
    storage_.write(page, pos % P, row + q_dim + head * D, row + q_dim + kv_dim + head * D, /*with_metadata=*/false);
  }
}

std::vector<int32_t> PagedKvBackend::decode_blocks(int64_t layer, int32_t head, SeqState& st,
                                                   const kvcache::SequenceKv& kv, int32_t slot, const float* q,
                                                   int64_t end, bool& fresh) {
  fresh = false;
  const kvcache::DecodeSelection& dec = st.profile().decode;
  const int64_t P = storage_.page_tokens(), LP = storage_.logical_page_tokens();
  const auto nb = static_cast<int32_t>((end + P - 1) / P);
  switch (st.decode_keys(layer, head, end)) {
    case SequenceAttention::DecodeKeys::kAll: {
      std::vector<int32_t> all(static_cast<size_t>(nb));
      std::iota(all.begin(), all.end(), 0);
      return all;
    }
    case SequenceAttention::DecodeKeys::kPrevious:
      return st.previous_blocks(layer, head, end, static_cast<int32_t>(P));
    case SequenceAttention::DecodeKeys::kFresh:
      break;
  }
  const auto& pages = kv.retrieval_pages(slot);
  const int32_t group = static_cast<int32_t>(config_.n_heads / config_.n_kv_heads);
  std::vector<float> scores(static_cast<size_t>(nb));
  for (int32_t b = 0; b < nb; ++b) {
    const int64_t tokens = std::min<int64_t>(P, end - int64_t{b} * P);
    const auto valid = static_cast<int32_t>((tokens + LP - 1) / LP);
    const int32_t page = pages[static_cast<size_t>(b)];
    scores[static_cast<size_t>(b)] =
        cpu::page_score(q, config_.head_dim, group, storage_.kmin(page), storage_.kmax(page), valid, config_.head_dim);
  }
  std::vector<int32_t> sel = cpu::select_pages(scores, end, static_cast<int32_t>(P), dec.sink_tokens, dec.token_budget);
  st.record_selection(layer, head, sel, end, static_cast<int32_t>(P));
  fresh = true;
  return sel;
}

void PagedKvBackend::attend(int64_t layer, std::span<const ForwardSeq> batch, const float* qkv, int64_t qkv_stride,
                            float* out) {
  const int64_t D = config_.head_dim, P = storage_.page_tokens();
  const int64_t group = config_.n_heads / config_.n_kv_heads;
  const int64_t q_dim = config_.n_heads * D, kv_dim = config_.n_kv_heads * D;
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));

  std::vector<HeadTask> tasks;
  int64_t row0 = 0;
  for (size_t i = 0; i < batch.size(); ++i) {
    const kvcache::HeadRoles& roles = state(batch[i].id).profile().roles;
    for (int32_t h = 0; h < config_.n_kv_heads; ++h) {
      HeadTask t;
      t.seq = i;
      t.row0 = row0;
      t.head = h;
      t.role = roles.role(static_cast<int32_t>(layer), h);
      t.slot = roles.slot(static_cast<int32_t>(layer), h);
      tasks.push_back(std::move(t));
    }
    row0 += static_cast<int64_t>(batch[i].tokens.size());
  }

  // 1. Retrieval K/V go into their pages first (append-only: nothing the step reads is overwritten).
  // 2. Each task's keys (spans) and mask.
  ParallelErrors errors;
#pragma omp parallel for schedule(dynamic, 1)
  for (size_t ti = 0; ti < tasks.size(); ++ti) errors.run([&] {
    HeadTask& t = tasks[ti];
    const ForwardSeq& s = batch[t.seq];
    SeqState& st = state(s.id);
    const kvcache::SequenceKv& kv = manager_.sequence(s.id);
    const auto n = static_cast<int64_t>(s.tokens.size());
    const int64_t end = s.start + n;
    if (t.role == HeadRole::kRetrieval) {
      write_retrieval(layer, s, kv, t.slot, t.head, qkv, qkv_stride, t.row0);
      const auto& pages = kv.retrieval_pages(t.slot);
      const bool decode = n == 1 && s.start >= s.prompt_len;
      std::vector<int32_t> blocks;
      if (decode) {
        const float* q = qkv + t.row0 * qkv_stride + t.head * group * D;
        blocks = decode_blocks(layer, t.head, st, kv, t.slot, q, end, t.selected_now);
      } else {
        blocks.resize(static_cast<size_t>((end + P - 1) / P));
        std::iota(blocks.begin(), blocks.end(), 0);
      }
      t.blocked = numerics_ == cpu::Numerics::kFast && !decode && n >= cpu::kBlockedMinRows;
      const kvcache::PrefillSparsity& pf = st.profile().prefill;
      // Every prompt chunk, one token long too: its rows are masked as inside a whole-prompt chunk.
      const bool dynamic = !decode && pf.runs_on(s.prompt_len);
      if (t.blocked || dynamic) {  // keys in position order, contiguous
        t.keys.resize(static_cast<size_t>(end * D));
        t.values.resize(static_cast<size_t>(end * D));
        for (int64_t j = 0; j < end; ++j) {
          const int32_t page = pages[static_cast<size_t>(j / P)];
          std::copy_n(storage_.k(page, j % P), D, t.keys.data() + j * D);
          std::copy_n(storage_.v(page, j % P), D, t.values.data() + j * D);
        }
      }
      if (!t.blocked) {
        for (int32_t b : blocks) {
          const int32_t page = pages[static_cast<size_t>(b)];
          const auto cnt = static_cast<int32_t>(std::min<int64_t>(P, end - int64_t{b} * P));
          t.spans.push_back({storage_.k(page), storage_.v(page), int64_t{b} * P, cnt, static_cast<int32_t>(D)});
          if (decode) t.selected_tokens += cnt;
        }
      }
      if (dynamic) {
        t.blocks = cpu::xattention_block_mask(qkv + t.row0 * qkv_stride + t.head * group * D, qkv_stride,
                                              static_cast<int32_t>(group), s.start, n, t.keys.data(), D, pf.block_tokens,
                                              pf.stride, pf.threshold);
      }
      if (decode) t.context_tokens = end;
      t.mask = t.blocks ? cpu::AttentionMask::blocks(nullptr, t.blocks->block_tokens) : cpu::AttentionMask::causal();
    } else {
      const auto& g = *kv.streaming_geometry();
      const auto& pages = kv.streaming_pages(t.slot);
      const float* chunk = qkv + t.row0 * qkv_stride + q_dim + t.head * D;
      t.blocked = numerics_ == cpu::Numerics::kFast && n >= cpu::kBlockedMinRows;
      if (t.blocked) {
        // Keys the chunk can see, in position order: sink tokens and the window before the chunk
        // (from sink and ring pages), then the chunk's own keys.
        const int64_t sink = std::min<int64_t>(g.window().sink_tokens, s.start);
        const int64_t lo = std::max<int64_t>(sink, s.start - g.window().local_tokens + 1);
        auto add = [&](int64_t pos, const float* kp, const float* vp) {
          t.keys.insert(t.keys.end(), kp, kp + D);
          t.values.insert(t.values.end(), vp, vp + D);
          t.key_pos.push_back(pos);
        };
        auto add_stored = [&](int64_t from, int64_t to) {
          for (int64_t j = from; j < to; ++j) {
            const kvcache::PageLocation loc = g.locate(j);
            const int32_t page = pages[static_cast<size_t>(loc.index)];
            add(j, storage_.k(page, loc.offset), storage_.v(page, loc.offset));
          }
        };
        add_stored(0, sink);
        add_stored(lo, s.start);
        for (int64_t i = 0; i < n; ++i) add(s.start + i, chunk + i * qkv_stride, chunk + kv_dim + i * qkv_stride);
      } else {
        // Sink blocks, then the ring's blocks before the chunk (oldest first), then the chunk itself.
        const int64_t last_block = s.start > 0 ? (s.start - 1) / P : -1;
        for (int64_t b = 0; b < g.sink_pages() && b <= last_block; ++b) {
          const int32_t page = pages[static_cast<size_t>(b)];
          const auto cnt = static_cast<int32_t>(std::min<int64_t>(P, s.start - b * P));
          t.spans.push_back({storage_.k(page), storage_.v(page), b * P, cnt, static_cast<int32_t>(D)});
        }
        for (int64_t b = std::max<int64_t>(g.sink_pages(), last_block - g.ring_pages() + 1); b <= last_block; ++b) {
          const int32_t page = pages[static_cast<size_t>(g.locate(b * P).index)];
          const auto cnt = static_cast<int32_t>(std::min<int64_t>(P, s.start - b * P));
          t.spans.push_back({storage_.k(page), storage_.v(page), b * P, cnt, static_cast<int32_t>(D)});
        }
        t.spans.push_back({chunk, chunk + kv_dim, s.start, static_cast<int32_t>(n), static_cast<int32_t>(qkv_stride)});
      }
      t.mask = cpu::AttentionMask::band(g.window().sink_tokens, g.window().local_tokens);
    }
  });
  errors.rethrow();

  // 3. Attention: blocked tasks by 64-query blocks, the others per (query row, head of the group).
  struct Work {
    size_t task;
    int64_t row;  // first row (blocked: block start)
  };
  std::vector<Work> work;
  for (size_t ti = 0; ti < tasks.size(); ++ti) {
    const auto n = static_cast<int64_t>(batch[tasks[ti].seq].tokens.size());
    for (int64_t i = 0; i < n; i += tasks[ti].blocked ? 64 : 1) work.push_back({ti, i});
  }
#pragma omp parallel
  {
    std::vector<float> scratch;
#pragma omp for schedule(dynamic, 1)
    for (size_t w = 0; w < work.size(); ++w) errors.run([&] {
      const HeadTask& t = tasks[work[w].task];
      const int64_t i = work[w].row;
      const ForwardSeq& s = batch[t.seq];
      const int64_t row = t.row0 + i;
      if (t.blocked) {
        const int64_t rn = std::min<int64_t>(64, static_cast<int64_t>(s.tokens.size()) - i);
        const auto L = static_cast<int64_t>(t.keys.size()) / D;
        cpu::attend_block(qkv + row * qkv_stride + t.head * group * D, qkv_stride, static_cast<int32_t>(group), rn,
                          s.start + i, t.keys.data(), t.values.data(), D, t.key_pos.empty() ? nullptr : t.key_pos.data(),
                          L, t.mask, t.blocks ? &*t.blocks : nullptr, D, scale, out + row * q_dim + t.head * group * D,
                          q_dim);
        return;
      }
      const int64_t pos = s.start + i;
      const cpu::AttentionMask mask =
          t.blocks ? cpu::AttentionMask::blocks(t.blocks->row(pos / t.blocks->block_tokens), t.blocks->block_tokens) : t.mask;
      for (int64_t g = 0; g < group; ++g) {
        const int64_t qh = t.head * group + g;
        cpu::attend_spans(qkv + row * qkv_stride + qh * D, pos, t.spans, mask, D, scale, out + row * q_dim + qh * D,
                          scratch);
      }
    });
  }
  errors.rethrow();

  // 4. Streaming K/V enter the ring after the attention that still needed the old contents.
#pragma omp parallel for schedule(dynamic, 1)
  for (size_t ti = 0; ti < tasks.size(); ++ti) errors.run([&] {
    const HeadTask& t = tasks[ti];
    if (t.role != HeadRole::kStreaming) return;
    const ForwardSeq& s = batch[t.seq];
    write_streaming(layer, s, manager_.sequence(s.id), t.slot, t.head, qkv, qkv_stride, t.row0);
  });
  errors.rethrow();
  for (const HeadTask& t : tasks) {
    stats_.selected_tokens += t.selected_tokens;
    stats_.context_tokens += t.context_tokens;
    stats_.selections += t.selected_now ? 1 : 0;
  }
}

void PagedKvBackend::end_step(std::span<const ForwardSeq> batch) {
  for (const ForwardSeq& s : batch) {
    state(s.id).end_step(s);
  }
}

}  // namespace sparseserve
