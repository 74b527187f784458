// Tool calling on /v1/chat/completions: OpenAI's `tools`, `tool_choice` and `parallel_tool_calls`,
// the assistant messages' `tool_calls`, and replies read back as `tool_calls` (vLLM's behaviour):
//   tool_choice "none"      the tools are offered in the prompt, the reply is text;
//   "auto" (the default     the reply is read with the model family's parser (engine/tool_calls.h);
//   when tools are given)   calls found → message.tool_calls, finish_reason "tool_calls";
//   "required"              the output is constrained to a JSON array of {"name", "parameters"},
//                           each call following its tool's parameters (an anyOf of the tools);
//   {"type": "function",    the output is constrained to that function's parameters schema and is
//    "function": {"name"}}  returned as its arguments; finish_reason stays "stop" / "length".
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "engine/chat_template.h"
#include "engine/json_schema.h"
#include "engine/tool_calls.h"
#include "server/openai_protocol.h"

namespace sparseserve::openai {

// The request's tool fields, checked (400 naming the field otherwise).
struct ToolRequest {
  std::vector<std::string> definitions;      // offered in the prompt, compact JSON each
  ToolUse use;
  std::shared_ptr<const JsonSchema> schema;  // kRequired / kNamed: the output's schema
};
// format: the model's chat family (how its replies write calls). tools_in_order: body["tools"] again
// with its keys in the client's order (parse_json_bounded<ojson>), which the definitions keep, as vLLM's
// templates write the client's dicts; null: the definitions' parameter schemas list their keys sorted,
// as `json` holds them.
ToolRequest parse_tools(const json& body, ChatTemplateKind format, const ojson* tools_in_order = nullptr);

// An assistant message's tool_calls ([{"id", "type": "function", "function": {"name", "arguments"}}],
// arguments the JSON text of an object); `at` names the field in errors.
std::vector<ChatToolCall> parse_message_tool_calls(const json& calls, const std::string& at);

// A finished reply read under `use`: its content and calls (ids still empty). kNone: all content.
ParsedReply read_tool_reply(const ToolUse& use, std::string_view text);

// OpenAI's tool_calls list: [{"index"?, "id", "type": "function", "function": {"name", "arguments"}}];
// with_index for stream deltas.
ojson tool_calls_json(const std::vector<ChatToolCall>& calls, bool with_index);

}  // namespace sparseserve::openai
