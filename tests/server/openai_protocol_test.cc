// server/openai_protocol: OpenAI JSON → engine Requests (prompts encoded as the contract says, chat
// template applied, every field checked and a bad one named) and RequestOutputs → OpenAI responses
// and stream chunks. On the default SmolLM2 model (skipped when missing).
#include "server/openai_protocol.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <limits>
#include <map>
#include <memory>

#include "common/errors.h"
#include "engine/json_text.h"
#include "server/openai_tools.h"

namespace sparseserve::openai {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
// The responses' objects keep their fields' order (ResponseBuilder builds ojson): the test's values
// are written in that order. Request bodies are read as openai::json (converted on the call).
using json = ojson;

std::string model_path() {
  if (const char* env = std::getenv("SPARSESERVE_MODEL")) {
    const std::filesystem::path p(env);
    return p.is_absolute() ? p.string() : (std::filesystem::path(SPARSESERVE_SOURCE_DIR) / p).string();
  }
  return std::string(SPARSESERVE_SOURCE_DIR) + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
}

class ProtocolTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!std::filesystem::exists(model_path())) return;
    model_ = load_model(model_path()).release();
    profiles_ = new ModelProfiles(ModelProfiles::load(std::string(SPARSESERVE_SOURCE_DIR) +
                                                          "/configs/models/smollm2-135m-instruct.yaml",
                                                      static_cast<int32_t>(model_->config.n_layers),
                                                      static_cast<int32_t>(model_->config.n_kv_heads)));
  }
  void SetUp() override {
    if (!model_) GTEST_SKIP() << "missing " << model_path();
    ProtocolLimits limits;
    limits.max_prompt_tokens = 1000;
    protocol_ = std::make_unique<Protocol>(*model_, *profiles_, "smol", limits);
  }
  // The ApiError that parsing `body` throws (status 0 when it parses).
  ApiError error_of(const json& body, bool chat = false) {
    try {
      chat ? protocol_->parse_chat(body) : protocol_->parse_completion(body);
    } catch (const ApiError& e) {
      return e;
    }
    return ApiError(0, "", "");
  }
  const Tokenizer& tok() const { return model_->tokenizer; }

  static inline Model* model_ = nullptr;
  static inline ModelProfiles* profiles_ = nullptr;
  std::unique_ptr<Protocol> protocol_;
};

TEST_F(ProtocolTest, CompletionPromptIsEncodedWithBosAndSpecialTextAsSpecialTokens) {
  // As vLLM and llama.cpp encode prompts: a prompt already in the chat format keeps its markers.
  const std::string text = "Hello <|im_start|> world";
  const GenerationJob job = protocol_->parse_completion({{"prompt", text}, {"model", "smol"}});
  ASSERT_EQ(job.prompts.size(), 1u);
  EXPECT_EQ(job.prompts[0], tok().encode(text, /*add_special=*/true, /*parse_special=*/true));
  const std::vector<int32_t> as_text = tok().encode(text, /*add_special=*/true, /*parse_special=*/false);
  EXPECT_LT(job.prompts[0].size(), as_text.size());
  EXPECT_NE(std::find(job.prompts[0].begin(), job.prompts[0].end(), tok().token_id("<|im_start|>")),
            job.prompts[0].end());
  EXPECT_EQ(job.params.max_tokens, 16);  // the completions default, as OpenAI and vLLM
  EXPECT_EQ(job.n, 1);
  EXPECT_FALSE(job.stream);
  EXPECT_EQ(job.params.logprobs, -1);
  EXPECT_TRUE(job.params.stop_token_ids.empty());
}

TEST_F(ProtocolTest, JsonObjectResponseFormatTurnsOnJsonMode) {
  const json format = {{"type", "json_object"}};
  EXPECT_TRUE(protocol_->parse_completion({{"prompt", "x"}, {"response_format", format}}).params.json_object);
  EXPECT_TRUE(protocol_->parse_chat({{"messages", {{{"role", "user"}, {"content", "x"}}}}, {"response_format", format}})
                  .params.json_object);
  EXPECT_FALSE(protocol_->parse_completion({{"prompt", "x"}, {"response_format", {{"type", "text"}}}}).params.json_object);
  EXPECT_FALSE(protocol_->parse_completion({{"prompt", "x"}}).params.json_object);
}

TEST_F(ProtocolTest, CompletionPromptForms) {
  const auto ids = tok().encode("a b c", true, false);
  EXPECT_EQ(protocol_->parse_completion({{"prompt", {"x", "y"}}}).prompts.size(), 2u);
  EXPECT_EQ(protocol_->parse_completion({{"prompt", ids}}).prompts, std::vector<std::vector<int32_t>>{ids});
  EXPECT_EQ(protocol_->parse_completion({{"prompt", {ids, ids}}}).prompts.size(), 2u);
}

