// The OpenAI API's JSON, translated to and from the engine's types (engine/request.h), with no
// HTTP in sight: request bodies of /v1/completions and /v1/chat/completions become engine
// Requests (tokenized, chat template applied, every field checked); RequestOutputs become
// response objects and SSE chunks in OpenAI's shapes (vLLM's where OpenAI has none: top_k, min_p,
// repetition_penalty, ignore_eos, stop_token_ids, skip_special_tokens, include_stop_str_in_output,
// stop_reason, finish_reason "abort").
//
// Input rules: unknown fields are ignored (as OpenAI and vLLM do), `null` means "not given", every
// known field has its type and range checked and a bad one is a 400 naming it (ApiError::param).
#pragma once

#include "engine/chat_prompt.h"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <exception>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "engine/model.h"
#include "engine/model_profiles.h"
#include "engine/request.h"
#include "engine/tool_calls.h"
#include "server/sequence_limits.h"

namespace sparseserve::openai {

// Requests are read as nlohmann::json (objects as sorted maps: a body's object of n keys parses in
// O(n log n); ordered_json's linear lookups made an 80,000-key logit_bias take 12 s). Responses are
// built as ojson, whose objects keep insertion order: OpenAI's field order, top_logprobs and
// prompt_logprobs most likely first.
using json = nlohmann::json;
using ojson = nlohmann::ordered_json;

// A request the server answers with an error: HTTP status plus OpenAI's error object.
class ApiError : public std::exception {
 public:
  ApiError(int status, std::string type, std::string message, std::string param = "", std::string code = "")
      : status_(status), type_(std::move(type)), message_(std::move(message)), param_(std::move(param)),
        code_(std::move(code)) {}
  const char* what() const noexcept override { return message_.c_str(); }
  int status() const { return status_; }
  const std::string& param() const { return param_; }
  const std::string& code() const { return code_; }
  // {"error": {"message", "type", "param", "code"}}; empty param / code are null.
  json to_json() const;

 private:
  int status_;
  std::string type_, message_, param_, code_;
};
// 400 invalid_request_error.
ApiError bad_request(std::string message, std::string param = "", std::string code = "");

enum class Endpoint { kCompletions, kChat };

// How a conversation becomes the prompt (chat and /tokenize): the body's vLLM fields of these names.
struct ChatRendering {
  bool add_generation_prompt = true;
  bool continue_final_message = false;  // the final message left open (excludes add_generation_prompt)
  bool add_special_tokens = false;      // a BOS first, for a model that uses one
};

struct ProtocolLimits {
  int64_t max_prompt_tokens = 0;  // tokens; ≤ the model's context (0: the context)
  int32_t max_n = 16;             // choices per prompt
  int32_t max_choices = 64;       // prompts × n per request
  int32_t max_stop = 16;          // stop strings
  int32_t max_logprobs = 20;      // completions `logprobs`, chat `top_logprobs`
  bool prompt_tokens_details = false;  // usage carries prompt_tokens_details (vLLM's flag)
  SequenceLimits sequences;        // prompt + completion per profile (empty: the model's context)
};

// Tool calling on a chat request (server/openai_tools.h): how its reply is read back.
struct ToolUse {
  enum class Choice { kNone, kAuto, kRequired, kNamed };
  Choice choice = Choice::kNone;
  std::string function;  // kNamed: the function the reply calls
  bool parallel = true;  // parallel_tool_calls; false: one call at most
  ChatTemplateKind format = ChatTemplateKind::kChatML;  // kAuto: how the model writes calls
  std::vector<std::string> offered;  // the tools' names (kAuto: a call to another name is text)
};

// One parsed generation call: its prompts (token ids) and the engine parameters they share.
struct GenerationJob {
  Endpoint endpoint = Endpoint::kCompletions;
  std::vector<std::vector<int32_t>> prompts;  // ≥ 1; chat: exactly one
  Request params;                             // all but id and prompt
  int32_t n = 1;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  bool continuous_usage = false;  // vLLM's stream_options.continuous_usage_stats (with include_usage)
  bool want_logprobs = false;  // params.logprobs ≥ 0
  bool tokens_as_ids = false;  // vLLM's return_tokens_as_token_ids: logprobs' tokens as "token_id:ID"
  // vLLM's return_token_ids: the prompt's ids and each choice's generated ids (a stop token
  // included) beside the text; streamed, each chunk's new ids.
  bool return_token_ids = false;
  // Completions' echo: each choice's text (and logprobs, with the prompt's) starts with its prompt,
  // prompt_texts[i] for prompt i (the string sent, or the ids decoded).
  bool echo = false;
  bool want_prompt_logprobs = false;  // vLLM's prompt_logprobs field in the response
  std::vector<std::string> prompt_texts;
  // prompt_given_as_ids[i]: prompt i came as token ids (truncation cuts it as given); else the
  // server encoded it, and a BOS the tokenizer adds stays in front.
  std::vector<bool> prompt_given_as_ids;
  ToolUse tools;  // chat only
  int64_t truncate_prompt_tokens = 0;  // vLLM's: k ≥ 1 keeps each prompt's last k tokens, −1 as many as
                                       // the request's context limit; 0 none
  bool prompt_tokens_details = false;  // usage carries {"cached_tokens": ...} (ProtocolLimits)

