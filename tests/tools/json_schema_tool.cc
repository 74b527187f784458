// Runs texts through JsonText (JsonPrefix, anyOf alternatives side by side) under a schema, for tests/python/test_json_schema.py to compare
// with the jsonschema library. One JSON object per input line:
//   in:  {"schema": <a JSON Schema>, "texts": ["...", ...]}   (or "schema": null for JSON mode)
//   out: {"results": [[taken, complete], ...]}  or  {"error": "<why the schema is refused>"}
// taken: every byte of the text was accepted; complete: it is then one whole value.
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "common/errors.h"
#include "engine/json_prefix.h"
#include "engine/json_schema.h"
#include "engine/json_text.h"

int main() {
  using nlohmann::json;
  std::string line;
  while (std::getline(std::cin, line)) {
    const json in = json::parse(line);
    json out;
    try {
      std::optional<sparseserve::JsonSchema> schema;
      if (!in["schema"].is_null()) schema = sparseserve::JsonSchema::compile(in["schema"].dump());
      json results = json::array();
      for (const json& t : in["texts"]) {
        sparseserve::JsonText p(schema ? sparseserve::JsonPrefix(*schema, 1 << 30)
                                       : sparseserve::JsonPrefix(/*root_object=*/true, 1 << 30));
        // Byte by byte, as a decoder feeds it (a whole text in one push walks the same states).
        bool taken = true;
        for (const char c : t.get_ref<const std::string&>()) {
          if (!(taken = p.push(std::string_view(&c, 1)))) break;
        }
        results.push_back({taken, taken && p.complete()});
      }
      out["results"] = results;
    } catch (const sparseserve::InvalidArgument& e) {
      out["error"] = e.what();
    }
    std::cout << out.dump() << std::endl;
  }
  return 0;
}
