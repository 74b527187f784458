// Unicode NFC (canonical composition) of UTF-8 text, for tokenizer.json files whose normalizer is
// NFC (Qwen2 and Qwen2.5 declare it), through ICU: HF tokenizers normalizes before pre-tokenizing,
// with Unicode 9.0's tables, which to_nfc follows (code points assigned since are left alone).
#pragma once

#include <string>
#include <string_view>

namespace sparseserve {

// NFC of well-formed UTF-8 text (the caller splits off ill-formed bytes, which have no NFC). Text
// already in NFC, as nearly all text is, comes back unchanged at the cost of one check.
std::string to_nfc(std::string_view utf8);

}  // namespace sparseserve
