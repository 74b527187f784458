// A loaded model: config, weights bound to the mapped file(s), tokenizer and chat template.
// Loads a GGUF file or a Hugging Face directory (config.json + safetensors + tokenizer.json), or
// (load_format dummy) only their metadata, with made-up weights.
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <string>

#include "engine/chat_template.h"
#include "engine/model_config.h"
#include "engine/model_weights.h"
#include "engine/sampling_params.h"
#include "engine/tokenizer.h"

namespace sparseserve {

// Where the weights come from:
//   kAuto:  the model's file(s);
//   kDummy: made up (engine/dummy_weights.h: seeded, BF16) for the shapes of the model's config, as
//           vLLM's `load_format: dummy`. Only the metadata is read: a GGUF file's header (config,
//           tokenizer, chat template, rope_freqs) or a directory's config.json, tokenizer.json and
//           tokenizer_config.json; no safetensors are needed. For benchmarks of shapes whose
//           weights are not at hand; replies mean nothing.
enum class LoadFormat { kAuto, kDummy };

// "auto" | "dummy"; throws InvalidArgument naming the accepted values.
LoadFormat parse_load_format(const std::string& name);

struct Model {
  std::string path;
  std::string format;  // "gguf" | "hf"
  ModelConfig config;
  ModelWeights weights;
  Tokenizer tokenizer;
  std::optional<ChatTemplate> chat_template;  // absent when the model declares none we recognise
  std::map<std::string, int> tensor_types;    // type name -> number of tensors (for `info`)
  std::shared_ptr<const void> storage;        // keeps the mapped files (or the made-up weights) alive
  LoadFormat load_format = LoadFormat::kAuto;
  // What a request's sampling starts from: the model's generation_config.json (temperature, top_p,
  // top_k, min_p, repetition_penalty; a Hugging Face directory's, as vLLM's generation_config auto),
  // else SamplingParams{}.
  SamplingParams sampling_defaults = {};
  // generation_config.json's max_new_tokens, read with the sampling defaults: the most tokens a
  // request generates, whatever its max_tokens (vLLM's cap); 0: none.
  int64_t max_new_tokens = 0;
};

// Throws ModelFileError naming the file and the problem (missing tensor, wrong shape, bad metadata).
// chat_template_override: "auto" (detect from the model) or a family name ("chatml", "llama3"; see
// use_chat_template). A detected template whose special tokens the tokenizer lacks is dropped with a
// warning: chat requests then need a template set in the model YAML.
std::unique_ptr<Model> load_model(const std::string& path, const std::string& chat_template_override = "auto",
                                  LoadFormat load_format = LoadFormat::kAuto);

// Sets the model's chat template to the family named ("chatml" | "llama3"), as the model YAML or the
// command line asks. Throws InvalidArgument for another name, or when the tokenizer lacks one of the
// family's special tokens (its prompts would spell the markers out as text and never stop at the
// end of a turn).
void use_chat_template(Model& model, std::string_view name);

}  // namespace sparseserve
