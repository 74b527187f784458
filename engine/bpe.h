// Byte-level BPE model: vocabulary, merge ranks and the GPT-2 byte <-> unicode mapping.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace sparseserve {

// GPT-2's reversible byte -> code point mapping: printable Latin-1 bytes map to themselves, the
// other 68 bytes to U+0100.. in byte order (so ' ' is 'Ġ' U+0120, '\n' is 'Ċ' U+010A).
const std::array<uint32_t, 256>& byte_to_codepoint();
// Maps raw bytes to their byte-level text (UTF-8 of the mapped code points).
std::string bytes_to_byte_level(std::string_view bytes);
// Inverse mapping. Returns false (out unchanged) when a character is outside the mapping.
bool byte_level_to_bytes(std::string_view text, std::string& out);

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using StringIdMap = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;

class BpeModel {
 public:
  // tokens[id]: the byte-level text of each id (duplicates: the last id wins, as in a JSON object;
  // empty texts are holes in the id space and never match).
  // merges: token-text pairs, highest priority first. ignore_merges: a word that is itself a
  // vocabulary entry becomes that token without merging (HF `ignore_merges`, Llama-3).
  // unk_id: token for a byte whose character is not in the vocabulary (-1: such bytes are dropped,
  // as HF BPE does without an unk token).
  // A pair listed twice keeps one rank: the first (llama.cpp, for GGUF files) or the last (HF
  // tokenizers, which collect the merges into a map, for tokenizer.json).
  // Throws std::invalid_argument naming a merge whose parts or result are not in the vocabulary.
  enum class RepeatedMerge { kFirstRankWins, kLastRankWins };
  BpeModel(const std::vector<std::string>& tokens,
           const std::vector<std::pair<std::string, std::string>>& merges, bool ignore_merges,
           int32_t unk_id, RepeatedMerge repeated = RepeatedMerge::kFirstRankWins);

  // Encodes one pre-tokenized piece of raw bytes; appends its ids to `out`. Thread-safe.
  void encode_word(std::string_view word, std::vector<int32_t>& out) const;
  // Id of a byte-level vocabulary entry, -1 when absent.
  int32_t find(std::string_view token) const;

 private:
  struct Merge {
    int32_t rank;
    int32_t result;
  };
  static uint64_t pair_key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }
  const Merge* find_merge(int32_t a, int32_t b) const {
    auto it = merges_.find(pair_key(a, b));
    return it == merges_.end() ? nullptr : &it->second;
  }
  void merge_word(std::string_view word, std::vector<int32_t>& out) const;

  StringIdMap vocab_;
  std::unordered_map<uint64_t, Merge> merges_;
  std::array<int32_t, 256> byte_id_{};  // id of each byte's single-character token, or -1
  bool ignore_merges_ = false;
  int32_t unk_id_ = -1;

  // Word cache: raw piece bytes -> ids. Bounded; cleared when full.
  static constexpr size_t kCacheCapacity = 1 << 16;
  static constexpr size_t kCacheMaxWordBytes = 256;
  mutable std::mutex cache_mu_;
  mutable std::unordered_map<std::string, std::vector<int32_t>, StringHash, std::equal_to<>> cache_;
};

}  // namespace sparseserve
