#include "engine/tool_calls.h"

#include <nlohmann/json.hpp>

#include <optional>

#include "engine/json_file.h"
#include "engine/python_json.h"

namespace sparseserve {

namespace {

using json = nlohmann::ordered_json;  // arguments keep the order the model wrote their keys in

constexpr std::string_view kCallOpen = "<tool_call>";
constexpr std::string_view kCallClose = "</tool_call>";
constexpr std::string_view kSpaces = " \t\r\n";

std::string_view trim(std::string_view s) {
  const size_t b = s.find_first_not_of(kSpaces);
  if (b == std::string_view::npos) return {};
  return s.substr(b, s.find_last_not_of(kSpaces) - b + 1);
}

// A call's JSON: an object with a non-empty string "name" and an object "arguments" or "parameters"
// (not both). Arguments given as a string holding an object are taken too. Values nesting deeper
// than kMaxJsonDepth are not calls (copying and writing them recurses per level).
std::optional<ChatToolCall> read_call(std::string_view text) {
  const json j = parse_json_bounded<json>(trim(text));
  if (!j.is_object()) return std::nullopt;
  const auto name = j.find("name");
  if (name == j.end() || !name->is_string() || name->get_ref<const std::string&>().empty()) return std::nullopt;
  auto args = j.find("arguments");
  if (args == j.end()) args = j.find("parameters");
  if (args == j.end() || (j.contains("arguments") && j.contains("parameters"))) return std::nullopt;
  const json value = args->is_string() ? parse_json_bounded<json>(args->get_ref<const std::string&>()) : *args;
  if (!value.is_object()) return std::nullopt;
  return ChatToolCall{.id = {}, .name = name->get<std::string>(), .arguments = value.dump()};
}

ParsedReply parse_hermes(std::string_view reply) {
  ParsedReply out;
  const size_t first = reply.find(kCallOpen);
  if (first == std::string_view::npos) return {std::string(reply), {}};
  for (size_t at = first; at != std::string_view::npos; at = reply.find(kCallOpen, at)) {
    const size_t body = at + kCallOpen.size();
    // The close tag after the call's object: its strings may hold "</tool_call>" themselves (as the
    // streaming reader, call_prefixes, follows them).
    size_t end = std::string_view::npos;
    if (const size_t open = reply.find_first_not_of(kSpaces, body); open != std::string_view::npos && reply[open] == '{') {
      ObjectScan scan;
      if (const size_t n = scan.feed(reply.substr(open)); n != std::string_view::npos) {
        end = reply.find(kCallClose, open + n);
      }
    }
    if (end == std::string_view::npos) end = reply.find(kCallClose, body);
    auto call = read_call(reply.substr(body, end == std::string_view::npos ? std::string_view::npos : end - body));
    if (!call) return {std::string(reply), {}};
    out.calls.push_back(std::move(*call));
    if (end == std::string_view::npos) break;
    at = end + kCallClose.size();
  }
  const std::string_view before = reply.substr(0, first);
  const size_t last = before.find_last_not_of(kSpaces);
  out.content = last == std::string_view::npos ? "" : std::string(before.substr(0, last + 1));
  return out;
}

// Splits text at the ';' outside JSON strings and brackets.
std::vector<std::string_view> split_calls(std::string_view text) {
  std::vector<std::string_view> parts;
  int depth = 0;
  bool in_string = false, escaped = false;
  size_t from = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (escaped) escaped = false;
      else if (c == '\\') escaped = true;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      ++depth;
    } else if (c == '}' || c == ']') {
      --depth;
    } else if (c == ';' && depth == 0) {
      parts.push_back(text.substr(from, i - from));
      from = i + 1;
    }
  }
  parts.push_back(text.substr(from));
  return parts;
}

ParsedReply parse_llama3(std::string_view reply) {
  const std::string_view body = trim(reply);
  if (!body.starts_with('{')) return {std::string(reply), {}};
  ParsedReply out;
  for (std::string_view part : split_calls(body)) {
    auto call = read_call(part);
    if (!call) return {std::string(reply), {}};
    out.calls.push_back(std::move(*call));
  }
  return out;
}

}  // namespace

size_t ObjectScan::feed(std::string_view more) {
  for (size_t k = 0; k < more.size(); ++k) {
    const char c = more[k];
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      if (++depth > kMaxJsonDepth) {
        too_deep = true;
        return std::string_view::npos;
      }
    } else if ((c == '}' || c == ']') && --depth == 0) {
      return k + 1;
    }
  }
  return std::string_view::npos;
}