  int32_t num_choices() const { return static_cast<int32_t>(prompts.size()) * n; }
  // Choice i (prompt i / n, sample i % n) as an engine Request with id "<response_id>-<i>";
  // a seeded job gives sample k the seed + k, so the n samples differ but stay reproducible.
  Request request_for_choice(int32_t choice, const std::string& response_id) const;
};

// Request parsing for one served model.
class Protocol {
 public:
  // The model and profiles must outlive the protocol.
  Protocol(const Model& model, const ModelProfiles& profiles, std::string served_model_name, ProtocolLimits limits);

  const std::string& model_name() const { return model_name_; }
  const Model& model() const { return model_; }

  // Throws ApiError (400 for bad input, 404 model_not_found for another model's name).
  GenerationJob parse_completion(const json& body) const;
  // tools_in_order: body["tools"] with its keys in the text's order (parse_tools), or null.
  GenerationJob parse_chat(const json& body, const ojson* tools_in_order = nullptr) const;

  // /tokenize (vLLM): {"prompt", "add_special_tokens"?} or {"messages", "add_generation_prompt"?,
  // "add_special_tokens"?, "tools"?} → {"count", "max_model_len", "tokens"}.
  json tokenize(const json& body, const ojson* tools_in_order = nullptr) const;
  // /detokenize (vLLM): {"tokens": [ids]} → {"prompt": text}.
  json detokenize(const json& body) const;
  // /v1/models.
  json models(int64_t created) const;

 private:
  void check_model(const json& body) const;
  void parse_common(const json& body, GenerationJob& job) const;
  ChatPrompt render_chat(const json& messages, const ChatRendering& how, std::span<const std::string> tools) const;
  void check_lengths(GenerationJob& job, bool max_tokens_given) const;

  const Model& model_;
  const ModelProfiles& profiles_;
  std::string model_name_;
  ProtocolLimits limits_;
};

// Accumulates a job's outputs per choice and renders OpenAI responses and stream chunks.
class ResponseBuilder {
 public:
  // id: "cmpl-…" / "chatcmpl-…"; created: Unix seconds. The job and tokenizer must outlive it.
  ResponseBuilder(const GenerationJob& job, const Tokenizer& tokenizer, std::string id, std::string model,
                  int64_t created);

  // Records a delta of choice `choice`; with streaming, returns the chunks to send for it
  // (possibly none: a delta with no text, logprobs or finish).
  std::vector<ojson> add(int32_t choice, const RequestOutput& out);
  bool all_finished() const;
  // The first error among the finished choices ("" when none).
  std::string error() const;
  // The error() of a choice is the request's own (RequestOutput::request_error): answered as a 400.
  bool request_error() const;

  ojson usage() const;
  ojson usage_chunk() const;  // streaming: {"choices": [], "usage": {...}}
  ojson response() const;     // non-streaming: the whole object

  int64_t prompt_tokens() const;
  int64_t completion_tokens() const;
  std::string finish_reasons() const;  // for the log: "stop,length"

 private:
  struct Choice {
    std::string text;
    std::vector<TokenLogprob> logprobs;
    std::vector<TokenLogprob> prompt_logprobs;  // the engine's, for vLLM's prompt_logprobs field
    std::vector<size_t> text_offsets;  // per logprob: characters of `text` before its token
    size_t token_chars = 0;            // characters the tokens so far begin (the next text_offset)
    bool role_sent = false;
    std::vector<int32_t> token_ids;  // generated so far, a stop token included
    bool prompt_ids_sent = false;    // streamed completions: the first chunk carried the prompt's ids
    bool echoed = false;  // echo: the prompt went out with the first delta
    bool finished = false;
    FinishReason finish = FinishReason::kNone;
    std::string stop_reason;
    int32_t stop_token = -1;  // a stop_token_ids entry ended it: vLLM reports the id as stop_reason
    std::string error;
    bool request_error = false;  // RequestOutput::request_error: a 400, not a 500
    int64_t prompt_tokens = 0;
    int64_t cached_tokens = 0;  // of its prompt's tokens, those found in the prefix cache
    int64_t completion_tokens = 0;
    // Streaming under tool calling: bytes of `text` sent as content, the kNamed call's id once its
    // first delta went out, and (kAuto, kRequired) per call streamed so far the bytes of its
    // arguments sent.
    size_t content_sent = 0;
    std::string call_id;
    std::vector<size_t> args_sent;
    // When the text so far ended inside the arguments of call `open_call` (begun, sent as far as the
    // text went): the arguments' scan there and the text's length, so that the next delta is scanned
    // alone while it does not close them. −1: the next delta scans the whole reply.
    int64_t open_call = -1;
    ObjectScan open_scan;
    size_t scanned = 0;
  };
  // Streaming under tool calling: the chunks for a delta (`out`) of choice `index`.
  void add_tool_chunks(int32_t index, Choice& c, const RequestOutput& out, ojson logprobs, std::vector<ojson>& chunks) const;
  ojson tool_finish(const Choice& c) const;
  bool tool_calling() const { return job_.endpoint == Endpoint::kChat && job_.tools.choice != ToolUse::Choice::kNone; }
  ojson chunk_base() const;
  ojson logprobs_json(const std::vector<TokenLogprob>& lps, const std::vector<size_t>& offsets) const;
  ojson prompt_logprobs_json(const Choice& c) const;
  ojson finish_json(const Choice& c) const;
  static ojson stop_reason_json(const Choice& c);

  const GenerationJob& job_;
  const Tokenizer& tok_;
  std::string id_, model_;
  int64_t created_;
  std::vector<Choice> choices_;
};

// A fresh response id: prefix followed by 32 random hex digits.
std::string make_response_id(const char* prefix);

}  // namespace sparseserve::openai
