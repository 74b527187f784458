#include "engine/chat_template.h"

#include <optional>

#include "common/errors.h"

namespace sparseserve {

namespace {

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

bool known_role(const std::string& role) {
  return role == "system" || role == "user" || role == "assistant";
}

// Jinja's `trim` on ASCII whitespace.
std::string_view trim(std::string_view s) {
  constexpr std::string_view ws = " \t\n\r\f\v";
  const size_t b = s.find_first_not_of(ws);
  if (b == std::string_view::npos) return {};
  return s.substr(b, s.find_last_not_of(ws) - b + 1);
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
  return ChatTemplate(kind, find_default_system(jinja_text, tokens_of(kind)));
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

std::string ChatTemplate::render(const std::vector<ChatMessage>& messages,
                                 bool add_generation_prompt) const {
  if (messages.empty()) throw InvalidArgument("the conversation has no messages");
  for (size_t i = 0; i < messages.size(); ++i) {
    if (!known_role(messages[i].role)) {
      throw InvalidArgument("message " + std::to_string(i) + ": unknown role '" +
                            messages[i].role + "' (expected system, user or assistant)");
    }
  }
  const bool inject_system = !default_system_.empty() && messages.front().role != "system";
  std::string out;
  if (kind_ == ChatTemplateKind::kChatML) {
    auto message = [&](std::string_view role, std::string_view content) {
      out.append("<|im_start|>").append(role).append("\n").append(content).append("<|im_end|>\n");
    };
    if (inject_system) message("system", default_system_);
    for (const ChatMessage& m : messages) message(m.role, m.content);
    if (add_generation_prompt) out.append("<|im_start|>assistant\n");
  } else {
    auto message = [&](std::string_view role, std::string_view content) {
      out.append("<|start_header_id|>").append(role).append("<|end_header_id|>\n\n");
      out.append(trim(content)).append("<|eot_id|>");
    };
    out.append("<|begin_of_text|>");
    if (inject_system) message("system", default_system_);
    for (const ChatMessage& m : messages) message(m.role, m.content);
    if (add_generation_prompt) out.append("<|start_header_id|>assistant<|end_header_id|>\n\n");
  }
  return out;
}

}  // namespace sparseserve