TEST_F(ProtocolTest, SamplingFieldsMapToTheEngine) {
  const GenerationJob job = protocol_->parse_completion(
      {{"prompt", "x"}, {"temperature", 0.5}, {"top_p", 0.9}, {"top_k", 40}, {"min_p", 0.1},
       {"presence_penalty", 1}, {"frequency_penalty", -1}, {"repetition_penalty", 1.2}, {"seed", 7},
       {"logit_bias", {{"5", -100}, {"9", 2.5}}}, {"stop", "END"}, {"max_tokens", 5}, {"logprobs", 3},
       {"sparsity", "dense"}, {"ignore_eos", true}, {"stop_token_ids", {1, 2}}, {"user", "u"}});
  const SamplingParams& s = job.params.sampling;
  EXPECT_FLOAT_EQ(s.temperature, 0.5f);
  EXPECT_FLOAT_EQ(s.top_p, 0.9f);
  EXPECT_EQ(s.top_k, 40);
  EXPECT_FLOAT_EQ(s.min_p, 0.1f);
  EXPECT_FLOAT_EQ(s.presence_penalty, 1.0f);
  EXPECT_FLOAT_EQ(s.frequency_penalty, -1.0f);
  EXPECT_FLOAT_EQ(s.repetition_penalty, 1.2f);
  EXPECT_EQ(s.seed, std::optional<uint64_t>(7));
  EXPECT_THAT(s.logit_bias, ElementsAre(std::pair<int32_t, float>{5, -100.0f}, std::pair<int32_t, float>{9, 2.5f}));
  // As vLLM: biases past ±100 are accepted (and clamped when sampling), and repetition_penalty is
  // bounded only by > 0 (one past a float's range counts as the largest float).
  const SamplingParams wide = protocol_->parse_completion(
      {{"prompt", "x"}, {"logit_bias", {{"5", 500}, {"9", -1e300}}}, {"repetition_penalty", 12}}).params.sampling;
  EXPECT_THAT(wide.logit_bias, ElementsAre(std::pair<int32_t, float>{5, 500.0f}, std::pair<int32_t, float>{9, -INFINITY}));
  EXPECT_NO_THROW(wide.validate(1000));  // the sampler clamps them to ±100 (sampler_test)
  EXPECT_FLOAT_EQ(wide.repetition_penalty, 12.0f);
  EXPECT_FLOAT_EQ(protocol_->parse_completion({{"prompt", "x"}, {"repetition_penalty", 1e39}}).params.sampling.repetition_penalty,
                  std::numeric_limits<float>::max());
  EXPECT_THAT(job.params.stop, ElementsAre("END"));
  EXPECT_EQ(job.params.max_tokens, 5);
  EXPECT_EQ(job.params.logprobs, 3);
  EXPECT_TRUE(job.want_logprobs);
  EXPECT_EQ(job.params.sparsity, "dense");
  EXPECT_TRUE(job.params.ignore_eos);
  EXPECT_THAT(job.params.stop_token_ids, ElementsAre(1, 2));
}

// The model's generation_config max_new_tokens caps max_tokens, given or not (vLLM's get_max_tokens).
TEST_F(ProtocolTest, TheModelsMaxNewTokensCapsMaxTokens) {
  struct Capped {  // the suite's model, capped for this test only
    Model& m;
    explicit Capped(Model& model) : m(model) { m.max_new_tokens = 5; }
    ~Capped() { m.max_new_tokens = 0; }
  };
  {
    const Capped capped(*model_);
    EXPECT_EQ(protocol_->parse_completion({{"prompt", "x"}, {"max_tokens", 8}}).params.max_tokens, 5);
    EXPECT_EQ(protocol_->parse_chat({{"messages", {{{"role", "user"}, {"content", "hi"}}}}}).params.max_tokens, 5);
    EXPECT_EQ(protocol_->parse_completion({{"prompt", "x"}, {"max_tokens", 3}}).params.max_tokens, 3);
  }
  EXPECT_EQ(protocol_->parse_completion({{"prompt", "x"}, {"max_tokens", 8}}).params.max_tokens, 8);
}

TEST_F(ProtocolTest, NullMeansNotGivenAndUnknownFieldsAreIgnored) {
  const GenerationJob job = protocol_->parse_completion(
      {{"prompt", "x"}, {"temperature", nullptr}, {"stop", nullptr}, {"n", nullptr}, {"whatever", {1, 2}},
       {"stream", true}, {"stream_options", {{"include_usage", true}, {"unknown", 1}}}});
  EXPECT_FLOAT_EQ(job.params.sampling.temperature, 1.0f);
  EXPECT_TRUE(job.params.stop.empty());
  EXPECT_TRUE(job.stream);
  EXPECT_TRUE(job.include_usage);
}

TEST_F(ProtocolTest, ChoicesFanOutWithSeedPlusIndex) {
  const GenerationJob job = protocol_->parse_completion({{"prompt", {"a", "b"}}, {"n", 2}, {"seed", 10}});
  ASSERT_EQ(job.num_choices(), 4);
  for (int32_t i = 0; i < 4; ++i) {
    const Request r = job.request_for_choice(i, "cmpl-x");
    EXPECT_EQ(r.id, "cmpl-x-" + std::to_string(i));
    EXPECT_EQ(r.prompt, job.prompts[static_cast<size_t>(i / 2)]);
    EXPECT_EQ(r.sampling.seed, std::optional<uint64_t>(10 + i % 2));
  }
  const GenerationJob unseeded = protocol_->parse_completion({{"prompt", "a"}, {"n", 2}});
  EXPECT_FALSE(unseeded.request_for_choice(1, "c").sampling.seed.has_value());
  // -1 is no seed (vLLM), for every choice; -2 is a seed.
  const GenerationJob minus_one = protocol_->parse_completion({{"prompt", "a"}, {"n", 2}, {"seed", -1}});
  EXPECT_FALSE(minus_one.request_for_choice(0, "c").sampling.seed.has_value());
  EXPECT_FALSE(minus_one.request_for_choice(1, "c").sampling.seed.has_value());
  EXPECT_EQ(protocol_->parse_completion({{"prompt", "a"}, {"seed", -2}}).request_for_choice(0, "c").sampling.seed,
            std::optional<uint64_t>(static_cast<uint64_t>(-2)));
}

