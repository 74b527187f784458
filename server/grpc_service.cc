#include "server/grpc_service.h"

#include "engine/chat_prompt.h"

#include <fmt/format.h>
#include <grpcpp/grpcpp.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <exception>
#include <mutex>
#include <random>
#include <span>
#include <string_view>
#include <utility>
#include <vector>

#include "common/errors.h"
#include "engine/bad_words.h"
#include "engine/choice_constraint.h"
#include "engine/grammar.h"
#include "engine/regex_dfa.h"
#include "engine/engine.h"
#include "engine/json_file.h"
#include "engine/model.h"
#include "engine/utf8.h"
#include "proto/sparseserve.grpc.pb.h"
#include "server/openai_tools.h"
#include "server/stall_watchdog.h"

namespace sparseserve {
namespace {

namespace pb = ::sparseserve::v1;
using std::chrono::milliseconds;

// How long Generate waits for a delta before it checks again whether the call was cancelled.
constexpr milliseconds kPollInterval{50};

// Runs a handler body and turns the project's exceptions into status codes (see the header).
template <class F>
grpc::Status guarded(const char* rpc, F&& body) {
  try {
    return body();
  } catch (const InvalidArgument& e) {
    return {grpc::StatusCode::INVALID_ARGUMENT, e.what()};
  } catch (const QueueFull& e) {
    return {grpc::StatusCode::RESOURCE_EXHAUSTED, e.what()};
  } catch (const EngineUnavailable& e) {
    return {grpc::StatusCode::UNAVAILABLE, e.what()};
  } catch (const std::exception& e) {
    spdlog::error("gRPC {}: internal error: {}", rpc, e.what());
    return {grpc::StatusCode::INTERNAL, fmt::format("internal error: {}", e.what())};
  } catch (...) {
    spdlog::error("gRPC {}: internal error of unknown type", rpc);
    return {grpc::StatusCode::INTERNAL, "internal error"};
  }
}

// Compares without an early exit, so the time taken does not tell where the strings differ.
bool same_secret(std::string_view given, std::string_view key) {
  if (given.size() != key.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < given.size(); ++i) diff |= static_cast<unsigned char>(given[i] ^ key[i]);
  return diff == 0;
}

std::string_view view(const grpc::string_ref& s) { return {s.data(), s.size()}; }

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

bool starts_with_nocase(std::string_view s, std::string_view prefix) {
  if (s.size() < prefix.size()) return false;
  for (size_t i = 0; i < prefix.size(); ++i) {
    const auto lower = [](char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; };
    if (lower(s[i]) != lower(prefix[i])) return false;
  }
  return true;
}

pb::FinishReason to_proto(FinishReason r) {
  switch (r) {
    case FinishReason::kStop: return pb::FINISH_REASON_STOP;
    case FinishReason::kLength: return pb::FINISH_REASON_LENGTH;
    case FinishReason::kAbort: return pb::FINISH_REASON_ABORT;
    case FinishReason::kNone:
    case FinishReason::kError: break;
  }
  return pb::FINISH_REASON_UNSPECIFIED;
}

// proto3 strings must be valid UTF-8 (clients reject the message otherwise).
std::string valid_utf8(std::string s) {
  return utf8::is_valid(s) ? std::move(s) : utf8::to_lossy(s);
}

std::string token_bytes(const Tokenizer& tok, int32_t id) {
  return tok.decode(std::span<const int32_t>(&id, 1), /*skip_special=*/false);
}

void fill_response(const RequestOutput& out, const std::string& id, const Tokenizer& tok,
                   pb::GenerateResponse& msg) {
  msg.set_request_id(id);
  msg.mutable_token_ids()->Add(out.token_ids.begin(), out.token_ids.end());
  msg.set_text(valid_utf8(out.text));
  const auto fill = [&](const TokenLogprob& lp, pb::TokenLogprob* p) {
    p->set_token_id(lp.token);
    p->set_token(token_bytes(tok, lp.token));
    p->set_logprob(lp.logprob);
    p->set_rank(lp.rank);
    for (const auto& [top_id, top_logprob] : lp.top) {
      pb::TopLogprob* t = p->add_top();
      t->set_token_id(top_id);
      t->set_token(token_bytes(tok, top_id));
      t->set_logprob(top_logprob);
    }
  };
  for (const TokenLogprob& lp : out.logprobs) fill(lp, msg.add_logprobs());
  for (const TokenLogprob& lp : out.prompt_logprobs) fill(lp, msg.add_prompt_logprobs());
  if (out.finished) {
    pb::Final* f = msg.mutable_final();
    f->set_finish_reason(to_proto(out.finish_reason));
    f->set_stop_reason(valid_utf8(out.stop_reason));
    f->mutable_usage()->set_prompt_tokens(out.prompt_tokens);
    f->mutable_usage()->set_completion_tokens(out.completion_tokens);
    f->mutable_usage()->set_cached_tokens(out.cached_tokens);
  }
}

pb::ProfileInfo profile_info(const kvcache::SparsityProfile& p) {
  pb::ProfileInfo info;
  info.set_name(p.name);
  info.set_dense(p.is_dense());
  info.set_streaming_kv_heads(p.roles.count(kvcache::HeadRole::kStreaming));
  if (p.streaming) {
    info.set_sink_tokens(p.streaming->sink_tokens);
    info.set_local_tokens(p.streaming->local_tokens);
  }
  info.set_decode_token_budget(p.decode.enabled ? p.decode.token_budget : 0);
  info.set_dynamic_prefill(p.prefill.dynamic);
  return info;
}

// Cancels a request in the engine when Generate leaves before its final delta (client gone,
// deadline, server shutdown, an exception while streaming).
class CancelUnlessFinished {
 public:
  explicit CancelUnlessFinished(RequestStream& s) : stream_(s) {}
  ~CancelUnlessFinished() {
    if (!finished_) stream_.cancel();
  }
  CancelUnlessFinished(const CancelUnlessFinished&) = delete;
  CancelUnlessFinished& operator=(const CancelUnlessFinished&) = delete;
  void finished() { finished_ = true; }

