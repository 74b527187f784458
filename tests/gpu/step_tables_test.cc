// engine/cuda/step_tables (the host half of a GPU step) against the layouts its header and the
// kernels' key lists define, on a small model of 3 layers × 2 KV heads: a dense lane lists every
// block of its context in order; a streaming lane its sink blocks, then its ring's blocks oldest
// first, and its new key's ring page; a selecting lane whose selection is due is a fresh row after
// the layer's host-listed ones with its entries reserved; a prefill chunk is one prefill row per lane;
// the logits rows put the host's first, then the drawn ones; offsets stay put from one decode step
// to the next. Plain host code: runs without a device (suite *Checks, labelled unit).
#include "engine/cuda/step_tables.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cstdio>
#include <numeric>
#include <tuple>

#include "engine/cuda/cuda_step_runner.h"
#include "engine/forward_step.h"
#include "kernels/cuda/page_select_plan.h"
#include "selecting_profile.h"

namespace sparseserve {
namespace {

namespace cuda = kernels::cuda;

constexpr int32_t P = 16;

ModelConfig small_config() {
  ModelConfig c;
  c.n_layers = 3, c.n_kv_heads = 2, c.n_heads = 4, c.head_dim = 64, c.hidden = 256;
  c.intermediate = 512, c.vocab_size = 300, c.max_context = 4096;
  return c;
}

// A step's tables with its lists expanded as the device does (the CPU twin of expand_key_runs).
struct Step : StepTables {
  std::vector<int32_t> expanded;  // the ListSpace's contents
};

struct Fixture {
  ModelConfig c = small_config();
  kvcache::KvCacheManager manager{kvcache::KvCacheConfig{.page_tokens = P, .logical_page_tokens = P}, 512};
  BlockStore store{3 * 2, 4096 / P};
  std::vector<int32_t> device_store;  // what the device's store holds: BlockStore::pending's pairs applied
  kvcache::SparsityProfile dense = kvcache::SparsityProfile::dense(3, 2);
  kvcache::SparsityProfile select = selecting_profile(3, 2);
  std::unordered_map<uint64_t, SequenceAttention> seqs;
  std::vector<std::vector<int32_t>> tokens = std::vector<std::vector<int32_t>>(4);