TEST_F(ProtocolTest, ChatAppliesTheTemplateAndStopsAtEndOfTurn) {
  const json body = {{"messages",
                      {{{"role", "system"}, {"content", "Be brief."}},
                       {{"role", "user"}, {"content", {{{"type", "text"}, {"text", "a"}}, {{"type", "text"}, {"text", "b"}}}}}}},
                     {"logprobs", true},
                     {"top_logprobs", 2}};
  const GenerationJob job = protocol_->parse_chat(body);
  const std::string text = model_->chat_template->render({{"system", "Be brief."}, {"user", "a\nb"}}, true);
  ASSERT_EQ(job.prompts.size(), 1u);
  EXPECT_EQ(job.prompts[0], tok().encode(text, /*add_special=*/false, /*parse_special=*/true));
  EXPECT_EQ(job.params.end_of_turn, tok().token_id(model_->chat_template->end_of_turn()));
  EXPECT_TRUE(job.params.stop_token_ids.empty());  // the end of turn is an implicit stop, reported like EOS
  EXPECT_EQ(job.params.max_tokens, model_->config.max_context - static_cast<int64_t>(job.prompts[0].size()));
  EXPECT_EQ(job.params.logprobs, 2);
  EXPECT_EQ(protocol_->parse_chat({{"messages", body["messages"]}, {"max_completion_tokens", 7}, {"max_tokens", 9}})
                .params.max_tokens,
            7);
}

TEST_F(ProtocolTest, BadFieldsAreNamed) {
  struct Case {
    json body;
    bool chat;
    int status;
    std::string param;
  };
  const json msgs = json::array({{{"role", "user"}, {"content", "hi"}}});
  const std::vector<Case> cases = {
      {{{"prompt", "x"}, {"temperature", -1}}, false, 400, "temperature"},
      {{{"prompt", "x"}, {"top_p", 0}}, false, 400, "top_p"},
      {{{"prompt", "x"}, {"n", 17}}, false, 400, "n"},
      {{{"prompt", "x"}, {"max_tokens", "5"}}, false, 400, "max_tokens"},
      {{{"prompt", "x"}, {"logprobs", 21}}, false, 400, "logprobs"},
      {{{"prompt", "x"}, {"stop", json::array({""})}}, false, 400, "stop"},
      {{{"prompt", "x"}, {"sparsity", "nope"}}, false, 400, "sparsity"},
      {{{"prompt", "x"}, {"logit_bias", {{"-1", 1}}}}, false, 400, "logit_bias"},
      {{{"prompt", "x"}, {"response_format", {{"type", "json_schema"}}}}, false, 400, "response_format.json_schema"},
      {{{"prompt", "x"}, {"model", "other"}}, false, 404, "model"},
      {{{"prompt", json::array()}}, false, 400, "prompt"},
      {{{"prompt", {1, 99999999}}}, false, 400, "prompt"},
      {{{"prompt", ""}}, false, 400, "prompt"},
      {{{"messages", json::array()}}, true, 400, "messages"},
      {{{"messages", {{{"role", "robot"}, {"content", "x"}}}}}, true, 400, "messages[0].role"},
      {{{"messages", {{{"role", "user"}, {"content", 3}}}}}, true, 400, "messages[0].content"},
      {{{"messages", msgs}, {"top_logprobs", 3}}, true, 400, "top_logprobs"},
      {{{"messages", msgs}, {"logprobs", 1}}, true, 400, "logprobs"},
      // max_completion_tokens wins, but a bad max_tokens beside it is still an error.
      {{{"messages", msgs}, {"max_completion_tokens", 5}, {"max_tokens", "abc"}}, true, 400, "max_tokens"},
      {{{"messages", msgs}, {"max_completion_tokens", 5}, {"max_tokens", 0}}, true, 400, "max_tokens"},
  };
  for (const Case& c : cases) {
    const ApiError e = error_of(c.body, c.chat);
    EXPECT_EQ(e.status(), c.status) << c.body.dump();
    EXPECT_EQ(e.param(), c.param) << c.body.dump() << ": " << e.what();
    const json j = e.to_json();
    EXPECT_TRUE(j["error"].contains("message") && j["error"].contains("type") && j["error"].contains("code"));
  }
  EXPECT_EQ(error_of(json::array({1})).status(), 400);
}

TEST_F(ProtocolTest, ContextOverflowNamesTheNumbers) {
  const json msgs = json::array({{{"role", "user"}, {"content", "hi"}}});
  const int64_t n = static_cast<int64_t>(protocol_->parse_chat({{"messages", msgs}}).prompts[0].size());
  const ApiError e = error_of({{"messages", msgs}, {"max_tokens", 8192}}, true);
  EXPECT_EQ(e.status(), 400);
  EXPECT_EQ(e.code(), "context_length_exceeded");
  EXPECT_EQ(std::string(e.what()), "This model's maximum context length is 8192 tokens. However, you requested " +
                                       std::to_string(n + 8192) + " tokens (" + std::to_string(n) +
                                       " in the messages, 8192 in the completion). Please reduce the length of the "
                                       "messages or completion.");
  // The server's own prompt limit (1000 here) comes first.
  std::string long_prompt;
  for (int i = 0; i < 1200; ++i) long_prompt += "word ";
  const ApiError over = error_of({{"prompt", long_prompt}});
  EXPECT_THAT(over.what(), HasSubstr("1000 tokens"));
  EXPECT_EQ(over.code(), "context_length_exceeded");
}

TEST_F(ProtocolTest, TokenizeAndDetokenize) {
  const json t = protocol_->tokenize({{"prompt", "Hello world"}});
  EXPECT_EQ(t["count"], t["tokens"].size());
  EXPECT_EQ(t["max_model_len"], model_->config.max_context);
  EXPECT_EQ(protocol_->detokenize({{"tokens", t["tokens"]}})["prompt"], "Hello world");
  EXPECT_EQ(protocol_->models(1)["data"][0]["id"], "smol");
}

RequestOutput delta(std::vector<int32_t> ids, std::string text, bool finished = false,
                    FinishReason reason = FinishReason::kNone) {
  RequestOutput o;
  o.token_ids = std::move(ids);
  o.text = std::move(text);
  o.finished = finished;
  o.finish_reason = reason;
  o.prompt_tokens = 3;
  o.completion_tokens = 2;
  return o;
}