namespace {

// A cursor over an unfinished reply for call_prefixes. Each reader returns kDone (read, the cursor
// past it), kMore (the text ends first) or kStop (something else is there).
enum Scan { kDone, kMore, kStop };

struct Cursor {
  std::string_view s;
  size_t i = 0;
  bool end() const { return i >= s.size(); }
  void spaces() {
    while (!end() && kSpaces.find(s[i]) != std::string_view::npos) ++i;
  }
  Scan literal(std::string_view word) {  // word, or the text ending inside it
    const std::string_view rest = s.substr(i);
    if (rest.starts_with(word)) {
      i += word.size();
      return kDone;
    }
    return word.starts_with(rest) ? kMore : kStop;
  }
  // A JSON string, decoded into out.
  Scan string(std::string& out) {
    if (end()) return kMore;
    if (s[i] != '"') return kStop;
    bool escaped = false;
    for (size_t k = i + 1; k < s.size(); ++k) {
      if (escaped) {
        escaped = false;
      } else if (s[k] == '\\') {
        escaped = true;
      } else if (s[k] == '"') {
        const json v = json::parse(s.substr(i, k + 1 - i), nullptr, false);
        if (!v.is_string()) return kStop;
        out = v.get<std::string>();
        i = k + 1;
        return kDone;
      }
    }
    return kMore;
  }
  // An object's raw text from its '{' to the matching '}' (strings skipped); `raw` gets what there is.
  Scan object(std::string_view& raw, ObjectScan& scan) {
    if (end()) return kMore;
    if (s[i] != '{') return kStop;
    scan = ObjectScan{};
    const size_t n = scan.feed(s.substr(i));
    if (scan.too_deep) return kStop;
    if (n != std::string_view::npos) {
      raw = s.substr(i, n);
      i += n;
      return kDone;
    }
    raw = s.substr(i);
    i = s.size();
    return kMore;
  }
  // One call object {"name": ..., "arguments" | "parameters": {...}}; `named` once its name is read
  // and its arguments object has begun.
  Scan call(CallPrefix& out, bool& named) {
    named = false;
    Scan r = kDone;
    // Reads one piece and the spaces after it; false (r saying why) when it is not there whole.
    const auto next = [&](Scan step) {
      r = step;
      if (r == kDone) spaces();
      return r == kDone;
    };
    std::string key;
    if (!next(literal("{")) || !next(string(key))) return r;
    if (key != "name") return kStop;
    if (!next(literal(":")) || !next(string(out.name))) return r;
    if (out.name.empty()) return kStop;
    if (!next(literal(",")) || !next(string(key))) return r;
    if (key != "arguments" && key != "parameters") return kStop;
    if (!next(literal(":"))) return r;
    std::string_view raw;
    r = object(raw, out.scan);
    out.arguments = std::string(raw);
    named = !raw.empty();  // the arguments object has begun
    if (r != kDone) return r;
    out.closed = true;
    spaces();
    return literal("}");
  }
};

}  // namespace

std::string tools_system_text(ChatTemplateKind kind, std::span<const std::string> tools) {
  std::string out;
  if (kind == ChatTemplateKind::kChatML) {
    out = "# Tools\n\nYou may call one or more of the functions below to help with the user's request. Their "
          "definitions, one per line in JSON, are inside <tools></tools>:\n<tools>";
    for (const std::string& t : tools) out.append("\n").append(t);
    out += "\n</tools>\n\nTo call a function, write a JSON object with its name and arguments inside "
           "<tool_call></tool_call> tags, one block per call:\n<tool_call>\n"
           "{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>";
  } else {
    out = "You have access to the functions below. To call one, reply with nothing but a JSON object of the form "
          "{\"name\": function name, \"parameters\": object of argument names and values}; to call several, "
          "separate the objects with \"; \".";
    for (const std::string& t : tools) out.append("\n\n").append(t);
  }
  return out;
}

std::string tool_call_text(ChatTemplateKind kind, const ChatToolCall& call) {
  const std::string name = json(call.name).dump();
  // The arguments as the templates' `tojson` writes them (vLLM loads the client's text first).
  const std::string arguments = python_dumps(call.arguments).value_or(call.arguments);
  if (kind == ChatTemplateKind::kChatML) return "<tool_call>\n{\"name\": " + name + ", \"arguments\": " + arguments + "}\n</tool_call>";
  return "{\"name\": " + name + ", \"parameters\": " + arguments + "}";
}

ParsedReply parse_tool_calls(ChatTemplateKind kind, std::string_view reply) {
  return kind == ChatTemplateKind::kChatML ? parse_hermes(reply) : parse_llama3(reply);
}

size_t tool_free_prefix(ChatTemplateKind kind, std::string_view reply) {
  if (kind == ChatTemplateKind::kChatML) {
    // Up to the tag or a tail that may begin it, less the whitespace before (parse_tool_calls drops
    // it from the content when a call follows).
    size_t safe = reply.find(kCallOpen);
    for (size_t k = std::min(kCallOpen.size() - 1, reply.size()); safe == std::string_view::npos && k > 0; --k) {
      if (reply.ends_with(kCallOpen.substr(0, k))) safe = reply.size() - k;
    }
    const std::string_view text = reply.substr(0, safe);
    const size_t last = text.find_last_not_of(kSpaces);
    return last == std::string_view::npos ? 0 : last + 1;
  }
  const size_t b = reply.find_first_not_of(kSpaces);
  return b == std::string_view::npos || reply[b] == '{' ? 0 : reply.size();
}

std::vector<CallPrefix> call_prefixes(ChatTemplateKind kind, bool list, std::string_view reply) {
  std::vector<CallPrefix> out;
  Cursor c{reply};
  // Reads calls until the text ends or stops being calls; `between` reads what separates two.
  const auto calls = [&](const auto& between) {
    while (true) {
      CallPrefix p;
      bool named = false;
      const Scan r = c.call(p, named);
      if (named) out.push_back(std::move(p));
      if (r != kDone) return;
      c.spaces();
      if (!between()) return;
      c.spaces();
    }
  };
  if (list) {
    c.spaces();
    if (c.literal("[") != kDone) return out;
    c.spaces();
    calls([&] { return c.literal(",") == kDone; });
  } else if (kind == ChatTemplateKind::kChatML) {
    const size_t first = reply.find(kCallOpen);
    if (first == std::string_view::npos) return out;
    c.i = first + kCallOpen.size();
    c.spaces();
    calls([&] {
      if (c.literal(kCallClose) != kDone) return false;
      c.spaces();
      return c.literal(kCallOpen) == kDone;
    });
  } else {
    c.spaces();
    calls([&] { return c.literal(";") == kDone; });
  }
  return out;
}

}  // namespace sparseserve