 private:
  RequestStream& stream_;
  bool finished_ = false;
};

class SparseServeService final : public pb::SparseServe::Service {
 public:
  SparseServeService(Engine& engine, std::optional<std::string> api_key, const std::atomic<bool>& ready,
                     GrpcLimits limits)
      : engine_(engine), api_key_(std::move(api_key)), ready_(ready), limits_(limits),
        stalls_(std::chrono::milliseconds(limits.write_stall_ms)) {
    if (api_key_ && api_key_->empty()) api_key_.reset();
  }

  grpc::Status Generate(grpc::ServerContext* ctx, const pb::GenerateRequest* req,
                        grpc::ServerWriter<pb::GenerateResponse>* writer) override {
    return guarded("Generate", [&]() -> grpc::Status {
      if (grpc::Status st = authorize(*ctx); !st.ok()) return st;
      if (!ready_.load()) return {grpc::StatusCode::UNAVAILABLE, "the server is not ready"};
      std::string id;
      if (req->has_request_id() && !req->request_id().empty()) {
        if (req->request_id().size() > kMaxRequestIdBytes) {
          throw InvalidArgument(fmt::format("request_id is {} bytes; at most {} are allowed",
                                            req->request_id().size(), kMaxRequestIdBytes));
        }
        // It goes back as the x-request-id header, and gRPC aborts the whole process on a metadata
        // value that is not printable ASCII.
        if (!std::all_of(req->request_id().begin(), req->request_id().end(), [](char c) { return c >= 0x20 && c <= 0x7e; })) {
          throw InvalidArgument("request_id must be printable ASCII (it is sent back as the x-request-id header)");
        }
        id = req->request_id();
      } else {
        id = make_grpc_request_id();
      }
      std::shared_ptr<RequestStream> stream = engine_.submit(to_engine_request(*req, engine_.model(), id, limits_));
      return stream_outputs(*ctx, *stream, *writer);
    });
  }

