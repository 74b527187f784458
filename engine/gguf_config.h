// ModelConfig from GGUF metadata ({arch}.block_count, {arch}.attention.*, {arch}.rope.*, tokenizer ids).
#pragma once

#include "engine/gguf.h"
#include "engine/model_config.h"

namespace sparseserve {

// Supported architectures: llama (incl. SmolLM2, Llama 2/3/3.1, Mistral as llama), mistral, qwen2.
// Throws ModelFileError naming the file and the missing or bad key.
ModelConfig config_from_gguf(const GgufFile& gguf);

}  // namespace sparseserve
