// vLLM's bad_words: words the output must not contain, as token sequences. A word is banned as the
// tokenizer writes it at the start of a text and, where that differs, after a space (mid-text):
// for a word w (leading whitespace stripped), the ids of w, and the ids of " " + w when they are as
// many and begin with another token. In decoding, the last token of a banned sequence gets −∞ for
// sampling whenever the tokens generated just before it are the rest of the sequence (a one-token
// word is never sampled).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "engine/tokenizer.h"

namespace sparseserve {

// The banned sequences of `words`, in order (each non-empty). Throws InvalidArgument naming the
// entry for a word that is empty once its leading whitespace is stripped.
std::vector<std::vector<int32_t>> bad_words_token_ids(const Tokenizer& tok, std::span<const std::string> words);

// Sets logits[last] = −∞ for every sequence whose other tokens end `generated`.
void ban_bad_words(std::span<const std::vector<int32_t>> banned, std::span<const int32_t> generated,
                   std::span<float> logits);

}  // namespace sparseserve
