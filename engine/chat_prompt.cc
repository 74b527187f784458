#include "engine/chat_prompt.h"

#include "common/errors.h"

namespace sparseserve {

ChatPrompt encode_chat(const Model& model, std::vector<ChatMessage> messages, bool add_generation_prompt) {
  if (!model.chat_template) throw InvalidArgument("the model has no recognised chat template: send a plain prompt");
  for (ChatMessage& m : messages) {
    if (m.role == "developer") m.role = "system";
  }
  ChatPrompt p;
  p.ids = model.tokenizer.encode(model.chat_template->render(messages, add_generation_prompt), /*add_special=*/false,
                                 /*parse_special=*/true);
  p.end_of_turn = model.tokenizer.token_id(model.chat_template->end_of_turn());
  return p;
}

}  // namespace sparseserve