  grpc::Status Abort(grpc::ServerContext* ctx, const pb::AbortRequest* req, pb::AbortResponse* resp) override {
    return guarded("Abort", [&]() -> grpc::Status {
      if (grpc::Status st = authorize(*ctx); !st.ok()) return st;
      if (req->request_id().empty()) throw InvalidArgument("request_id is empty");
      resp->set_found(engine_.abort_request(req->request_id()));
      return grpc::Status::OK;
    });
  }

  grpc::Status Tokenize(grpc::ServerContext* ctx, const pb::TokenizeRequest* req, pb::TokenizeResponse* resp) override {
    return guarded("Tokenize", [&]() -> grpc::Status {
      if (grpc::Status st = authorize(*ctx); !st.ok()) return st;
      const bool add_special = req->has_add_special() ? req->add_special() : true;
      const bool parse_special = req->has_parse_special() ? req->parse_special() : true;
      const std::vector<int32_t> ids = engine_.model().tokenizer.encode(req->text(), add_special, parse_special);
      resp->mutable_token_ids()->Add(ids.begin(), ids.end());
      return grpc::Status::OK;
    });
  }

  grpc::Status Detokenize(grpc::ServerContext* ctx, const pb::DetokenizeRequest* req,
                          pb::DetokenizeResponse* resp) override {
    return guarded("Detokenize", [&]() -> grpc::Status {
      if (grpc::Status st = authorize(*ctx); !st.ok()) return st;
      const Tokenizer& tok = engine_.model().tokenizer;
      const auto& ids = req->token_ids();
      for (int i = 0; i < ids.size(); ++i) {
        if (ids[i] < 0 || ids[i] >= tok.vocab_size()) {
          throw InvalidArgument(fmt::format("token_ids[{}] = {} is outside the vocabulary [0, {})", i, ids[i],
                                            tok.vocab_size()));
        }
      }
      std::string text =
          utf8::to_lossy(tok.decode(std::span<const int32_t>(ids.data(), static_cast<size_t>(ids.size())), req->skip_special()));
      if (text.size() + 64 > kMaxResponseBytes) {  // room for the message's framing
        throw InvalidArgument(fmt::format("the text of these token_ids is {} bytes, over the {} MiB a reply may hold",
                                          text.size(), kMaxResponseBytes >> 20));
      }
      resp->set_text(std::move(text));
      return grpc::Status::OK;
    });
  }

  grpc::Status GetModelInfo(grpc::ServerContext* ctx, const pb::GetModelInfoRequest*,
                            pb::GetModelInfoResponse* resp) override {
    return guarded("GetModelInfo", [&]() -> grpc::Status {
      if (grpc::Status st = authorize(*ctx); !st.ok()) return st;
      const Model& m = engine_.model();
      const ModelConfig& c = m.config;
      const ModelProfiles& profiles = engine_.profiles();
      resp->set_name(valid_utf8(profiles.name.empty() ? c.name : profiles.name));
      resp->set_architecture(c.architecture);
      resp->set_format(m.format);
      resp->set_num_layers(c.n_layers);
      resp->set_num_heads(c.n_heads);
      resp->set_num_kv_heads(c.n_kv_heads);
      resp->set_head_dim(c.head_dim);
      resp->set_hidden_size(c.hidden);
      resp->set_vocab_size(c.vocab_size);
      resp->set_context_length(limits_.sequences.tokens("", c.max_context));
      resp->set_bos_token_id(c.bos_id);
      resp->mutable_eos_token_ids()->Add(c.eos_ids.begin(), c.eos_ids.end());
      resp->set_end_of_turn_token_id(-1);
      if (m.chat_template) {
        resp->set_chat_template(m.chat_template->name());
        resp->set_end_of_turn_token_id(m.tokenizer.token_id(m.chat_template->end_of_turn()));
      }
      for (const auto& [name, profile] : profiles.profiles) *resp->add_profiles() = profile_info(profile);
      resp->set_default_profile(profiles.default_profile);
      resp->set_page_tokens(profiles.kv_cache.page_tokens);
      return grpc::Status::OK;
    });
  }

