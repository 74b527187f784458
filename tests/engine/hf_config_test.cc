// load_hf_config / load_generation_config over config.json files shaped like real checkpoints
// (Llama-3.1-8B, Qwen2.5-0.5B-Instruct, Mistral-7B, SmolLM2-135M) and their failure modes.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "common/errors.h"
#include "engine/hf_model.h"
#include "engine/hf_tokenizer_config.h"

namespace sparseserve {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

class HfConfigTest : public testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "hf_config_test_XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  void write(const std::string& name, const json& j) const {
    std::ofstream(dir_ / name) << j.dump(2);
  }
  std::string dir() const { return dir_.string(); }
  std::string config_path() const { return (dir_ / "config.json").string(); }

  // load_hf_config must throw ModelFileError naming `file` with `phrase` in the problem.
  void expect_error(const std::string& file, const std::string& phrase) const {
    try {
      load_hf_config(dir());
      ADD_FAILURE() << "no error; expected '" << phrase << "'";
    } catch (const ModelFileError& e) {
      EXPECT_EQ(e.file(), file);
      EXPECT_NE(e.problem().find(phrase), std::string::npos) << e.what();
    }
  }

  fs::path dir_;
};

json llama31_8b() {
  return json::parse(R"({
    "architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
    "bos_token_id": 128000, "eos_token_id": 128001, "hidden_act": "silu", "hidden_size": 4096,
    "initializer_range": 0.02, "intermediate_size": 14336, "max_position_embeddings": 131072,
    "mlp_bias": false, "model_type": "llama", "num_attention_heads": 32,
    "num_hidden_layers": 32, "num_key_value_heads": 8, "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
    "transformers_version": "4.43.0.dev0", "use_cache": true, "vocab_size": 128256})");
}

json qwen25_05b() {
  return json::parse(R"({
    "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
    "eos_token_id": 151645, "hidden_act": "silu", "hidden_size": 896,
    "initializer_range": 0.02, "intermediate_size": 4864, "max_position_embeddings": 32768,
    "max_window_layers": 21, "model_type": "qwen2", "num_attention_heads": 14,
    "num_hidden_layers": 24, "num_key_value_heads": 2, "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": true,
    "torch_dtype": "bfloat16", "transformers_version": "4.43.1", "use_cache": true,
    "use_sliding_window": false, "vocab_size": 151936})");
}

json mistral_7b_v01() {
  return json::parse(R"({
    "architectures": ["MistralForCausalLM"], "bos_token_id": 1, "eos_token_id": 2,
    "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02,
    "intermediate_size": 14336, "max_position_embeddings": 32768, "model_type": "mistral",
    "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
    "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "sliding_window": 4096,
    "tie_word_embeddings": false, "torch_dtype": "bfloat16", "transformers_version": "4.34.0.dev0",
    "use_cache": true, "vocab_size": 32000})");
}

json smollm2_135m() {
  return json::parse(R"({
    "architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
    "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 576,
    "initializer_range": 0.041666666666666664, "intermediate_size": 1536,
    "is_llama_config": true, "max_position_embeddings": 8192, "model_type": "llama",
    "num_attention_heads": 9, "num_hidden_layers": 30, "num_key_value_heads": 3,
    "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_interleaved": false, "rope_scaling": null,
    "rope_theta": 100000, "tie_word_embeddings": true, "torch_dtype": "bfloat16",
    "transformers_version": "4.42.3", "use_cache": true, "vocab_size": 49152})");
}

