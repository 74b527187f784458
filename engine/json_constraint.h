// Constrained decoding to one JSON object (OpenAI's JSON mode: response_format json_object): before
// each sampled token, every id whose bytes cannot continue the text so far gets −∞, and stop ids
// may end the text only once it is a whole object. The text is tracked by a JsonText (JsonPrefix's
// grammar and its two limits: nesting depth, whitespace runs; with a schema, each anyOf alternative
// the text may still follow) fed each sampled token's bytes.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "engine/json_text.h"
#include "engine/vocabulary_bytes.h"

namespace sparseserve {

// Sets logits[id] = −∞ for every id that may not come next after `text`:
//   - an id in `stops` stays when the text is complete and may_stop (else it is judged as text);
//   - once the root value has ended (text.done()) and a stop may come, nothing else stays: the
//     answer ends there rather than trail whitespace;
//   - a text id stays when `text` accepts its bytes, or when the text is complete, no stop may come
//     (min_tokens, or no stop ids) and the id is whitespace only: the whitespace limit then yields,
//     so a row never loses every id.
// Ids already at −∞ are not tried. logits.size() must be vocab.size().
void constrain_json(const JsonText& text, const VocabularyBytes& vocab, std::span<const int32_t> stops, bool may_stop,
                    std::span<float> logits);

// Feeds a sampled token's bytes to `text`. Whitespace after a complete text that the whitespace
// limit refuses leaves the text as it is (constrain_json let it through under min_tokens). False,
// with `text` unchanged, when the bytes cannot continue it (a token drawn from a row that had no
// id left, or a stop token that is also text).
bool advance_json(JsonText& text, std::string_view bytes);

}  // namespace sparseserve
