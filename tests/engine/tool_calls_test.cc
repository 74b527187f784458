// engine/tool_calls: calls read out of replies in each family's convention, the streaming hold-back,
// and the prompt's tools block, calls and results (ChatTemplate::render with tools).
#include "engine/tool_calls.h"

#include <gtest/gtest.h>

#include "engine/chat_template.h"

namespace sparseserve {
namespace {

constexpr ChatTemplateKind kChatML = ChatTemplateKind::kChatML;
constexpr ChatTemplateKind kLlama3 = ChatTemplateKind::kLlama3;

TEST(ToolCalls, HermesBlocksBecomeCalls) {
  const ParsedReply r = parse_tool_calls(
      kChatML, "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n"
               "</tool_call>\n<tool_call>{\"name\": \"f\", \"arguments\": \"{\\\"x\\\": [1, 2]}\"}</tool_call>");
  EXPECT_EQ(r.content, "Let me check.");
  ASSERT_EQ(r.calls.size(), 2u);
  EXPECT_EQ(r.calls[0].name, "get_weather");
  EXPECT_EQ(r.calls[0].arguments, "{\"city\":\"Paris\"}");
  EXPECT_EQ(r.calls[1].name, "f");
  EXPECT_EQ(r.calls[1].arguments, "{\"x\":[1,2]}");  // arguments given as a string holding an object
  EXPECT_TRUE(r.calls[0].id.empty());
}

TEST(ToolCalls, HermesEdgeCases) {
  // No block: all content, untouched.
  EXPECT_EQ(parse_tool_calls(kChatML, " plain\n").content, " plain\n");
  // The last block cut before its closing tag still counts.
  ParsedReply r = parse_tool_calls(kChatML, "<tool_call>\n{\"name\": \"ping\", \"arguments\": {}}\n");
  EXPECT_EQ(r.content, "");
  ASSERT_EQ(r.calls.size(), 1u);
  EXPECT_EQ(r.calls[0].arguments, "{}");
  // "parameters" is read as the arguments.
  r = parse_tool_calls(kChatML, "<tool_call>{\"name\": \"a\", \"parameters\": {\"k\": null}}</tool_call>");
  ASSERT_EQ(r.calls.size(), 1u);
  EXPECT_EQ(r.calls[0].arguments, "{\"k\":null}");
  // A closing tag inside the arguments' strings is text: the block ends after the object (as the
  // streaming reader follows it); it made the whole reply content.
  r = parse_tool_calls(kChatML,
                       "<tool_call>\n{\"name\": \"echo\", \"arguments\": {\"text\": \"</tool_call>\"}}\n</tool_call>\n"
                       "<tool_call>{\"name\": \"ping\", \"arguments\": {}}</tool_call>");
  ASSERT_EQ(r.calls.size(), 2u) << r.content;
  EXPECT_EQ(r.calls[0].arguments, "{\"text\":\"</tool_call>\"}");
  EXPECT_EQ(r.calls[1].name, "ping");
  // One bad block makes the whole reply content (vLLM's parsers do the same).
  for (const char* bad : {"<tool_call>{\"name\": \"a\"}</tool_call><tool_call>{oops}</tool_call>",
                          "<tool_call>{\"name\": \"\", \"arguments\": {}}</tool_call>", "<tool_call>{\"arguments\": {}}</tool_call>",
                          "<tool_call>{\"name\": \"a\"}</tool_call>",  // no arguments: not a call
                          "<tool_call>{\"name\": \"a\", \"arguments\": [1]}</tool_call>",
                          "<tool_call>{\"name\": 3}</tool_call>", "<tool_call>[]</tool_call>",
                          // both keys: which one would be the arguments is not clear
                          "<tool_call>{\"name\": \"a\", \"parameters\": {}, \"arguments\": {\"b\": 2}}</tool_call>"}) {
    r = parse_tool_calls(kChatML, bad);
    EXPECT_TRUE(r.calls.empty()) << bad;
    EXPECT_EQ(r.content, bad);
  }
}

TEST(ToolCalls, Llama3JsonReplies) {
  ParsedReply r = parse_tool_calls(kLlama3, "  {\"name\": \"f\", \"parameters\": {\"s\": \"a;b}\"}} ; {\"name\": \"g\", \"arguments\": {}}");
  EXPECT_EQ(r.content, "");
  ASSERT_EQ(r.calls.size(), 2u);
  EXPECT_EQ(r.calls[0].name, "f");
  EXPECT_EQ(r.calls[0].arguments, "{\"s\":\"a;b}\"}");  // ';' and '}' inside a string do not split
  EXPECT_EQ(r.calls[1].name, "g");
  EXPECT_EQ(r.calls[1].arguments, "{}");
  // Not calls: text, a trailing word, a misspelt key, a JSON answer that merely has a "name".
  for (const char* text : {"The answer is {x}.", "{\"name\": \"f\", \"parameters\": {}} trailing",
                           "{\"nam\": \"f\", \"parameters\": {}}", "", "{\"name\": \"Alice\", \"age\": 30}"}) {
    r = parse_tool_calls(kLlama3, text);
    EXPECT_TRUE(r.calls.empty()) << text;
    EXPECT_EQ(r.content, text);
  }
}

TEST(ToolCalls, StreamingHoldsBackWhatMayBeginACall) {
  EXPECT_EQ(tool_free_prefix(kChatML, "Hello"), 5u);
  EXPECT_EQ(tool_free_prefix(kChatML, "Hello <"), 5u);  // the space too: it goes if a call follows
  EXPECT_EQ(tool_free_prefix(kChatML, "Hello <tool_ca"), 5u);
  EXPECT_EQ(tool_free_prefix(kChatML, "Hello <tool_cx"), 14u);  // cannot be the tag any more
  EXPECT_EQ(tool_free_prefix(kChatML, "Hi\n<tool_call>\n{\"na"), 2u);
  EXPECT_EQ(tool_free_prefix(kChatML, "Hi \n"), 2u);
  EXPECT_EQ(tool_free_prefix(kChatML, ""), 0u);
  EXPECT_EQ(tool_free_prefix(kLlama3, " \n"), 0u);
  EXPECT_EQ(tool_free_prefix(kLlama3, " {\"name"), 0u);
  EXPECT_EQ(tool_free_prefix(kLlama3, " Sure"), 5u);
  // The prefix never shrinks as the text grows.
  const std::string reply = "ok <tool <tool_call>{\"name\": \"f\", \"arguments\": {}}</tool_call>";
  size_t last = 0;
  for (size_t n = 0; n <= reply.size(); ++n) {
    const size_t p = tool_free_prefix(kChatML, std::string_view(reply).substr(0, n));
    EXPECT_GE(p, last) << n;
    EXPECT_LE(p, n);
    last = p;
  }
  EXPECT_EQ(last, 8u);
  // What streams is a prefix of the content the finished reply is read as.
  EXPECT_EQ(parse_tool_calls(kChatML, reply).content, reply.substr(0, last));
}

TEST(ToolCalls, DeepValuesAreNotCalls) {
  // Copying or writing a value recurses per level: a reply nesting past kMaxJsonDepth is text.
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  const std::string reply = "<tool_call>{\"name\": \"f\", \"arguments\": {\"x\": " + deep + "}}</tool_call>";
  const ParsedReply r = parse_tool_calls(kChatML, reply);
  EXPECT_TRUE(r.calls.empty());
  EXPECT_EQ(r.content.size(), reply.size());
}

TEST(ToolCalls, CallsRoundTripThroughTheirPromptText) {
  // The arguments as the templates' tojson (json.dumps) writes them, whatever the client's spacing,
  // escapes or key order (kept), as vLLM renders them.
  for (const char* args : {"{\"city\":\"S\u00e3o Paulo\",\"days\":3}", "{\n  \"city\": \"São Paulo\",\n  \"days\": 3\n}"}) {
    const ChatToolCall call{.id = "c1", .name = "get_weather", .arguments = args};
    EXPECT_EQ(tool_call_text(kChatML, call),
              "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"São Paulo\", \"days\": 3}}\n</tool_call>");
    EXPECT_EQ(tool_call_text(kLlama3, call),
              "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"São Paulo\", \"days\": 3}}");
  }
  // Integers keep their digits past 64 bits (Python's int); other numbers are written shortest.
  EXPECT_EQ(tool_call_text(kLlama3, {.id = "c", .name = "f", .arguments = "{\"n\":123456789012345678901234567890,"
                                                                            "\"m\":-9223372036854775809,\"x\":1E5,\"y\":0.1}"}),
            "{\"name\": \"f\", \"parameters\": {\"n\": 123456789012345678901234567890, \"m\": -9223372036854775809, "
            "\"x\": 100000.0, \"y\": 0.1}}");
  const ChatToolCall call{.id = "c1", .name = "get_weather", .arguments = "{\"city\":\"Paris\"}"};
  for (ChatTemplateKind kind : {kChatML, kLlama3}) {
    const ParsedReply r = parse_tool_calls(kind, tool_call_text(kind, call));
    ASSERT_EQ(r.calls.size(), 1u);
    EXPECT_EQ(r.calls[0].name, call.name);
    EXPECT_EQ(r.calls[0].arguments, call.arguments);
  }
}

TEST(ToolCalls, ChatMLRendersToolsCallsAndResults) {
  const ChatTemplate t = ChatTemplate::by_name("chatml");
  const std::vector<std::string> tools = {"{\"type\":\"function\",\"function\":{\"name\":\"f\"}}",
                                          "{\"type\":\"function\",\"function\":{\"name\":\"g\"}}"};
  const std::string offer = tools_system_text(kChatML, tools);
  EXPECT_NE(offer.find("<tools>\n" + tools[0] + "\n" + tools[1] + "\n</tools>"), std::string::npos);
  const std::vector<ChatMessage> conv = {
      {"user", "Q"},
      {"assistant", "", {{"c1", "f", "{}"}, {"c2", "g", "{\"a\":1}"}}},
      {"tool", "R1"},
      {"tool", "R2"},
      {"assistant", "Done"}};
  EXPECT_EQ(t.render(conv, true, {}, tools),
            "<|im_start|>system\n" + offer + "<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n" +
                tool_call_text(kChatML, conv[1].tool_calls[0]) + "\n" + tool_call_text(kChatML, conv[1].tool_calls[1]) +
                "<|im_end|>\n<|im_start|>user\n<tool_response>\nR1\n</tool_response>\n<tool_response>\nR2\n"
                "</tool_response><|im_end|>\n<|im_start|>assistant\nDone<|im_end|>\n<|im_start|>assistant\n");
  // A leading system message carries the offer after its text; without tools nothing changes.
  EXPECT_EQ(t.render({{"system", "S"}, {"user", "Q"}}, false, {}, tools),
            "<|im_start|>system\nS\n\n" + offer + "<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n");
  EXPECT_EQ(t.render({{"system", "S"}, {"user", "Q"}}, false), "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n");
  // An assistant's content comes before its calls.
  EXPECT_EQ(t.render({{"assistant", "Hm.", {{"c", "f", "{}"}}}}, false),
            "<|im_start|>assistant\nHm.\n" + tool_call_text(kChatML, {"c", "f", "{}"}) + "<|im_end|>\n");
}

TEST(ToolCalls, Llama3RendersToolsCallsAndResults) {
  const ChatTemplate t = ChatTemplate::by_name("llama3");
  const std::vector<std::string> tools = {"{\"type\":\"function\",\"function\":{\"name\":\"f\"}}"};
  const std::string offer = tools_system_text(kLlama3, tools);
  EXPECT_NE(offer.find("\n\n" + tools[0]), std::string::npos);
  const std::vector<ChatMessage> conv = {
      {"system", " S "}, {"user", "Q"}, {"assistant", "", {{"c1", "f", "{}"}, {"c2", "f", "{\"a\":1}"}}}, {"tool", "R"}};
  EXPECT_EQ(t.render(conv, true, {}, tools),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nS\n\n" + offer +
                "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nQ<|eot_id|>"
                "<|start_header_id|>assistant<|end_header_id|>\n\n{\"name\": \"f\", \"parameters\": {}}; "
                "{\"name\": \"f\", \"parameters\": {\"a\": 1}}<|eot_id|><|start_header_id|>ipython<|end_header_id|>\n\n"
                "R<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n");
}

}  // namespace
}  // namespace sparseserve

