// A loaded model: config, weights bound to the mapped file(s), tokenizer and chat template.
// Loads a GGUF file or a Hugging Face directory (config.json + safetensors + tokenizer.json).
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <string>

#include "engine/chat_template.h"
#include "engine/model_config.h"
#include "engine/model_weights.h"
#include "engine/tokenizer.h"

namespace sparseserve {

struct Model {
  std::string path;
  std::string format;  // "gguf" | "hf"
  ModelConfig config;
  ModelWeights weights;
  Tokenizer tokenizer;
  std::optional<ChatTemplate> chat_template;  // absent when the model declares none we recognise
  std::map<std::string, int> tensor_types;    // type name -> number of tensors (for `info`)
  std::shared_ptr<const void> storage;        // keeps the mapped files alive
};

// Throws ModelFileError naming the file and the problem (missing tensor, wrong shape, bad metadata).
// chat_template_override: "auto" (detect from the model) or a family name ("chatml", "llama3").
std::unique_ptr<Model> load_model(const std::string& path, const std::string& chat_template_override = "auto");

}  // namespace sparseserve
