// Hugging Face model directories: config.json, *.safetensors (single file or
// model.safetensors.index.json shards; F32/F16/BF16), tokenizer.json, generation_config.json.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/mapped_file.h"
#include "engine/model_config.h"
#include "engine/tensor.h"

namespace sparseserve {

// One or more mapped safetensors files, tensors indexed by name. Shapes as stored (outermost first).
class SafetensorsSet {
 public:
  // dir holds model.safetensors, or model.safetensors.index.json and its shards.
  // Throws ModelFileError naming the file and the problem (bad header, offsets out of the file,
  // unsupported dtype, duplicate tensor, missing shard).
  static SafetensorsSet open_dir(const std::string& dir);
  static SafetensorsSet open_file(const std::string& path);

  const TensorView* find(const std::string& name) const;  // nullptr when absent
  std::vector<std::string> names() const;

 private:
  std::vector<std::shared_ptr<MappedFile>> files_;
  std::map<std::string, TensorView> tensors_;
};

// config.json (+ generation_config.json when present: eos/bos ids) -> ModelConfig with
// rope_layout = kHalf. Supports llama (incl. rope_scaling llama3/linear), mistral, qwen2 (qkv_bias).
// Throws ModelFileError naming the file and the field.
ModelConfig load_hf_config(const std::string& dir);

// Defaults a model directory may declare in generation_config.json (absent fields stay unset).
struct GenerationDefaults {
  std::vector<int32_t> eos_ids;
  float temperature = -1.0f;  // < 0: unset
  float top_p = -1.0f;
  int top_k = -1;
  float min_p = -1.0f;
  float repetition_penalty = -1.0f;
  int64_t max_new_tokens = -1;
};
GenerationDefaults load_generation_config(const std::string& dir);

}  // namespace sparseserve