  grpc::Status GetServerInfo(grpc::ServerContext* ctx, const pb::GetServerInfoRequest*,
                             pb::GetServerInfoResponse* resp) override {
    return guarded("GetServerInfo", [&]() -> grpc::Status {
      if (grpc::Status st = authorize(*ctx); !st.ok()) return st;
      const EngineMetrics& m = engine_.metrics();
      resp->set_requests_running(m.requests_running.load());
      resp->set_requests_waiting(m.requests_waiting.load());
      resp->set_kv_pages_in_use(engine_.kv_pages_in_use());
      resp->set_kv_pages_total(m.kv_pages_total.load());
      resp->set_ready(ready_.load());
      return grpc::Status::OK;
    });
  }

  grpc::Status Health(grpc::ServerContext*, const pb::HealthRequest*, pb::HealthResponse* resp) override {
    resp->set_status(ready_.load() ? pb::HealthResponse::SERVING : pb::HealthResponse::NOT_SERVING);
    return grpc::Status::OK;
  }

 private:
  // OK when no key is configured or the call presents it (`authorization: Bearer <key>` or
  // `x-api-key: <key>`).
  grpc::Status authorize(const grpc::ServerContext& ctx) const {
    if (!api_key_) return grpc::Status::OK;
    bool presented = false;
    for (const auto& [key, value] : ctx.client_metadata()) {
      std::string_view given;
      if (view(key) == "authorization") {
        const std::string_view v = trim(view(value));
        if (!starts_with_nocase(v, "bearer ")) continue;
        given = trim(v.substr(7));
      } else if (view(key) == "x-api-key") {
        given = trim(view(value));
      } else {
        continue;
      }
      presented = true;
      if (same_secret(given, *api_key_)) return grpc::Status::OK;
    }
    return {grpc::StatusCode::UNAUTHENTICATED,
            presented ? "invalid API key"
                      : "missing API key: send metadata 'authorization: Bearer <key>' or 'x-api-key: <key>'"};
  }

  // Relays the request's deltas until its final one, the client going away or the call being
  // cancelled (deadline, shutdown); in the last two cases the request is cancelled in the engine.
  grpc::Status stream_outputs(grpc::ServerContext& ctx, RequestStream& stream,
                              grpc::ServerWriter<pb::GenerateResponse>& writer) {
    CancelUnlessFinished cancel_guard(stream);
    ctx.AddInitialMetadata("x-request-id", stream.id());
    writer.SendInitialMetadata();
    const Tokenizer& tok = engine_.model().tokenizer;
    while (true) {
      if (ctx.IsCancelled()) return {grpc::StatusCode::CANCELLED, "the call was cancelled"};
      const std::optional<RequestOutput> out = stream.next(kPollInterval);
      if (!out) continue;
      if (out->finished) cancel_guard.finished();
      if (out->finish_reason == FinishReason::kError) {
        if (out->request_error) return {grpc::StatusCode::INVALID_ARGUMENT, fmt::format("generation stopped: {}", out->error)};
        spdlog::error("gRPC Generate {}: {}", stream.id(), out->error);
        return {grpc::StatusCode::INTERNAL, fmt::format("generation failed: {}", out->error)};
      }
      pb::GenerateResponse msg;
      fill_response(*out, stream.id(), tok, msg);
      bool written;
      {
        const StallWatchdog::Guard watched(stalls_, ctx);
        written = writer.Write(msg);
      }
      if (!written) {
        return out->finished ? grpc::Status::OK
                             : grpc::Status(grpc::StatusCode::CANCELLED, "the client went away");
      }
      if (out->finished) return grpc::Status::OK;
    }
  }

