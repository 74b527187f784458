// ChatTemplate: exact rendered prompts of both families, detection from Jinja text (the default
// model's own template when present), default system prompts, errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "common/errors.h"
#include "engine/chat_prompt.h"
#include "engine/chat_template.h"
#include "engine/gguf.h"
#include "engine/model.h"
#include "engine/tokenizer.h"

namespace sparseserve {
namespace {

using Messages = std::vector<ChatMessage>;

std::string model_path() {
  if (const char* env = std::getenv("SPARSESERVE_MODEL")) {
    std::filesystem::path p(env);
    return p.is_absolute() ? p.string() : (std::filesystem::path(SPARSESERVE_SOURCE_DIR) / p).string();
  }
  return std::string(SPARSESERVE_SOURCE_DIR) + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
}

const Messages kConversation = {
    {"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Hello!"}, {"user", "2+2?"}};

TEST(ChatTemplate, ChatMLExact) {
  const ChatTemplate t = ChatTemplate::by_name("chatml");
  EXPECT_EQ(t.kind(), ChatTemplateKind::kChatML);
  EXPECT_EQ(t.name(), "chatml");
  EXPECT_EQ(t.end_of_turn(), "<|im_end|>");
  EXPECT_EQ(t.render(kConversation, true),
            "<|im_start|>system\nBe brief.<|im_end|>\n"
            "<|im_start|>user\nHi<|im_end|>\n"
            "<|im_start|>assistant\nHello!<|im_end|>\n"
            "<|im_start|>user\n2+2?<|im_end|>\n"
            "<|im_start|>assistant\n");
  // No generation prompt; no system message injected when the template declares none.
  EXPECT_EQ(t.render({{"user", " x \n"}}, false), "<|im_start|>user\n x \n<|im_end|>\n");
}

TEST(ChatTemplate, Llama3Exact) {
  const ChatTemplate t = ChatTemplate::by_name("llama3");
  EXPECT_EQ(t.kind(), ChatTemplateKind::kLlama3);
  EXPECT_EQ(t.name(), "llama3");
  EXPECT_EQ(t.end_of_turn(), "<|eot_id|>");
  EXPECT_EQ(t.render(kConversation, true),
            "<|begin_of_text|>"
            "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\n2+2?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
  // Content is trimmed, as the template's `| trim` does.
  EXPECT_EQ(t.render({{"user", "  x y \n"}}, false),
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nx y<|eot_id|>");
}

// transformers' continue_final_message: the render without a generation prompt, cut after the
// final message's content (its trimmed content where the template trims).
TEST(ChatTemplate, ContinuingLeavesTheFinalMessageOpen) {
  const std::vector<ChatMessage> open{{"user", "Capital of France?"}, {"assistant", "It is "}};
  EXPECT_EQ(ChatTemplate::by_name("chatml").render_continuing(open),
            "<|im_start|>user\nCapital of France?<|im_end|>\n<|im_start|>assistant\nIt is ");
  EXPECT_EQ(ChatTemplate::by_name("llama3").render_continuing(open),
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nCapital of France?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\nIt is");
  // The last occurrence of the trimmed content is cut at, so content repeated earlier in the
  // conversation is no trap, trailing whitespace or not.
  EXPECT_EQ(ChatTemplate::by_name("chatml").render_continuing({{"user", "Say A"}, {"assistant", "A"}}),
            "<|im_start|>user\nSay A<|im_end|>\n<|im_start|>assistant\nA");
  EXPECT_EQ(ChatTemplate::by_name("llama3").render_continuing(
                {{"user", "Complete: The answer is 42"}, {"assistant", "The answer is "}}),
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nComplete: The answer is 42<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\nThe answer is");
  // Leading whitespace the template trimmed: the trimmed content is where it ends.
  EXPECT_EQ(ChatTemplate::by_name("llama3").render_continuing({{"user", "x"}, {"assistant", "  It is"}}),
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nx<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\nIt is");
  EXPECT_THROW(ChatTemplate::by_name("chatml").render_continuing({{"user", "x"}, {"assistant", ""}}), InvalidArgument);
  EXPECT_THROW(ChatTemplate::by_name("llama3").render_continuing({{"user", "x"}, {"assistant", " \n"}}), InvalidArgument);
}

TEST(ChatTemplate, DetectsSmolLM2TemplateAndDefaultSystemPrompt) {
  if (!std::filesystem::exists(model_path())) GTEST_SKIP() << "missing " << model_path();
  const GgufFile gguf = GgufFile::open(model_path());
  const auto jinja = gguf.opt_string("tokenizer.chat_template");
  ASSERT_TRUE(jinja.has_value());
  const ChatTemplate t = ChatTemplate::detect(*jinja, model_path());
  EXPECT_EQ(t.kind(), ChatTemplateKind::kChatML);
  const std::string system = "You are a helpful AI assistant named SmolLM, trained by Hugging Face";
  EXPECT_EQ(t.default_system(), system);
  EXPECT_EQ(t.render({{"user", "Hi"}}, true),
            "<|im_start|>system\n" + system + "<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
            "<|im_start|>assistant\n");
  // A conversation with its own system message gets no second one.
  EXPECT_EQ(t.render({{"system", "S"}, {"user", "Hi"}}, false),
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n");

  // The rendered prompt encodes with add_special = false: the special tokens become their ids.
  const Tokenizer tok = Tokenizer::from_gguf(gguf);
  const std::vector<int32_t> ids = tok.encode(t.render({{"user", "Hi"}}, true), false);
  ASSERT_FALSE(ids.empty());
  EXPECT_EQ(ids.front(), tok.token_id("<|im_start|>"));
  EXPECT_EQ(std::count(ids.begin(), ids.end(), tok.token_id(t.end_of_turn())), 2);
}

TEST(ChatTemplate, DefaultSystemPromptFromEscapedLiteral) {
  // Qwen-style: the literal spells its newlines as \n escapes.
  const std::string jinja =
      "{%- if messages[0]['role'] != 'system' %}"
      "{{- '<|im_start|>system\\nYou are Qwen, a \\'helpful\\' assistant.<|im_end|>\\n' }}"
      "{%- endif %}{%- for message in messages %}"
      "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
      "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}";
  const ChatTemplate t = ChatTemplate::detect(jinja, "tokenizer_config.json");
  EXPECT_EQ(t.default_system(), "You are Qwen, a 'helpful' assistant.");
}

TEST(ChatTemplate, NoDefaultSystemWhenBuiltFromVariables) {
  const std::string jinja =
      "{% if messages[0]['role'] == 'system' %}{{ '<|im_start|>system\n' + messages[0]['content'] "
      "+ '<|im_end|>\n' }}{% endif %}{% for m in messages %}{{'<|im_start|>' + m['role'] + '\n' + "
      "m['content'] + '<|im_end|>\n'}}{% endfor %}";
  const ChatTemplate t = ChatTemplate::detect(jinja, "x");
  EXPECT_EQ(t.kind(), ChatTemplateKind::kChatML);
  EXPECT_EQ(t.default_system(), "");
  EXPECT_EQ(t.render({{"user", "u"}}, false), "<|im_start|>user\nu<|im_end|>\n");
}

TEST(ChatTemplate, DetectsLlama3) {
  const std::string jinja =
      "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
      "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | "
      "trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}"
      "{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
      "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";
  const ChatTemplate t = ChatTemplate::detect(jinja, "x");
  EXPECT_EQ(t.kind(), ChatTemplateKind::kLlama3);
  EXPECT_EQ(t.default_system(), "");

  const std::string with_default =
      "{% if messages[0]['role'] != 'system' %}{{ \"<|start_header_id|>system<|end_header_id|>"
      "\\n\\nAnswer in French.<|eot_id|>\" }}{% endif %}" + jinja;
  const ChatTemplate d = ChatTemplate::detect(with_default, "x");
  EXPECT_EQ(d.default_system(), "Answer in French.");
  EXPECT_EQ(d.render({{"user", "Hi"}}, false),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nAnswer in French."
            "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>");
}

// The statements of Llama 3.1's template that matter here (no tools): a date_string default, the
// leading system message taken out and trimmed, a system block that is always written. The expected
// prompts below are what Jinja2 3.1.6 renders from this text (checked once by hand, outside CI, which
// has no Jinja2), as are the trim results.
std::string llama31_like(std::string_view date_setup) {
  return "{{- bos_token }}\n{%- if not date_string is defined %}" + std::string(date_setup) +
         "{%- endif %}\n{%- if messages[0]['role'] == 'system' %}\n"
         "    {%- set system_message = messages[0]['content']|trim %}\n    {%- set messages = messages[1:] %}\n"
         "{%- else %}\n    {%- set system_message = \"\" %}\n{%- endif %}\n"
         "{{- \"<|start_header_id|>system<|end_header_id|>\\n\\n\" }}\n"
         "{{- \"Cutting Knowledge Date: December 2023\\n\" }}\n"
         "{{- \"Today Date: \" + date_string + \"\\n\\n\" }}\n{{- system_message }}\n{{- \"<|eot_id|>\" }}\n"
         "{%- for message in messages %}\n    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ "
         "message['content'] | trim + '<|eot_id|>' }}\n{%- endfor %}\n"
         "{%- if add_generation_prompt %}\n    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n{%- endif %}\n";
}

TEST(ChatTemplate, Llama31SystemBlockWithTheKnowledgeDateIsAlwaysThere) {
  const ChatTemplate t = ChatTemplate::detect(llama31_like("{%- set date_string = \"26 Jul 2024\" %}"), "x");
  EXPECT_EQ(t.kind(), ChatTemplateKind::kLlama3);
  ASSERT_TRUE(t.dated_system().has_value());
  EXPECT_FALSE(t.dated_system()->today);
  const std::string block = "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: "
                            "December 2023\nToday Date: 26 Jul 2024\n\n";
  EXPECT_EQ(t.render(kConversation, true),
            block + "Be brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                    "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|><|start_header_id|>user"
                    "<|end_header_id|>\n\n2+2?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n");
  EXPECT_EQ(t.render({{"user", "Hi"}}, false),
            block + "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>");
  // Only a leading system message goes into the block; a later one stays where it is.
  EXPECT_EQ(t.render({{"system", "  S  "}, {"user", "u"}, {"system", "T"}}, false),
            block + "S<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nu<|eot_id|>"
                    "<|start_header_id|>system<|end_header_id|>\n\nT<|eot_id|>");
}

// Tools as Llama 3.2's template writes them (tools_in_user_message): the expected prompt is what
// Jinja2 3.1 renders from Meta's template with transformers' settings and tojson (checked outside CI,
// which has no Jinja2), the call's arguments given to it as a dict (as vLLM passes them).
TEST(ChatTemplate, Llama31ToolsGoIntoTheFirstUserMessageAsTheTemplateWritesThem) {
  const ChatTemplate t = ChatTemplate::detect(llama31_like("{%- set date_string = \"26 Jul 2024\" %}"), "x");
  const std::vector<std::string> tools = {
      R"({"type":"function","function":{"name":"f","parameters":{"type":"object","properties":{"a":{"type":"string"}}}}})"};
  const std::vector<ChatMessage> conv = {{"system", "S"},
                                         {"user", " Q "},
                                         {"assistant", "", {{"c1", "f", "{\"a\":\"x\u00e9\",\"b\":[1,{\"c\":null}]}"}}},
                                         {"tool", "R \"q\""}};
  EXPECT_EQ(t.render(conv, true, {}, tools),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nEnvironment: ipython\nCutting Knowledge "
            "Date: December 2023\nToday Date: 26 Jul 2024\n\nS<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
            "Given the following functions, please respond with a JSON for a function call with its proper arguments "
            "that best answers the given prompt.\n\nRespond in the format {\"name\": function name, \"parameters\": "
            "dictionary of argument name and its value}.Do not use variables.\n\n{\n    \"type\": \"function\",\n"
            "    \"function\": {\n        \"name\": \"f\",\n        \"parameters\": {\n            \"type\": "
            "\"object\",\n            \"properties\": {\n                \"a\": {\n                    \"type\": "
            "\"string\"\n                }\n            }\n        }\n    }\n}\n\nQ<|eot_id|><|start_header_id|>"
            "assistant<|end_header_id|>\n\n{\"name\": \"f\", \"parameters\": {\"a\": \"x\u00e9\", \"b\": "
            "[1, {\"c\": null}]}}<|eot_id|><|start_header_id|>ipython<|end_header_id|>\n\n\"R \\\"q\\\"\"<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
  // Tools need a message to go into.
  EXPECT_THROW(t.render({{"system", "S"}}, true, {}, tools), InvalidArgument);
}

TEST(ChatTemplate, Llama32PrintsTodaysDateWhenTheTemplateAsksForStrftimeNow) {
  const ChatTemplate t = ChatTemplate::detect(
      llama31_like("{%- if strftime_now is defined %}{%- set date_string = strftime_now(\"%d %b %Y\") %}"
                   "{%- else %}{%- set date_string = \"26 Jul 2024\" %}{%- endif %}"),
      "x");
  ASSERT_TRUE(t.dated_system().has_value());
  EXPECT_TRUE(t.dated_system()->today);
  EXPECT_NE(t.render({{"user", "Hi"}}, false, "05 Dec 2026").find("\nToday Date: 05 Dec 2026\n\n<|eot_id|>"),
            std::string::npos);
  const std::string now = t.render({{"user", "Hi"}}, false);
  const size_t at = now.find("Today Date: ");
  ASSERT_NE(at, std::string::npos);
  const std::string date = now.substr(at + 12, 11);  // "DD Mon YYYY"
  EXPECT_TRUE(std::isdigit(date[0]) && std::isdigit(date[1]) && date[2] == ' ' && std::isupper(date[3]) &&
              date[6] == ' ' && std::isdigit(date[7]) && now.substr(at + 23, 2) == "\n\n")
      << date;
}

TEST(ChatTemplate, Llama3TrimsWhitespaceAsPythonStrips) {
  const ChatTemplate t = ChatTemplate::by_name("llama3");
  // U+00A0, U+3000, U+2028, U+0085 and \x1c are str.isspace; U+200B (zero width space) is not.
  EXPECT_EQ(t.render({{"user", "\u00a0 \x1c hi there\u3000\n\u2028\u0085"}}, false),
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi there<|eot_id|>");
  EXPECT_EQ(t.render({{"user", "\u200bhi\u200b"}}, false),
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n\u200bhi\u200b<|eot_id|>");
  EXPECT_EQ(t.render({{"user", " \xff "}}, false),  // invalid UTF-8 is no whitespace, and stays
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n\xff<|eot_id|>");
}

TEST(ChatTemplate, AChatMLTemplateThatWritesBosTokenFirstGetsTheBosId) {
  const std::string hermes =
      "{{bos_token}}{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
      "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
  const std::string smol =
      "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + "
      "'\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
  EXPECT_TRUE(ChatTemplate::detect(hermes, "t").writes_bos());
  EXPECT_TRUE(ChatTemplate::detect("{%- if true %}{{- bos_token + '<|im_start|>system\nX<|im_end|>\n' }}{% endif %}" + smol, "t")
                  .writes_bos());
  EXPECT_FALSE(ChatTemplate::detect(smol, "t").writes_bos());
  EXPECT_FALSE(ChatTemplate::detect(smol + "{{ bos_token }}", "t").writes_bos());  // not before the first turn
  EXPECT_FALSE(ChatTemplate::detect("{% set b = 'bos_token' %}" + smol, "t").writes_bos());  // not printed
  EXPECT_FALSE(ChatTemplate::by_name("chatml").writes_bos());

  if (!std::filesystem::exists(model_path())) GTEST_SKIP() << "missing " << model_path();
  std::unique_ptr<Model> model = load_model(model_path());
  const int32_t bos = model->tokenizer.bos_id();
  ASSERT_GE(bos, 0);
  const Messages hi = {{"user", "Hi"}};
  model->chat_template = ChatTemplate::detect(smol, "t");
  const std::vector<int32_t> without = encode_chat(*model, hi).ids;
  model->chat_template = ChatTemplate::detect(hermes, "t");
  const std::vector<int32_t> with = encode_chat(*model, hi).ids;
  ASSERT_EQ(with.size(), without.size() + 1);
  EXPECT_EQ(with.front(), bos);
  EXPECT_TRUE(std::equal(without.begin(), without.end(), with.begin() + 1));
}

TEST(ChatTemplate, Errors) {
  try {
    ChatTemplate::detect("{{ messages }}[INST]", "model.gguf");
    ADD_FAILURE() << "unrecognised template accepted";
  } catch (const ModelFileError& e) {
    EXPECT_EQ(e.file(), "model.gguf");
  }
  EXPECT_THROW(ChatTemplate::by_name("mistral"), InvalidArgument);
  EXPECT_THROW(ChatTemplate::by_name(""), InvalidArgument);
  for (const char* name : {"chatml", "llama3"}) {
    const ChatTemplate t = ChatTemplate::by_name(name);
    EXPECT_THROW(t.render({}, true), InvalidArgument);
    EXPECT_THROW(t.render({{"user", "a"}, {"robot", "b"}}, true), InvalidArgument);
    EXPECT_THROW(t.render({{"User", "a"}}, true), InvalidArgument);
  }
}

}  // namespace
}  // namespace sparseserve
