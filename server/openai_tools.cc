#include "server/openai_tools.h"

#include <set>

#include "engine/json_file.h"
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
  json parameters;  // an object schema ("type": "object" added where absent), or a root $ref to one
  std::string param;  // where the parameters are, for errors
};

// Rewrites a tool's "#/$defs/NAME" (and "#/definitions/NAME") references to "#/$defs/<prefix>NAME",
// collecting every other reference in `others`. Only schemas are walked (the subschemas under
// properties, items, additionalProperties, anyOf / oneOf and the definitions), not values such as a
// const, an enum or a default, which may hold any JSON (nesting is bounded by the body's limit).
void prefix_refs(json& s, const std::string& prefix, std::vector<std::string>& others) {
  if (!s.is_object()) return;
  if (auto r = s.find("$ref"); r != s.end() && r->is_string()) {
    const std::string ref = r->get<std::string>();
    bool local = false;
    for (const char* defs : {"#/$defs/", "#/definitions/"}) {
      if (ref.starts_with(defs)) {
        *r = std::string(defs) + prefix + ref.substr(std::string_view(defs).size());
        local = true;
      }
    }
    if (!local) others.push_back(ref);
  }
  for (const char* key : {"properties", "$defs", "definitions"}) {
    if (auto m = s.find(key); m != s.end() && m->is_object()) {
      for (auto& [name, sub] : m->items()) prefix_refs(sub, prefix, others);
    }
  }
  for (const char* key : {"items", "additionalProperties"}) {
    if (auto m = s.find(key); m != s.end()) prefix_refs(*m, prefix, others);
  }
  for (const char* key : {"anyOf", "oneOf"}) {
    if (auto m = s.find(key); m != s.end() && m->is_array()) {
      for (json& sub : *m) prefix_refs(sub, prefix, others);
    }
  }
}

// "required"'s schema: an array of calls, each {"name": a tool, "parameters": its schema} (anyOf
// over the tools). The parameters' $defs / definitions move to the root, renamed per tool, where
// their references still find them; a reference to anything else (the parameters' own root "#")
// would point into the array instead, and is refused.
json required_schema(const std::vector<Tool>& tools, bool parallel) {
  json root = {{"type", "array"}, {"minItems", 1}};
  json calls = json::array();
  for (size_t i = 0; i < tools.size(); ++i) {
    json params = tools[i].parameters;
    const std::string prefix = "tool" + std::to_string(i) + "_";
    std::vector<std::string> others;
    prefix_refs(params, prefix, others);
    if (!others.empty()) {
      throw bad_request("tool_choice 'required' takes parameters whose $ref point into $defs or definitions only, "
                        "got '" + others.front() + "'; name the function in tool_choice",
                        tools[i].param);
    }
    for (const char* defs : {"$defs", "definitions"}) {
      if (!params.contains(defs)) continue;
      if (params[defs].is_object()) {
        for (auto& [name, schema] : params[defs].items()) root[defs][prefix + name] = std::move(schema);
      }
      params.erase(defs);
    }
    calls.push_back({{"type", "object"},
                     {"properties", {{"name", {{"const", tools[i].name}}}, {"parameters", std::move(params)}}},
                     {"required", {"name", "parameters"}}});
  }
  root["items"] = calls.size() == 1 ? std::move(calls[0]) : json{{"anyOf", std::move(calls)}};
  if (!parallel) root["maxItems"] = 1;
  return root;
}

}  // namespace

ToolRequest parse_tools(const json& body, ChatTemplateKind format, const ojson* tools_in_order) {
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
      // No parameters: a function without arguments (OpenAI's rule); the arguments are an object.
      Tool tool{*name, {{"type", "object"}, {"properties", json::object()}}, ff.name("parameters")};
      if (const json* p = ff.get("parameters")) {
        if (!p->is_object()) throw ff.wrong_type("parameters", "an object (a JSON Schema)");
        if (const auto type = p->find("type"); type != p->end() && *type != "object") {
          throw bad_request(tool.param + ".type must be 'object': a function's arguments are an object", tool.param);
        }
        def["parameters"] = *p;
        if (tools_in_order != nullptr) def["parameters"] = tools_in_order->at(i).at("function").at("parameters");
        tool.parameters = *p;
        // An object's schema. A root $ref (Pydantic's recursive models) must name an object schema
        // of its own document ("type" beside a $ref is refused by the schema compiler).
        if (const auto ref = p->find("$ref"); ref != p->end()) {
          const json* target = nullptr;
          if (ref->is_string()) {
            const std::string r = ref->get<std::string>();
            for (const std::string defs : {"$defs", "definitions"}) {
              const std::string prefix = "#/" + defs + "/";
              const auto d = p->find(defs);
              if (r.starts_with(prefix) && d != p->end() && d->is_object()) {
                if (const auto t = d->find(r.substr(prefix.size())); t != d->end()) target = &*t;
              }
            }
          }
          if (target == nullptr || !target->is_object() || target->value("type", json()) != "object") {
            throw bad_request(tool.param + ".$ref must name an object schema in its $defs: a function's arguments are "
                              "an object", tool.param);
          }
        } else {
          tool.parameters["type"] = "object";
        }
      }
      (void)ff.boolean("strict");  // type-checked; the constrained modes are strict anyway
      out.definitions.push_back(nlohmann::ordered_json{{"type", "function"}, {"function", std::move(def)}}.dump());
      out.use.offered.push_back(tool.name);
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
      if (!fn || !fn->is_object()) throw bad_request("tool_choice.function must be an object", "tool_choice.function");
      const auto name = Fields(*fn, "tool_choice.function.").string("name");
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
    out.schema = compile_schema(it->parameters, it->param);
  } else if (out.use.choice == Choice::kRequired) {
    out.schema = compile_schema(required_schema(tools, out.use.parallel), tools.size() == 1 ? tools[0].param : "tools");
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
    const json parsed = parse_json_bounded<json>(*args);
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
      const ojson list = parse_json_bounded<ojson>(text);  // the model's reply: its keys' order kept
      if (!list.is_array() || list.empty()) return {std::string(text), {}};
      for (const ojson& c : list) {
        if (!c.is_object() || !c.contains("name") || !c["name"].is_string() || !c.contains("parameters")) {
          return {std::string(text), {}};
        }
        r.calls.push_back(ChatToolCall{.id = {}, .name = c["name"].get<std::string>(), .arguments = c["parameters"].dump()});
      }
      return r;
    }
    case Choice::kAuto:
      r = parse_tool_calls(use.format, text);
      for (const ChatToolCall& c : r.calls) {  // a call to a function not on offer is text
        if (std::find(use.offered.begin(), use.offered.end(), c.name) == use.offered.end()) return {std::string(text), {}};
      }
      if (!use.parallel && r.calls.size() > 1) r.calls.resize(1);
      return r;
  }
  return r;
}

ojson tool_calls_json(const std::vector<ChatToolCall>& calls, bool with_index) {
  ojson out = ojson::array();
  for (size_t i = 0; i < calls.size(); ++i) {
    ojson c = ojson::object();
    if (with_index) c["index"] = i;  // a streamed delta's: first, as OpenAI writes it
    c["id"] = calls[i].id;
    c["type"] = "function";
    c["function"] = {{"name", calls[i].name}, {"arguments", calls[i].arguments}};
    out.push_back(std::move(c));
  }
  return out;
}

}  // namespace sparseserve::openai
