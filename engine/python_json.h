// JSON text written again as Python's json.dumps writes it, the way transformers' `tojson` filter
// writes a chat template's values (and so vLLM's prompts): what the model saw in training.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace sparseserve {

// `text` (JSON) as json.dumps(json.loads(text), ensure_ascii=False, indent=...) writes it: indent < 0,
// ", " and ": " between items on one line; indent ≥ 0, one item a line, `indent` spaces a level, ","
// and ": ". Keys keep the text's order, a repeated key its first place and last value (a Python
// dict); UTF-8 is kept, escapes as json.dumps needs them; integers keep their digits whatever their
// size (Python's int), other numbers are written as Python's float repr. One pass over the text
// that builds no value tree; an item's text is copied once per container around it. nullopt when
// the text is not JSON or nests deeper than kMaxJsonDepth (engine/json_file.h).
std::optional<std::string> python_dumps(std::string_view text, int indent = -1);

}  // namespace sparseserve
