// Each token's bytes, for constrained decoding (engine/json_constraint.h, engine/choice_constraint.h):
// what the detokenizer emits for the id (a byte-level token may hold part of a UTF-8 character),
// for ids 0 .. vocab_size − 1. Special tokens (control and added) and ids that decode to nothing
// are never text: their bytes are empty.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "engine/tokenizer.h"

namespace sparseserve {

class VocabularyBytes {
 public:
  VocabularyBytes(const Tokenizer& tok, int32_t vocab_size);
  int32_t size() const { return static_cast<int32_t>(offsets_.size()) - 1; }
  // Empty for an id that is never text.
  std::string_view text(int32_t id) const {
    return std::string_view(bytes_).substr(offsets_[id], offsets_[id + 1] - offsets_[id]);
  }
  // id's bytes are non-empty printable ASCII without '"' and '\\': text that stays inside a JSON
  // string as it is (most of a vocabulary; constrained decoding takes them there without trying).
  bool plain(int32_t id) const { return plain_[static_cast<size_t>(id)] != 0; }

 private:
  std::string bytes_;              // every text id's bytes, in id order
  std::vector<uint32_t> offsets_;  // id's bytes: [offsets_[id], offsets_[id + 1])
  std::vector<uint8_t> plain_;     // per id
};

}  // namespace sparseserve
