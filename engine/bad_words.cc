#include "engine/bad_words.h"

#include <algorithm>
#include <cmath>

#include "common/errors.h"

namespace sparseserve {

std::vector<std::vector<int32_t>> bad_words_token_ids(const Tokenizer& tok, std::span<const std::string> words) {
  std::vector<std::vector<int32_t>> out;
  for (size_t i = 0; i < words.size(); ++i) {
    const std::string& w = words[i];
    const size_t first = w.find_first_not_of(" \t\n\r\f\v");
    if (first == std::string::npos) {
      throw InvalidArgument("bad_words[" + std::to_string(i) + "] is empty (or only whitespace)");
    }
    const std::string word = w.substr(first);
    // Special tokens written in a word are parsed, as vLLM's tokenizer.encode does: "<|im_end|>" bans
    // the end of turn.
    std::vector<int32_t> plain = tok.encode(word, /*add_special=*/false, /*parse_special=*/true);
    if (plain.empty()) {
      throw InvalidArgument("bad_words[" + std::to_string(i) + "] has no token in this model's vocabulary");
    }
    std::vector<int32_t> spaced = tok.encode(" " + word, false, true);
    const bool mid_text_differs = spaced.size() == plain.size() && spaced.front() != plain.front();
    out.push_back(std::move(plain));
    if (mid_text_differs) out.push_back(std::move(spaced));
  }
  return out;
}

void ban_bad_words(std::span<const std::vector<int32_t>> banned, std::span<const int32_t> generated,
                   std::span<float> logits) {
  for (const std::vector<int32_t>& seq : banned) {
    const size_t prefix = seq.size() - 1;
    if (prefix > generated.size()) continue;
    if (std::equal(seq.begin(), seq.end() - 1, generated.end() - static_cast<std::ptrdiff_t>(prefix))) {
      logits[static_cast<size_t>(seq.back())] = -INFINITY;
    }
  }
}

}  // namespace sparseserve
