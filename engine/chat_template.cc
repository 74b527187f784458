#include "engine/chat_template.h"

#include <ctime>
#include <optional>

#include <nlohmann/json.hpp>

#include "common/errors.h"
#include "engine/python_json.h"
#include "engine/tool_calls.h"
#include "engine/utf8.h"

namespace sparseserve {

namespace {

// Llama 3.1-3.3's templates: the guidance before the tools in the first user message.
constexpr std::string_view kLlama31ToolsPreamble =
    "Given the following functions, please respond with a JSON for a function call with its proper arguments "
    "that best answers the given prompt.\n\nRespond in the format {\"name\": function name, \"parameters\": "
    "dictionary of argument name and its value}.Do not use variables.\n\n";

struct FamilyTokens {
  std::string_view system_open;  // text opening a system message in the rendered prompt
  std::string_view end_of_turn;
};

constexpr FamilyTokens kChatMLTokens{"<|im_start|>system\n", "<|im_end|>"};
constexpr FamilyTokens kLlama3Tokens{"<|start_header_id|>system<|end_header_id|>\n\n", "<|eot_id|>"};

const FamilyTokens& tokens_of(ChatTemplateKind kind) {
  return kind == ChatTemplateKind::kChatML ? kChatMLTokens : kLlama3Tokens;
}

// Reads the Jinja string literal whose opening quote is at text[quote]; returns its value with
// the escapes \n \t \r \\ \' \" resolved, or nullopt when the literal is unterminated.
std::optional<std::string> read_string_literal(std::string_view text, size_t quote) {
  const char q = text[quote];
  std::string value;
  for (size_t i = quote + 1; i < text.size(); ++i) {
    const char c = text[i];
    if (c == q) return value;
    if (c == '\\' && i + 1 < text.size()) {
      const char e = text[++i];
      switch (e) {
        case 'n': value.push_back('\n'); break;
        case 't': value.push_back('\t'); break;
        case 'r': value.push_back('\r'); break;
        case '\\': case '\'': case '"': value.push_back(e); break;
        default: value.push_back('\\'); value.push_back(e); break;
      }
      continue;
    }
    value.push_back(c);
  }
  return std::nullopt;
}

// A default system prompt is a single string literal in the template that opens a system
// message and closes it: '<open>TEXT<end_of_turn>...'. Messages built from variables
// ('<open>' + messages[0]['content']) do not qualify. Returns "" when there is none.
std::string find_default_system(std::string_view jinja, const FamilyTokens& t) {
  // The role header up to the first newline, as it appears at the start of a literal.
  const std::string_view head = t.system_open.substr(0, t.system_open.find('\n'));
  for (size_t pos = jinja.find(head); pos != std::string_view::npos;
       pos = jinja.find(head, pos + 1)) {
    if (pos == 0 || (jinja[pos - 1] != '\'' && jinja[pos - 1] != '"')) continue;
    const auto literal = read_string_literal(jinja, pos - 1);
    if (!literal || !literal->starts_with(t.system_open)) continue;
    const size_t end = literal->find(t.end_of_turn, t.system_open.size());
    if (end == std::string::npos) continue;
    return literal->substr(t.system_open.size(), end - t.system_open.size());
  }
  return {};
}

// Llama 3.1-3.3's system block ("Cutting Knowledge Date" in the template): the string literal that
// holds the knowledge date line, and the date the template prints, a fixed date_string or, when it
// calls strftime_now, today's (3.2 and 3.3 under transformers, so under vLLM too).
std::optional<ChatTemplate::DatedSystem> find_dated_system(std::string_view jinja) {
  const size_t k = jinja.find("Cutting Knowledge Date:");
  if (k == std::string_view::npos || k == 0 || (jinja[k - 1] != '"' && jinja[k - 1] != '\'')) return std::nullopt;
  const auto knowledge = read_string_literal(jinja, k - 1);
  if (!knowledge) return std::nullopt;
  ChatTemplate::DatedSystem d{.knowledge = *knowledge, .fixed_date = "26 Jul 2024",
                              .today = jinja.find("strftime_now") != std::string_view::npos};
  constexpr std::string_view kSet = "date_string = ";
  for (size_t pos = jinja.find(kSet); pos != std::string_view::npos; pos = jinja.find(kSet, pos + 1)) {
    const size_t q = pos + kSet.size();
    if (q < jinja.size() && (jinja[q] == '"' || jinja[q] == '\'')) {
      if (const auto date = read_string_literal(jinja, q)) d.fixed_date = *date;
      break;
    }
  }
  return d;
}

// Whether an expression that prints bos_token ("{{ bos_token }}", "{{- bos_token + ... }}") opens
// before the template's first turn marker.
bool writes_bos_first(std::string_view jinja, std::string_view turn_marker) {
  const size_t first_turn = jinja.find(turn_marker);
  for (size_t at = jinja.find("{{"); at != std::string_view::npos && at < first_turn; at = jinja.find("{{", at + 2)) {
    const size_t end = jinja.find("}}", at);
    if (end == std::string_view::npos) return false;
    if (jinja.substr(at, end - at).find("bos_token") != std::string_view::npos) return true;
  }
  return false;
}

bool known_role(const std::string& role) {
  return role == "system" || role == "user" || role == "assistant" || role == "tool";
}

// Length of the whitespace character at the start of s, 0 when there is none: Python's
// str.isspace, what Jinja's `trim` (str.strip) removes.
size_t space_at(std::string_view s) {
  const int n = s.empty() ? 0 : utf8::classify(s);
  if (n <= 0) return 0;
  const uint32_t cp = utf8::decode(s, n);
  const bool space = (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 ||
                     cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 ||
                     cp == 0x202F || cp == 0x205F || cp == 0x3000;
  return space ? static_cast<size_t>(n) : 0;
}

// Jinja's `trim`: leading and trailing whitespace as Python's str.strip() sees it.
std::string_view trim(std::string_view s) {
  while (const size_t n = space_at(s)) s.remove_prefix(n);
  while (!s.empty()) {
    size_t start = s.size() - 1;  // the last character's first byte
    while (start > 0 && s.size() - start < 4 && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80) --start;
    const size_t n = space_at(s.substr(start));
    if (n == 0 || start + n != s.size()) break;
    s.remove_suffix(n);
  }
  return s;
}

// Today's date as strftime("%d %b %Y") gives it in the C locale: "30 Nov 2026".
std::string today_date() {
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  localtime_r(&now, &tm);
  char buf[32];
  return std::string(buf, std::strftime(buf, sizeof buf, "%d %b %Y", &tm));
}

}  // namespace

ChatTemplate ChatTemplate::detect(std::string_view jinja_text, const std::string& source) {
  ChatTemplateKind kind;
  if (jinja_text.find("<|im_start|>") != std::string_view::npos) {
    kind = ChatTemplateKind::kChatML;
  } else if (jinja_text.find("<|start_header_id|>") != std::string_view::npos) {
    kind = ChatTemplateKind::kLlama3;
  } else {
    throw ModelFileError(source, "chat template is neither ChatML (<|im_start|>) nor Llama-3 "
                                 "(<|start_header_id|>); set chat_template in the model YAML");
  }
  ChatTemplate t(kind, find_default_system(jinja_text, tokens_of(kind)));
  if (kind == ChatTemplateKind::kLlama3) t.dated_ = find_dated_system(jinja_text);
  if (kind == ChatTemplateKind::kChatML) t.writes_bos_ = writes_bos_first(jinja_text, "<|im_start|>");
  return t;
}

ChatTemplate ChatTemplate::by_name(std::string_view name) {
  if (name == "chatml") return ChatTemplate(ChatTemplateKind::kChatML, {});
  if (name == "llama3") return ChatTemplate(ChatTemplateKind::kLlama3, {});
  throw InvalidArgument("unknown chat template '" + std::string(name) +
                        "' (expected chatml or llama3)");
}

std::string ChatTemplate::name() const {
  return kind_ == ChatTemplateKind::kChatML ? "chatml" : "llama3";
}

std::string ChatTemplate::end_of_turn() const { return std::string(tokens_of(kind_).end_of_turn); }

std::span<const std::string_view> ChatTemplate::special_tokens() const {
  static constexpr std::string_view kChatML[] = {"<|im_start|>", "<|im_end|>"};
  static constexpr std::string_view kLlama3[] = {"<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                                                 "<|eot_id|>"};
  if (kind_ == ChatTemplateKind::kChatML) return kChatML;
  return kLlama3;
}

std::string ChatTemplate::render_continuing(const std::vector<ChatMessage>& messages, std::string_view today,
                                           std::span<const std::string> tools) const {
  std::string text = render(messages, /*add_generation_prompt=*/false, today, tools);
  // transformers' rule: find the last occurrence of the trimmed content, then keep the content's
  // trailing whitespace where the render kept it too (ChatML), else end at the trimmed content.
  const std::string_view content = messages.back().content;
  const std::string_view trimmed = trim(content);
  const size_t at = trimmed.empty() ? std::string::npos : text.rfind(trimmed);
  if (at == std::string::npos) {
    throw InvalidArgument("continue_final_message: the final message has no content to continue");
  }
  std::string_view lstripped = content;
  while (const size_t n = space_at(lstripped)) lstripped.remove_prefix(n);
  const bool kept = std::string_view(text).substr(at, lstripped.size()) == content;
  text.resize(at + (kept ? lstripped.size() : trimmed.size()));
  return text;
}

std::string ChatTemplate::render(const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                                 std::string_view today, std::span<const std::string> tools) const {
  if (messages.empty()) throw InvalidArgument("the conversation has no messages");
  for (size_t i = 0; i < messages.size(); ++i) {
    if (!known_role(messages[i].role)) {
      throw InvalidArgument("message " + std::to_string(i) + ": unknown role '" +
                            messages[i].role + "' (expected system, user, assistant or tool)");
    }
  }
  const bool leading_system = messages.front().role == "system";
  const bool inject_system = !default_system_.empty() && !leading_system;
  // The system text with the tools on offer after it.
  const std::string offer = tools.empty() ? std::string() : tools_system_text(kind_, tools);
  const auto with_offer = [&](std::string_view system) {
    return offer.empty() ? std::string(system) : system.empty() ? offer : std::string(system) + "\n\n" + offer;
  };
  // An assistant message's text: its content, then its calls.
  const auto assistant_text = [&](const ChatMessage& m) {
    std::string text = m.content;
    for (size_t c = 0; c < m.tool_calls.size(); ++c) {
      if (!text.empty()) text += kind_ == ChatTemplateKind::kChatML || c == 0 ? "\n" : "; ";
      text += tool_call_text(kind_, m.tool_calls[c]);
    }
    return text;
  };
  std::string out;
  size_t first = 0;
  if (kind_ == ChatTemplateKind::kChatML) {
    auto message = [&](std::string_view role, std::string_view content) {
      out.append("<|im_start|>").append(role).append("\n").append(content).append("<|im_end|>\n");
    };
    if (!offer.empty()) {
      first = leading_system ? 1 : 0;
      message("system", with_offer(leading_system ? messages.front().content : default_system_));
    } else if (inject_system) {
      message("system", default_system_);
    }
    for (size_t i = first; i < messages.size(); ++i) {
      const ChatMessage& m = messages[i];
      if (m.role == "tool") {  // a run of results is one user turn
        out.append("<|im_start|>user");
        for (; i < messages.size() && messages[i].role == "tool"; ++i) {
          out.append("\n<tool_response>\n").append(messages[i].content).append("\n</tool_response>");
        }
        --i;
        out.append("<|im_end|>\n");
      } else {
        message(m.role, m.role == "assistant" ? assistant_text(m) : m.content);
      }
    }
    if (add_generation_prompt) out.append("<|im_start|>assistant\n");
  } else {
    auto message = [&](std::string_view role, std::string_view content) {
      out.append("<|start_header_id|>").append(role).append("<|end_header_id|>\n\n");
      out.append(trim(content)).append("<|eot_id|>");
    };
    out.append("<|begin_of_text|>");
    if (dated_) {  // the system block is always there; a leading system message goes into it
      std::string_view system;
      if (leading_system) {
        system = trim(messages.front().content);
        first = 1;
      }
      const std::string date = !dated_->today ? dated_->fixed_date : today.empty() ? today_date() : std::string(today);
      out.append("<|start_header_id|>system<|end_header_id|>\n\n");
      if (!tools.empty()) out.append("Environment: ipython\n");
      out.append(dated_->knowledge);
      out.append("Today Date: ").append(date).append("\n\n").append(system).append("<|eot_id|>");
      if (!tools.empty()) {  // the template's tools_in_user_message: the first message after the system one
        if (first >= messages.size()) {
          throw InvalidArgument("tools need a message after the system one: Llama 3.1's template writes them into it");
        }
        out.append("<|start_header_id|>user<|end_header_id|>\n\n").append(kLlama31ToolsPreamble);
        for (const std::string& t : tools) out.append(python_dumps(t, 4).value_or(t)).append("\n\n");
        out.append(trim(messages[first].content)).append("<|eot_id|>");
        ++first;
      }
    } else if (!offer.empty()) {
      first = leading_system ? 1 : 0;
      message("system", with_offer(leading_system ? trim(messages.front().content) : default_system_));
    } else if (inject_system) {
      message("system", default_system_);
    }
    for (size_t i = first; i < messages.size(); ++i) {
      const ChatMessage& m = messages[i];
      if (dated_ && m.role == "tool") {  // the template's `content | tojson`: a JSON string
        out.append("<|start_header_id|>ipython<|end_header_id|>\n\n").append(nlohmann::ordered_json(m.content).dump());
        out.append("<|eot_id|>");
      } else if (dated_ && !m.tool_calls.empty()) {  // the calls alone, arguments as tojson writes them
        out.append("<|start_header_id|>assistant<|end_header_id|>\n\n");
        for (size_t c = 0; c < m.tool_calls.size(); ++c) out.append(c ? "; " : "").append(tool_call_text(kind_, m.tool_calls[c]));
        out.append("<|eot_id|>");
      } else if (m.role == "tool") {
        message("ipython", m.content);
      } else {
        message(m.role, m.role == "assistant" ? assistant_text(m) : m.content);
      }
    }
    if (add_generation_prompt) out.append("<|start_header_id|>assistant<|end_header_id|>\n\n");
  }
  return out;
}

}  // namespace sparseserve
