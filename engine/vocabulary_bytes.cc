#include "engine/vocabulary_bytes.h"

#include <algorithm>
#include <span>

namespace sparseserve {

VocabularyBytes::VocabularyBytes(const Tokenizer& tok, int32_t vocab_size) {
  offsets_.reserve(static_cast<size_t>(vocab_size) + 1);
  offsets_.push_back(0);
  for (int32_t id = 0; id < vocab_size; ++id) {
    if (!tok.is_special(id)) bytes_ += tok.decode(std::span<const int32_t>(&id, 1), /*skip_special=*/false);
    offsets_.push_back(static_cast<uint32_t>(bytes_.size()));
    const std::string_view t = text(id);
    plain_.push_back(!t.empty() && std::all_of(t.begin(), t.end(), [](char c) {
                       return c >= 0x20 && c < 0x7f && c != '"' && c != '\\';
                     }));
  }
}

}  // namespace sparseserve
