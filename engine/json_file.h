// Reads the JSON files of a model folder (config.json, tokenizer.json, tokenizer_config.json, a
// safetensors index) through read_config_file: only a regular file is read (a folder, FIFO or device
// gets a clear error instead of a hang), at most max_bytes of it. Errors are ModelFileError naming
// the file: "cannot open: <reason>", "a folder, not a file", "larger than N KiB, ...", "not valid
// JSON: <parser message>".
#pragma once

#include <cstddef>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

namespace sparseserve {

// Caps by kind of file: config.json and generation_config.json are kilobytes; a tokenizer.json
// holds the whole vocabulary and merges (SmolLM2 2 MB, Llama-3 9 MB, Gemma 17 MB); listings, a
// tokenizer_config.json with every added token or a safetensors index naming every tensor, stay
// within a few MB.
inline constexpr size_t kJsonConfigMaxBytes = size_t{1} << 20;
inline constexpr size_t kJsonTokenizerMaxBytes = size_t{256} << 20;
inline constexpr size_t kJsonListingMaxBytes = size_t{64} << 20;

nlohmann::json read_json_file(const std::string& path, size_t max_bytes);

// A value for an error message, bounded: a scalar as JSON (at most 80 characters), an array or
// object by its size only. Never recursive: nlohmann's dump() recurses once per nesting level, and a
// 100,000-deep value (200 KB) overflows the stack.
std::string json_excerpt(const nlohmann::json& v);

// Values nest at most this deep where text from outside is parsed and then copied or written
// (recursively, once per level): the HTTP body's limit.
inline constexpr int kMaxJsonDepth = 256;

// `text` parsed, or a discarded value (is_discarded()) when it is not JSON (then *error, when given,
// is the parser's message) or nests deeper than max_depth (then *too_deep is set). Never throws but
// for memory. Json: nlohmann::json (objects' keys sorted) or nlohmann::ordered_json (kept in the
// text's order, for values written back out). A key given twice keeps its last value (and, ordered,
// its first place), as Json::parse does.
// Time is linear in the text's length for both: nlohmann's own parse with a callback (its way to bound
// depth) rescans an object's members each time one of them that is an object ends, and
// ordered_json's parse looks each key up among the object's earlier ones: an object of n objects or
// n keys costs n²/2 (60,000 of them in 800 KB: seconds).
template <class Json = nlohmann::json>
Json parse_json_bounded(std::string_view text, int max_depth = kMaxJsonDepth, bool* too_deep_out = nullptr,
                        std::string* error_out = nullptr);

extern template nlohmann::json parse_json_bounded<nlohmann::json>(std::string_view, int, bool*, std::string*);
extern template nlohmann::ordered_json parse_json_bounded<nlohmann::ordered_json>(std::string_view, int, bool*,
                                                                                  std::string*);

}  // namespace sparseserve