TEST_F(HfConfigTest, Llama31WithLlama3RopeScaling) {
  write("config.json", llama31_8b());
  write("generation_config.json",
        json::parse(R"({"bos_token_id": 128000, "do_sample": true,
                        "eos_token_id": [128001, 128008, 128009],
                        "temperature": 0.6, "top_p": 0.9})"));
  const ModelConfig c = load_hf_config(dir());
  EXPECT_EQ(c.architecture, "llama");
  EXPECT_EQ(c.n_layers, 32);
  EXPECT_EQ(c.hidden, 4096);
  EXPECT_EQ(c.n_heads, 32);
  EXPECT_EQ(c.n_kv_heads, 8);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.rope_dim, 128);
  EXPECT_EQ(c.intermediate, 14336);
  EXPECT_EQ(c.vocab_size, 128256);
  EXPECT_EQ(c.max_context, 131072);
  EXPECT_FLOAT_EQ(c.rms_eps, 1e-5f);
  EXPECT_FLOAT_EQ(c.rope_theta, 500000.0f);
  EXPECT_EQ(c.rope_layout, RopeLayout::kHalf);
  EXPECT_EQ(c.rope_scaling.kind, RopeScaling::Kind::kLlama3);
  EXPECT_FLOAT_EQ(c.rope_scaling.factor, 8.0f);
  EXPECT_FLOAT_EQ(c.rope_scaling.low_freq_factor, 1.0f);
  EXPECT_FLOAT_EQ(c.rope_scaling.high_freq_factor, 4.0f);
  EXPECT_EQ(c.rope_scaling.original_max_position, 8192);
  EXPECT_FALSE(c.tied_embeddings);
  EXPECT_FALSE(c.qkv_bias);
  EXPECT_EQ(c.bos_id, 128000);
  // generation_config's list first, then config.json's id (already present).
  EXPECT_EQ(c.eos_ids, (std::vector<int32_t>{128001, 128008, 128009}));

  const GenerationDefaults g = load_generation_config(dir());
  EXPECT_EQ(g.eos_ids, (std::vector<int32_t>{128001, 128008, 128009}));
  EXPECT_FLOAT_EQ(g.temperature, 0.6f);
  EXPECT_FLOAT_EQ(g.top_p, 0.9f);
  EXPECT_EQ(g.top_k, -1);
}

TEST_F(HfConfigTest, Qwen25WithQkvBiasAndTiedEmbeddings) {
  write("config.json", qwen25_05b());
  write("generation_config.json",
        json::parse(R"({"bos_token_id": 151643, "pad_token_id": 151643, "do_sample": true,
                        "eos_token_id": [151645, 151643], "repetition_penalty": 1.1,
                        "temperature": 0.7, "top_p": 0.8, "top_k": 20})"));
  const ModelConfig c = load_hf_config(dir());
  EXPECT_EQ(c.architecture, "qwen2");
  EXPECT_TRUE(c.qkv_bias);
  EXPECT_TRUE(c.tied_embeddings);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.n_kv_heads, 2);
  EXPECT_EQ(c.max_context, 32768);  // use_sliding_window is false
  EXPECT_FLOAT_EQ(c.rms_eps, 1e-6f);
  EXPECT_FLOAT_EQ(c.rope_theta, 1e6f);
  EXPECT_EQ(c.rope_scaling.kind, RopeScaling::Kind::kNone);
  EXPECT_EQ(c.bos_id, 151643);
  EXPECT_EQ(c.eos_ids, (std::vector<int32_t>{151645, 151643}));
  const GenerationDefaults g = load_generation_config(dir());
  EXPECT_EQ(g.top_k, 20);
  EXPECT_FLOAT_EQ(g.temperature, 0.7f);
  // A top_k of 50 is transformers' default, which vLLM's reading (to_diff_dict) drops: no default.
  write("generation_config.json", json::parse(R"({"top_k": 50, "repetition_penalty": 12, "max_new_tokens": 300})"));
  EXPECT_EQ(load_generation_config(dir()).top_k, -1);
  EXPECT_FLOAT_EQ(load_generation_config(dir()).repetition_penalty, 12.0f);
  EXPECT_EQ(load_generation_config(dir()).max_new_tokens, 300);
  write("generation_config.json", json::parse(R"({"max_new_tokens": 0})"));
  EXPECT_THROW(load_generation_config(dir()), ModelFileError);
}

