// Tool calling in each chat family's convention: how the tools on offer and earlier calls are
// written into a prompt, and how calls are read back out of a reply (vLLM's tool parsers).
//
//   ChatML (the Hermes convention, as Qwen2 and Qwen2.5 use it): the tools' definitions, one JSON
//     object per line, between <tools> and </tools> in the system message; a call is
//     <tool_call>\n{"name": NAME, "arguments": {...}}\n</tool_call> in the assistant's turn; results
//     come back in a user turn as <tool_response>\n...\n</tool_response>, one per result.
//   Llama-3 (3.1's JSON convention): the definitions in the system message; a call is the whole
//     reply {"name": NAME, "parameters": {...}} (several joined by "; "); results come back in
//     "ipython" turns.
#pragma once

#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "engine/chat_template.h"

namespace sparseserve {

// The system-message text that offers `tools` (each a function's definition as compact JSON:
// {"type": "function", "function": {"name", "description", "parameters"}}) and says how to call them.
std::string tools_system_text(ChatTemplateKind kind, std::span<const std::string> tools);

// An assistant's call as the family writes it in a prompt (arguments: the JSON text of an object,
// written again as json.dumps writes it: python_json.h).
std::string tool_call_text(ChatTemplateKind kind, const ChatToolCall& call);

struct ParsedReply {
  std::string content;               // the reply's text outside the calls ("" when none)
  std::vector<ChatToolCall> calls;   // in order; ids left empty; arguments compact JSON of an object
};

// The calls in a finished reply. A reply whose call blocks do not all hold a JSON object with a
// string "name" and an object "arguments" or "parameters" (not both), nesting at most kMaxJsonDepth, is all
// content, as vLLM's parsers read it. ChatML: content is the text before the first <tool_call>, trailing whitespace removed;
// a last block may lack its </tool_call> (max_tokens or a stop string cut it after the JSON).
// Llama-3: a reply whose first non-space character is '{' is one or more calls separated by ';'.
ParsedReply parse_tool_calls(ChatTemplateKind kind, std::string_view reply);

// Streaming: the length of the longest prefix of `reply` (what was generated so far) that is
// content whatever comes next; the rest is held back until parse_tool_calls reads the finished
// reply. ChatML: up to a <tool_call> tag, or to a tail that may begin one, less the whitespace
// before it; Llama-3: nothing while the reply is blank or starts with '{', everything otherwise.
// It never shrinks as the reply grows.
size_t tool_free_prefix(ChatTemplateKind kind, std::string_view reply);

// Streaming: the calls of an unfinished reply as far as they can go out before it ends (vLLM's
// parsers stream calls the same way). `list`: the reply is a JSON array of call objects (tool_choice
// "required"); else the family's format above. A call is listed once its object has given its
// "name" first and its arguments object has begun ("arguments" or "parameters"), with the raw text of
// that object so far (from its '{'; `closed` once its matching '}' came). The scan stops at
// the first thing it cannot follow: another key first, arguments that are not an object, another key
// after them, anything but the format's separators between calls. The finished reply is read by
// parse_tool_calls; a stream in which a call began stays a reply of calls (server/openai_protocol:
// the calls sent are not taken back).
// Scanning a JSON value's raw text for the end of its outermost object or array: bracket depth and
// whether inside a string (after a backslash), so that a text arriving in pieces is scanned once.
struct ObjectScan {
  int depth = 0;
  bool in_string = false, escaped = false;
  bool too_deep = false;  // nested past kMaxJsonDepth: not followed further
  // Scans `more`, the text after what was fed before: the bytes of it up to and including the
  // closing bracket, npos while still open (or too deep).
  size_t feed(std::string_view more);
};

struct CallPrefix {
  std::string name;
  std::string arguments;
  bool closed = false;
  ObjectScan scan;  // the arguments' scan where the text ends (when not closed)
};
std::vector<CallPrefix> call_prefixes(ChatTemplateKind kind, bool list, std::string_view reply);

}  // namespace sparseserve
