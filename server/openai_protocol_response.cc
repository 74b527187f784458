// Response side of the OpenAI protocol: RequestOutputs → response objects and SSE chunks
// (ResponseBuilder in openai_protocol.h).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <span>

#include "engine/tool_calls.h"
#include "engine/utf8.h"
#include "server/openai_protocol.h"
#include "server/openai_tools.h"

namespace sparseserve::openai {

namespace {

// OpenAI's logprobs are finite; -inf (a token masked out) is reported as -9999 as vLLM does.
double finite_logprob(float lp) { return std::max(static_cast<double>(lp), -9999.0); }

ojson bytes_of(const std::string& s) {
  ojson out = ojson::array();
  for (unsigned char ch : s) out.push_back(static_cast<int>(ch));
  return out;
}

// A token as logprobs name it: its text, or, when its bytes are no valid UTF-8 on their own (a
// piece of a character), "bytes:" and the bytes as \xNN, as OpenAI names such tokens. Distinct
// tokens so get distinct names (as replacement characters, several would share one key of a
// completions top_logprobs object, and a JSON reader keeps only one of them).
std::string token_name(const std::string& bytes) {
  if (utf8::is_valid(bytes)) return bytes;
  std::string out = "bytes:";
  for (const unsigned char b : bytes) {
    char hex[5];
    std::snprintf(hex, sizeof hex, "\\x%02x", b);
    out += hex;
  }
  return out;
}

// Characters that start in these bytes: a code point starts at every byte but a continuation byte
// (10xxxxxx), and an invalid byte becomes one U+FFFD in the text.
size_t characters_begun(const std::string& bytes) {
  return static_cast<size_t>(std::count_if(bytes.begin(), bytes.end(), [](char b) {
    return (static_cast<unsigned char>(b) & 0xC0) != 0x80;
  }));
}

}  // namespace

ResponseBuilder::ResponseBuilder(const GenerationJob& job, const Tokenizer& tokenizer, std::string id, std::string model,
                                 int64_t created)
    : job_(job), tok_(tokenizer), id_(std::move(id)), model_(std::move(model)), created_(created),
      choices_(static_cast<size_t>(job.num_choices())) {}

ojson ResponseBuilder::chunk_base() const {
  ojson c = {{"id", id_},
            {"object", job_.endpoint == Endpoint::kChat ? "chat.completion.chunk" : "text_completion"},
            {"created", created_},
            {"model", model_},
            {"choices", ojson::array()}};
  // As OpenAI: null on every chunk but the last; vLLM's continuous_usage_stats: the counts so far
  // (the whole request's) on every chunk.
  if (job_.include_usage) c["usage"] = job_.continuous_usage ? usage() : ojson(nullptr);
  return c;
}

ojson ResponseBuilder::logprobs_json(const std::vector<TokenLogprob>& lps, const std::vector<size_t>& offsets) const {
  const auto bytes_of_id = [&](int32_t id) {
    // return_tokens_as_token_ids: the name is "token_id:ID", and its bytes are the name's (vLLM's).
    if (job_.tokens_as_ids) return "token_id:" + std::to_string(id);
    return tok_.decode(std::span(&id, 1), /*skip_special=*/false);
  };
  const auto name_of = [&](int32_t id) { return token_name(bytes_of_id(id)); };
  if (job_.endpoint == Endpoint::kChat) {
    // One entry: the token's name, logprob and bytes (one decode for both).
    const auto entry = [&](int32_t id, float logprob) {
      const std::string b = bytes_of_id(id);
      return ojson{{"token", token_name(b)}, {"logprob", finite_logprob(logprob)}, {"bytes", bytes_of(b)}};
    };
    ojson content = ojson::array();
    for (const auto& lp : lps) {
      ojson top = ojson::array();
      for (const auto& [id, l] : lp.top) top.push_back(entry(id, l));
      ojson e = entry(lp.token, lp.logprob);
      e["top_logprobs"] = std::move(top);
      content.push_back(std::move(e));
    }
    return {{"content", content}};
  }
  // Completions (legacy shape): parallel lists; top_logprobs holds the top k plus the sampled token.
  ojson tokens = ojson::array(), token_logprobs = ojson::array(), top_logprobs = ojson::array();
  for (const auto& lp : lps) {
    const std::string t = name_of(lp.token);
    tokens.push_back(t);
    if (std::isnan(lp.logprob)) {  // echo: the prompt's first token, which nothing predicts
      token_logprobs.push_back(nullptr);
      top_logprobs.push_back(nullptr);
      continue;
    }
    token_logprobs.push_back(finite_logprob(lp.logprob));
    ojson top = ojson::object();
    for (const auto& [id, l] : lp.top) top[name_of(id)] = finite_logprob(l);
    if (!top.contains(t)) top[t] = finite_logprob(lp.logprob);
    top_logprobs.push_back(std::move(top));
  }
  return {{"tokens", tokens}, {"token_logprobs", token_logprobs}, {"top_logprobs", top_logprobs}, {"text_offset", offsets}};
}

// vLLM's stop_reason: the stop_token_ids entry (an integer) or the stop string that ended the
// choice; null otherwise (EOS, the end of turn, length).
ojson ResponseBuilder::stop_reason_json(const Choice& c) {
  if (c.stop_token >= 0) return c.stop_token;
  return c.stop_reason.empty() ? ojson(nullptr) : ojson(c.stop_reason);
}

ojson ResponseBuilder::finish_json(const Choice& c) const {
  if (!c.finished) return nullptr;
  return finish_reason_name(c.finish);
}

std::vector<ojson> ResponseBuilder::add(int32_t choice, const RequestOutput& delta) {
  Choice& c = choices_.at(static_cast<size_t>(choice));
  // echo: the choice's first delta carries its prompt in front, text and (with logprobs) tokens;
  // the prompt's first token has no logprob (NaN here, null on the wire).
  RequestOutput echoed;
  const bool first_echo = job_.echo && !c.echoed;
  if (first_echo) {
    c.echoed = true;
    const auto prompt = static_cast<size_t>(choice / job_.n);
    echoed = delta;
    echoed.text = job_.prompt_texts.at(prompt) + delta.text;
    if (job_.want_logprobs) {
      const std::vector<int32_t>& ids = job_.prompts.at(prompt);
      echoed.logprobs = {TokenLogprob{ids.front(), std::numeric_limits<float>::quiet_NaN(), {}, 0}};
      echoed.logprobs.insert(echoed.logprobs.end(), delta.prompt_logprobs.begin(), delta.prompt_logprobs.end());
      echoed.logprobs.insert(echoed.logprobs.end(), delta.logprobs.begin(), delta.logprobs.end());
    }
  }
  const RequestOutput& out = first_echo ? echoed : delta;
  // text_offset counts characters, as vLLM and OpenAI do, and follows the tokens (a special token's
  // text counts unless skip_special_tokens), not the text sent so far (which the stop filter and an
  // unfinished character may still hold back).
  // The echoed prompt's tokens count as the echoed text shows them, special tokens included.
  const size_t echoed_prompt = first_echo && job_.want_logprobs ? 1 + delta.prompt_logprobs.size() : 0;
  std::vector<size_t> offsets;
  for (size_t i = 0; i < out.logprobs.size(); ++i) {
    const TokenLogprob& lp = out.logprobs[i];
    offsets.push_back(c.token_chars);
    const bool skip = i >= echoed_prompt && job_.params.skip_special_tokens;
    c.token_chars += characters_begun(tok_.decode(std::span(&lp.token, 1), skip));
  }
  c.text += out.text;
  c.token_ids.insert(c.token_ids.end(), delta.token_ids.begin(), delta.token_ids.end());
  c.logprobs.insert(c.logprobs.end(), out.logprobs.begin(), out.logprobs.end());
  c.prompt_logprobs.insert(c.prompt_logprobs.end(), delta.prompt_logprobs.begin(), delta.prompt_logprobs.end());
  c.text_offsets.insert(c.text_offsets.end(), offsets.begin(), offsets.end());
  c.prompt_tokens = out.prompt_tokens;
  c.cached_tokens = std::max(c.cached_tokens, out.cached_tokens);
  c.completion_tokens = std::max(c.completion_tokens, out.completion_tokens);
  if (out.finished) {
    c.finished = true;
    c.finish = out.finish_reason;
    c.stop_reason = out.stop_reason;
    c.stop_token = out.stop_token;
    c.error = out.error;
    c.request_error = out.request_error;
  }
  if (!job_.stream) return {};

  std::vector<ojson> chunks;
  const bool chat = job_.endpoint == Endpoint::kChat;
  if (chat && !c.role_sent) {  // the first chunk of a chat choice names the role
    c.role_sent = true;
    ojson first = chunk_base();
    first["choices"].push_back(
        {{"index", choice}, {"delta", {{"role", "assistant"}, {"content", ""}}}, {"logprobs", nullptr}, {"finish_reason", nullptr}});
    if (job_.return_token_ids) first["prompt_token_ids"] = job_.prompts.front();
    chunks.push_back(std::move(first));
  }
  if (out.finished && out.finish_reason == FinishReason::kError) {
    chunks.push_back((out.request_error ? bad_request("generation stopped: " + out.error)
                                        : ApiError(500, "internal_error", "generation failed: " + out.error, "", "internal_error"))
                         .to_json());
    return chunks;
  }
  const bool new_ids = job_.return_token_ids && !delta.token_ids.empty();
  if (tool_calling()) {
    ojson lp = job_.want_logprobs && !out.logprobs.empty() ? logprobs_json(out.logprobs, offsets) : ojson(nullptr);
    const size_t before = chunks.size();
    add_tool_chunks(choice, c, out, std::move(lp), chunks);
    if (new_ids) {  // the delta's ids ride on its first chunk, or on one of their own
      if (chunks.size() == before) {
        ojson chunk = chunk_base();
        chunk["choices"].push_back({{"index", choice}, {"delta", ojson::object()}, {"logprobs", nullptr}, {"finish_reason", nullptr}});
        chunks.push_back(std::move(chunk));
      }
      chunks[before]["choices"][0]["token_ids"] = delta.token_ids;
    }
    return chunks;
  }
  if (out.text.empty() && out.logprobs.empty() && !out.finished && !new_ids) return chunks;
  ojson ch = {{"index", choice}};
  if (job_.return_token_ids) {
    ch["token_ids"] = delta.token_ids;
    if (!chat && !c.prompt_ids_sent) {
      c.prompt_ids_sent = true;
      ch["prompt_token_ids"] = job_.prompts.at(static_cast<size_t>(choice / job_.n));
    }
  }
  if (chat) {
    ch["delta"] = out.text.empty() ? ojson::object() : ojson{{"content", out.text}};
  } else {
    ch["text"] = out.text;
  }
  ch["logprobs"] = job_.want_logprobs && !out.logprobs.empty() ? logprobs_json(out.logprobs, offsets) : ojson(nullptr);
  ch["finish_reason"] = finish_json(c);
  if (c.finished) ch["stop_reason"] = stop_reason_json(c);
  ojson chunk = chunk_base();
  chunk["choices"].push_back(std::move(ch));
  chunks.push_back(std::move(chunk));
  return chunks;
}

void ResponseBuilder::add_tool_chunks(int32_t index, Choice& c, const RequestOutput& out, ojson logprobs,
                                      std::vector<ojson>& chunks) const {
  using ToolChoice = ToolUse::Choice;
  const auto push = [&](ojson delta, ojson finish) {
    ojson ch = {{"index", index}, {"delta", std::move(delta)}, {"logprobs", std::move(logprobs)}, {"finish_reason", finish}};
    logprobs = nullptr;  // the delta's logprobs ride on its first chunk
    if (!finish.is_null()) ch["stop_reason"] = stop_reason_json(c);
    ojson chunk = chunk_base();
    chunk["choices"].push_back(std::move(ch));
    chunks.push_back(std::move(chunk));
  };
  if (job_.tools.choice == ToolChoice::kNamed) {  // the output is the call's arguments, streamed as they come
    ojson delta = ojson::object();
    if (!out.text.empty() || (out.finished && c.call_id.empty())) {  // an empty call still goes out, as unstreamed
      ojson call = {{"index", 0}};
      if (c.call_id.empty()) {  // the first delta names the call (OpenAI's field order)
        c.call_id = make_response_id("call_");
        call["id"] = c.call_id;
        call["type"] = "function";
        call["function"] = {{"name", job_.tools.function}, {"arguments", out.text}};
      } else {
        call["function"] = {{"arguments", out.text}};
      }
      delta["tool_calls"] = ojson::array({std::move(call)});
    }
    if (!delta.empty() || !logprobs.is_null() || out.finished) push(std::move(delta), finish_json(c));
    return;
  }
  const auto content_delta = [&](size_t upto) {
    ojson d = ojson::object();
    if (upto > c.content_sent) d["content"] = c.text.substr(c.content_sent, upto - c.content_sent);
    c.content_sent = std::max(c.content_sent, upto);
    return d;
  };
  // Calls stream as they are written (engine/tool_calls.h call_prefixes): a call's first delta, with
  // its id and name, once its arguments object has begun (kAuto: a function on offer), then the
  // object's raw text as it comes. The finished reply is read as a whole (read_tool_reply), as
  // without streaming.
  if (!c.finished && c.open_call >= 0) {  // inside a call's arguments: the new text alone, unless it closes them
    const std::string_view more = std::string_view(c.text).substr(c.scanned);
    ObjectScan scan = c.open_scan;
    if (scan.feed(more) == std::string_view::npos && !scan.too_deep) {
      const auto i = static_cast<size_t>(c.open_call);
      c.open_scan = scan;
      c.scanned = c.text.size();
      c.args_sent[i] += more.size();
      ojson d = ojson::object();
      if (!more.empty()) {
        d["tool_calls"] = ojson::array({{{"index", i}, {"function", {{"arguments", std::string(more)}}}}});
      }
      if (!d.empty() || !logprobs.is_null()) push(std::move(d), nullptr);
      return;
    }
  }
  c.open_call = -1;
  const std::vector<CallPrefix> prefixes =
      call_prefixes(job_.tools.format, job_.tools.choice == ToolChoice::kRequired, c.text);
  const auto& offered = job_.tools.offered;
  const auto call_json = [](size_t i, const ChatToolCall& call) {  // a call's first delta, at index i
    ojson j = tool_calls_json({call}, /*with_index=*/true)[0];
    j["index"] = i;
    return j;
  };
  ojson calls = ojson::array();
  for (size_t i = 0; i < prefixes.size() && (job_.tools.parallel || i == 0); ++i) {
    const CallPrefix& p = prefixes[i];
    if (i == c.args_sent.size()) {
      if (job_.tools.choice == ToolChoice::kAuto && std::find(offered.begin(), offered.end(), p.name) == offered.end()) {
        break;
      }
      calls.push_back(call_json(i, ChatToolCall{.id = make_response_id("call_"), .name = p.name, .arguments = p.arguments}));
      c.args_sent.push_back(p.arguments.size());
    } else if (p.arguments.size() > c.args_sent[i]) {
      calls.push_back({{"index", i}, {"function", {{"arguments", p.arguments.substr(c.args_sent[i])}}}});
      c.args_sent[i] = p.arguments.size();
    }
    if (!p.closed && i + 1 == prefixes.size()) {  // the text ends inside these arguments, all sent
      c.open_call = static_cast<int64_t>(i);
      c.open_scan = p.scan;
      c.scanned = c.text.size();
    }
  }
  if (!c.finished) {  // content that cannot begin a call goes out now, the rest waits for the end
    const size_t safe = job_.tools.choice == ToolChoice::kAuto ? tool_free_prefix(job_.tools.format, c.text) : 0;
    ojson d = content_delta(safe);
    if (!calls.empty()) d["tool_calls"] = std::move(calls);
    if (!d.empty() || !logprobs.is_null()) push(std::move(d), nullptr);
    return;
  }
  // The finished reply, read whole. A stream in which a call began is a reply of calls whatever that
  // reading says: the calls begun stay what they were sent as, and no more text goes out as content
  // (what came before the first call went out already).
  ParsedReply reply = read_tool_reply(job_.tools, c.text);
  if (c.args_sent.empty()) {
    if (reply.calls.empty()) {
      push(content_delta(c.text.size()), finish_json(c));
      return;
    }
    if (reply.content.size() > c.content_sent) push(content_delta(reply.content.size()), nullptr);
  }
  // Besides what the last text added to calls begun (above): the later calls the reading found, whole.
  for (size_t i = 0; i < reply.calls.size(); ++i) {
    ChatToolCall& call = reply.calls[i];
    if (i >= c.args_sent.size()) {
      call.id = make_response_id("call_");
      calls.push_back(call_json(i, call));
    }
  }
  push(calls.empty() ? ojson::object() : ojson{{"tool_calls", std::move(calls)}}, tool_finish(c));
}

// A reply read as calls ends with "tool_calls" when the model ended it; "length" and "abort" stay.
ojson ResponseBuilder::tool_finish(const Choice& c) const {
  return c.finish == FinishReason::kStop ? ojson("tool_calls") : finish_json(c);
}

bool ResponseBuilder::all_finished() const {
  return std::all_of(choices_.begin(), choices_.end(), [](const Choice& c) { return c.finished; });
}

std::string ResponseBuilder::error() const {
  for (const auto& c : choices_) {
    if (c.finished && c.finish == FinishReason::kError) return c.error.empty() ? "internal error" : c.error;
  }
  return "";
}

bool ResponseBuilder::request_error() const {
  for (const auto& c : choices_) {
    if (c.finished && c.finish == FinishReason::kError) return c.request_error;
  }
  return false;
}

int64_t ResponseBuilder::prompt_tokens() const {
  int64_t n = 0;
  for (const auto& p : job_.prompts) n += static_cast<int64_t>(p.size());
  return n;
}

int64_t ResponseBuilder::completion_tokens() const {
  int64_t n = 0;
  for (const auto& c : choices_) n += c.completion_tokens;
  return n;
}

std::string ResponseBuilder::finish_reasons() const {
  std::string out;
  for (const auto& c : choices_) {
    if (!out.empty()) out += ",";
    out += c.finished ? finish_reason_name(c.finish) : "unfinished";
  }
  return out;
}

ojson ResponseBuilder::usage() const {
  const int64_t p = prompt_tokens(), g = completion_tokens();
  ojson u = {{"prompt_tokens", p}, {"completion_tokens", g}, {"total_tokens", p + g}};
  if (job_.prompt_tokens_details) {
    // Per prompt, its first choice's (the n samples of one prompt are separate requests, as in
    // vLLM, and each may find a different share cached); as vLLM, none when nothing was cached.
    int64_t cached = 0;
    for (size_t i = 0; i < choices_.size(); i += static_cast<size_t>(job_.n)) cached += choices_[i].cached_tokens;
    if (cached > 0) u["prompt_tokens_details"] = {{"cached_tokens", cached}};
  }
  return u;
}

ojson ResponseBuilder::usage_chunk() const {
  ojson c = chunk_base();
  c["usage"] = usage();
  return c;
}

// vLLM's prompt_logprobs: null for the first prompt token, then per token {id: {logprob, rank,
// decoded_token}} for the token itself and the top k (ranks 1 .. k).
ojson ResponseBuilder::prompt_logprobs_json(const Choice& c) const {
  ojson list = ojson::array({nullptr});
  const auto entry = [&](int32_t id, float logprob, int32_t rank) {
    return ojson{{"logprob", finite_logprob(logprob)}, {"rank", rank},
                {"decoded_token", tok_.decode(std::span(&id, 1), /*skip_special=*/false)}};
  };
  for (const TokenLogprob& lp : c.prompt_logprobs) {
    ojson at = ojson::object();
    for (size_t i = 0; i < lp.top.size(); ++i) {
      at[std::to_string(lp.top[i].first)] = entry(lp.top[i].first, lp.top[i].second, static_cast<int32_t>(i) + 1);
    }
    at[std::to_string(lp.token)] = entry(lp.token, lp.logprob, lp.rank);
    list.push_back(std::move(at));
  }
  return list;
}

ojson ResponseBuilder::response() const {
  const bool chat = job_.endpoint == Endpoint::kChat;
  ojson choices = ojson::array();
  for (size_t i = 0; i < choices_.size(); ++i) {
    const Choice& c = choices_[i];
    ojson ch = {{"index", i}};
    ojson finish = finish_json(c);
    if (chat) {
      ch["message"] = {{"role", "assistant"}, {"content", c.text}};
      if (tool_calling() && c.finish != FinishReason::kError) {
        ParsedReply reply = read_tool_reply(job_.tools, c.text);
        if (!reply.calls.empty()) {
          for (ChatToolCall& call : reply.calls) call.id = make_response_id("call_");
          ch["message"]["content"] = reply.content.empty() ? ojson(nullptr) : ojson(reply.content);
          ch["message"]["tool_calls"] = tool_calls_json(reply.calls, /*with_index=*/false);
          if (job_.tools.choice != ToolUse::Choice::kNamed) finish = tool_finish(c);
        }
      }
    } else {
      ch["text"] = c.text;
    }
    ch["logprobs"] = job_.want_logprobs ? logprobs_json(c.logprobs, c.text_offsets) : ojson(nullptr);
    ch["finish_reason"] = std::move(finish);
    ch["stop_reason"] = stop_reason_json(c);
    if (job_.want_prompt_logprobs && !chat) ch["prompt_logprobs"] = prompt_logprobs_json(c);
    if (job_.return_token_ids) {
      ch["token_ids"] = c.token_ids;
      if (!chat) ch["prompt_token_ids"] = job_.prompts.at(i / static_cast<size_t>(job_.n));
    }
    choices.push_back(std::move(ch));
  }
  ojson out = {{"id", id_},
              {"object", chat ? "chat.completion" : "text_completion"},
              {"created", created_},
              {"model", model_},
              {"choices", std::move(choices)},
              {"usage", usage()}};
  if (job_.want_prompt_logprobs && chat) out["prompt_logprobs"] = prompt_logprobs_json(choices_.front());
  if (job_.return_token_ids && chat) out["prompt_token_ids"] = job_.prompts.front();
  return out;
}

}  // namespace sparseserve::openai