  // Sequence `id` with `stored` tokens already in its pages (a prefill step that the attention state
  // has seen), pages allocated for `stored + extra`.
  void add(uint64_t id, const kvcache::SparsityProfile& profile, int64_t stored, int64_t extra) {
    manager.add_sequence(id, kvcache::SequenceLayout::from_roles(profile.roles, profile.streaming));
    manager.allocate(id, stored + extra);
    seqs.emplace(id, SequenceAttention(profile, c.n_layers, c.n_kv_heads));
    store.bind(id);
    auto& t = tokens[id];
    for (int64_t i = 0; i < stored + extra; ++i) t.push_back(static_cast<int32_t>((id * 37 + i * 11) % 300));
    if (stored > 0) seqs.at(id).end_step(ForwardSeq{id, 0, std::span(t).first(static_cast<size_t>(stored)), false, stored});
  }
  ForwardSeq step(uint64_t id, int64_t start, int64_t n, int64_t prompt_len) const {
    return ForwardSeq{id, start, std::span(tokens[id]).subspan(static_cast<size_t>(start), static_cast<size_t>(n)),
                      false, prompt_len};
  }
  Step build(std::span<const ForwardSeq> batch, std::span<const DeviceDraw> draws = {}) {
    Step t;
    build_into(t, batch, draws);
    return t;
  }
  // Into tables that may hold an earlier step's (CudaForward reuses one StepTables).
  void build_into(Step& t, std::span<const ForwardSeq> batch, std::span<const DeviceDraw> draws = {}) {
    std::vector<int32_t> pairs;
    for (const ForwardSeq& s : batch) store.pending(s.id, manager.sequence(s.id), pairs);
    for (const ForwardSeq& s : batch) store.stored(s.id, manager.sequence(s.id));
    device_store.resize(static_cast<size_t>(store.size()), -7);
    kernels::cpu::scatter_pairs(pairs, device_store);
    const StepRows sr = check_step(c, batch);
    build_step_tables(c, manager, store, seqs, batch, draws, sr.rows, sr.logit_rows, false, t);
    t.expanded.assign(t.lists.size, -9);  // entries no run writes stay -9 (page_select's)
    const auto* runs = reinterpret_cast<const kernels::cpu::KeyRun*>(t.blob.data.data() + t.runs);
    kernels::cpu::expand_key_runs(std::span(runs, static_cast<size_t>(t.n_runs)), device_store, t.blob.data, P,
                                  t.expanded);
  }
};

// The list entries (page, pos0, len) of row `row` of a kernel's key lists, read back from the blob.
struct Entry {
  int32_t page, pos0, len;
  bool operator==(const Entry&) const = default;
};
std::vector<Entry> entries(const Step& t, const KeyLists& k, size_t row) {
  const int32_t* d = t.blob.data.data();
  const int32_t* x = t.expanded.data();
  std::vector<Entry> out;
  for (int32_t e = d[k.ip + row]; e < d[k.ip + row + 1]; ++e) {
    out.push_back({x[k.pg + static_cast<size_t>(e)], x[k.p0 + static_cast<size_t>(e)], x[k.ln + static_cast<size_t>(e)]});
  }
  return out;
}

TEST(StepTablesChecks, DenseDecodeRowsListEveryBlockInOrder) {
  Fixture f;
  f.add(1, f.dense, 40, 1);
  const ForwardSeq s = f.step(1, 40, 1, 40);
  const Step t = f.build(std::span(&s, 1));
  const int32_t* d = t.blob.data.data();
  EXPECT_EQ(d[t.ids], f.tokens[1][40]);
  EXPECT_EQ(d[t.pos], 40);
  EXPECT_EQ(d[t.off], 40 % P);
  EXPECT_EQ(d[t.selr], 0);
  const kvcache::SequenceKv& kv = f.manager.sequence(1);
  for (int32_t l = 0; l < 3; ++l) {
    const LayerPlan& lp = t.plans[static_cast<size_t>(l)];
    ASSERT_EQ(lp.decode_rows.size(), 2u);
    EXPECT_TRUE(lp.prefill_rows.empty());
    EXPECT_TRUE(lp.retrieval_before);
    EXPECT_FALSE(lp.streaming_before || lp.streaming_after) << "no streaming lanes: no tables for them";
    EXPECT_TRUE(lp.sel_owner.empty());
    for (int32_t hd = 0; hd < 2; ++hd) {
      const auto& pages = kv.retrieval_pages(f.dense.roles.slot(l, hd));
      EXPECT_EQ(d[lp.app_r + static_cast<size_t>(hd)], pages[2]) << "the new key's page: block 40 / 16";
      const cuda::DecodeRow& row = lp.decode_rows[static_cast<size_t>(hd)];
      EXPECT_EQ(row.q_row, 0);
      EXPECT_EQ(row.kv_head, hd);
      EXPECT_EQ(row.q_pos, 40);
      EXPECT_EQ(row.mask, cuda::MaskKind::kCausal);
      EXPECT_TRUE(row.pages_plan_time);
      EXPECT_EQ(entries(t, lp.decode_keys, static_cast<size_t>(hd)),
                (std::vector<Entry>{{pages[0], 0, 16}, {pages[1], 16, 16}, {pages[2], 32, 9}}));
      EXPECT_EQ(lp.decode_entries[static_cast<size_t>(hd)], 3);
    }
  }
  EXPECT_EQ(t.context_tokens, 3 * 2 * 41);
  EXPECT_EQ(t.selected_tokens, 3 * 2 * 41);
  EXPECT_EQ(t.picked_total, 0);
}

TEST(StepTablesChecks, StreamingLanesReadSinkThenRingAndSelectionsDueAreFreshRows) {
  Fixture f;
  f.add(2, f.select, 100, 1);
  const ForwardSeq s = f.step(2, 100, 1, 100);
  const Step t = f.build(std::span(&s, 1));
  const int32_t* d = t.blob.data.data();
  const kvcache::SequenceKv& kv = f.manager.sequence(2);
  const kvcache::StreamingGeometry& g = *kv.streaming_geometry();
  const int64_t qkv_w = (4 + 2 * 2) * 64;
  const int32_t fresh_count = cuda::selected_page_count(101, {P, P, 16, 64});
  int64_t picked = 0;
  for (int32_t l = 0; l < 3; ++l) {
    const LayerPlan& lp = t.plans[static_cast<size_t>(l)];
    // Head 1 streams: its new key goes into the ring before the attention; it reads the sink block,
    // then ring blocks 3..6 (ring of ceil(40/16) + 1 = 4 pages), the last one 5 tokens long.
    const auto& ring = kv.streaming_pages(f.select.roles.slot(l, 1));
    EXPECT_TRUE(lp.retrieval_before && lp.streaming_before);
    EXPECT_FALSE(lp.streaming_after);
    EXPECT_EQ(d[lp.app_sb + 1], ring[static_cast<size_t>(g.locate(100).index)]);
    EXPECT_EQ(d[lp.app_sb], -1) << "head 0 retrieves";
    EXPECT_EQ(d[lp.app_r + 1], -1) << "head 1 streams";
    // Rows in head order, except that fresh rows come after the host-listed ones: in layer 0 the
    // dense head 0, then head 1; in layers 1 and 2 head 1, then head 0's fresh row.
    ASSERT_EQ(lp.decode_rows.size(), 2u);
    const size_t band_row = l == 0 ? 1 : 0;
    const cuda::DecodeRow& band = lp.decode_rows[band_row];
    EXPECT_EQ(band.kv_head, 1);
    EXPECT_EQ(band.mask, cuda::MaskKind::kBand);
    EXPECT_EQ(band.sink, 16);
    EXPECT_EQ(band.local, 40);
    std::vector<Entry> want{{ring[0], 0, 16}};
    for (int32_t b = 3; b <= 6; ++b) {
      want.push_back({ring[static_cast<size_t>(g.locate(int64_t{b} * P).index)], b * P, b == 6 ? 5 : 16});
    }
    EXPECT_EQ(entries(t, lp.decode_keys, band_row), want) << "layer " << l;
    // Head 0 retrieves: layer 0 is dense (every block); in layers 1 and 2 the context (101) is past
    // the budget and no selection exists yet: a fresh row, after the host-listed one, its entries
    // reserved for page_select, which reads all 7 blocks of the lane.
    const auto& pages = kv.retrieval_pages(f.select.roles.slot(l, 0));
    EXPECT_EQ(d[lp.app_r], pages[6]);
    if (l == 0) {
      EXPECT_TRUE(lp.sel_owner.empty());
      EXPECT_EQ(entries(t, lp.decode_keys, 0).size(), 7u);
      continue;
    }
    EXPECT_EQ(lp.fresh_from, 1u);
    EXPECT_FALSE(lp.decode_rows[1].pages_plan_time);
    EXPECT_EQ(lp.decode_entries[1], fresh_count);
    EXPECT_EQ(d[lp.decode_keys.ip + 2] - d[lp.decode_keys.ip + 1], fresh_count);
    ASSERT_EQ(lp.sel_owner.size(), 1u);
    EXPECT_EQ(lp.sel_owner[0], (std::pair<uint64_t, int32_t>{2, 0}));
    EXPECT_EQ(std::vector<int32_t>(pages.begin(), pages.begin() + 7),
              std::vector<int32_t>(t.expanded.begin() + static_cast<std::ptrdiff_t>(lp.s_pg),
                                   t.expanded.begin() + static_cast<std::ptrdiff_t>(lp.s_pg) + 7));
    EXPECT_EQ(lp.sel_indptr, (std::vector<int32_t>{0, 7}));
    EXPECT_EQ(lp.sel_lens, std::vector<int32_t>{101});
    EXPECT_EQ(lp.sel_out_indptr, (std::vector<int32_t>{0, fresh_count}));
    EXPECT_EQ(t.step_q[lp.q_at], 0 * qkv_w + 0);  // row 0, head group 0
    EXPECT_EQ(static_cast<int64_t>(lp.picked_at), picked);
    picked += fresh_count;
  }
  EXPECT_EQ(t.picked_total, picked);
  EXPECT_GE(t.max_blocks, 7);
}

TEST(StepTablesChecks, PrefillChunksAreOneRowPerLaneAndStreamingLanesWriteAfter) {
  Fixture f;
  f.add(2, f.select, 0, 30);
  const ForwardSeq s = f.step(2, 0, 30, 30);
  const Step t = f.build(std::span(&s, 1));
  const int32_t* d = t.blob.data.data();
  const kvcache::SequenceKv& kv = f.manager.sequence(2);
  for (int32_t l = 0; l < 3; ++l) {
    const LayerPlan& lp = t.plans[static_cast<size_t>(l)];
    EXPECT_TRUE(lp.decode_rows.empty());
    EXPECT_TRUE(lp.retrieval_before && lp.streaming_after);
    EXPECT_FALSE(lp.streaming_before);
    ASSERT_EQ(lp.prefill_rows.size(), 2u);
    const cuda::PrefillRow& r = lp.prefill_rows[0];
    EXPECT_EQ(r.n_tokens, 30);
    EXPECT_EQ(r.q_pos0, 0);
    EXPECT_EQ(r.mask, cuda::MaskKind::kCausal);
    const auto& pages = kv.retrieval_pages(f.select.roles.slot(l, 0));
    EXPECT_EQ(entries(t, lp.prefill_keys, 0), (std::vector<Entry>{{pages[0], 0, 16}, {pages[1], 16, 14}}));
    const cuda::PrefillRow& band = lp.prefill_rows[1];
    EXPECT_EQ(band.mask, cuda::MaskKind::kBand);
    EXPECT_EQ(band.new_kv, 1);
    EXPECT_TRUE(entries(t, lp.prefill_keys, 1).empty()) << "nothing stored before the chunk";
    const auto& ring = kv.streaming_pages(f.select.roles.slot(l, 1));
    for (int32_t i = 0; i < 30; ++i) {
      EXPECT_EQ(d[lp.app_r + static_cast<size_t>(i)], pages[static_cast<size_t>(i / P)]);
      EXPECT_EQ(d[lp.app_r + static_cast<size_t>(30 + i)], -1) << "head 1 streams";
      EXPECT_EQ(d[lp.app_s + static_cast<size_t>(i)], -1) << "head 0 retrieves";
      EXPECT_EQ(d[lp.app_s + static_cast<size_t>(30 + i)],
                ring[static_cast<size_t>(kv.streaming_geometry()->locate(i).index)]);
    }
  }
  EXPECT_EQ(d[t.selr], 29) << "the chunk's last row needs logits";
}

// Dynamic prefill sparsity: a prompt chunk's retrieval rows become kBlocks rows with a mass row each
// (its list row, block size, stride, threshold); streaming rows, a one-token row and a prompt below
// min_prompt_tokens do not.
TEST(StepTablesChecks, DynamicPrefillChunksGetAMassRowPerRetrievalLane) {
  Fixture f;
  kvcache::SparsityProfile dynamic = f.select;
  dynamic.decode.enabled = false;
  dynamic.prefill = {.dynamic = true, .block_tokens = 32, .stride = 8, .threshold = 0.75f, .min_prompt_tokens = 50};
  f.add(1, dynamic, 32, 40);  // prompt 72: the chunk 32..71 is dynamic
  f.add(2, dynamic, 0, 30);   // prompt 30: under min_prompt_tokens
  f.add(3, dynamic, 80, 1);   // a decode step
  const ForwardSeq batch[] = {f.step(1, 32, 40, 72), f.step(2, 0, 30, 30), f.step(3, 80, 1, 80)};
  const Step t = f.build(batch);
  for (int32_t l = 0; l < 3; ++l) {
    const LayerPlan& lp = t.plans[static_cast<size_t>(l)];
    ASSERT_EQ(lp.prefill_rows.size(), 4u);  // two lanes each of sequences 1 and 2
    ASSERT_EQ(lp.mass_rows.size(), 1u);     // sequence 1's retrieval lane
    const cuda::BlockMassRow& m = lp.mass_rows[0];
    const cuda::PrefillRow& r = lp.prefill_rows[static_cast<size_t>(m.list_row)];
    EXPECT_EQ(m.list_row, 0);
    EXPECT_EQ(r.mask, cuda::MaskKind::kBlocks);
    EXPECT_EQ(r.block_tokens, 32);
    EXPECT_EQ((std::tuple{m.q_row0, m.n_tokens, m.q_pos0, m.kv_head}), (std::tuple{r.q_row0, r.n_tokens, r.q_pos0, 0}));
    EXPECT_EQ((std::tuple{m.block_tokens, m.stride, m.threshold}), (std::tuple{32, 8, 0.75f}));
    const auto& pages = f.manager.sequence(1).retrieval_pages(dynamic.roles.slot(l, 0));
    const std::vector<Entry> keys = entries(t, lp.prefill_keys, static_cast<size_t>(m.list_row));
    ASSERT_EQ(keys.size(), 5u) << "every block of the lane, the chunk's own included";
    for (size_t b = 0; b < 5; ++b) {
      const auto pos0 = static_cast<int32_t>(16 * b);
      EXPECT_EQ(keys[b], (Entry{pages[b], pos0, std::min(16, 72 - pos0)}));
    }
    EXPECT_EQ(lp.prefill_rows[1].mask, cuda::MaskKind::kBand);
    EXPECT_EQ(lp.prefill_rows[2].mask, cuda::MaskKind::kCausal) << "a prompt under min_prompt_tokens runs dense";
  }
}

// A prompt's last token alone in its chunk (the step budget or a recompute cut it there) is masked as
// inside a whole-prompt chunk: its retrieval lane a kBlocks prefill row with a mass row, not a dense
// decode row; its streaming lane stays a decode row.
TEST(StepTablesChecks, AOneTokenDynamicPromptChunkIsABlockMaskedPrefillRow) {
  Fixture f;
  kvcache::SparsityProfile dynamic = f.select;
  dynamic.decode.enabled = false;
  dynamic.prefill = {.dynamic = true, .block_tokens = 32, .stride = 8, .threshold = 0.75f, .min_prompt_tokens = 50};
  f.add(1, dynamic, 64, 1);  // prompt 65: the chunk 64..64
  const ForwardSeq batch[] = {f.step(1, 64, 1, 65)};
  const Step t = f.build(batch);
  for (int32_t l = 0; l < 3; ++l) {
    const LayerPlan& lp = t.plans[static_cast<size_t>(l)];
    ASSERT_EQ(lp.prefill_rows.size(), 1u);
    ASSERT_EQ(lp.mass_rows.size(), 1u);
    const cuda::PrefillRow& r = lp.prefill_rows[0];
    EXPECT_EQ(r.mask, cuda::MaskKind::kBlocks);
    EXPECT_EQ((std::tuple{r.n_tokens, r.q_pos0, r.kv_head}), (std::tuple{1, 64, 0}));
    EXPECT_EQ((std::tuple{lp.mass_rows[0].list_row, lp.mass_rows[0].n_tokens}), (std::tuple{0, 1}));
    EXPECT_EQ(entries(t, lp.prefill_keys, 0).size(), 5u) << "every block of the lane, the chunk's own included";
    ASSERT_EQ(lp.decode_rows.size(), 1u) << "the streaming lane: the decode kernel";
    EXPECT_EQ(lp.decode_rows[0].mask, cuda::MaskKind::kBand);
  }
}

// 700 rows × 3 layers × 2 KV heads: the layers are built in parallel (OpenMP); each still lists
// exactly its own lanes.
TEST(StepTablesChecks, LargeStepsBuiltInParallelListEveryLane) {
  Fixture f;
  f.add(1, f.dense, 0, 700);
  f.add(3, f.dense, 20, 1);
  const ForwardSeq batch[] = {f.step(1, 0, 700, 700), f.step(3, 20, 1, 20)};
  const Step t = f.build(batch);
  const int32_t* d = t.blob.data.data();
  const int64_t rows = 701;
  for (int32_t l = 0; l < 3; ++l) {
    const LayerPlan& lp = t.plans[static_cast<size_t>(l)];
    ASSERT_EQ(lp.prefill_rows.size(), 2u);
    ASSERT_EQ(lp.decode_rows.size(), 2u);
    for (int32_t hd = 0; hd < 2; ++hd) {
      const auto& pages = f.manager.sequence(1).retrieval_pages(f.dense.roles.slot(l, hd));
      const std::vector<Entry> got = entries(t, lp.prefill_keys, static_cast<size_t>(hd));
      ASSERT_EQ(got.size(), 44u);  // ceil(700 / 16)
      for (int32_t b = 0; b < 44; ++b) {
        EXPECT_EQ(got[static_cast<size_t>(b)], (Entry{pages[static_cast<size_t>(b)], b * P, b == 43 ? 12 : 16}));
      }
      for (int64_t i = 0; i < 700; ++i) {
        ASSERT_EQ(d[lp.app_r + static_cast<size_t>(hd * rows + i)], pages[static_cast<size_t>(i / P)]);
      }
      const auto& other = f.manager.sequence(3).retrieval_pages(f.dense.roles.slot(l, hd));
      EXPECT_EQ(d[lp.app_r + static_cast<size_t>(hd * rows + 700)], other[1]);
      EXPECT_EQ(entries(t, lp.decode_keys, static_cast<size_t>(hd)).size(), 2u);
    }
    EXPECT_FALSE(lp.streaming_before || lp.streaming_after);
  }
  // Only retrieval lanes: one append table per layer. Three (one per kind of lane) would take
  // 3 · L · KV · rows entries alone.
  EXPECT_LT(t.blob.data.size(), static_cast<size_t>(3 * 3 * 2 * rows));
}

// The device memory a decode step's tables take (the uploaded blob, the lists, page_select's
// scores, picks, query offsets and row counters) stays within what cuda_list_bytes sets aside for
// the pages the step's sequences hold: dense, streaming and freshly selecting lanes over most of
// the cache.
TEST(StepTablesChecks, ADecodeStepsTablesFitTheListBytesOfItsPages) {
  Fixture f;
  f.add(1, f.dense, 600, 1);
  f.add(2, f.select, 600, 1);
  f.add(3, f.select, 300, 1);
  const ForwardSeq batch[] = {f.step(1, 600, 1, 600), f.step(2, 600, 1, 600), f.step(3, 300, 1, 300)};
  const Step t = f.build(batch);
  size_t scores = 0, row_ready = 0;
  for (const LayerPlan& lp : t.plans) {
    scores = std::max(scores, static_cast<size_t>(lp.sel_indptr.back()));
    row_ready = std::max(row_ready, lp.sel_owner.size());
  }
  ASSERT_GT(scores, 0u) << "selections due";
  const size_t bytes = 4 * (t.blob.data.size() + t.lists.size + static_cast<size_t>(t.picked_total) + scores + row_ready) +
                       8 * t.step_q.size();
  const int32_t used = f.manager.num_pages() - f.manager.free_pages();
  EXPECT_GT(used, 400);
  const size_t page_bytes = size_t{P} * static_cast<size_t>(f.c.head_dim) * 2 * 2;  // K and V, bf16
  const size_t bound = cuda_list_bytes(f.c, static_cast<size_t>(used) * page_bytes);
  EXPECT_LE(bytes, bound);
  std::printf("%d pages: the step's tables take %zu bytes, %.1f a page (bound %zu)\n", used, bytes,
              static_cast<double>(bytes) / used, bound);
}

TEST(StepTablesChecks, HostRowsThenDrawnRowsAndOffsetsThatStayPut) {
  Fixture f;
  f.add(1, f.dense, 40, 2);
  f.add(3, f.dense, 70, 2);
  const ForwardSeq first[] = {f.step(1, 40, 1, 40), f.step(3, 70, 1, 70)};
  const DeviceDraw draw{.row = 0};
  const Step a = f.build(first, std::span(&draw, 1));
  const int32_t* d = a.blob.data.data();
  EXPECT_EQ(d[a.selr], 1) << "sequence 3's row, read by the host";
  EXPECT_EQ(d[a.selr + 1], 0) << "sequence 1's row, drawn on the device";
  for (const ForwardSeq& s : first) f.seqs.at(s.id).end_step(s);
  const ForwardSeq second[] = {f.step(1, 41, 1, 40), f.step(3, 71, 1, 70)};
  const Step b = f.build(second, std::span(&draw, 1));
  // Lists grew (sequence 3 crosses into block 4) but stay within their rooms: every offset is the
  // same, so a CUDA graph of the first step replays the second.
  for (const auto& [x, y] : {std::pair{a.ids, b.ids}, {a.pos, b.pos}, {a.off, b.off}, {a.selr, b.selr}}) {
    EXPECT_EQ(x, y);
  }
  for (size_t l = 0; l < 3; ++l) {
    const LayerPlan &la = a.plans[l], &lb = b.plans[l];
    EXPECT_EQ(std::vector<size_t>({la.app_r, la.app_sb, la.app_s}), std::vector<size_t>({lb.app_r, lb.app_sb, lb.app_s}));
  }
  for (size_t l = 0; l < 3; ++l) {
    const KeyLists &ka = a.plans[l].decode_keys, &kb = b.plans[l].decode_keys;
    EXPECT_EQ(std::vector<size_t>({ka.ip, ka.pg, ka.p0, ka.ln}), std::vector<size_t>({kb.ip, kb.pg, kb.p0, kb.ln}));
    EXPECT_EQ(entries(b, kb, 2).size(), 5u);  // sequence 3, head 0: 72 tokens
  }
  EXPECT_EQ(a.blob.data.size(), b.blob.data.size());
  EXPECT_EQ(a.lists.size, b.lists.size);
  EXPECT_EQ(a.runs, b.runs);
  EXPECT_EQ(a.n_runs, b.n_runs);
  // Built into the first step's tables, as CudaForward reuses them, the second step's come out the
  // same as built fresh; so do a prefill step's after them (other rows, lists and plans).
  Step reused = a;
  f.build_into(reused, second, std::span(&draw, 1));
  EXPECT_EQ(reused.blob.data, b.blob.data);
  EXPECT_EQ(reused.expanded, b.expanded);
  for (size_t l = 0; l < 3; ++l) {
    EXPECT_EQ(reused.plans[l].decode_rows, b.plans[l].decode_rows);
    EXPECT_EQ(reused.plans[l].decode_entries, b.plans[l].decode_entries);
  }
  for (const ForwardSeq& s : second) f.seqs.at(s.id).end_step(s);
  f.add(2, f.select, 0, 30);
  const ForwardSeq chunk = f.step(2, 0, 30, 30);
  const Step fresh = f.build(std::span(&chunk, 1));
  f.build_into(reused, std::span(&chunk, 1));
  EXPECT_EQ(reused.blob.data, fresh.blob.data);
  EXPECT_EQ(reused.expanded, fresh.expanded);
  EXPECT_EQ(reused.lists.size, fresh.lists.size);
  for (size_t l = 0; l < 3; ++l) {
    EXPECT_TRUE(reused.plans[l].decode_rows.empty());
    EXPECT_EQ(reused.plans[l].prefill_rows.size(), fresh.plans[l].prefill_rows.size());
    EXPECT_EQ(reused.plans[l].streaming_after, fresh.plans[l].streaming_after);
    EXPECT_EQ(reused.plans[l].sel_indptr, fresh.plans[l].sel_indptr);
  }
  for (const size_t n : {0, 1, 15, 16, 17, 100, 1024, 1025}) {
    EXPECT_TRUE(std::has_single_bit(table_room(n)));
    EXPECT_GE(table_room(n), std::max<size_t>(n, 16));
  }
}

// The block store's bookkeeping: regions handed out and reused, only new blocks sent (and counted
// once stored), and the broken invariants refused.
TEST(BlockStoreChecks, RegionsAreReusedAndOnlyNewBlocksAreSynced) {
  kvcache::KvCacheManager manager{kvcache::KvCacheConfig{.page_tokens = P, .logical_page_tokens = P}, 512};
  const kvcache::SparsityProfile dense = kvcache::SparsityProfile::dense(3, 2);
  const auto layout = kvcache::SequenceLayout::from_roles(dense.roles, dense.streaming);
  BlockStore store(6, 8);  // 6 lanes of 8 blocks: regions of 48
  EXPECT_THROW(BlockStore(0, 8), InvalidArgument);
  manager.add_sequence(1, layout);
  manager.add_sequence(2, layout);
  store.bind(1);
  store.bind(2);
  EXPECT_THROW(store.bind(1), InternalError);
  EXPECT_EQ(store.region(1), 0);
  EXPECT_EQ(store.region(2), 48);
  EXPECT_EQ(store.size(), 96);
  std::vector<int32_t> pairs;
  manager.allocate(2, 20);  // 2 blocks a lane
  store.pending(2, manager.sequence(2), pairs);
  ASSERT_EQ(pairs.size(), 6u * 2 * 2);
  std::vector<int32_t> again;  // nothing counted as stored until `stored`: the same pairs again
  store.pending(2, manager.sequence(2), again);
  EXPECT_EQ(again, pairs);
  store.stored(2, manager.sequence(2));
  std::vector<int32_t> device(96, -1);
  kernels::cpu::scatter_pairs(pairs, device);
  for (int32_t slot = 0; slot < 6; ++slot) {
    for (int32_t b = 0; b < 2; ++b) {
      EXPECT_EQ(device[static_cast<size_t>(48 + slot * 8 + b)], manager.sequence(2).retrieval_pages(slot)[static_cast<size_t>(b)]);
    }
  }
  pairs.clear();
  manager.allocate(2, 32);  // still 2 blocks: nothing new
  store.pending(2, manager.sequence(2), pairs);
  EXPECT_TRUE(pairs.empty());
  manager.allocate(2, 33);  // block 2 of every lane
  store.pending(2, manager.sequence(2), pairs);
  store.stored(2, manager.sequence(2));
  ASSERT_EQ(pairs.size(), 6u * 2);
  for (size_t i = 0; i < pairs.size(); i += 2) EXPECT_EQ((pairs[i] - 48) % 8, 2);
  // Unbound and bound again: the region is reused and the sequence starts from an empty region.
  store.unbind(1);
  store.unbind(1);  // no-op
  EXPECT_THROW(store.region(1), InternalError);
  store.bind(3);
  EXPECT_EQ(store.region(3), 0);
  EXPECT_EQ(store.size(), 96);
  store.unbind(2);
  store.bind(2);
  pairs.clear();
  store.pending(2, manager.sequence(2), pairs);
  store.stored(2, manager.sequence(2));
  EXPECT_EQ(pairs.size(), 6u * 3 * 2) << "every block again";
  // Too long for a lane, or shrunk while bound: refused.
  pairs.clear();
  manager.allocate(2, 9 * P);
  EXPECT_THROW(store.pending(2, manager.sequence(2), pairs), InternalError);
  EXPECT_THROW(store.stored(2, manager.sequence(2)), InternalError);
  manager.release(2);
  manager.add_sequence(2, layout);
  EXPECT_THROW(store.pending(2, manager.sequence(2), pairs), InternalError);
  EXPECT_THROW(store.stored(2, manager.sequence(2)), InternalError);
  EXPECT_THROW(store.pending(9, manager.sequence(2), pairs), InternalError);
  EXPECT_TRUE(pairs.empty());
}

// Dense lanes read their blocks from the store as it grows step by step; a sequence bound again after
// another took its region reads its own pages.
TEST(StepTablesChecks, DenseListsFollowTheStoreAcrossStepsAndRebinds) {
  Fixture f;
  f.add(1, f.dense, 31, 40);
  f.add(3, f.dense, 10, 5);
  for (int64_t pos = 31; pos < 36; ++pos) {  // sequence 1 crosses into block 2 at position 32
    const ForwardSeq batch[] = {f.step(1, pos, 1, 31), f.step(3, 10 + (pos - 31), 1, 10)};
    const Step t = f.build(batch);
    for (int32_t l = 0; l < 3; ++l) {
      for (int32_t hd = 0; hd < 2; ++hd) {
        const auto& pages = f.manager.sequence(1).retrieval_pages(f.dense.roles.slot(l, hd));
        std::vector<Entry> want;
        for (int64_t b = 0; b * P <= pos; ++b) {
          want.push_back({pages[static_cast<size_t>(b)], static_cast<int32_t>(b * P),
                          static_cast<int32_t>(std::min<int64_t>(P, pos + 1 - b * P))});
        }
        EXPECT_EQ(entries(t, t.plans[static_cast<size_t>(l)].decode_keys, static_cast<size_t>(hd)), want) << pos;
      }
    }
    for (const ForwardSeq& s : batch) f.seqs.at(s.id).end_step(s);
  }
  // Sequence 3 leaves; sequence 2 takes its region; its lists are its own pages.
  f.store.unbind(3);
  f.add(2, f.dense, 20, 1);
  EXPECT_EQ(f.store.region(2), f.store.blocks_per_lane() * 6);
  const ForwardSeq s = f.step(2, 20, 1, 20);
  const Step t = f.build(std::span(&s, 1));
  const auto& pages = f.manager.sequence(2).retrieval_pages(f.dense.roles.slot(2, 1));
  EXPECT_EQ(entries(t, t.plans[2].decode_keys, 1), (std::vector<Entry>{{pages[0], 0, 16}, {pages[1], 16, 5}}));
}

}  // namespace
}  // namespace sparseserve
