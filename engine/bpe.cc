#include "engine/bpe.h"

#include <queue>
#include <stdexcept>

#include "engine/utf8.h"

namespace sparseserve {

const std::array<uint32_t, 256>& byte_to_codepoint() {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    uint32_t next = 256;
    for (uint32_t b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      t[b] = printable ? b : next++;
    }
    return t;
  }();
  return table;
}

namespace {

// Code point (< 0x144) -> byte, or -1.
const std::array<int16_t, 0x144>& codepoint_to_byte() {
  static const std::array<int16_t, 0x144> table = [] {
    std::array<int16_t, 0x144> t{};
    t.fill(-1);
    const auto& fwd = byte_to_codepoint();
    for (int b = 0; b < 256; ++b) t[fwd[b]] = static_cast<int16_t>(b);
    return t;
  }();
  return table;
}

const std::array<std::string, 256>& byte_level_chars() {
  static const std::array<std::string, 256> table = [] {
    std::array<std::string, 256> t;
    for (int b = 0; b < 256; ++b) utf8::append(t[b], byte_to_codepoint()[b]);
    return t;
  }();
  return table;
}

}  // namespace

std::string bytes_to_byte_level(std::string_view bytes) {
  const auto& chars = byte_level_chars();
  std::string out;
  out.reserve(bytes.size() * 2);
  for (char c : bytes) out.append(chars[static_cast<unsigned char>(c)]);
  return out;
}

bool byte_level_to_bytes(std::string_view text, std::string& out) {
  const auto& inv = codepoint_to_byte();
  std::string bytes;
  bytes.reserve(text.size());
  size_t i = 0;
  while (i < text.size()) {
    const int n = utf8::classify(text.substr(i));
    if (n <= 0) return false;
    const uint32_t cp = utf8::decode(text.substr(i), n);
    if (cp >= inv.size() || inv[cp] < 0) return false;
    bytes.push_back(static_cast<char>(inv[cp]));
    i += static_cast<size_t>(n);
  }
  out.append(bytes);
  return true;
}

BpeModel::BpeModel(const std::vector<std::string>& tokens,
                   const std::vector<std::pair<std::string, std::string>>& merges,
                   bool ignore_merges, int32_t unk_id, RepeatedMerge repeated)
    : ignore_merges_(ignore_merges), unk_id_(unk_id) {
  vocab_.reserve(tokens.size());
  for (size_t id = 0; id < tokens.size(); ++id) {
    if (tokens[id].empty()) continue;  // a hole in the id space, never a token
    vocab_.insert_or_assign(tokens[id], static_cast<int32_t>(id));
  }
  const auto& chars = byte_level_chars();
  for (int b = 0; b < 256; ++b) byte_id_[b] = find(chars[b]);

  merges_.reserve(merges.size());
  std::string joined;
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const auto& [a, b] = merges[rank];
    const int32_t ia = find(a);
    const int32_t ib = find(b);
    joined.assign(a).append(b);
    const int32_t ir = find(joined);
    if (ia < 0 || ib < 0 || ir < 0) {
      throw std::invalid_argument("merge " + std::to_string(rank) + " ('" + a + "' '" + b +
                                  "') refers to a token that is not in the vocabulary");
    }
    const Merge m{static_cast<int32_t>(rank), ir};
    if (repeated == RepeatedMerge::kFirstRankWins) {
      merges_.try_emplace(pair_key(ia, ib), m);
    } else {
      merges_.insert_or_assign(pair_key(ia, ib), m);
    }
  }
}

int32_t BpeModel::find(std::string_view token) const {
  auto it = vocab_.find(token);
  return it == vocab_.end() ? -1 : it->second;
}

void BpeModel::encode_word(std::string_view word, std::vector<int32_t>& out) const {
  if (word.empty()) return;
  if (word.size() == 1) {
    const int32_t id = byte_id_[static_cast<unsigned char>(word[0])];
    if (id >= 0) {
      out.push_back(id);
    } else if (unk_id_ >= 0) {
      out.push_back(unk_id_);
    }
    return;
  }
  const bool cacheable = word.size() <= kCacheMaxWordBytes;
  if (cacheable) {
    std::lock_guard lock(cache_mu_);
    auto it = cache_.find(word);
    if (it != cache_.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int32_t> ids;
  if (ignore_merges_) {
    const int32_t whole = find(bytes_to_byte_level(word));
    if (whole >= 0) ids.push_back(whole);
  }
  if (ids.empty()) merge_word(word, ids);
  out.insert(out.end(), ids.begin(), ids.end());
  if (cacheable) {
    std::lock_guard lock(cache_mu_);
    if (cache_.size() >= kCacheCapacity) cache_.clear();
    cache_.try_emplace(std::string(word), std::move(ids));
  }
}

// How this works: one symbol per byte, linked as a list; a min-heap holds candidate merges of
// adjacent symbols ordered by (rank, position). The best candidate is applied unless stale (one
// of its symbols was merged away meanwhile), then the new symbol's pairs with its neighbours are
// pushed. This is HF tokenizers' order: lowest rank first, leftmost among equal ranks.
void BpeModel::merge_word(std::string_view word, std::vector<int32_t>& out) const {
  struct Symbol {
    int32_t id;
    int32_t prev;
    int32_t next;
    bool alive;
  };
  struct Candidate {
    int32_t rank;
    int32_t pos;
    int32_t result;
    bool operator>(const Candidate& o) const {
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  std::vector<Symbol> syms;
  syms.reserve(word.size());
  for (char c : word) {
    int32_t id = byte_id_[static_cast<unsigned char>(c)];
    if (id < 0) id = unk_id_;
    if (id < 0) continue;  // no token for this byte and no unk: dropped (HF behaviour)
    const auto n = static_cast<int32_t>(syms.size());
    syms.push_back({id, n - 1, n + 1, true});
  }
  if (syms.empty()) return;
  syms.back().next = -1;

  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> heap;
  auto push_pair = [&](int32_t left) {
    if (left < 0) return;
    const int32_t right = syms[left].next;
    if (right < 0) return;
    if (const Merge* m = find_merge(syms[left].id, syms[right].id)) {
      heap.push({m->rank, left, m->result});
    }
  };
  for (int32_t i = 0; i + 1 < static_cast<int32_t>(syms.size()); ++i) push_pair(i);

  while (!heap.empty()) {
    const Candidate top = heap.top();
    heap.pop();
    Symbol& left = syms[top.pos];
    if (!left.alive || left.next < 0) continue;
    Symbol& right = syms[left.next];
    const Merge* m = find_merge(left.id, right.id);
    if (m == nullptr || m->rank != top.rank || m->result != top.result) continue;  // stale
    left.id = top.result;
    right.alive = false;
    left.next = right.next;
    if (right.next >= 0) syms[right.next].prev = top.pos;
    if (left.prev >= 0) push_pair(left.prev);
    push_pair(top.pos);
  }
  for (int32_t i = 0; i >= 0; i = syms[i].next) out.push_back(syms[i].id);
}

}  // namespace sparseserve
