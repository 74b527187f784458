#include "engine/hf_tokenizer_config.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "common/errors.h"

namespace sparseserve {

std::optional<std::string> read_hf_chat_template(const std::string& dir) {
  const std::filesystem::path base(dir);
  if (std::ifstream jinja(base / "chat_template.jinja"); jinja) {
    std::stringstream ss;
    ss << jinja.rdbuf();
    return ss.str();
  }
  const std::filesystem::path p = base / "tokenizer_config.json";
  std::ifstream in(p);
  if (!in) return std::nullopt;
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw ModelFileError(p.string(), std::string("invalid JSON: ") + e.what());
  }
  const auto it = j.find("chat_template");
  if (it == j.end() || !it->is_string()) return std::nullopt;
  return it->get<std::string>();
}

}  // namespace sparseserve