TEST_F(HfConfigTest, MistralSlidingWindowCapsContext) {
  write("config.json", mistral_7b_v01());
  ModelConfig c = load_hf_config(dir());
  EXPECT_EQ(c.architecture, "mistral");
  EXPECT_EQ(c.max_context, 4096);
  EXPECT_EQ(c.n_kv_heads, 8);
  EXPECT_EQ(c.bos_id, 1);
  EXPECT_EQ(c.eos_ids, (std::vector<int32_t>{2}));
  EXPECT_FALSE(c.qkv_bias);

  json v02 = mistral_7b_v01();  // v0.2: no window, larger theta
  v02["sliding_window"] = nullptr;
  v02["rope_theta"] = 1000000.0;
  write("config.json", v02);
  c = load_hf_config(dir());
  EXPECT_EQ(c.max_context, 32768);
  EXPECT_FLOAT_EQ(c.rope_theta, 1e6f);
}

TEST_F(HfConfigTest, SmolLM2) {
  write("config.json", smollm2_135m());
  const ModelConfig c = load_hf_config(dir());
  EXPECT_EQ(c.architecture, "llama");
  EXPECT_EQ(c.name, dir_.filename().string());
  EXPECT_EQ(c.n_layers, 30);
  EXPECT_EQ(c.hidden, 576);
  EXPECT_EQ(c.n_heads, 9);
  EXPECT_EQ(c.n_kv_heads, 3);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.intermediate, 1536);
  EXPECT_EQ(c.vocab_size, 49152);
  EXPECT_EQ(c.max_context, 8192);
  EXPECT_FLOAT_EQ(c.rope_theta, 100000.0f);  // an integer in the JSON
  EXPECT_EQ(c.rope_scaling.kind, RopeScaling::Kind::kNone);
  EXPECT_TRUE(c.tied_embeddings);
  EXPECT_EQ(c.bos_id, 1);
  EXPECT_EQ(c.eos_ids, (std::vector<int32_t>{2}));
  const GenerationDefaults g = load_generation_config(dir());  // no file: all unset
  EXPECT_TRUE(g.eos_ids.empty());
  EXPECT_LT(g.temperature, 0.0f);
  EXPECT_LT(g.top_p, 0.0f);
  EXPECT_EQ(g.top_k, -1);
}

TEST_F(HfConfigTest, DefaultsAndAlternativeSpellings) {
  json j = smollm2_135m();
  j.erase("model_type");                 // architectures decides
  j.erase("num_key_value_heads");        // = num_attention_heads
  j.erase("rms_norm_eps");               // 1e-6
  j.erase("rope_theta");                 // 10000
  j.erase("tie_word_embeddings");        // false
  j["eos_token_id"] = json::array({2, 0});
  j["rope_scaling"] = json::parse(R"({"type": "linear", "factor": 2.0})");  // legacy key
  j["_name_or_path"] = "HuggingFaceTB/SmolLM2-135M-Instruct";
  write("config.json", j);
  ModelConfig c = load_hf_config(dir());
  EXPECT_EQ(c.architecture, "llama");
  EXPECT_EQ(c.name, "HuggingFaceTB/SmolLM2-135M-Instruct");
  EXPECT_EQ(c.n_kv_heads, 9);
  EXPECT_FLOAT_EQ(c.rms_eps, 1e-6f);
  EXPECT_FLOAT_EQ(c.rope_theta, 10000.0f);
  EXPECT_FALSE(c.tied_embeddings);
  EXPECT_EQ(c.eos_ids, (std::vector<int32_t>{2, 0}));
  EXPECT_EQ(c.rope_scaling.kind, RopeScaling::Kind::kLinear);
  EXPECT_FLOAT_EQ(c.rope_scaling.factor, 2.0f);

  json nemo = mistral_7b_v01();  // Mistral-Nemo: head_dim is not hidden / heads
  nemo["hidden_size"] = 5120;
  nemo["head_dim"] = 128;
  write("config.json", nemo);
  c = load_hf_config(dir());
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.rope_dim, 128);
}