TEST_F(ProtocolTest, CompletionResponseShape) {
  const GenerationJob job = protocol_->parse_completion({{"prompt", "x"}, {"logprobs", 1}});
  ResponseBuilder b(job, tok(), "cmpl-1", "smol", 123);
  const int32_t hello = tok().encode("Hello", false, false).at(0);
  RequestOutput o = delta({hello}, "Hello");
  o.logprobs.push_back({hello, -0.5f, {{hello, -0.5f}}});
  EXPECT_TRUE(b.add(0, o).empty());  // not streaming: nothing to send yet
  EXPECT_FALSE(b.all_finished());
  b.add(0, delta({}, "", true, FinishReason::kLength));
  EXPECT_TRUE(b.all_finished());
  const json r = b.response();
  EXPECT_EQ(r["id"], "cmpl-1");
  EXPECT_EQ(r["object"], "text_completion");
  EXPECT_EQ(r["created"], 123);
  EXPECT_EQ(r["choices"][0]["text"], "Hello");
  EXPECT_EQ(r["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(r["choices"][0]["logprobs"]["tokens"], json::array({"Hello"}));
  EXPECT_EQ(r["choices"][0]["logprobs"]["text_offset"], json::array({0}));
  EXPECT_EQ(r["usage"], json({{"prompt_tokens", job.prompts[0].size()},
                              {"completion_tokens", 2},
                              {"total_tokens", job.prompts[0].size() + 2}}));
}

TEST_F(ProtocolTest, ChatStreamChunks) {
  const json msgs = json::array({{{"role", "user"}, {"content", "hi"}}});
  const GenerationJob job =
      protocol_->parse_chat({{"messages", msgs}, {"stream", true}, {"stream_options", {{"include_usage", true}}}});
  ResponseBuilder b(job, tok(), "chatcmpl-1", "smol", 5);
  const auto first = b.add(0, delta({1}, "Hi"));
  ASSERT_EQ(first.size(), 2u);  // the role, then the text
  EXPECT_EQ(first[0]["choices"][0]["delta"], json({{"role", "assistant"}, {"content", ""}}));
  EXPECT_EQ(first[1]["choices"][0]["delta"], json({{"content", "Hi"}}));
  EXPECT_EQ(first[1]["object"], "chat.completion.chunk");
  EXPECT_TRUE(first[1]["usage"].is_null());
  EXPECT_TRUE(b.add(0, delta({2}, "")).empty());  // text held back: nothing to send
  const auto last = b.add(0, delta({}, "", true, FinishReason::kAbort));
  ASSERT_EQ(last.size(), 1u);
  EXPECT_EQ(last[0]["choices"][0]["finish_reason"], "abort");
  EXPECT_EQ(b.usage_chunk()["choices"], json::array());
  EXPECT_EQ(b.usage_chunk()["usage"]["completion_tokens"], 2);
  // vLLM's continuous_usage_stats: the counts so far on every chunk.
  const GenerationJob cont = protocol_->parse_chat(
      {{"messages", msgs}, {"stream", true}, {"stream_options", {{"include_usage", true}, {"continuous_usage_stats", true}}}});
  ResponseBuilder c(cont, tok(), "chatcmpl-2", "smol", 5);
  const auto chunks = c.add(0, delta({1}, "Hi"));
  ASSERT_EQ(chunks.size(), 2u);
  EXPECT_EQ(chunks[1]["usage"], json({{"prompt_tokens", cont.prompts[0].size()}, {"completion_tokens", 2},
                                      {"total_tokens", cont.prompts[0].size() + 2}}));
}

// Tool calling: tools offered in the prompt, tool_choice mapped to the engine's constraint, every
// bad field named.
json weather_tools(int n = 1) {
  json tools = json::array();
  for (int i = 0; i < n; ++i) {
    tools.push_back({{"type", "function"},
                     {"function",
                      {{"name", i == 0 ? std::string("get_weather") : std::string("f").append(std::to_string(i))},
                       {"description", "Weather now"},
                       {"parameters",
                        {{"type", "object"},
                         {"properties", {{"city", {{"type", "string"}}}}},
                         {"required", {"city"}}}}}}});
  }
  return tools;
}

TEST_F(ProtocolTest, ToolChoiceMapsToTheOutputConstraint) {
  const json msgs = json::array({{{"role", "user"}, {"content", "Weather in Paris?"}}});
  // Tools alone: "auto", offered in the prompt, nothing constrained.
  GenerationJob job = protocol_->parse_chat({{"messages", msgs}, {"tools", weather_tools()}});
  EXPECT_EQ(job.tools.choice, ToolUse::Choice::kAuto);
  EXPECT_EQ(job.tools.format, ChatTemplateKind::kChatML);
  EXPECT_FALSE(job.params.json_schema);
  const std::string prompt = tok().decode(job.prompts[0], false);
  EXPECT_NE(prompt.find("<tools>\n{\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"description\":"
                        "\"Weather now\",\"parameters\":"),
            std::string::npos)
      << prompt;
  EXPECT_EQ(protocol_->parse_chat({{"messages", msgs}}).tools.choice, ToolUse::Choice::kNone);
  job = protocol_->parse_chat({{"messages", msgs}, {"tools", weather_tools()}, {"tool_choice", "none"}});
  EXPECT_EQ(job.tools.choice, ToolUse::Choice::kNone);
  EXPECT_NE(tok().decode(job.prompts[0], false).find("<tools>"), std::string::npos);  // still offered (vLLM)
  // A named function: its parameters constrain the output.
  job = protocol_->parse_chat({{"messages", msgs},
                               {"tools", weather_tools(2)},
                               {"tool_choice", {{"type", "function"}, {"function", {{"name", "get_weather"}}}}}});
  EXPECT_EQ(job.tools.choice, ToolUse::Choice::kNamed);
  EXPECT_EQ(job.tools.function, "get_weather");
  ASSERT_TRUE(job.params.json_schema);
  EXPECT_EQ(job.params.json_schema->node(job.params.json_schema->root()).types, JsonSchema::kObject);
  // "required" with one tool: an array of calls, one at most without parallel calls.
  job = protocol_->parse_chat(
      {{"messages", msgs}, {"tools", weather_tools()}, {"tool_choice", "required"}, {"parallel_tool_calls", false}});
  EXPECT_EQ(job.tools.choice, ToolUse::Choice::kRequired);
  ASSERT_TRUE(job.params.json_schema);
  const JsonSchema::Node& root = job.params.json_schema->node(job.params.json_schema->root());
  EXPECT_EQ(root.types, JsonSchema::kArray);
  EXPECT_EQ(root.min_items, 1u);
  EXPECT_EQ(root.max_items, 1u);
  // Parameters without "type" (or none at all) still describe an object; $defs work under "required".
  json untyped = weather_tools();
  untyped[0]["function"]["parameters"] = json::object();
  job = protocol_->parse_chat({{"messages", msgs}, {"tools", untyped}, {"tool_choice", {{"type", "function"}, {"function", {{"name", "get_weather"}}}}}});
  EXPECT_EQ(job.params.json_schema->node(job.params.json_schema->root()).types, JsonSchema::kObject);
  json with_defs = weather_tools();
  with_defs[0]["function"]["parameters"] = {{"type", "object"},
                                            {"$defs", {{"Loc", {{"type", "object"}, {"properties", {{"city", {{"type", "string"}}}}}}}}},
                                            {"properties", {{"loc", {{"$ref", "#/$defs/Loc"}}}}}};
  EXPECT_EQ(protocol_->parse_chat({{"messages", msgs}, {"tools", with_defs}, {"tool_choice", "required"}}).tools.choice,
            ToolUse::Choice::kRequired);
  // "required" with several tools: each call follows its own tool's parameters (anyOf of objects),
  // their $defs kept apart.
  json two = {with_defs[0], weather_tools(2)[1]};
  two[1]["function"]["parameters"]["$defs"] = {{"Loc", {{"type", "integer"}}}};
  two[1]["function"]["parameters"]["properties"]["n"] = {{"$ref", "#/$defs/Loc"}};
  job = protocol_->parse_chat({{"messages", msgs}, {"tools", two}, {"tool_choice", "required"}});
  JsonText calls(JsonPrefix{*job.params.json_schema});
  EXPECT_TRUE(calls.push(R"([{"name": "get_weather", "parameters": {"loc": {"city": "A"}}}, )"
                         R"({"parameters": {"city": "B", "n": 3}, "name": "f1"}])"));
  EXPECT_TRUE(calls.complete());
  JsonText wrong(JsonPrefix{*job.params.json_schema});
  EXPECT_FALSE(wrong.push(R"([{"name": "f1", "parameters": {"loc": )"));  // get_weather's argument
  // Earlier calls and their results are part of the conversation.
  const json turn = json::array(
      {{{"role", "user"}, {"content", "Weather?"}},
       {{"role", "assistant"},
        {"content", nullptr},
        {"tool_calls",
         {{{"id", "c1"}, {"type", "function"}, {"function", {{"name", "get_weather"}, {"arguments", "{\"city\": \"Oslo\"}"}}}}}}},
       {{"role", "tool"}, {"tool_call_id", "c1"}, {"content", "3 C"}}});
  const std::string text = tok().decode(protocol_->parse_chat({{"messages", turn}, {"tools", weather_tools()}}).prompts[0], false);
  EXPECT_NE(text.find("<|im_start|>assistant\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n"
                      "</tool_call><|im_end|>\n<|im_start|>user\n<tool_response>\n3 C\n</tool_response><|im_end|>\n"
                      "<|im_start|>assistant\n"),
            std::string::npos)
      << text;
}

TEST_F(ProtocolTest, BadToolFieldsAreNamed) {
  const json msgs = json::array({{{"role", "user"}, {"content", "hi"}}});
  const json named = {{"type", "function"}, {"function", {{"name", "get_weather"}}}};
  json bad_name = weather_tools();
  bad_name[0]["function"]["name"] = "get weather";
  json bad_params = weather_tools();
  bad_params[0]["function"]["parameters"] = "x";
  json unsupported = weather_tools();
  unsupported[0]["function"]["parameters"]["properties"]["city"]["multipleOf"] = 2;
  const auto call = [](json args) {
    return json::array({{{"role", "assistant"},
                         {"tool_calls", {{{"id", "c"}, {"type", "function"}, {"function", {{"name", "f"}, {"arguments", args}}}}}}}});
  };
  struct Case {
    json body;
    std::string param;
  };
  const std::vector<Case> cases = {
      {{{"messages", msgs}, {"tools", "x"}}, "tools"},
      {{{"messages", msgs}, {"tools", {{{"type", "code"}}}}}, "tools[0].type"},
      {{{"messages", msgs}, {"tools", {{{"type", "function"}}}}}, "tools[0].function"},
      {{{"messages", msgs}, {"tools", bad_name}}, "tools[0].function.name"},
      {{{"messages", msgs}, {"tools", {weather_tools()[0], weather_tools()[0]}}}, "tools[1].function.name"},
      {{{"messages", msgs}, {"tools", bad_params}}, "tools[0].function.parameters"},
      {{{"messages", msgs}, {"tools", {{{"type", "function"}, {"function", {{"name", "f"}, {"parameters", {{"type", "array"}}}}}}}}},
       "tools[0].function.parameters"},
      {{{"messages", msgs},
        {"tools", {{{"type", "function"}, {"function", {{"name", "f"}, {"parameters", {{"properties", {{"x", {{"$ref", "#"}}}}}}}}}}}},
        {"tool_choice", "required"}},
       "tools[0].function.parameters"},
      {{{"messages", msgs}, {"tools", weather_tools()}, {"tool_choice", "always"}}, "tool_choice"},
      {{{"messages", msgs}, {"tool_choice", "required"}}, "tool_choice"},
      {{{"messages", msgs}, {"tool_choice", named}}, "tool_choice"},
      {{{"messages", msgs}, {"tools", weather_tools()}, {"tool_choice", {{"type", "function"}, {"function", {{"name", "nope"}}}}}},
       "tool_choice.function.name"},
      {{{"messages", msgs}, {"tools", unsupported}, {"tool_choice", named}}, "tools[0].function.parameters"},
      {{{"messages", msgs}, {"tools", weather_tools()}, {"tool_choice", named}, {"guided_regex", "a"}}, "tool_choice"},
      {{{"messages", msgs}, {"tools", weather_tools()}, {"parallel_tool_calls", 1}}, "parallel_tool_calls"},
      {{{"messages", call("{")}}, "messages[0].tool_calls[0].function.arguments"},
      {{{"messages", call("[1]")}}, "messages[0].tool_calls[0].function.arguments"},
      {{{"messages", call(json::object())}}, "messages[0].tool_calls[0].function.arguments"},
      {{{"messages", {{{"role", "user"}, {"content", "x"}, {"tool_calls", call("{}")[0]["tool_calls"]}}}}}, "messages[0].tool_calls"},
      {{{"messages", call("{}")}, {"continue_final_message", true}, {"add_generation_prompt", false}}, "messages[0].tool_calls"},
      {{{"messages", msgs}, {"tools", weather_tools()}, {"tool_choice", {{"type", "function"}, {"function", "get_weather"}}}},
       "tool_choice.function"},
      {{{"messages", {{{"role", "tool"}}}}}, "messages[0].content"},
  };
  for (const Case& c : cases) {
    const ApiError e = error_of(c.body, true);
    EXPECT_EQ(e.status(), 400) << c.body.dump();
    EXPECT_EQ(e.param(), c.param) << c.body.dump() << ": " << e.what();
  }
}

TEST_F(ProtocolTest, RepliesBecomeToolCalls) {
  const json msgs = json::array({{{"role", "user"}, {"content", "hi"}}});
  const std::string call = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>";
  // auto: a call in the reply's text.
  GenerationJob job = protocol_->parse_chat({{"messages", msgs}, {"tools", weather_tools()}});
  ResponseBuilder b(job, tok(), "chatcmpl-t", "smol", 5);
  b.add(0, delta({1, 2}, std::string("Checking.\n").append(call), true, FinishReason::kStop));
  json m = b.response()["choices"][0];
  EXPECT_EQ(m["finish_reason"], "tool_calls");
  EXPECT_EQ(m["message"]["content"], "Checking.");
  ASSERT_EQ(m["message"]["tool_calls"].size(), 1u);
  EXPECT_EQ(m["message"]["tool_calls"][0]["type"], "function");
  EXPECT_EQ(m["message"]["tool_calls"][0]["function"], json({{"name", "get_weather"}, {"arguments", "{\"city\":\"Oslo\"}"}}));
  EXPECT_TRUE(m["message"]["tool_calls"][0]["id"].get<std::string>().starts_with("call_"));
  // auto without a call: plain text.
  ResponseBuilder plain(job, tok(), "chatcmpl-t", "smol", 5);
  plain.add(0, delta({1}, "No <tool", true, FinishReason::kStop));
  m = plain.response()["choices"][0];
  EXPECT_EQ(m["finish_reason"], "stop");
  EXPECT_EQ(m["message"]["content"], "No <tool");
  EXPECT_FALSE(m["message"].contains("tool_calls"));
  // named: the output is the arguments; finish_reason as the engine ended.
  job = protocol_->parse_chat({{"messages", msgs},
                               {"tools", weather_tools()},
                               {"tool_choice", {{"type", "function"}, {"function", {{"name", "get_weather"}}}}}});
  ResponseBuilder named(job, tok(), "chatcmpl-t", "smol", 5);
  named.add(0, delta({1}, "{\"city\": \"Rome\"}", true, FinishReason::kStop));
  m = named.response()["choices"][0];
  EXPECT_EQ(m["finish_reason"], "stop");
  EXPECT_TRUE(m["message"]["content"].is_null());
  EXPECT_EQ(m["message"]["tool_calls"][0]["function"], json({{"name", "get_weather"}, {"arguments", "{\"city\": \"Rome\"}"}}));
  // auto: a call the model cut short keeps "length"; a call to a function not on offer is text.
  job = protocol_->parse_chat({{"messages", msgs}, {"tools", weather_tools()}});
  ResponseBuilder cut(job, tok(), "chatcmpl-t", "smol", 5);
  cut.add(0, delta({1}, "<tool_call>{\"name\": \"get_weather\", \"arguments\": {}}", true, FinishReason::kLength));
  EXPECT_EQ(cut.response()["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(cut.response()["choices"][0]["message"]["tool_calls"].size(), 1u);
  ResponseBuilder other(job, tok(), "chatcmpl-t", "smol", 5);
  const std::string rm = "<tool_call>{\"name\": \"rm_rf\", \"arguments\": {}}</tool_call>";
  other.add(0, delta({1}, rm, true, FinishReason::kStop));
  EXPECT_EQ(other.response()["choices"][0]["message"]["content"], rm);
  EXPECT_EQ(other.response()["choices"][0]["finish_reason"], "stop");
  // required: the array's items become the calls.
  job = protocol_->parse_chat({{"messages", msgs}, {"tools", weather_tools()}, {"tool_choice", "required"}});
  ResponseBuilder req(job, tok(), "chatcmpl-t", "smol", 5);
  req.add(0, delta({1}, "[{\"name\": \"get_weather\", \"parameters\": {\"city\": \"A\"}}, {\"name\": \"get_weather\", "
                        "\"parameters\": {\"city\": \"B\"}}]",
                   true, FinishReason::kStop));
  m = req.response()["choices"][0];
  EXPECT_EQ(m["finish_reason"], "tool_calls");
  ASSERT_EQ(m["message"]["tool_calls"].size(), 2u);
  EXPECT_EQ(m["message"]["tool_calls"][1]["function"]["arguments"], "{\"city\":\"B\"}");
  EXPECT_NE(m["message"]["tool_calls"][0]["id"], m["message"]["tool_calls"][1]["id"]);
}

TEST_F(ProtocolTest, ToolCallStreams) {
  const json msgs = json::array({{{"role", "user"}, {"content", "hi"}}});
  // auto: content streams until a call may begin; a call's first delta (id, name) once its name is
  // whole, then its arguments as they come; the finished reply ends with "tool_calls".
  GenerationJob job = protocol_->parse_chat({{"messages", msgs}, {"tools", weather_tools()}, {"stream", true}});
  ResponseBuilder b(job, tok(), "chatcmpl-s", "smol", 5);
  auto chunks = b.add(0, delta({1}, "Sure <tool"));
  ASSERT_EQ(chunks.size(), 2u);  // the role, then "Sure" (" <tool" is held back)
  EXPECT_EQ(chunks[1]["choices"][0]["delta"], json({{"content", "Sure"}}));
  chunks = b.add(0, delta({2}, "_call>{\"name\": \"get_weather\", \"argu"));
  EXPECT_TRUE(chunks.empty()) << "its arguments have not begun";
  chunks = b.add(0, delta({3}, "ments\": {\"ci"));
  ASSERT_EQ(chunks.size(), 1u);
  const json begun = chunks[0]["choices"][0]["delta"]["tool_calls"][0];
  EXPECT_EQ(begun["index"], 0);
  EXPECT_EQ(begun["type"], "function");
  EXPECT_TRUE(begun["id"].get<std::string>().starts_with("call_"));
  EXPECT_EQ(begun["function"], json({{"name", "get_weather"}, {"arguments", "{\"ci"}}));
  chunks = b.add(0, delta({4}, "ty\": \"Oslo\"}}\n</tool_call>\n<tool_call>{\"name\": \"get_weather\", \"arguments\": {}}"));
  ASSERT_EQ(chunks.size(), 1u);
  const json more = chunks[0]["choices"][0]["delta"]["tool_calls"];
  ASSERT_EQ(more.size(), 2u);
  EXPECT_EQ(more[0], json({{"index", 0}, {"function", {{"arguments", "ty\": \"Oslo\"}"}}}}));
  EXPECT_EQ(more[1]["index"], 1);
  EXPECT_EQ(more[1]["function"], json({{"name", "get_weather"}, {"arguments", "{}"}}));
  EXPECT_NE(more[1]["id"], begun["id"]);
  chunks = b.add(0, delta({5}, "</tool_call>", true, FinishReason::kStop));
  ASSERT_EQ(chunks.size(), 1u);
  const json& last = chunks[0]["choices"][0];
  EXPECT_EQ(last["finish_reason"], "tool_calls");
  EXPECT_EQ(last["delta"], json::object()) << "every call went out already";
  // A call whose arguments are a string holding an object goes out whole at the end (its arguments the
  // object's compact text); a call to a function not on offer is held, then is content.
  ResponseBuilder str(job, tok(), "chatcmpl-s", "smol", 5);
  chunks = str.add(0, delta({1}, "<tool_call>{\"name\": \"get_weather\", \"arguments\": \"{\\\"a\\\": 1}\"}"));
  ASSERT_EQ(chunks.size(), 1u);  // the role alone
  chunks = str.add(0, delta({2}, "</tool_call>", true, FinishReason::kStop));
  ASSERT_EQ(chunks.size(), 1u);
  const json whole = chunks[0]["choices"][0]["delta"]["tool_calls"];
  ASSERT_EQ(whole.size(), 1u);
  EXPECT_EQ(whole[0]["function"], json({{"name", "get_weather"}, {"arguments", "{\"a\":1}"}}));
  EXPECT_TRUE(whole[0]["id"].get<std::string>().starts_with("call_"));
  ResponseBuilder other(job, tok(), "chatcmpl-s", "smol", 5);
  chunks = other.add(0, delta({1}, "<tool_call>{\"name\": \"nope\", \"arguments\": {}}"));
  ASSERT_EQ(chunks.size(), 1u);  // the role alone
  chunks = other.add(0, delta({2}, "</tool_call>", true, FinishReason::kStop));
  ASSERT_EQ(chunks.size(), 1u);
  EXPECT_EQ(chunks[0]["choices"][0]["delta"]["content"], "<tool_call>{\"name\": \"nope\", \"arguments\": {}}</tool_call>");
  EXPECT_EQ(chunks[0]["choices"][0]["finish_reason"], "stop");
  // A call begun commits the stream to calls: text after it that makes the finished reply content
  // (unstreamed, read_tool_reply) does not go out; a cut inside the arguments ends with "length".
  ResponseBuilder after(job, tok(), "chatcmpl-s", "smol", 5);
  after.add(0, delta({1}, "Hi. <tool_call>{\"name\": \"get_weather\", \"arguments\": {\"a\": 1}} trailing"));
  chunks = after.add(0, delta({2}, "</tool_call>", true, FinishReason::kStop));
  ASSERT_EQ(chunks.size(), 1u);
  EXPECT_EQ(chunks[0]["choices"][0]["delta"], json::object());
  EXPECT_EQ(chunks[0]["choices"][0]["finish_reason"], "tool_calls");
  EXPECT_TRUE(read_tool_reply(job.tools, "<tool_call>{\"name\": \"get_weather\", \"arguments\": {}} x</tool_call>")
                  .calls.empty());
  ResponseBuilder cut(job, tok(), "chatcmpl-s", "smol", 5);
  cut.add(0, delta({1}, "<tool_call>{\"name\": \"get_weather\", \"arguments\": {\"a\""));
  chunks = cut.add(0, delta({2}, ": 1", true, FinishReason::kLength));
  ASSERT_EQ(chunks.size(), 1u);
  EXPECT_EQ(chunks[0]["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"], ": 1");
  EXPECT_EQ(chunks[0]["choices"][0]["finish_reason"], "length");
  EXPECT_FALSE(chunks[0]["choices"][0]["delta"].contains("content"));
  // Arguments arriving a few bytes at a time (strings with brackets, quotes and backslashes cut
  // anywhere; each delta inside them scanned alone): their pieces join to exactly the written text,
  // and the call after them still begins on time.
  const std::string args = R"({"path": "a/b}.txt", "text": "x\"}{[\\", "n": [1, {"k": "]"}]})";
  const std::string reply = "<tool_call>{\"name\": \"get_weather\", \"arguments\": " + args +
                            "}</tool_call><tool_call>{\"name\": \"get_weather\", \"arguments\": {}}</tool_call>";
  for (size_t step : {1, 2, 3, 7}) {
    ResponseBuilder pieces(job, tok(), "chatcmpl-s", "smol", 5);
    std::map<int, std::string> got;
    for (size_t at = 0; at < reply.size(); at += step) {
      const bool last = at + step >= reply.size();
      for (const json& ch : pieces.add(0, delta({1}, reply.substr(at, step), last, last ? FinishReason::kStop : FinishReason::kNone))) {
        for (const json& tc : ch["choices"][0]["delta"].value("tool_calls", json::array())) {
          got[tc["index"].get<int>()] += tc["function"].value("arguments", "");
        }
      }
    }
    EXPECT_EQ(got, (std::map<int, std::string>{{0, args}, {1, "{}"}})) << "step " << step;
  }
  // required: the list's calls stream the same way. Then parallel_tool_calls false: the first call alone.
  GenerationJob list = protocol_->parse_chat({{"messages", msgs},
                                              {"tools", weather_tools(2)},
                                              {"tool_choice", "required"},
                                              {"stream", true}});
  ResponseBuilder req(list, tok(), "chatcmpl-s", "smol", 5);
  req.add(0, delta({1}, "[{\"name\": \"get_weather\", \"parameters\": {\"city\""));
  chunks = req.add(0, delta({2}, ": \"Rome\"}}]", true, FinishReason::kStop));
  ASSERT_EQ(chunks.size(), 1u);
  EXPECT_EQ(chunks[0]["choices"][0]["delta"]["tool_calls"],
            json::array({{{"index", 0}, {"function", {{"arguments", ": \"Rome\"}"}}}}}));
  EXPECT_EQ(chunks[0]["choices"][0]["finish_reason"], "tool_calls");
  GenerationJob one = protocol_->parse_chat(
      {{"messages", msgs}, {"tools", weather_tools()}, {"parallel_tool_calls", false}, {"stream", true}});
  ResponseBuilder single(one, tok(), "chatcmpl-s", "smol", 5);
  chunks = single.add(0, delta({1}, "<tool_call>{\"name\": \"get_weather\", \"arguments\": {}}</tool_call>"
                                    "<tool_call>{\"name\": \"get_weather\", \"arguments\": {\"x\": 2}}</tool_call>",
                               true, FinishReason::kStop));
  ASSERT_EQ(chunks.size(), 2u);  // the role, then the first call alone
  const json& only = chunks[1]["choices"][0];
  ASSERT_EQ(only["delta"]["tool_calls"].size(), 1u);
  EXPECT_EQ(only["delta"]["tool_calls"][0]["function"], json({{"name", "get_weather"}, {"arguments", "{}"}}));
  EXPECT_EQ(only["finish_reason"], "tool_calls");
  // auto, held text that was not a call after all goes out at the end.
  ResponseBuilder p(job, tok(), "chatcmpl-s", "smol", 5);
  p.add(0, delta({1}, "a <tool"));
  chunks = p.add(0, delta({2}, "", true, FinishReason::kLength));
  ASSERT_EQ(chunks.size(), 1u);
  EXPECT_EQ(chunks[0]["choices"][0]["delta"], json({{"content", " <tool"}}));
  EXPECT_EQ(chunks[0]["choices"][0]["finish_reason"], "length");
  // named: the arguments stream as they come, the first delta with the call's id and name.
  job = protocol_->parse_chat({{"messages", msgs},
                               {"tools", weather_tools()},
                               {"tool_choice", {{"type", "function"}, {"function", {{"name", "get_weather"}}}}},
                               {"stream", true}});
  ResponseBuilder n(job, tok(), "chatcmpl-s", "smol", 5);
  chunks = n.add(0, delta({1}, "{\"ci"));
  ASSERT_EQ(chunks.size(), 2u);
  const json first = chunks[1]["choices"][0]["delta"]["tool_calls"][0];
  EXPECT_EQ(first["function"], json({{"name", "get_weather"}, {"arguments", "{\"ci"}}));
  EXPECT_EQ(first["type"], "function");
  chunks = n.add(0, delta({2}, "ty\": \"X\"}", true, FinishReason::kStop));
  ASSERT_EQ(chunks.size(), 1u);
  const json next = chunks[0]["choices"][0]["delta"]["tool_calls"][0];
  EXPECT_EQ(next, json({{"index", 0}, {"function", {{"arguments", "ty\": \"X\"}"}}}}));
  EXPECT_EQ(chunks[0]["choices"][0]["finish_reason"], "stop");
}

TEST_F(ProtocolTest, InternalErrorBecomesAnErrorChunk) {
  const GenerationJob job = protocol_->parse_completion({{"prompt", "x"}, {"stream", true}});
  ResponseBuilder b(job, tok(), "cmpl-2", "smol", 5);
  RequestOutput o = delta({}, "", true, FinishReason::kError);
  o.error = "boom";
  const auto chunks = b.add(0, o);
  ASSERT_EQ(chunks.size(), 1u);
  EXPECT_THAT(chunks[0]["error"]["message"].get<std::string>(), HasSubstr("boom"));
  EXPECT_EQ(b.error(), "boom");
}

}  // namespace
}  // namespace sparseserve::openai