namespace sparseserve {
namespace {

// call_prefixes over every prefix of a finished reply: calls appear in order once their arguments
// have begun, each call's arguments only grow (each a prefix of the finished raw text), and the finished
// reply gives every call closed with exactly its raw arguments object.
void expect_streams(ChatTemplateKind kind, bool list, std::string_view reply,
                    const std::vector<std::pair<std::string, std::string>>& calls) {
  std::vector<CallPrefix> before;
  for (size_t n = 0; n <= reply.size(); ++n) {
    SCOPED_TRACE(std::string(reply.substr(0, n)));
    const std::vector<CallPrefix> now = call_prefixes(kind, list, reply.substr(0, n));
    ASSERT_GE(now.size(), before.size());
    ASSERT_LE(now.size(), calls.size());
    for (size_t i = 0; i < now.size(); ++i) {
      EXPECT_EQ(now[i].name, calls[i].first);
      EXPECT_TRUE(calls[i].second.starts_with(now[i].arguments)) << now[i].arguments;
      EXPECT_EQ(now[i].closed, now[i].arguments == calls[i].second);
      if (i < before.size()) {
        EXPECT_TRUE(now[i].arguments.starts_with(before[i].arguments));
      }
    }
    before = now;
  }
  ASSERT_EQ(before.size(), calls.size());
  for (const CallPrefix& p : before) EXPECT_TRUE(p.closed);
}

TEST(ToolCallStreaming, PrefixesGrowIntoTheFinishedCalls) {
  expect_streams(ChatTemplateKind::kChatML, false,
                 "Let me check. <tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Pa}ris\", "
                 "\"days\": [1, {\"x\": \"\\\"\"}]}}\n</tool_call>\n<tool_call>{\"name\":\"get_time\",\"arguments\":{}}"
                 "</tool_call>",
                 {{"get_weather", "{\"city\": \"Pa}ris\", \"days\": [1, {\"x\": \"\\\"\"}]}"}, {"get_time", "{}"}});
  expect_streams(ChatTemplateKind::kLlama3, false,
                 " {\"name\": \"f\\u00e9\", \"parameters\": {\"a\": 1}}; {\"name\": \"g\", \"parameters\": {}}",
                 {{"f\xC3\xA9", "{\"a\": 1}"}, {"g", "{}"}});
  expect_streams(ChatTemplateKind::kChatML, true,
                 "[{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo\"}}, {\"name\": \"get_time\", "
                 "\"parameters\": {\"city\": \"Rome\"}}]",
                 {{"get_weather", "{\"city\": \"Oslo\"}"}, {"get_time", "{\"city\": \"Rome\"}"}});
}

TEST(ToolCallStreaming, StopsAtWhatItCannotFollow) {
  const auto names = [](std::string_view reply, bool list = false,
                        ChatTemplateKind kind = ChatTemplateKind::kChatML) {
    std::vector<std::string> out;
    for (const CallPrefix& p : call_prefixes(kind, list, reply)) out.push_back(p.name + (p.closed ? "" : "…"));
    return out;
  };
  using V = std::vector<std::string>;
  EXPECT_EQ(names("no calls here"), V{});
  EXPECT_EQ(names("<tool_call>{\"arguments\": {}, \"name\": \"f\"}</tool_call>"), V{}) << "arguments first";
  EXPECT_EQ(names("<tool_call>{\"name\": \"f\", \"arguments\": \"{}\"}</tool_call>"), V{}) << "a string";
  EXPECT_EQ(names("<tool_call>{\"name\": \"f\"}</tool_call>"), V{}) << "no arguments";
  EXPECT_EQ(names("<tool_call>{\"name\": \"\", \"arguments\": {}}"), V{}) << "no name";
  EXPECT_EQ(names("<tool_call>{\"name\": \"f\", \"arguments\": {}, \"id\": 1}</tool_call><tool_call>"
                  "{\"name\": \"g\", \"arguments\": {}}"),
            V{"f"}) << "a key after the arguments: the next call is not followed";
  EXPECT_EQ(names("<tool_call>{\"name\": \"f\", \"arguments\": {}}</tool_call> and <tool_call>{\"name\": \"g\""), V{"f"});
  EXPECT_EQ(names("<tool_call>{\"name\": \"f\", \"argu"), V{}) << "its arguments not begun";
  EXPECT_EQ(names("<tool_call>{\"name\": \"f\", \"arguments\": {"), V{"f…"});
  EXPECT_EQ(names("<tool_call>{\"name\": \"f"), V{}) << "the name still open";
  EXPECT_EQ(names("{\"name\": \"f\", \"parameters\": {}} {\"name\": \"g\"", false, ChatTemplateKind::kLlama3), V{"f"});
  EXPECT_EQ(names("[{\"name\": \"f\", \"parameters\": {}}][", true), V{"f"});
  EXPECT_EQ(names("{\"name\": \"f\", \"parameters\": {}}", true), V{}) << "a list must open with [";
  std::string deep = "<tool_call>{\"name\": \"f\", \"arguments\": ";
  for (int i = 0; i < 300; ++i) deep += "{\"a\": ";
  EXPECT_EQ(names(deep), V{}) << "nesting past kMaxJsonDepth: no call (nor for parse_tool_calls)";
}

}  // namespace
}  // namespace sparseserve