TEST_F(HfConfigTest, EosMergedFromBothFiles) {
  json j = smollm2_135m();
  j["eos_token_id"] = json::array({2, 7});
  write("config.json", j);
  write("generation_config.json", json::parse(R"({"bos_token_id": 5, "eos_token_id": 7})"));
  const ModelConfig c = load_hf_config(dir());
  EXPECT_EQ(c.bos_id, 5);
  EXPECT_EQ(c.eos_ids, (std::vector<int32_t>{7, 2}));
}

class HfConfigMissingField : public HfConfigTest, public testing::WithParamInterface<const char*> {};

TEST_P(HfConfigMissingField, NamesFileAndField) {
  json j = smollm2_135m();
  j.erase(GetParam());
  write("config.json", j);
  expect_error(config_path(), std::string("'") + GetParam() + "' is missing");
}

INSTANTIATE_TEST_SUITE_P(Required, HfConfigMissingField,
                         testing::Values("hidden_size", "num_hidden_layers", "num_attention_heads",
                                         "intermediate_size", "vocab_size",
                                         "max_position_embeddings"),
                         [](const auto& info) { return std::string(info.param); });

TEST_F(HfConfigTest, Rejections) {
  const std::string cfg = config_path();
  expect_error(cfg, "cannot open");  // no config.json at all
  fs::create_directory(dir_ / "config.json");
  expect_error(cfg, "a folder, not a file");
  fs::remove(dir_ / "config.json");
  ASSERT_EQ(::mkfifo(cfg.c_str(), 0600), 0);  // read at once, not waited on for a writer
  expect_error(cfg, "not a regular file");
  fs::remove(dir_ / "config.json");

  write("config.json", "not an object");
  expect_error(cfg, "not a JSON object");
  std::ofstream(dir_ / "config.json") << "{\"hidden_size\": ";
  expect_error(cfg, "not valid JSON");

  const auto with = [&](const char* key, const json& value) {
    json j = smollm2_135m();
    j[key] = value;
    write("config.json", j);
  };
  with("hidden_size", "576");
  expect_error(cfg, "'hidden_size' must be an integer");
  with("model_type", "gpt2");
  expect_error(cfg, "'gpt2' is not supported");
  with("hidden_act", "gelu");
  expect_error(cfg, "'hidden_act'");
  with("attention_bias", true);
  expect_error(cfg, "'attention_bias'");
  with("num_key_value_heads", 2);  // 9 heads are not a multiple of 2
  expect_error(cfg, "multiple of key/value heads");
  with("eos_token_id", "</s>");
  expect_error(cfg, "'eos_token_id'");
  with("max_position_embeddings", int64_t{1} << 32);  // positions are int32
  expect_error(cfg, "context length must be in [1, 2^31");
  with("num_hidden_layers", int64_t{1} << 40);  // refused before anything is sized by it
  expect_error(cfg, "number of layers must be in [1, 65536]");
  with("head_dim", int64_t{1} << 40);  // n_heads · head_dim would overflow int64
  expect_error(cfg, "head dimension must be even and in [2, 65536]");
  with("rms_norm_eps", 1e300);  // inf as the float it is kept in
  expect_error(cfg, "RMSNorm epsilon must be positive and finite");
  with("rope_scaling", json::parse(R"({"rope_type": "linear", "factor": 0.0})"));
  expect_error(cfg, "rope_scaling");
  with("rope_scaling", json::parse(R"({"rope_type": "yarn", "factor": 4.0})"));
  expect_error(cfg, "'yarn' is not supported");
  with("rope_scaling", json::parse(R"({"rope_type": "llama3", "factor": 8.0,
                                       "low_freq_factor": 1.0, "high_freq_factor": 4.0})"));
  expect_error(cfg, "'rope_scaling.original_max_position_embeddings' is missing");

  {  // A value nested 100,000 deep: named by its size, not dumped (dump() recursed off the stack).
    std::string deep = smollm2_135m().dump();
    deep.pop_back();
    deep += ", \"hidden_size\": " + std::string(100000, '[') + std::string(100000, ']') + "}";
    std::ofstream(dir_ / "config.json") << deep;
    expect_error(cfg, "'hidden_size' must be an integer, got an array of 1 element");
  }

  json no_arch = smollm2_135m();
  no_arch.erase("model_type");
  no_arch.erase("architectures");
  write("config.json", no_arch);
  expect_error(cfg, "'model_type' is missing");

  write("config.json", smollm2_135m());
  write("generation_config.json", json::parse(R"({"eos_token_id": [2, -1]})"));
  expect_error((dir_ / "generation_config.json").string(), "'eos_token_id'");
  // Special ids past the vocabulary (49152 rows) would index past the logits: refused at load.
  write("generation_config.json", json::parse(R"({"eos_token_id": [2, 2000000000]})"));
  expect_error(cfg, "end-of-sequence token id 2000000000 is outside the vocabulary of 49152");
  write("generation_config.json", json::parse(R"({"bos_token_id": 49152})"));
  expect_error(cfg, "BOS token id 49152 is outside the vocabulary");
  write("generation_config.json", json::parse(R"({"top_p": 1.5})"));
  EXPECT_THROW(load_generation_config(dir()), ModelFileError);
}

