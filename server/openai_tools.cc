#include "server/openai_tools.h"

#include <set>

#include "server/openai_fields.h"

namespace sparseserve::openai {

namespace {

// OpenAI's rule for function names.
bool valid_function_name(const std::string& name) {
  if (name.empty() || name.size() > 64) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
  });
}

struct Tool {
  std::string name;
  json parameters;  // null when not given
};

}  // namespace

ToolRequest parse_tools(const json& body, ChatTemplateKind format) {
  const Fields f(body);
  ToolRequest out;
  out.use.format = format;
  std::vector<Tool> tools;
  if (const json* list = f.get("tools")) {
    if (!list->is_array()) throw f.wrong_type("tools", "a list of tools");
    std::set<std::string> names;
    for (size_t i = 0; i < list->size(); ++i) {
      const json& t = (*list)[i];
      const std::string at = "tools[" + std::to_string(i) + "]";
      if (!t.is_object()) throw bad_request(at + " must be an object", at);
      const Fields tf(t, at + ".");
      if (tf.string("type") != "function") throw bad_request(at + ".type must be 'function'", at + ".type");
      const json* fn = tf.get("function");
      if (!fn || !fn->is_object()) throw bad_request(at + ".function must be an object", at + ".function");
      const Fields ff(*fn, at + ".function.");
      const auto name = ff.string("name");
      if (!name) throw bad_request(at + ".function.name is required", at + ".function.name");
      if (!valid_function_name(*name)) {
        throw bad_request(at + ".function.name must be 1 to 64 of a-z, A-Z, 0-9, '_' and '-', got '" + *name + "'",
                          at + ".function.name");
      }
      if (!names.insert(*name).second) {
        throw bad_request(at + ".function.name '" + *name + "' is given twice", at + ".function.name");
      }
      // The definition as the prompt shows it: OpenAI's field order (type, function: name,
      // description, parameters).
      nlohmann::ordered_json def = {{"name", *name}};
      if (const auto d = ff.string("description")) def["description"] = *d;
      Tool tool{*name, nullptr};
      if (const json* p = ff.get("parameters")) {
        if (!p->is_object()) throw ff.wrong_type("parameters", "an object (a JSON Schema)");
        def["parameters"] = *p;
        tool.parameters = *p;
      }
      (void)ff.boolean("strict");  // type-checked; the constrained modes are strict anyway
      out.definitions.push_back(nlohmann::ordered_json{{"type", "function"}, {"function", std::move(def)}}.dump());
      tools.push_back(std::move(tool));
    }
  }
  if (const auto p = f.boolean("parallel_tool_calls")) out.use.parallel = *p;

  using Choice = ToolUse::Choice;
  out.use.choice = tools.empty() ? Choice::kNone : Choice::kAuto;
  if (const json* tc = f.get("tool_choice")) {
    if (tc->is_string()) {
      const auto& s = tc->get_ref<const std::string&>();
      if (s == "none") out.use.choice = Choice::kNone;
      else if (s == "auto") out.use.choice = tools.empty() ? Choice::kNone : Choice::kAuto;
      else if (s == "required") out.use.choice = Choice::kRequired;
      else throw bad_request("tool_choice must be 'none', 'auto', 'required' or a named function, got '" + s + "'", "tool_choice");
    } else if (tc->is_object()) {
      const Fields cf(*tc, "tool_choice.");
      if (cf.string("type") != "function") throw bad_request("tool_choice.type must be 'function'", "tool_choice.type");
      const json* fn = cf.get("function");
      const auto name = fn && fn->is_object() ? Fields(*fn, "tool_choice.function.").string("name") : std::nullopt;
      if (!name) throw bad_request("tool_choice.function.name is required", "tool_choice.function.name");
      out.use.choice = Choice::kNamed;
      out.use.function = *name;
    } else {
      throw f.wrong_type("tool_choice", "a string or an object");
    }
  }
  if ((out.use.choice == Choice::kRequired || out.use.choice == Choice::kNamed) && tools.empty()) {
    throw bad_request("tool_choice '" + std::string(out.use.choice == Choice::kNamed ? "function" : "required") +
                          "' needs tools",
                      "tool_choice");
  }
  if (out.use.choice == Choice::kNamed) {
    const auto it = std::find_if(tools.begin(), tools.end(), [&](const Tool& t) { return t.name == out.use.function; });
    if (it == tools.end()) {
      throw bad_request("tool_choice names the function '" + out.use.function + "', which is not among the tools",
                        "tool_choice.function.name");
    }
    const json schema = it->parameters.is_null() ? json{{"type", "object"}, {"properties", json::object()}} : it->parameters;
    out.schema = compile_schema(schema, "tools[" + std::to_string(it - tools.begin()) + "].function.parameters");
  } else if (out.use.choice == Choice::kRequired) {
    if (tools.size() > 1) {
      throw bad_request("tool_choice 'required' takes a single tool here (the output's schema would need anyOf of "
                        "objects); name the function in tool_choice or use 'auto'",
                        "tool_choice");
    }
    const Tool& t = tools.front();
    json item = {{"type", "object"},
                 {"properties",
                  {{"name", {{"const", t.name}}},
                   {"parameters", t.parameters.is_null() ? json{{"type", "object"}, {"properties", json::object()}}
                                                         : t.parameters}}},
                 {"required", {"name", "parameters"}}};
    json schema = {{"type", "array"}, {"minItems", 1}, {"items", std::move(item)}};
    if (!out.use.parallel) schema["maxItems"] = 1;
    out.schema = compile_schema(schema, "tools[0].function.parameters");
  }
  return out;
}

