// hf_inspect_tool PATH [--no-tensors]
// Prints what the engine reads from a model as one JSON object on stdout, for tests/python:
//   { "format": "hf" | "gguf", "path": PATH,
//     "config": ModelConfig fields (names as in engine/model_config.h),
//     "generation": generation_config.json defaults (hf only),
//     "tensor_count": N,
//     "tensors": [{"name", "dtype" (GGUF type name: F32, F16, BF16, Q4_1, ...),
//                  "shape" (outermost first), "nbytes"}] }
// HF directories list tensors sorted by name; GGUF files in file order.
// Exit status 1 with "error: <file>: <problem>" on stderr when the model cannot be read.
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <string>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "common/errors.h"
#include "engine/gguf.h"
#include "engine/gguf_config.h"
#include "engine/hf_model.h"
#include "kernels/cpu/ggml_types.h"

namespace {

using nlohmann::json;
using namespace sparseserve;

const char* rope_scaling_kind(RopeScaling::Kind k) {
  switch (k) {
    case RopeScaling::Kind::kNone: return "none";
    case RopeScaling::Kind::kLinear: return "linear";
    case RopeScaling::Kind::kLlama3: return "llama3";
  }
  return "?";
}

json config_json(const ModelConfig& c) {
  return {
      {"architecture", c.architecture},
      {"name", c.name},
      {"n_layers", c.n_layers},
      {"hidden", c.hidden},
      {"n_heads", c.n_heads},
      {"n_kv_heads", c.n_kv_heads},
      {"head_dim", c.head_dim},
      {"intermediate", c.intermediate},
      {"vocab_size", c.vocab_size},
      {"max_context", c.max_context},
      {"rms_eps", c.rms_eps},
      {"rope_theta", c.rope_theta},
      {"rope_dim", c.rope_dim},
      {"rope_layout", c.rope_layout == RopeLayout::kHalf ? "half" : "interleaved"},
      {"rope_scaling",
       {{"kind", rope_scaling_kind(c.rope_scaling.kind)},
        {"factor", c.rope_scaling.factor},
        {"low_freq_factor", c.rope_scaling.low_freq_factor},
        {"high_freq_factor", c.rope_scaling.high_freq_factor},
        {"original_max_position", c.rope_scaling.original_max_position}}},
      {"tied_embeddings", c.tied_embeddings},
      {"qkv_bias", c.qkv_bias},
      {"bos_id", c.bos_id},
      {"eos_ids", c.eos_ids},
  };
}

json tensor_json(const TensorView& t) {
  return {{"name", t.name},
          {"dtype", std::string(kernels::type_traits(t.type).name)},
          {"shape", t.shape},
          {"nbytes", t.nbytes}};
}

json inspect_hf(const std::string& dir, bool with_tensors) {
  json out = {{"format", "hf"}, {"path", dir}, {"config", config_json(load_hf_config(dir))}};
  const GenerationDefaults g = load_generation_config(dir);
  out["generation"] = {{"eos_ids", g.eos_ids},
                       {"temperature", g.temperature},
                       {"top_p", g.top_p},
                       {"top_k", g.top_k}};
  const SafetensorsSet set = SafetensorsSet::open_dir(dir);
  const auto names = set.names();
  out["tensor_count"] = names.size();
  json tensors = json::array();
  if (with_tensors) {
    for (const std::string& name : names) tensors.push_back(tensor_json(*set.find(name)));
  }
  out["tensors"] = std::move(tensors);
  return out;
}

json inspect_gguf(const std::string& path, bool with_tensors) {
  const GgufFile gguf = GgufFile::open(path);
  json out = {{"format", "gguf"}, {"path", path}, {"config", config_json(config_from_gguf(gguf))}};
  out["tensor_count"] = gguf.tensors().size();
  json tensors = json::array();
  if (with_tensors) {
    for (const TensorView& t : gguf.tensors()) tensors.push_back(tensor_json(t));
  }
  out["tensors"] = std::move(tensors);
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Print a model's config and tensors (HF directory or GGUF file) as JSON"};
  std::string path;
  bool no_tensors = false;
  app.add_option("path", path, "Hugging Face model directory or .gguf file")->required();
  app.add_flag("--no-tensors", no_tensors, "Omit the tensor list (tensor_count stays)");
  CLI11_PARSE(app, argc, argv);

  try {
    const json out = std::filesystem::is_directory(path) ? inspect_hf(path, !no_tensors)
                                                         : inspect_gguf(path, !no_tensors);
    std::cout << out.dump(2) << "\n";
  } catch (const sparseserve::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
