// One way from a chat conversation to prompt token ids, shared by HTTP, gRPC and the CLI.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "engine/chat_template.h"
#include "engine/model.h"

namespace sparseserve {

struct ChatPrompt {
  std::vector<int32_t> ids;   // the rendered conversation, encoded
  int32_t end_of_turn = -1;   // the template's end-of-turn token (a stop token), -1 when absent
};

// Renders `messages` with the model's chat template and encodes the text with special tokens
// parsed and no BOS added (the rendered text carries every special token it needs), but the BOS id
// first where the template writes bos_token (ChatTemplate::writes_bos, as HF renders it). The role
// "developer" (OpenAI) is the system role. Throws InvalidArgument when the model has no chat
// template, the conversation is empty or a role is unknown.
// continue_final_message: the final message is left open instead (ChatTemplate::render_continuing);
// it excludes add_generation_prompt (InvalidArgument when both are set).
// tools: function definitions on offer (ChatTemplate::render).
ChatPrompt encode_chat(const Model& model, std::vector<ChatMessage> messages, bool add_generation_prompt = true,
                       bool continue_final_message = false, std::span<const std::string> tools = {});

}  // namespace sparseserve