// The chat template: chat_template.jinja first, else tokenizer_config.json's "chat_template" (a
// string, or the "default" entry of a list of named templates);
// absent files give none, files that are there but unreadable or malformed an error naming them.
TEST_F(HfConfigTest, ChatTemplateFiles) {
  const auto expect_error_in = [&](const std::string& name, const std::string& phrase) {
    try {
      read_hf_chat_template(dir());
      ADD_FAILURE() << "no error; expected '" << phrase << "'";
    } catch (const ModelFileError& e) {
      EXPECT_EQ(e.file(), (dir_ / name).string());
      EXPECT_NE(e.problem().find(phrase), std::string::npos) << e.what();
    }
  };
  EXPECT_EQ(read_hf_chat_template(dir()), std::nullopt);
  write("tokenizer_config.json", json{{"chat_template", "{{ messages }}"}});
  EXPECT_EQ(read_hf_chat_template(dir()), "{{ messages }}");
  // Named templates (Hermes 2 Pro, Hermes 3): the one named "default", as transformers picks it.
  write("tokenizer_config.json",
        json{{"chat_template", json::array({json{{"name", "tool_use"}, {"template", "{{ tools }}"}},
                                            json{{"name", "default"}, {"template", "{{ messages }}!"}}})}});
  EXPECT_EQ(read_hf_chat_template(dir()), "{{ messages }}!");
  write("tokenizer_config.json", json{{"chat_template", json::array({json{{"name", "default"}}})}});
  EXPECT_EQ(read_hf_chat_template(dir()), std::nullopt);  // no template text: none
  write("tokenizer_config.json", json{{"chat_template", json::array({json{{"name", "tool_use"}, {"template", "x"}}})}});
  EXPECT_EQ(read_hf_chat_template(dir()), std::nullopt);  // no default: none
  write("tokenizer_config.json", json::array({1, 2}));
  EXPECT_EQ(read_hf_chat_template(dir()), std::nullopt);
  // An entry whose name is no string is not "default" (it threw a bare JSON type error: "unexpected error").
  write("tokenizer_config.json", json{{"chat_template", json::array({json{{"name", 5}, {"template", "x"}}})}});
  EXPECT_EQ(read_hf_chat_template(dir()), std::nullopt);
  std::ofstream(dir_ / "tokenizer_config.json") << "{\"chat_template\": ";
  expect_error_in("tokenizer_config.json", "not valid JSON");
  std::ofstream(dir_ / "chat_template.jinja") << "{{ jinja }}";
  EXPECT_EQ(read_hf_chat_template(dir()), "{{ jinja }}");  // preferred over tokenizer_config.json
  fs::remove(dir_ / "chat_template.jinja");
  fs::create_directory(dir_ / "chat_template.jinja");
  expect_error_in("chat_template.jinja", "a folder, not a file");
}

}  // namespace
}  // namespace sparseserve
