// Request side of the OpenAI protocol: JSON bodies → GenerationJob (openai_protocol.h).
#include "server/openai_protocol.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>
#include <map>
#include <random>

#include "common/errors.h"
#include "engine/bad_words.h"
#include "engine/chat_prompt.h"
#include "engine/choice_constraint.h"
#include "engine/grammar.h"
#include "engine/regex_dfa.h"
#include "server/openai_fields.h"
#include "server/openai_tools.h"

namespace sparseserve::openai {

json ApiError::to_json() const {
  return {{"error",
           {{"message", message_},
            {"type", type_},
            {"param", param_.empty() ? json(nullptr) : json(param_)},
            {"code", code_.empty() ? json(nullptr) : json(code_)}}}};
}

ApiError bad_request(std::string message, std::string param, std::string code) {
  return ApiError(400, "invalid_request_error", std::move(message), std::move(param), std::move(code));
}

std::string make_response_id(const char* prefix) {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  static constexpr char kHex[] = "0123456789abcdef";
  std::string id = prefix;
  for (int i = 0; i < 32; ++i) id += kHex[rng() & 15];
  return id;
}

std::shared_ptr<const JsonSchema> compile_schema(const json& schema, const std::string& param) {
  try {
    return std::make_shared<const JsonSchema>(JsonSchema::compile(schema.is_string() ? schema.get<std::string>()
                                                                                     : schema.dump()));
  } catch (const InvalidArgument& e) {
    throw bad_request(e.what(), param);
  }
}

Request GenerationJob::request_for_choice(int32_t choice, const std::string& response_id) const {
  Request r = params;
  r.id = response_id + "-" + std::to_string(choice);
  r.prompt = prompts[static_cast<size_t>(choice / n)];
  if (r.sampling.seed) r.sampling.seed = *r.sampling.seed + static_cast<uint64_t>(choice % n);
  return r;
}

namespace {

std::shared_ptr<const std::vector<std::string>> parse_choices(const json& choices, const std::string& param) {
  if (!choices.is_array() || choices.empty() || choices.size() > ChoiceText::kMaxChoices ||
      !std::all_of(choices.begin(), choices.end(),
                   [](const json& c) { return c.is_string() && !c.get_ref<const std::string&>().empty(); })) {
    throw bad_request(param + " must be a list of 1 to " + std::to_string(ChoiceText::kMaxChoices) + " non-empty strings", param);
  }
  return ChoiceText::sorted(choices.get<std::vector<std::string>>());
}

std::shared_ptr<const RegexDfa> compile_regex(const json& pattern, const std::string& param) {
  if (!pattern.is_string()) throw bad_request(param + " must be a string (a regular expression)", param);
  try {
    return std::make_shared<const RegexDfa>(RegexDfa::compile(pattern.get_ref<const std::string&>()));
  } catch (const InvalidArgument& e) {
    throw bad_request(param + ": " + e.what(), param);
  }
}


std::shared_ptr<const Grammar> compile_grammar(const json& text, const std::string& param) {
  if (!text.is_string()) throw bad_request(param + " must be a string (a GBNF grammar)", param);
  try {
    return std::make_shared<const Grammar>(Grammar::parse(text.get_ref<const std::string&>()));
  } catch (const InvalidArgument& e) {
    throw bad_request(param + ": " + e.what(), param);
  }
}

void require_object(const json& body) {
  if (!body.is_object()) throw bad_request("the request body must be a JSON object, got " + Fields::type_name(body));
}

bool is_token_list(const json& v) {
  if (!v.is_array() || v.empty()) return false;
  for (const auto& x : v) {
    if (!x.is_number_integer()) return false;
  }
  return true;
}

std::vector<int32_t> token_list(const json& v, int64_t vocab, const std::string& param) {
  std::vector<int32_t> ids;
  ids.reserve(v.size());
  for (const auto& x : v) {
    const int64_t t = x.is_number_unsigned() && x.get<uint64_t>() > uint64_t{INT64_MAX} ? -1 : x.get<int64_t>();
    if (t < 0 || t >= vocab) {
      throw bad_request(param + ": token id " + x.dump() + " is outside the vocabulary [0, " + std::to_string(vocab) + ")",
                        param);
    }
    ids.push_back(static_cast<int32_t>(t));
  }
  return ids;
}

}  // namespace

Protocol::Protocol(const Model& model, const ModelProfiles& profiles, std::string served_model_name, ProtocolLimits limits)
    : model_(model), profiles_(profiles), model_name_(std::move(served_model_name)), limits_(limits) {
  if (limits_.max_prompt_tokens <= 0 || limits_.max_prompt_tokens > model_.config.max_context) {
    limits_.max_prompt_tokens = model_.config.max_context;
  }
}

void Protocol::check_model(const json& body) const {
  const auto name = Fields(body).string("model");
  if (name && *name != model_name_) {
    throw ApiError(404, "invalid_request_error",
                   "The model `" + *name + "` does not exist. This server serves `" + model_name_ + "`.", "model",
                   "model_not_found");
  }
}

namespace {

// Structured outputs in each of their spellings, at most one per request: OpenAI's response_format
// (json_object, json_schema), vLLM's guided_json / guided_choice / guided_regex / guided_grammar and
// its newer structured_outputs ({"json": ...}, {"choice": [...]}, {"regex": "..."}, {"grammar": "..."},
// {"json_object": true}).
void parse_structured_output(const Fields& f, Request& r) {
  std::string given;  // the field that set one
  const auto take = [&](const std::string& param) {
    if (!given.empty()) throw bad_request(param + " and " + given + " both constrain the output; give one", param);
    given = param;
  };
  if (const json* rf = f.get("response_format")) {
    if (!rf->is_object()) throw f.wrong_type("response_format", "an object");
    const auto type = Fields(*rf, "response_format.").string("type");
    if (!type) throw bad_request("response_format.type is required", "response_format.type");
    if (*type == "json_object") {
      take("response_format");
      r.json_object = true;  // OpenAI's JSON mode: one JSON object
    } else if (*type == "json_schema") {  // OpenAI's structured outputs: {"json_schema": {"name", "schema", ...}}
      const json* js = rf->contains("json_schema") ? &(*rf)["json_schema"] : nullptr;
      if (js == nullptr || !js->is_object()) {
        throw bad_request("response_format.json_schema must be an object with the schema", "response_format.json_schema");
      }
      if (!js->contains("schema")) {
        throw bad_request("response_format.json_schema.schema is required", "response_format.json_schema.schema");
      }
      take("response_format");
      r.json_schema = compile_schema((*js)["schema"], "response_format.json_schema.schema");
    } else if (*type != "text") {
      throw bad_request("response_format '" + *type + "' is not supported (only 'text', 'json_object' and 'json_schema')",
                        "response_format");
    }
  }
  if (const json* g = f.get("guided_json")) {
    take("guided_json");
    r.json_schema = compile_schema(*g, "guided_json");
  }
  if (const json* g = f.get("guided_choice")) {
    take("guided_choice");
    r.choices = parse_choices(*g, "guided_choice");
  }
  if (const json* g = f.get("guided_regex")) {
    take("guided_regex");
    r.regex = compile_regex(*g, "guided_regex");
  }
  if (const json* g = f.get("guided_grammar")) {
    take("guided_grammar");
    r.grammar = compile_grammar(*g, "guided_grammar");
  }
  if (const json* so = f.get("structured_outputs")) {
    if (!so->is_object()) throw f.wrong_type("structured_outputs", "an object");
    for (const auto& [key, value] : so->items()) {
      const std::string param = "structured_outputs." + key;
      if (value.is_null()) continue;
      if (key == "json") {
        take(param);
        r.json_schema = compile_schema(value, param);
      } else if (key == "choice") {
        take(param);
        r.choices = parse_choices(value, param);
      } else if (key == "regex") {
        take(param);
        r.regex = compile_regex(value, param);
      } else if (key == "grammar") {
        take(param);
        r.grammar = compile_grammar(value, param);
      } else if (key == "json_object") {
        if (!value.is_boolean()) throw bad_request(param + " must be a boolean", param);
        if (!value.get<bool>()) continue;
        take(param);
        r.json_object = true;
      } else if (key == "disable_fallback" || (value.is_boolean() && !value.get<bool>())) {
        continue;  // no fallback backend here; an option left off changes nothing
      } else {
        throw bad_request(param + " is not supported", param);
      }
    }
  }
}

}  // namespace

// Fields both endpoints share; the endpoint-specific ones are parsed by the callers.
void Protocol::parse_common(const json& body, GenerationJob& job) const {
  const Fields f(body);
  Request& r = job.params;
  SamplingParams& s = r.sampling;
  s = model_.sampling_defaults;  // what the request leaves out (generation_config)
  if (auto v = f.number("temperature", 0, 2)) s.temperature = static_cast<float>(*v);
  if (auto v = f.number("top_p", 0, 1, /*lo_open=*/true)) s.top_p = static_cast<float>(*v);
  if (auto v = f.integer("top_k", -1, std::numeric_limits<int32_t>::max())) s.top_k = static_cast<int32_t>(*v);
  if (auto v = f.number("min_p", 0, 1)) s.min_p = static_cast<float>(*v);
  if (auto v = f.number("presence_penalty", -2, 2)) s.presence_penalty = static_cast<float>(*v);
  if (auto v = f.number("frequency_penalty", -2, 2)) s.frequency_penalty = static_cast<float>(*v);
  if (auto v = f.number("repetition_penalty", 0, std::numeric_limits<double>::max(), /*lo_open=*/true)) {
    s.repetition_penalty = static_cast<float>(std::min<double>(*v, std::numeric_limits<float>::max()));
  }
  if (auto v = f.integer("seed", std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::max())) {
    if (*v != -1) s.seed = static_cast<uint64_t>(*v);  // -1: no seed, as vLLM reads it
  }
  if (const json* lb = f.get("logit_bias")) {
    if (!lb->is_object()) throw f.wrong_type("logit_bias", "an object mapping token ids to biases");
    std::map<int64_t, std::string> named;  // id -> the key that named it ("4528" and "04528" are one token)
    for (const auto& [key, bias] : lb->items()) {
      int64_t id = -1;
      const auto [end, ec] = std::from_chars(key.data(), key.data() + key.size(), id);
      if (ec != std::errc() || end != key.data() + key.size() || id < 0 || id >= model_.config.vocab_size) {
        throw bad_request("logit_bias: key '" + key + "' is not a token id in [0, " +
                              std::to_string(model_.config.vocab_size) + ")",
                          "logit_bias");
      }
      // A bias past ±100 counts as ±100, as vLLM clamps it (OpenAI documents the range).
      if (!bias.is_number()) {
        throw bad_request("logit_bias: the bias of token " + key + " must be a number", "logit_bias");
      }
      if (const auto [it, fresh] = named.emplace(id, key); !fresh) {  // the biases would add up past ±100
        throw bad_request("logit_bias: token " + std::to_string(id) + " is named twice ('" + it->second + "' and '" +
                              key + "')",
                          "logit_bias");
      }
      s.logit_bias.emplace_back(static_cast<int32_t>(id), bias.get<float>());  // past ±100: the sampler clamps it
    }
  }

  if (auto v = f.integer("n", 1, limits_.max_n)) job.n = static_cast<int32_t>(*v);
  if (auto v = f.integer("best_of", 1, limits_.max_n); v && *v != job.n) {
    throw bad_request("best_of other than n is not supported", "best_of");
  }
  // vLLM's min_tokens: no stop token or stop string before that many tokens (≤ max_tokens:
  // check_lengths, once max_tokens is known).
  if (auto v = f.integer("min_tokens", 0, std::numeric_limits<int32_t>::max())) r.min_tokens = *v;
  if (const json* ids = f.get("allowed_token_ids")) {  // vLLM: only these ids may be sampled
    if (!is_token_list(*ids) || ids->empty()) {
      throw bad_request("allowed_token_ids must be a non-empty list of token ids", "allowed_token_ids");
    }
    r.allowed_token_ids = token_list(*ids, model_.config.vocab_size, "allowed_token_ids");
  }
  // vLLM's left truncation (applied in check_lengths).
  if (auto k = f.integer("truncate_prompt_tokens", -1, std::numeric_limits<int32_t>::max())) {
    if (*k == 0) throw bad_request("truncate_prompt_tokens must be an integer ≥ 1 or -1", "truncate_prompt_tokens");
    job.truncate_prompt_tokens = *k;
  }
  // The other vLLM extensions that change what is generated or returned, not implemented: refused
  // when given anything but their default, never silently dropped.
  for (const char* key : {"logits_processors", "guided_whitespace_pattern"}) {
    if (f.get(key) != nullptr) throw bad_request(std::string(key) + " is not supported", key);
  }
  if (const json* bad = f.get("bad_words")) {  // vLLM: words the output must not contain
    if (!bad->is_array() || !std::all_of(bad->begin(), bad->end(), [](const json& w) { return w.is_string(); })) {
      throw bad_request("bad_words must be a list of strings", "bad_words");
    }
    if (bad->size() > static_cast<size_t>(limits_.max_stop)) {
      throw bad_request("bad_words has " + std::to_string(bad->size()) + " entries; at most " +
                            std::to_string(limits_.max_stop) + " are allowed",
                        "bad_words");
    }
    const auto words = bad->get<std::vector<std::string>>();
    try {
      r.bad_words = bad_words_token_ids(model_.tokenizer, words);
    } catch (const InvalidArgument& e) {
      throw bad_request(e.what(), "bad_words");
    }
  }
  if (f.boolean("use_beam_search").value_or(false)) throw bad_request("use_beam_search is not supported", "use_beam_search");
  // vLLM's return_tokens_as_token_ids: logprobs name tokens "token_id:ID" (bytes of that name), so
  // that tokens whose text is not their identity (pieces of a character, ids sharing a text) can be
  // mapped back exactly.
  job.tokens_as_ids = f.boolean("return_tokens_as_token_ids").value_or(false);
  job.return_token_ids = f.boolean("return_token_ids").value_or(false);
  if (auto v = f.number("length_penalty", -1e9, 1e9); v && *v != 1.0) {
    throw bad_request("length_penalty is not supported (it applies to beam search)", "length_penalty");
  }
  if (const json* stop = f.get("stop")) {
    if (stop->is_string()) {
      r.stop.push_back(stop->get<std::string>());
    } else if (stop->is_array()) {
      if (stop->size() > static_cast<size_t>(limits_.max_stop)) {
        throw bad_request("stop: at most " + std::to_string(limits_.max_stop) + " stop strings", "stop");
      }
      for (const auto& x : *stop) {
        if (!x.is_string()) throw bad_request("stop must be a string or a list of strings", "stop");
        r.stop.push_back(x.get<std::string>());
      }
    } else {
      throw f.wrong_type("stop", "a string or a list of strings");
    }
    for (const auto& x : r.stop) {
      if (x.empty()) throw bad_request("stop strings must not be empty", "stop");
    }
  }
  if (const json* ids = f.get("stop_token_ids")) {
    if (!ids->is_array() || (!ids->empty() && !is_token_list(*ids))) {
      throw f.wrong_type("stop_token_ids", "a list of token ids");
    }
    const auto list = token_list(*ids, model_.config.vocab_size, "stop_token_ids");
    r.stop_token_ids.insert(r.stop_token_ids.end(), list.begin(), list.end());
  }
  if (auto v = f.boolean("ignore_eos")) r.ignore_eos = *v;
  if (auto v = f.boolean("skip_special_tokens")) r.skip_special_tokens = *v;
  if (auto v = f.boolean("include_stop_str_in_output")) r.include_stop_str_in_output = *v;
  if (auto v = f.integer("priority", std::numeric_limits<int32_t>::min(), std::numeric_limits<int32_t>::max())) {
    r.priority = static_cast<int32_t>(*v);
  }
  if (auto v = f.string("cache_salt")) {
    if (v->empty()) throw bad_request("cache_salt must be a non-empty string", "cache_salt");
    r.cache_salt = *v;
  }
  if (auto v = f.string("sparsity")) {
    try {
      profiles_.get(*v);
    } catch (const InvalidArgument& e) {
      throw bad_request(e.what(), "sparsity", "unknown_sparsity_profile");
    }
    r.sparsity = *v;
  }
  f.string("user");  // accepted (type-checked), not used

  if (auto v = f.boolean("stream")) job.stream = *v;
  // vLLM's prompt_logprobs: per prompt token after the first, its logprob, rank and the k most
  // likely tokens, in the response (a choice's field in completions, the response's in chat);
  // refused with streaming, as vLLM refuses it.
  if (auto v = f.integer("prompt_logprobs", 0, limits_.max_logprobs)) {
    if (job.stream) throw bad_request("prompt_logprobs is not available when stream is enabled", "prompt_logprobs");
    job.want_prompt_logprobs = true;
    r.prompt_logprobs = static_cast<int32_t>(*v);
  }
  if (const json* so = f.get("stream_options")) {
    if (!so->is_object()) throw f.wrong_type("stream_options", "an object");
    if (!job.stream) throw bad_request("stream_options can only be given when stream is true", "stream_options");
    const Fields sf(*so, "stream_options.");
    if (auto v = sf.boolean("include_usage")) job.include_usage = *v;
    if (auto v = sf.boolean("continuous_usage_stats")) job.continuous_usage = *v && job.include_usage;
  }
  parse_structured_output(f, r);
  r.stream = job.stream;
}

// Prompt + completion must fit the context; without max_tokens the completion takes what is left
// (chat) or 16 tokens (completions), and the model's max_new_tokens caps it, as vLLM does.
void Protocol::check_lengths(GenerationJob& job, bool max_tokens_given) const {
  // The context, or what the KV cache holds of one sequence under the request's profile: vLLM
  // never accepts a request its cache cannot finish, and it names that limit max_model_len.
  const int64_t ctx = limits_.sequences.tokens(job.params.sparsity, model_.config.max_context);
  const auto limit = [&] { return limits_.sequences.describe(job.params.sparsity, model_.config.max_context); };
  if (job.truncate_prompt_tokens != 0) {
    const int64_t keep = job.truncate_prompt_tokens < 0 ? ctx : job.truncate_prompt_tokens;
    const Tokenizer& tok = model_.tokenizer;
    const int32_t added_bos = tok.add_bos() ? tok.bos_id() : -1;
    for (size_t i = 0; i < job.prompts.size(); ++i) {
      auto& p = job.prompts[i];
      if (static_cast<int64_t>(p.size()) <= keep) continue;
      const bool as_ids = i < job.prompt_given_as_ids.size() && job.prompt_given_as_ids[i];
      truncate_prompt(p, keep, as_ids ? -1 : added_bos);
      if (i < job.prompt_texts.size()) job.prompt_texts[i] = model_.tokenizer.decode(p, /*skip_special=*/false);
    }
  }
  for (const auto& p : job.prompts) {
    const int64_t n = static_cast<int64_t>(p.size());
    const char* what = job.endpoint == Endpoint::kChat ? "messages" : "prompt";
    if (n == 0) throw bad_request(std::string("the ") + what + " is empty (0 tokens)", what);
    if (n > limits_.max_prompt_tokens && limits_.max_prompt_tokens < ctx) {
      throw bad_request("The prompt has " + std::to_string(n) + " tokens, more than this server accepts (" +
                            std::to_string(limits_.max_prompt_tokens) + " tokens). Please reduce the length of the " +
                            what + ".",
                        what, "context_length_exceeded");
    }
    if (n >= ctx) {  // no room for a token: the engine needs pages for n + 1
      throw bad_request(limit() + " However, your request has " + std::to_string(n) +
                            " input tokens. Please reduce the length of the " + what + ".",
                        what, "context_length_exceeded");
    }
    if (max_tokens_given && n + job.params.max_tokens > ctx) {
      throw bad_request(limit() + " However, you requested " + std::to_string(n + job.params.max_tokens) +
                            " tokens (" + std::to_string(n) + " in the " + what + ", " +
                            std::to_string(job.params.max_tokens) + " in the completion). Please reduce the length of the " +
                            what + " or completion.",
                        what, "context_length_exceeded");
    }
  }
  if (!max_tokens_given) {
    int64_t left = ctx;
    for (const auto& p : job.prompts) left = std::min<int64_t>(left, ctx - static_cast<int64_t>(p.size()));
    job.params.max_tokens = job.endpoint == Endpoint::kChat ? left : std::min<int64_t>(16, left);
  }
  if (model_.max_new_tokens > 0) job.params.max_tokens = std::min(job.params.max_tokens, model_.max_new_tokens);
  if (job.params.min_tokens > job.params.max_tokens) {
    throw bad_request("min_tokens must be less than or equal to max_tokens=" + std::to_string(job.params.max_tokens) +
                          ", got " + std::to_string(job.params.min_tokens) + ".",
                      "min_tokens");
  }
}

GenerationJob Protocol::parse_completion(const json& body) const {
  require_object(body);
  check_model(body);
  GenerationJob job;
  job.endpoint = Endpoint::kCompletions;
  job.prompt_tokens_details = limits_.prompt_tokens_details;
  const Fields f(body);
  const json* prompt = f.get("prompt");
  if (!prompt) throw bad_request("prompt is required", "prompt");
  const auto& tok = model_.tokenizer;
  const int64_t vocab = model_.config.vocab_size;
  const auto add_text = [&](const std::string& text) {
    job.prompts.push_back(tok.encode(text, /*add_special=*/true, /*parse_special=*/true));
    job.prompt_texts.push_back(text);
    job.prompt_given_as_ids.push_back(false);
  };
  const auto add_ids = [&](const json& ids) {
    job.prompts.push_back(token_list(ids, vocab, "prompt"));
    job.prompt_texts.push_back(tok.decode(job.prompts.back(), /*skip_special=*/false));
    job.prompt_given_as_ids.push_back(true);
  };
  if (prompt->is_string()) {
    add_text(prompt->get<std::string>());
  } else if (is_token_list(*prompt)) {
    add_ids(*prompt);
  } else if (prompt->is_array() && !prompt->empty()) {
    for (const auto& p : *prompt) {
      if (p.is_string()) {
        add_text(p.get<std::string>());
      } else if (is_token_list(p)) {
        add_ids(p);
      } else {
        throw bad_request("prompt must be a string, a list of strings, a list of token ids or a list of lists of "
                          "token ids",
                          "prompt");
      }
    }
  } else {
    throw bad_request("prompt must be a non-empty string, list of strings, list of token ids or list of lists of "
                      "token ids",
                      "prompt");
  }
  parse_common(body, job);
  if (job.num_choices() > limits_.max_choices) {
    throw bad_request("prompts × n must be at most " + std::to_string(limits_.max_choices), "n");
  }
  if (auto v = f.integer("logprobs", 0, limits_.max_logprobs)) job.params.logprobs = static_cast<int32_t>(*v);
  // echo: the prompt comes back before the completion, with its tokens' logprobs when logprobs
  // are asked for (the first token has none: null), as OpenAI's legacy API and vLLM do.
  job.echo = f.boolean("echo").value_or(false);
  if (job.echo && job.params.logprobs >= 0) {
    if (job.want_prompt_logprobs && job.params.prompt_logprobs != job.params.logprobs) {
      throw bad_request("with echo and logprobs, prompt_logprobs must equal logprobs (one list serves both)",
                        "prompt_logprobs");
    }
    job.params.prompt_logprobs = job.params.logprobs;
  }
  if (auto v = f.string("suffix"); v && !v->empty()) throw bad_request("suffix is not supported", "suffix");
  const auto max_tokens = f.integer("max_tokens", 1, std::numeric_limits<int32_t>::max());
  if (max_tokens) job.params.max_tokens = *max_tokens;
  check_lengths(job, max_tokens.has_value());
  job.want_logprobs = job.params.logprobs >= 0;
  return job;
}

// The body's chat rendering fields, checked as vLLM checks them.
ChatRendering chat_rendering(const Fields& f) {
  ChatRendering how;
  how.continue_final_message = f.boolean("continue_final_message").value_or(false);
  how.add_generation_prompt = f.boolean("add_generation_prompt").value_or(true);
  how.add_special_tokens = f.boolean("add_special_tokens").value_or(false);
  if (how.continue_final_message && how.add_generation_prompt) {
    throw bad_request("continue_final_message and add_generation_prompt cannot both be true (set add_generation_prompt "
                      "to false to continue the final message)",
                      "continue_final_message");
  }
  return how;
}

ChatPrompt Protocol::render_chat(const json& messages, const ChatRendering& how,
                                 std::span<const std::string> tools) const {
  if (!messages.is_array()) {
    throw bad_request("messages must be a list of messages, got " + Fields::type_name(messages), "messages");
  }
  if (messages.empty()) throw bad_request("messages must not be empty", "messages");
  if (!model_.chat_template) throw bad_request("this model has no chat template; use /v1/completions", "messages");
  std::vector<ChatMessage> msgs;
  for (size_t i = 0; i < messages.size(); ++i) {
    const json& m = messages[i];
    const std::string at = "messages[" + std::to_string(i) + "]";
    if (!m.is_object()) throw bad_request(at + " must be an object", at);
    const Fields f(m, at + ".");
    const auto role = f.string("role");
    if (!role) throw bad_request(at + ".role is required", at + ".role");
    ChatMessage cm;
    if (*role == "system" || *role == "developer") {
      cm.role = "system";
    } else if (*role == "user" || *role == "assistant" || *role == "tool") {
      cm.role = *role;
    } else {
      throw bad_request(at + ".role '" + *role + "' is not supported (system, developer, user, assistant, tool)",
                        at + ".role");
    }
    const json* content = f.get("content");
    if (!content) {
      if (cm.role != "assistant") throw bad_request(at + ".content is required", at + ".content");
    } else if (content->is_string()) {
      cm.content = content->get<std::string>();
    } else if (content->is_array()) {
      // Text parts are joined with newlines, as vLLM does.
      for (size_t j = 0; j < content->size(); ++j) {
        const json& part = (*content)[j];
        const std::string pat = at + ".content[" + std::to_string(j) + "]";
        if (!part.is_object()) throw bad_request(pat + " must be an object", pat);
        const Fields pf(part, pat + ".");
        const auto type = pf.string("type");
        if (type != "text") {
          throw bad_request(pat + ".type '" + type.value_or("") + "' is not supported (only 'text')", pat + ".type");
        }
        const auto text = pf.string("text");
        if (!text) throw bad_request(pat + ".text is required", pat + ".text");
        if (j > 0) cm.content += "\n";
        cm.content += *text;
      }
    } else {
      throw f.wrong_type("content", "a string or a list of content parts");
    }
    if (const json* calls = f.get("tool_calls"); calls && !(calls->is_array() && calls->empty())) {
      if (cm.role != "assistant") throw bad_request(at + ".tool_calls is for assistant messages", at + ".tool_calls");
      cm.tool_calls = parse_message_tool_calls(*calls, at + ".tool_calls");
      if (how.continue_final_message && i + 1 == messages.size()) {
        throw bad_request("continue_final_message cannot continue a message with tool_calls", at + ".tool_calls");
      }
    }
    msgs.push_back(std::move(cm));
  }
  ChatPrompt chat;
  try {
    chat = encode_chat(model_, std::move(msgs), how.add_generation_prompt, how.continue_final_message, tools);
  } catch (const InvalidArgument& e) {
    throw bad_request(e.what(), "messages");
  }
  const Tokenizer& tok = model_.tokenizer;
  if (how.add_special_tokens && tok.add_bos() && tok.bos_id() >= 0 && (chat.ids.empty() || chat.ids.front() != tok.bos_id())) {
    chat.ids.insert(chat.ids.begin(), tok.bos_id());
  }
  return chat;
}

GenerationJob Protocol::parse_chat(const json& body, const ojson* tools_in_order) const {
  require_object(body);
  check_model(body);
  GenerationJob job;
  job.endpoint = Endpoint::kChat;
  job.prompt_tokens_details = limits_.prompt_tokens_details;
  const Fields f(body);
  const json* messages = f.get("messages");
  if (!messages) throw bad_request("messages is required", "messages");
  if (!model_.chat_template) throw bad_request("this model has no chat template; use /v1/completions", "messages");
  ToolRequest tools = parse_tools(body, model_.chat_template->kind(), tools_in_order);
  ChatPrompt chat = render_chat(*messages, chat_rendering(f), tools.definitions);
  job.prompts.push_back(std::move(chat.ids));
  job.prompt_given_as_ids.push_back(false);
  parse_common(body, job);
  job.tools = tools.use;
  if (tools.schema) {
    const Request& r = job.params;
    if (r.output_constraints() > 0) {
      throw bad_request("tool_choice '" + std::string(tools.use.choice == ToolUse::Choice::kNamed ? "function" : "required") +
                            "' constrains the output, and so does a structured-output field; give one",
                        "tool_choice");
    }
    job.params.json_schema = std::move(tools.schema);
  }
  // vLLM's echo prepends the final message to the reply; a request template replaces the model's.
  if (f.boolean("echo").value_or(false)) throw bad_request("echo is not supported", "echo");
  if (auto v = f.string("chat_template")) {
    throw bad_request("chat_template is not supported: the model's template (or its YAML's chat_template) is used",
                      "chat_template");
  }
  if (const json* kw = f.get("chat_template_kwargs")) {
    if (!kw->is_object()) throw f.wrong_type("chat_template_kwargs", "an object");
    if (!kw->empty()) throw bad_request("chat_template_kwargs is not supported", "chat_template_kwargs");
  }
  if (const json* docs = f.get("documents"); docs && !docs->empty()) {
    throw bad_request("documents are not supported", "documents");
  }
  if (const json* fns = f.get("functions"); fns && !fns->empty()) {
    throw bad_request("functions are not supported", "functions");
  }
  const bool logprobs = f.boolean("logprobs").value_or(false);
  const auto top = f.integer("top_logprobs", 0, limits_.max_logprobs);
  if (top && *top > 0 && !logprobs) throw bad_request("top_logprobs requires logprobs to be true", "top_logprobs");
  if (logprobs) job.params.logprobs = static_cast<int32_t>(top.value_or(0));
  // Both are read, so a bad max_tokens is reported even when max_completion_tokens (which wins) is set.
  const auto legacy_max_tokens = f.integer("max_tokens", 1, std::numeric_limits<int32_t>::max());
  auto max_tokens = f.integer("max_completion_tokens", 1, std::numeric_limits<int32_t>::max());
  if (!max_tokens) max_tokens = legacy_max_tokens;
  if (max_tokens) job.params.max_tokens = *max_tokens;
  // Stop at the end of the assistant's turn as well as at EOS (implicit in the engine).
  job.params.end_of_turn = chat.end_of_turn;
  check_lengths(job, max_tokens.has_value());
  job.want_logprobs = job.params.logprobs >= 0;
  return job;
}

json Protocol::tokenize(const json& body, const ojson* tools_in_order) const {
  require_object(body);
  check_model(body);
  const Fields f(body);
  std::vector<int32_t> ids;
  if (const json* messages = f.get("messages")) {
    if (!model_.chat_template) throw bad_request("this model has no chat template", "messages");
    ids = render_chat(*messages, chat_rendering(f), parse_tools(body, model_.chat_template->kind(), tools_in_order).definitions).ids;
  } else if (auto prompt = f.string("prompt")) {
    ids = model_.tokenizer.encode(*prompt, f.boolean("add_special_tokens").value_or(true), /*parse_special=*/true);
  } else {
    throw bad_request("give prompt (a string) or messages", f.get("prompt") ? "prompt" : "");
  }
  json out = {{"count", ids.size()},
              {"max_model_len", limits_.sequences.tokens("", model_.config.max_context)},
              {"tokens", ids}};
  if (f.boolean("return_token_strs").value_or(false)) {
    json strs = json::array();
    for (int32_t id : ids) strs.push_back(model_.tokenizer.token_text(id));
    out["token_strs"] = std::move(strs);
  }
  return out;
}

json Protocol::detokenize(const json& body) const {
  require_object(body);
  check_model(body);
  const json* tokens = Fields(body).get("tokens");
  if (!tokens) throw bad_request("tokens is required", "tokens");
  if (!tokens->is_array() || (!tokens->empty() && !is_token_list(*tokens))) {
    throw bad_request("tokens must be a list of token ids", "tokens");
  }
  const auto ids = token_list(*tokens, model_.config.vocab_size, "tokens");
  return {{"prompt", model_.tokenizer.decode(ids, /*skip_special=*/false)}};
}

json Protocol::models(int64_t created) const {
  return {{"object", "list"},
          {"data",
           json::array({{{"id", model_name_},
                         {"object", "model"},
                         {"created", created},
                         {"owned_by", "sparseserve"},
                         {"root", model_.path},
                         {"parent", nullptr},
                         {"max_model_len", limits_.sequences.tokens("", model_.config.max_context)}}})}};
}

}  // namespace sparseserve::openai