std::vector<ChatToolCall> parse_message_tool_calls(const json& calls, const std::string& at) {
  if (!calls.is_array()) throw bad_request(at + " must be a list of tool calls", at);
  std::vector<ChatToolCall> out;
  for (size_t i = 0; i < calls.size(); ++i) {
    const std::string ai = at + "[" + std::to_string(i) + "]";
    const json& c = calls[i];
    if (!c.is_object()) throw bad_request(ai + " must be an object", ai);
    const Fields cf(c, ai + ".");
    if (const auto type = cf.string("type"); type && *type != "function") {
      throw bad_request(ai + ".type must be 'function'", ai + ".type");
    }
    const json* fn = cf.get("function");
    if (!fn || !fn->is_object()) throw bad_request(ai + ".function must be an object", ai + ".function");
    const Fields ff(*fn, ai + ".function.");
    ChatToolCall call;
    call.id = cf.string("id").value_or("");
    const auto name = ff.string("name");
    if (!name || name->empty()) throw bad_request(ai + ".function.name is required", ai + ".function.name");
    call.name = *name;
    const auto args = ff.string("arguments");
    if (!args) throw bad_request(ai + ".function.arguments is required (a JSON string)", ai + ".function.arguments");
    const json parsed = json::parse(*args, nullptr, /*allow_exceptions=*/false);
    if (!parsed.is_object()) {
      throw bad_request(ai + ".function.arguments must be the JSON text of an object", ai + ".function.arguments");
    }
    call.arguments = *args;  // as given: its keys' order is the client's
    out.push_back(std::move(call));
  }
  return out;
}

ParsedReply read_tool_reply(const ToolUse& use, std::string_view text) {
  using Choice = ToolUse::Choice;
  ParsedReply r;
  switch (use.choice) {
    case Choice::kNone:
      r.content = std::string(text);
      return r;
    case Choice::kNamed:
      r.calls.push_back(ChatToolCall{.id = {}, .name = use.function, .arguments = std::string(text)});
      return r;
    case Choice::kRequired: {
      const json list = json::parse(text, nullptr, /*allow_exceptions=*/false);
      if (!list.is_array() || list.empty()) return {std::string(text), {}};
      for (const json& c : list) {
        if (!c.is_object() || !c.contains("name") || !c["name"].is_string() || !c.contains("parameters")) {
          return {std::string(text), {}};
        }
        r.calls.push_back(ChatToolCall{.id = {}, .name = c["name"].get<std::string>(), .arguments = c["parameters"].dump()});
      }
      return r;
    }
    case Choice::kAuto:
      r = parse_tool_calls(use.format, text);
      if (!use.parallel && r.calls.size() > 1) r.calls.resize(1);
      return r;
  }
  return r;
}

json tool_calls_json(const std::vector<ChatToolCall>& calls, bool with_index) {
  json out = json::array();
  for (size_t i = 0; i < calls.size(); ++i) {
    json c = {{"id", calls[i].id},
              {"type", "function"},
              {"function", {{"name", calls[i].name}, {"arguments", calls[i].arguments}}}};
    if (with_index) c["index"] = i;
    out.push_back(std::move(c));
  }
  return out;
}

}  // namespace sparseserve::openai
