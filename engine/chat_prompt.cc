#include "engine/chat_prompt.h"

#include "common/errors.h"

namespace sparseserve {

ChatPrompt encode_chat(const Model& model, std::vector<ChatMessage> messages, bool add_generation_prompt,
                       bool continue_final_message, std::span<const std::string> tools) {
  if (!model.chat_template) throw InvalidArgument("the model has no recognised chat template: send a plain prompt");
  if (add_generation_prompt && continue_final_message) {
    throw InvalidArgument("continue_final_message and add_generation_prompt cannot both be true");
  }
  for (ChatMessage& m : messages) {
    if (m.role == "developer") m.role = "system";
  }
  const ChatTemplate& t = *model.chat_template;
  const std::string text = continue_final_message ? t.render_continuing(messages, {}, tools)
                                                  : t.render(messages, add_generation_prompt, {}, tools);
  ChatPrompt p;
  p.ids = model.tokenizer.encode(text, /*add_special=*/false, /*parse_special=*/true);
  const int32_t bos = model.tokenizer.bos_id();
  if (t.writes_bos() && bos >= 0) p.ids.insert(p.ids.begin(), bos);  // the text never holds it: no double
  p.end_of_turn = model.tokenizer.token_id(model.chat_template->end_of_turn());
  return p;
}

}  // namespace sparseserve