  Engine& engine_;
  std::optional<std::string> api_key_;  // never empty when set
  const std::atomic<bool>& ready_;
  GrpcLimits limits_;
  StallWatchdog stalls_;  // cancels a call whose client stopped reading
};

}  // namespace

Request to_engine_request(const v1::GenerateRequest& g, const Model& model, std::string id, const GrpcLimits& limits) {
  Request r;
  r.id = std::move(id);
  const Tokenizer& tok = model.tokenizer;
  switch (g.input_case()) {
    case pb::GenerateRequest::kText:
      if (g.text().empty()) throw InvalidArgument("text is empty");
      r.prompt = tok.encode(g.text(), /*add_special=*/true, /*parse_special=*/true);
      break;
    case pb::GenerateRequest::kTokenIds:
      if (g.token_ids().ids().empty()) throw InvalidArgument("token_ids is empty");
      r.prompt.assign(g.token_ids().ids().begin(), g.token_ids().ids().end());
      break;
    case pb::GenerateRequest::kChat: {
      if (g.chat().messages().empty()) throw InvalidArgument("chat.messages is empty");
      if (!model.chat_template) throw InvalidArgument("chat: the model has no chat template");
      // Tools and calls are checked as the HTTP API checks them (server/openai_tools.h).
      std::vector<ChatMessage> messages;
      std::vector<std::string> tools;
      try {
        messages.reserve(static_cast<size_t>(g.chat().messages_size()));
        for (int i = 0; i < g.chat().messages_size(); ++i) {
          const pb::ChatMessage& m = g.chat().messages(i);
          nlohmann::json calls = nlohmann::json::array();
          for (const pb::ChatToolCall& c : m.tool_calls()) {
            calls.push_back({{"id", c.id()}, {"type", "function"}, {"function", {{"name", c.name()}, {"arguments", c.arguments()}}}});
          }
          if (!calls.empty() && m.role() != "assistant") {
            throw InvalidArgument(fmt::format("chat.messages[{}].tool_calls is for assistant messages", i));
          }
          messages.push_back({m.role(), m.content(),
                              openai::parse_message_tool_calls(calls, fmt::format("chat.messages[{}].tool_calls", i))});
        }
        openai::ojson in_order = openai::ojson::array();  // keys in the client's order, as HTTP keeps them
        for (int i = 0; i < g.chat().tools_size(); ++i) {
          in_order.push_back(parse_json_bounded<openai::ojson>(g.chat().tools(i)));
          if (in_order.back().is_discarded()) {
            throw InvalidArgument(fmt::format("chat.tools[{}] is not JSON or nests deeper than {}", i, kMaxJsonDepth));
          }
        }
        const openai::json body = {{"tools", openai::json(in_order)}, {"tool_choice", "none"}};
        tools = openai::parse_tools(body, model.chat_template->kind(), &in_order).definitions;
      } catch (const openai::ApiError& e) {
        // The HTTP checks name OpenAI's fields: a call's name and arguments sit under "function" there.
        std::string message = e.what();
        for (const char* field : {".function.name", ".function.arguments"}) {
          if (!e.param().starts_with("chat.messages")) break;
          for (size_t at; (at = message.find(field)) != std::string::npos;) message.erase(at, 9);  // ".function"
        }
        throw InvalidArgument((e.param().starts_with("tools") ? "chat." : "") + message);
      }
      ChatPrompt chat = encode_chat(model, std::move(messages), true, false, tools);
      r.prompt = std::move(chat.ids);
      r.end_of_turn = chat.end_of_turn;
      break;
    }
    case pb::GenerateRequest::INPUT_NOT_SET:
      throw InvalidArgument("no input: set one of text, token_ids or chat");
  }
  if (g.has_truncate_prompt_tokens() && (g.truncate_prompt_tokens() == 0 || g.truncate_prompt_tokens() < -1)) {
    throw InvalidArgument(
        fmt::format("truncate_prompt_tokens must be ≥ 1 or -1 (got {})", g.truncate_prompt_tokens()));
  }

  const pb::SamplingParams& s = g.sampling();
  r.sampling = model.sampling_defaults;  // what the request leaves out (generation_config)
  if (s.has_temperature()) {
    // OpenAI's range, as the HTTP side checks it (the engine itself allows up to 100).
    if (!(s.temperature() >= 0.0f && s.temperature() <= 2.0f)) {
      throw InvalidArgument(fmt::format("temperature must be in [0, 2], got {}", s.temperature()));
    }
    r.sampling.temperature = s.temperature();
  }
  if (s.has_top_p()) r.sampling.top_p = s.top_p();
  if (s.has_top_k()) r.sampling.top_k = s.top_k();
  if (s.has_min_p()) r.sampling.min_p = s.min_p();
  r.sampling.presence_penalty = s.presence_penalty();
  r.sampling.frequency_penalty = s.frequency_penalty();
  if (s.has_repetition_penalty()) r.sampling.repetition_penalty = s.repetition_penalty();
  if (s.has_seed()) r.sampling.seed = s.seed();
  r.sampling.logit_bias.assign(s.logit_bias().begin(), s.logit_bias().end());
  std::sort(r.sampling.logit_bias.begin(), r.sampling.logit_bias.end());  // map order is unspecified

  // Prompt + completion must fit the context, or what the KV cache holds of one sequence under the
  // request's profile, as on the HTTP side (and in vLLM).
  const int64_t context = limits.sequences.tokens(g.sparsity(), model.config.max_context);
  const auto limit = [&] { return limits.sequences.describe(g.sparsity(), model.config.max_context); };
  r.json_object = g.json_object();
  if (!g.json_schema().empty()) {
    if (g.json_object()) throw InvalidArgument("json_object and json_schema exclude each other");
    r.json_schema = std::make_shared<const JsonSchema>(JsonSchema::compile(g.json_schema()));
  }
  if (g.choices_size() > 0) {
    if (g.json_object() || !g.json_schema().empty()) throw InvalidArgument("choices exclude json_object and json_schema");
    r.choices = ChoiceText::sorted({g.choices().begin(), g.choices().end()});
  }
  if (!g.regex().empty()) {
    if (g.json_object() || !g.json_schema().empty() || g.choices_size() > 0) {
      throw InvalidArgument("regex excludes json_object, json_schema and choices");
    }
    r.regex = std::make_shared<const RegexDfa>(RegexDfa::compile(g.regex()));
  }
  if (!g.grammar().empty()) {
    if (g.json_object() || !g.json_schema().empty() || g.choices_size() > 0 || !g.regex().empty()) {
      throw InvalidArgument("grammar excludes json_object, json_schema, choices and regex");
    }
    r.grammar = std::make_shared<const Grammar>(Grammar::parse(g.grammar()));
  }
  if (g.has_truncate_prompt_tokens()) {
    const int64_t keep = g.truncate_prompt_tokens() < 0 ? context : g.truncate_prompt_tokens();
    const bool as_ids = g.input_case() == pb::GenerateRequest::kTokenIds;
    truncate_prompt(r.prompt, keep, as_ids || !tok.add_bos() ? -1 : tok.bos_id());
  }
  const auto n = static_cast<int64_t>(r.prompt.size());
  if (limits.max_prompt_tokens > 0 && limits.max_prompt_tokens < context && n > limits.max_prompt_tokens) {
    throw InvalidArgument(fmt::format("The prompt has {} tokens, more than this server accepts ({} tokens). Please "
                                      "reduce the length of the prompt.", n, limits.max_prompt_tokens));
  }
  if (n >= context) {  // no room for a token, whatever max_tokens: the engine needs pages for n + 1
    throw InvalidArgument(fmt::format("{} However, your request has {} input tokens. Please reduce the length of "
                                      "the prompt.", limit(), n));
  }
  if (g.has_max_tokens()) {
    if (g.max_tokens() < 0) throw InvalidArgument(fmt::format("max_tokens must be ≥ 0 (got {})", g.max_tokens()));
    if (g.max_tokens() > context - n) {  // not n + max_tokens: that overflows for max_tokens near 2^63
      throw InvalidArgument(fmt::format("{} However, you requested {} tokens ({} in the prompt, {} in the completion). "
                                        "Please reduce the length of the prompt or max_tokens.",
                                        limit(), n + std::min(g.max_tokens(), INT64_MAX - n), n, g.max_tokens()));
    }
    r.max_tokens = g.max_tokens();
  } else {
    r.max_tokens = context - n;
  }
  if (model.max_new_tokens > 0) r.max_tokens = std::min(r.max_tokens, model.max_new_tokens);  // as over HTTP
  if (g.min_tokens() < 0 || g.min_tokens() > r.max_tokens) {
    throw InvalidArgument(
        fmt::format("min_tokens must be in [0, max_tokens = {}] (got {})", r.max_tokens, g.min_tokens()));
  }
  r.min_tokens = g.min_tokens();
  if (g.stop_size() > kMaxStopStrings) {
    throw InvalidArgument(fmt::format("stop has {} strings; at most {} are allowed", g.stop_size(), kMaxStopStrings));
  }
  for (int i = 0; i < g.stop_size(); ++i) {
    if (g.stop(i).empty()) throw InvalidArgument(fmt::format("stop[{}] is empty", i));
    r.stop.push_back(g.stop(i));
  }
  for (int i = 0; i < g.stop_token_ids_size(); ++i) {
    const int32_t t = g.stop_token_ids(i);
    if (t < 0 || t >= tok.vocab_size()) {
      throw InvalidArgument(fmt::format("stop_token_ids[{}] = {} is outside the vocabulary [0, {})", i, t,
                                        tok.vocab_size()));
    }
    r.stop_token_ids.push_back(t);
  }
  if (g.bad_words_size() > kMaxStopStrings) {
    throw InvalidArgument(fmt::format("bad_words has {} entries; at most {} are allowed", g.bad_words_size(), kMaxStopStrings));
  }
  if (g.bad_words_size() > 0) {
    const std::vector<std::string> words(g.bad_words().begin(), g.bad_words().end());
    r.bad_words = bad_words_token_ids(tok, words);
  }
  for (int i = 0; i < g.allowed_token_ids_size(); ++i) {
    const int32_t t = g.allowed_token_ids(i);
    if (t < 0 || t >= tok.vocab_size()) {
      throw InvalidArgument(fmt::format("allowed_token_ids[{}] = {} is outside the vocabulary [0, {})", i, t,
                                        tok.vocab_size()));
    }
    r.allowed_token_ids.push_back(t);
  }
  r.ignore_eos = g.ignore_eos();
  r.sparsity = g.sparsity();
  if (g.has_logprobs()) {
    if (g.logprobs() < 0 || g.logprobs() > kMaxTopLogprobs) {
      throw InvalidArgument(fmt::format("logprobs must be in [0, {}] (got {})", kMaxTopLogprobs, g.logprobs()));
    }
    r.logprobs = g.logprobs();
  }
  if (g.has_prompt_logprobs()) {
    if (g.prompt_logprobs() < 0 || g.prompt_logprobs() > kMaxTopLogprobs) {
      throw InvalidArgument(
          fmt::format("prompt_logprobs must be in [0, {}] (got {})", kMaxTopLogprobs, g.prompt_logprobs()));
    }
    r.prompt_logprobs = g.prompt_logprobs();
  }
  r.priority = g.priority();
  r.cache_salt = g.cache_salt();
  r.stream = true;
  return r;
}

std::string make_grpc_request_id() {
  static std::mutex mu;
  static std::mt19937_64 rng{std::random_device{}()};
  uint64_t hi = 0, lo = 0;
  {
    std::lock_guard<std::mutex> lock(mu);
    hi = rng();
    lo = rng();
  }
  return fmt::format("grpc-{:016x}{:016x}", hi, lo);
}

const char* grpc_service_name() { return pb::SparseServe::service_full_name(); }

std::unique_ptr<grpc::Service> make_grpc_service(Engine& engine, std::optional<std::string> api_key,
                                                 const std::atomic<bool>& ready, GrpcLimits limits) {
  return std::make_unique<SparseServeService>(engine, std::move(api_key), ready, limits);
}

}  // namespace sparseserve
