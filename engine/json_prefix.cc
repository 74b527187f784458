#include "engine/json_prefix.h"

#include <algorithm>
#include <bit>

#include "engine/regex_dfa.h"
#include "engine/utf8.h"

namespace sparseserve {

namespace {

bool is_digit(uint8_t c) { return c >= '0' && c <= '9'; }

int hex_value(uint8_t c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

JsonPrefix::JsonPrefix(bool root_object, int32_t max_whitespace_run)
    : max_ws_(max_whitespace_run), root_object_(root_object) {}

JsonPrefix::JsonPrefix(const JsonSchema& schema, int32_t max_whitespace_run)
    : schema_(&schema), expect_(schema.root()), max_ws_(max_whitespace_run), root_object_(false) {}

bool JsonPrefix::push(std::string_view bytes) {
  for (char c : bytes) {
    if (!push(static_cast<uint8_t>(c))) return false;
  }
  return true;
}

bool JsonPrefix::complete() const {
  return mode_ == Mode::kDone || (!root_object_ && depth_ == 0 && number_may_end(mode_)) ||
         (mode_ == Mode::kNumText && depth_ == 0 && schema_->node(text_node_).number->accepting(text_state_)) ||
         (mode_ == Mode::kMatch && depth_ == 0 && literal_complete());
}

bool JsonPrefix::same_state(const JsonPrefix& o) const {
  if (mode_ != o.mode_ || depth_ != o.depth_ || schema_ != o.schema_ || root_object_ != o.root_object_ ||
      max_ws_ != o.max_ws_ || ws_run_ != o.ws_run_ || expect_ != o.expect_ || text_state_ != o.text_state_ ||
      high_surrogate_ != o.high_surrogate_) {
    return false;
  }
  if (text_state_ >= 0 && text_node_ != o.text_node_) return false;
  for (int32_t d = 0; d < depth_; ++d) {
    if (((stack_[d / 64] ^ o.stack_[d / 64]) >> (d % 64)) & 1) return false;
    if (d < kMaxSchemaDepth && (frames_[d].node != o.frames_[d].node || frames_[d].items != o.frames_[d].items ||
                                frames_[d].seen != o.frames_[d].seen)) {
      return false;
    }
  }
  switch (mode_) {
    case Mode::kString:
    case Mode::kEscape:
    case Mode::kHex:
    case Mode::kUtf8:
      if (key_ != o.key_ || free_key_ != o.free_key_ || property_ != o.property_) return false;
      if (mode_ == Mode::kHex && (code_ != o.code_ || hex_left_ != o.hex_left_)) return false;
      if (mode_ == Mode::kUtf8 && (utf8_left_ != o.utf8_left_ || lo_ != o.lo_ || hi_ != o.hi_)) return false;
      return true;
    case Mode::kColon:
      return property_ == o.property_;
    case Mode::kMatch:
      return match_node_ == o.match_node_ && alive_ == o.alive_ && pos_ == o.pos_;
    case Mode::kKeyMatch:
      return alive_ == o.alive_ && named_ == o.named_ && pos_ == o.pos_ && property_ == o.property_ &&
             key_ == o.key_ && free_key_ == o.free_key_;
    case Mode::kLiteral:
      return literal_ == o.literal_;
    case Mode::kNumMinus:
    case Mode::kNumZero:
    case Mode::kNumInt:
    case Mode::kNumDot:
    case Mode::kNumFrac:
    case Mode::kNumExpMark:
    case Mode::kNumExpSign:
    case Mode::kNumExp:
    case Mode::kNumText:
      return integer_ == o.integer_;
    default:  // between tokens: the frames, expect_ and the whitespace run say it all
      return true;
  }
}

bool JsonPrefix::push(uint8_t c) {
  forks_ = 0;
  switch (mode_) {
    case Mode::kValue:
    case Mode::kValueOrClose:
    case Mode::kKeyOrClose:
    case Mode::kKey:
    case Mode::kColon:
    case Mode::kCommaOrClose:
    case Mode::kDone:
      return structural(c);

    case Mode::kString:
      if (high_surrogate_ && c != '\\') return false;
      if (c == '\\' && free_key_) return false;  // a free key is written raw (it must not spell a property's)
      if (c == '"') {
        free_key_ = false;
        if (text_state_ >= 0) {
          if (!schema_->node(text_node_).text->accepting(text_state_)) return false;
          text_state_ = -1;
        }
        if (key_) {
          mode_ = Mode::kColon;
        } else {
          end_value();
        }
        return true;
      }
      if (c == '\\') {
        mode_ = Mode::kEscape;
        if (text_state_ < 0) return true;
        for (uint8_t b : {'"', '\\', '/', '\b', '\f', '\n', '\r', '\t'}) {  // some short escape continues
          if (schema_->node(text_node_).text->next(text_state_, b) != RegexDfa::kDead) return true;
        }
        return false;
      }
      if (c < 0x20 || !text_step(c)) return false;
      if (c < 0x80) return true;
      // A UTF-8 lead byte: how many continuation bytes follow, and the first one's range (which
      // excludes overlong forms, surrogates and code points over U+10FFFF).
      lo_ = 0x80;
      hi_ = 0xBF;
      if (c >= 0xC2 && c <= 0xDF) {
        utf8_left_ = 1;
      } else if (c == 0xE0) {
        utf8_left_ = 2, lo_ = 0xA0;
      } else if (c == 0xED) {
        utf8_left_ = 2, hi_ = 0x9F;
      } else if (c >= 0xE1 && c <= 0xEF) {
        utf8_left_ = 2;
      } else if (c == 0xF0) {
        utf8_left_ = 3, lo_ = 0x90;
      } else if (c >= 0xF1 && c <= 0xF3) {
        utf8_left_ = 3;
      } else if (c == 0xF4) {
        utf8_left_ = 3, hi_ = 0x8F;
      } else {
        return false;
      }
      mode_ = Mode::kUtf8;
      return true;

    case Mode::kUtf8:
      if (c < lo_ || c > hi_ || !text_step(c)) return false;
      lo_ = 0x80;
      hi_ = 0xBF;
      if (--utf8_left_ == 0) mode_ = Mode::kString;
      return true;

    case Mode::kEscape:
      if (high_surrogate_ && c != 'u') return false;
      switch (c) {
        case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't': {
          static constexpr std::string_view kFrom = "\"\\/bfnrt", kTo = "\"\\/\b\f\n\r\t";
          mode_ = Mode::kString;
          return text_step(static_cast<uint8_t>(kTo[kFrom.find(static_cast<char>(c))]));
        }
        case 'u':
          if (text_state_ >= 0) return false;  // not in a string with a pattern, format or length
          mode_ = Mode::kHex;
          hex_left_ = 4;
          code_ = 0;
          return true;
        default:
          return false;
      }

    case Mode::kHex: {
      const int v = hex_value(c);
      if (v < 0) return false;
      // After a high surrogate only a low one (\uDC00-\uDFFF) may come: refused at its first two
      // digits, so no prefix is taken that no byte can finish.
      if (high_surrogate_ && ((hex_left_ == 4 && v != 0xD) || (hex_left_ == 3 && v < 0xC))) return false;
      // And a lone low surrogate (\uDC00-\uDFFF) is refused at its second digit, not its fourth.
      if (!high_surrogate_ && hex_left_ == 3 && code_ == 0xD && v >= 0xC) return false;
      code_ = static_cast<uint16_t>(code_ << 4 | v);
      if (--hex_left_ > 0) return true;
      mode_ = Mode::kString;
      const bool high = code_ >= 0xD800 && code_ <= 0xDBFF;
      const bool low = code_ >= 0xDC00 && code_ <= 0xDFFF;
      if (high_surrogate_) {
        high_surrogate_ = false;
        return low;
      }
      high_surrogate_ = high;
      return !low;
    }

    case Mode::kMatch:
      return match(c);
    case Mode::kKeyMatch:
      return match_key(c);

    case Mode::kLiteral:
      if (c != static_cast<uint8_t>(*literal_)) return false;
      if (*++literal_ == '\0') end_value();
      return true;

    case Mode::kNumMinus:
      if (c == '0') {
        mode_ = Mode::kNumZero;
      } else if (is_digit(c)) {
        mode_ = Mode::kNumInt;
      } else {
        return false;
      }
      return true;

    case Mode::kNumZero:
    case Mode::kNumInt:
    case Mode::kNumFrac:
      if (is_digit(c) && mode_ != Mode::kNumZero) return true;
      if (c == '.' && mode_ != Mode::kNumFrac && !integer_) {
        mode_ = Mode::kNumDot;
        return true;
      }
      if ((c == 'e' || c == 'E') && !integer_) {
        mode_ = Mode::kNumExpMark;
        return true;
      }
      end_value();  // the number ended before this byte
      return structural(c);

    case Mode::kNumDot:
      if (!is_digit(c)) return false;
      mode_ = Mode::kNumFrac;
      return true;

    case Mode::kNumExpMark:
      if (c == '+' || c == '-') {
        mode_ = Mode::kNumExpSign;
        return true;
      }
      [[fallthrough]];
    case Mode::kNumExpSign:
      if (!is_digit(c)) return false;
      mode_ = Mode::kNumExp;
      return true;

    case Mode::kNumExp:
      if (is_digit(c)) return true;
      end_value();
      return structural(c);

    case Mode::kNumText: {
      const RegexDfa& d = *schema_->node(text_node_).number;
      if (const int32_t t = d.next(text_state_, c); t != RegexDfa::kDead) {
        text_state_ = t;
        return true;
      }
      if (!d.accepting(text_state_)) return false;
      text_state_ = -1;
      end_value();  // the number ended before this byte
      return structural(c);
    }
  }
  return false;
}

bool JsonPrefix::structural(uint8_t c) {
  if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
    if (ws_run_ >= max_ws_) return false;
    ++ws_run_;
    return true;
  }
  ws_run_ = 0;
  switch (mode_) {
    case Mode::kValue:
      return start_value(c);
    case Mode::kValueOrClose:
      if (c == ']') return close(false);
      if (schema_ != nullptr && frames_[depth_ - 1].node >= 0 && schema_->node(frames_[depth_ - 1].node).max_items == 0) {
        return false;
      }
      return start_value(c);
    case Mode::kKeyOrClose:
      if (c == '}') return close(true);
      [[fallthrough]];
    case Mode::kKey:
      if (c != '"') return false;
      if (const JsonSchema::Node* n = object_schema()) {
        alive_ = open_properties(*n);
        if (alive_ == 0 && !free_keys(*n)) return false;
        const size_t np = n->properties.size();  // ≤ JsonSchema::kMaxProperties = 64
        named_ = !free_keys(*n) ? alive_ : np == 64 ? ~uint64_t{0} : (uint64_t{1} << np) - 1;
        pos_ = 0;
        mode_ = Mode::kKeyMatch;
        return true;
      }
      mode_ = Mode::kString;
      key_ = true;
      return true;
    case Mode::kColon:
      if (c != ':') return false;
      mode_ = Mode::kValue;
      if (schema_ != nullptr) {
        const JsonSchema::Node* n = object_schema();
        expect_ = n == nullptr           ? -1
                  : property_ == kFreeKey ? n->additional
                                          : n->properties[static_cast<size_t>(property_)].node;
      }
      return true;
    case Mode::kCommaOrClose:
      if (c == ',') {
        if (top_is_object()) {
          const JsonSchema::Node* n = object_schema();
          if (n != nullptr && open_properties(*n) == 0 && !free_keys(*n)) return false;
          mode_ = Mode::kKey;
          return true;
        }
        mode_ = Mode::kValue;
        if (schema_ != nullptr) {
          const Frame& f = frames_[depth_ - 1];
          if (f.node >= 0 && f.items >= schema_->node(f.node).max_items) return false;
          expect_ = f.node >= 0 ? schema_->node(f.node).items : -1;
          if (!fits(expect_)) return false;
        }
        return true;
      }
      if (c == '}' || c == ']') return close(c == '}');
      return false;
    default:  // kDone
      return false;
  }
}

bool JsonPrefix::text_step(uint8_t b) {
  if (text_state_ < 0) return true;
  text_state_ = schema_->node(text_node_).text->next(text_state_, b);
  return text_state_ != RegexDfa::kDead;
}

bool JsonPrefix::start_value(uint8_t c) {
  if (schema_ != nullptr) return start_schema_value(c);
  if (depth_ == 0 && root_object_ && c != '{') return false;
  return start_plain(c, -1);
}

bool JsonPrefix::start_schema_value(uint8_t c) {
  integer_ = false;
  if (expect_ < 0) return start_plain(c, -1);  // inside an unconstrained value
  const int32_t ways = schema_->resolutions(expect_, c);
  if (ways == 0) return false;
  if (ways > 1) {
    forks_ = static_cast<uint8_t>(ways);
    forked_ = true;
  }
  const int32_t id = schema_->resolve(expect_, c, pick_ < ways ? pick_ : 0);
  pick_ = 0;
  const JsonSchema::Node& n = schema_->node(id);
  if (n.any) return start_plain(c, -1);
  if (!n.literals.empty()) {
    alive_ = 0;
    bool all_whole = true;
    for (size_t i = 0; i < n.literals.size(); ++i) {
      if (static_cast<uint8_t>(n.literals[i][0]) != c) continue;
      alive_ |= uint64_t{1} << i;
      all_whole = all_whole && n.literals[i].size() == 1;
    }
    match_node_ = id;
    pos_ = 1;
    mode_ = Mode::kMatch;
    if (all_whole) end_value();
    return true;
  }
  integer_ = (n.types & JsonSchema::kInteger) != 0 && (n.types & JsonSchema::kNumber) == 0;
  return start_plain(c, id);
}

bool JsonPrefix::start_plain(uint8_t c, int32_t node) {
  if (node >= 0 && (c == '{' || c == '[')) {  // a container whose least nesting must fit
    const JsonSchema::Node& n = schema_->node(node);
    if (static_cast<int64_t>(depth_) + (c == '{' ? n.min_object_depth : n.min_array_depth) > kMaxSchemaDepth) return false;
  }
  if (node >= 0 && schema_->node(node).number && (c == '-' || is_digit(c))) {  // a bounded number
    text_node_ = node;
    text_state_ = schema_->node(node).number->next(RegexDfa::start(), c);
    mode_ = Mode::kNumText;
    return text_state_ != RegexDfa::kDead;
  }
  switch (c) {
    case '{': return open(true, node);
    case '[': return open(false, node);
    case '"':
      mode_ = Mode::kString;
      key_ = false;
      text_node_ = node;
      text_state_ = node >= 0 && schema_->node(node).text ? RegexDfa::start() : -1;
      return true;
    case 't': literal_ = "rue"; break;
    case 'f': literal_ = "alse"; break;
    case 'n': literal_ = "ull"; break;
    case '-':
      mode_ = Mode::kNumMinus;
      return true;
    case '0':
      mode_ = Mode::kNumZero;
      return true;
    default:
      if (!is_digit(c)) return false;
      mode_ = Mode::kNumInt;
      return true;
  }
  mode_ = Mode::kLiteral;
  return true;
}

bool JsonPrefix::open(bool object, int32_t node) {
  if (depth_ == (schema_ != nullptr ? kMaxSchemaDepth : kMaxDepth)) return false;
  const uint64_t bit = uint64_t{1} << (depth_ % 64);
  if (object) {
    stack_[depth_ / 64] |= bit;
  } else {
    stack_[depth_ / 64] &= ~bit;
  }
  if (schema_ != nullptr) {
    frames_[depth_] = Frame{node, 0, 0};
    if (!object) expect_ = node >= 0 ? schema_->node(node).items : -1;
  }
  ++depth_;
  mode_ = object ? Mode::kKeyOrClose : Mode::kValueOrClose;
  return true;
}

bool JsonPrefix::close(bool object) {
  if (depth_ == 0 || top_is_object() != object) return false;
  if (schema_ != nullptr && frames_[depth_ - 1].node >= 0) {
    const Frame& f = frames_[depth_ - 1];
    const JsonSchema::Node& n = schema_->node(f.node);
    if (object ? (n.required & ~f.seen) != 0 : f.items < n.min_items) return false;
  }
  --depth_;
  end_value();
  return true;
}

void JsonPrefix::end_value() {
  if (depth_ == 0) {
    mode_ = Mode::kDone;
    return;
  }
  if (schema_ != nullptr && !top_is_object()) ++frames_[depth_ - 1].items;
  mode_ = Mode::kCommaOrClose;
}

uint64_t JsonPrefix::open_properties(const JsonSchema::Node& n) const {
  uint64_t open = 0;
  for (size_t i = 0; i < n.properties.size(); ++i) {
    if (!(frames_[depth_ - 1].seen >> i & 1) && fits(n.properties[i].node)) open |= uint64_t{1} << i;
  }
  return open;
}

const JsonSchema::Node* JsonPrefix::object_schema() const {
  if (schema_ == nullptr || depth_ == 0 || frames_[depth_ - 1].node < 0) return nullptr;
  return &schema_->node(frames_[depth_ - 1].node);
}

bool JsonPrefix::literal_complete() const {
  const auto& literals = schema_->node(match_node_).literals;
  for (size_t i = 0; i < literals.size(); ++i) {
    if ((alive_ >> i & 1) && literals[i].size() == pos_) return true;
  }
  return false;
}

bool JsonPrefix::match(uint8_t c) {
  const auto& literals = schema_->node(match_node_).literals;
  uint64_t next = 0;
  bool whole = false, all_whole = true;
  for (size_t i = 0; i < literals.size(); ++i) {
    if (!(alive_ >> i & 1)) continue;
    const std::string& l = literals[i];
    if (l.size() > pos_ && static_cast<uint8_t>(l[pos_]) == c) {
      next |= uint64_t{1} << i;
      all_whole = all_whole && l.size() == pos_ + 1;
    } else if (l.size() == pos_) {
      whole = true;
    }
  }
  if (next != 0) {
    alive_ = next;
    ++pos_;
    if (all_whole) end_value();
    return true;
  }
  if (!whole) return false;
  end_value();  // a whole literal (one that a longer one began like) ended before this byte
  return structural(c);
}

bool JsonPrefix::match_key(uint8_t c) {
  const JsonSchema::Node& n = *object_schema();
  const auto& properties = n.properties;
  uint64_t next = 0, next_named = 0;
  int32_t whole = -1;  // an open property whose whole key the text is
  bool named = false;  // the text is the whole key of some property, open or not
  for (size_t i = 0; i < properties.size(); ++i) {
    if (!(named_ >> i & 1)) continue;
    const std::string& key = properties[i].key;
    if (key.size() > pos_ && static_cast<uint8_t>(key[pos_]) == c) {
      next_named |= uint64_t{1} << i;
      if (alive_ >> i & 1) next |= uint64_t{1} << i;
    } else if (key.size() == pos_) {
      named = true;
      if (alive_ >> i & 1) whole = static_cast<int32_t>(i);
    }
  }
  if (next_named != 0) {  // still on some property's key (a key's own quotes are escaped: matched here)
    if (next == 0 && !free_keys(n)) return false;
    alive_ = next;
    named_ = next_named;
    ++pos_;
    return true;
  }
  if (c == '"' && whole >= 0) {  // the closing quote of an open property's key
    property_ = whole;
    frames_[depth_ - 1].seen |= uint64_t{1} << whole;
    mode_ = Mode::kColon;
    return true;
  }
  // A free key from here, if the object takes them: not a property's whole key, and parting from the
  // property keys only outside an escape (it writes none of its own, so it never spells a property's
  // name another way). An unfinished UTF-8 character is fed again to the string reader.
  if (!free_keys(n) || (c == '"' && named)) return false;
  std::string_view matched;  // the bytes so far, from any key that matched them
  if (named_ != 0) matched = std::string_view(properties[static_cast<size_t>(std::countr_zero(named_))].key).substr(0, pos_);
  size_t resume = matched.size();  // the start of an unfinished character, else the end
  for (size_t i = 0; i < matched.size();) {
    const bool escape = matched[i] == '\\';
    const size_t len = escape ? (i + 1 < matched.size() && matched[i + 1] == 'u' ? 6 : 2)
                              : static_cast<size_t>(std::max(1, utf8::sequence_length(static_cast<uint8_t>(matched[i]))));
    if (i + len > matched.size()) {
      if (escape) return false;
      resume = i;
      break;
    }
    i += len;
  }
  if (c == '"') {
    if (resume != matched.size()) return false;  // inside a character
    property_ = kFreeKey;
    mode_ = Mode::kColon;
    return true;
  }
  mode_ = Mode::kString;
  key_ = true;
  free_key_ = true;
  property_ = kFreeKey;
  for (size_t i = resume; i < matched.size(); ++i) push(static_cast<uint8_t>(matched[i]));
  return push(c);
}

bool JsonPrefix::free_keys(const JsonSchema::Node& n) const { return n.additional >= 0 && fits(n.additional); }

}  // namespace sparseserve
