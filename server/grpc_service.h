// The SparseServe gRPC service (proto/sparseserve.proto): translates each call into the engine's
// types and back, as the HTTP front end does, so both behave the same (DESIGN.md §2).
//
// Error mapping (STYLE.md §12): InvalidArgument -> INVALID_ARGUMENT, QueueFull ->
// RESOURCE_EXHAUSTED, EngineUnavailable or not ready -> UNAVAILABLE, a bad or missing API key ->
// UNAUTHENTICATED, anything else -> INTERNAL for that call only (logged; the server serves on).
//
// Only grpc_service.cc and grpc_server.cc see gRPC and protobuf headers; this header forward-
// declares what it needs.
#pragma once

#include <atomic>
#include <memory>
#include <optional>
#include <string>

#include "engine/request.h"
#include "server/grpc_limits.h"

namespace grpc {
class Service;
}
namespace sparseserve::v1 {
class GenerateRequest;
}

namespace sparseserve {

class Engine;
struct Model;

// Generate: the most alternatives a client may ask for per token (OpenAI's top_logprobs limit).
inline constexpr int32_t kMaxTopLogprobs = 20;
// Generate: the longest request id a client may choose, in bytes.
inline constexpr size_t kMaxRequestIdBytes = 256;
// Generate: the most stop strings per request (as on the HTTP side).
inline constexpr int kMaxStopStrings = 16;

// The engine Request for a Generate call, with id `id`, built by the HTTP side's rules:
//  - text: encoded with BOS (when the model declares one), special-token text kept as text;
//  - token_ids: used as they are (the engine checks the ids);
//  - chat: rendered with the model's chat template plus the generation prompt ("developer" is
//    the system role), encoded without adding BOS and with special tokens parsed; the template's
//    end-of-turn id is the request's end_of_turn;
//  - the prompt must fit limits.max_prompt_tokens; prompt + max_tokens must fit the context;
//    unset max_tokens takes what the context leaves.
// Other unset optional fields keep the engine's defaults (SamplingParams). Range checks on the
// sampling parameters and the profile name are the engine's (Engine::submit), but temperature's:
// [0, 2], OpenAI's, as on the HTTP side.
// Throws InvalidArgument naming the field for what is checked here: a missing or empty input, a
// chat without a model template, a temperature outside [0, 2], max_tokens < 0, a prompt over the
// limit, a context overflow, logprobs outside [0, kMaxTopLogprobs], more than kMaxStopStrings or an
// empty stop string, a stop token id outside the vocabulary.
Request to_engine_request(const v1::GenerateRequest& req, const Model& model, std::string id,
                          const GrpcLimits& limits = {});

// A new request id: "grpc-" followed by 32 random hex digits.
std::string make_grpc_request_id();

// The service over `engine`. `ready` (owned by the caller, outliving the service) gates Generate
// and answers Health. api_key: when set and non-empty, every call but Health must present it.
// "sparseserve.v1.SparseServe": the service's full name (grpc.health.v1 answers for it).
const char* grpc_service_name();

std::unique_ptr<grpc::Service> make_grpc_service(Engine& engine, std::optional<std::string> api_key,
                                                 const std::atomic<bool>& ready, GrpcLimits limits = {});

}  // namespace sparseserve
