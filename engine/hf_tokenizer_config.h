// tokenizer_config.json of a Hugging Face directory: the chat template text.
#pragma once

#include <optional>
#include <string>

namespace sparseserve {

// The chat template of dir/chat_template.jinja, else of dir/tokenizer_config.json's "chat_template"
// (a string, or the entry named "default" of a list of named templates), when present.
// Throws ModelFileError when the file exists but cannot be read (a folder, a FIFO, no permission, a
// broken link, past the size caps of json_file.h) or is not valid JSON.
std::optional<std::string> read_hf_chat_template(const std::string& dir);

}  // namespace sparseserve
