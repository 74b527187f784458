// Chat templates: the ChatML and Llama-3 families, detected from the model's Jinja template text
// (tokenizer.chat_template) or chosen by name in the model YAML.
#pragma once

#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace sparseserve {

// A function call an assistant message made (OpenAI's tool_calls entry).
struct ChatToolCall {
  std::string id;
  std::string name;
  std::string arguments;  // the JSON text of an object
};

struct ChatMessage {
  ChatMessage() = default;
  ChatMessage(std::string r, std::string c, std::vector<ChatToolCall> calls = {})
      : role(std::move(r)), content(std::move(c)), tool_calls(std::move(calls)) {}
  std::string role;     // "system" | "user" | "assistant" | "tool" (a call's result)
  std::string content;
  std::vector<ChatToolCall> tool_calls;  // assistant only: the calls, written after the content
};

enum class ChatTemplateKind { kChatML, kLlama3 };

class ChatTemplate {
 public:
  // From the model's template text. Recognises ChatML (<|im_start|>) and Llama-3
  // (<|start_header_id|>); also picks up a default system prompt the template injects when the
  // conversation has none (SmolLM2 does). Throws ModelFileError(source, ...) when unrecognised.
  static ChatTemplate detect(std::string_view jinja_text, const std::string& source);
  // By name: "chatml" | "llama3". Throws InvalidArgument for another name.
  static ChatTemplate by_name(std::string_view name);

  ChatTemplateKind kind() const { return kind_; }
  std::string name() const;
  // Renders the conversation; with add_generation_prompt the assistant header follows.
  // Throws InvalidArgument for an unknown role or an empty conversation.
  // tools: function definitions on offer (compact JSON, see engine/tool_calls.h), written into the
  // system message after its text (ChatML: a system message is added when there is none); an
  // assistant's tool_calls follow its content, and "tool" messages are rendered as the family's
  // results (tool_calls.h). With no tools and no tool messages the output is as described below.
  // Contract: the text carries every special token the prompt needs, including Llama-3's
  // <|begin_of_text|> BOS, but a ChatML template's bos_token (writes_bos()). Encode it with add_special = false and parse_special = true (as
  // transformers' apply_chat_template does), so a BOS is never doubled.
  // ChatML: "<|im_start|>{role}\n{content}<|im_end|>\n" per message, the default system message
  // first when the conversation has none; generation prompt "<|im_start|>assistant\n".
  // Llama-3: "<|begin_of_text|>", then "<|start_header_id|>{role}<|end_header_id|>\n\n
  // {content, whitespace-trimmed}<|eot_id|>" per message; generation prompt
  // "<|start_header_id|>assistant<|end_header_id|>\n\n". Llama 3.1-3.3 (dated_system()): a system
  // block always comes first, "{knowledge}Today Date: {date}\n\n{the leading system message,
  // trimmed, or nothing}", and that message is not repeated; {date} is the template's date_string
  // or, for a template that calls strftime_now, `today` ("%d %b %Y"; empty: the local date now).
  // With tools, Llama 3.1-3.3 as their template writes them (tools_in_user_message): "Environment:
  // ipython\n" opens the system block; the tools (JSON, indented by 4) and its guidance go into the
  // first message after the system one, as a user turn; an assistant message with calls is the calls
  // alone ({"name": ..., "parameters": <arguments as json.dumps writes them>}, several joined by "; ");
  // a tool result is its content as a JSON string.
  // "Whitespace" is Python's str.isspace, as Jinja's trim strips it.
  std::string render(const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                     std::string_view today = {}, std::span<const std::string> tools = {}) const;
  // The conversation with its final message left open for the model to continue (transformers'
  // and vLLM's continue_final_message): render(messages, false, today) cut right after the final
  // message's content, or after its whitespace-trimmed content where the template trims it
  // (Llama-3). Throws InvalidArgument as render() does, and when that content is empty.
  std::string render_continuing(const std::vector<ChatMessage>& messages, std::string_view today = {},
                                std::span<const std::string> tools = {}) const;
  // Text of the end-of-turn token ("<|im_end|>", "<|eot_id|>"): a stop token for generation.
  std::string end_of_turn() const;
  // The special tokens render() writes (ChatML: <|im_start|> <|im_end|>; Llama-3: <|begin_of_text|>
  // <|start_header_id|> <|end_header_id|> <|eot_id|>): each must be a token of the model's vocabulary.
  std::span<const std::string_view> special_tokens() const;
  // The system prompt the template injects when the conversation has none ("" when none).
  const std::string& default_system() const { return default_system_; }

  // Llama 3.1-3.3's system block, found in the template text by detect().
  struct DatedSystem {
    std::string knowledge;   // "Cutting Knowledge Date: December 2023\n", as the template writes it
    std::string fixed_date;  // the template's date_string ("26 Jul 2024")
    bool today = false;      // the template prints today's date (strftime_now) instead
  };
  const std::optional<DatedSystem>& dated_system() const { return dated_; }

  // A ChatML template that writes the tokenizer's bos_token before its first turn ("{{ bos_token }}"
  // first: Hermes 2 Pro, Hermes 3). render() does not write it (the template does not know the
  // token's text): encode_chat prepends the BOS id. Llama-3's render writes <|begin_of_text|> itself.
  bool writes_bos() const { return writes_bos_; }

 private:
  ChatTemplate(ChatTemplateKind kind, std::string default_system)
      : kind_(kind), default_system_(std::move(default_system)) {}
  ChatTemplateKind kind_;
  std::string default_system_;  // empty when the template injects none
  std::optional<DatedSystem> dated_;
  bool writes_bos_ = false;
};

}  // namespace sparseserve
