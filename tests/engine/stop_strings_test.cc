#include "engine/stop_strings.h"

#include <gtest/gtest.h>

namespace sparseserve {
namespace {

std::string feed(StopStringFilter& f, const std::vector<std::string>& pieces, bool& stopped, std::string& matched) {
  std::string out;
  for (const auto& p : pieces) {
    auto r = f.push(p);
    out += r.text;
    if (r.stopped) {
      stopped = true;
      matched = r.matched;
      return out;
    }
  }
  out += f.flush();
  return out;
}

TEST(StopStrings, StopSplitAcrossPiecesNeverLeaks) {
  StopStringFilter f({"\n\nUser:"});
  auto r1 = f.push("Hello world.\n");
  EXPECT_EQ(r1.text, "Hello world.");  // "\n" may start the stop string: held back
  auto r2 = f.push("\nUs");
  EXPECT_EQ(r2.text, "");
  auto r3 = f.push("er: hi");
  EXPECT_TRUE(r3.stopped);
  EXPECT_EQ(r3.text, "");
  EXPECT_EQ(r3.matched, "\n\nUser:");
}

TEST(StopStrings, FalseStartIsReleased) {
  StopStringFilter f({"STOP"});
  bool stopped = false;
  std::string matched;
  EXPECT_EQ(feed(f, {"ST", "ART and ", "STO", "RE"}, stopped, matched), "START and STORE");
  EXPECT_FALSE(stopped);
}

// As vLLM's check_stop_strings: the stop strings are tried in the request's order, and the first
// with a match wins at its earliest match, though another's begins before it.
TEST(StopStrings, TheFirstInTheRequestsOrderWins) {
  StopStringFilter f({"world", "lo w"});
  bool stopped = false;
  std::string matched;
  EXPECT_EQ(feed(f, {"hello world"}, stopped, matched), "hello ");
  EXPECT_TRUE(stopped);
  EXPECT_EQ(matched, "world");
  StopStringFilter g({"ris", "Pa"});  // one token " Paris" completes both
  EXPECT_EQ(feed(g, {" Paris"}, stopped, matched), " Pa");
  EXPECT_EQ(matched, "ris");
  StopStringFilter h({"zz", "lo w", "world"});
  EXPECT_EQ(feed(h, {"hel", "lo", " wor", "ld"}, stopped, matched), "hel");
  EXPECT_EQ(matched, "lo w");
}

TEST(StopStrings, NoStringEndsInTextPushedBeforeStopsMayEnd) {
  // vLLM's min_tokens: a stop string wholly inside the text pushed with may_stop false never
  // matches, not even once stops may end; one that begins there and ends later does.
  StopStringFilter f({"cat", "a"});
  auto r1 = f.push("a cat ca", /*may_stop=*/false);
  EXPECT_FALSE(r1.stopped);
  EXPECT_EQ(r1.text, "a cat ");  // "ca" may begin "cat": held back
  auto r2 = f.push("t!");
  EXPECT_TRUE(r2.stopped);
  EXPECT_EQ(r2.matched, "cat");  // the held "ca" + "t": ends in checked text
  EXPECT_EQ(r2.text, "");

  StopStringFilter g({"a", "ab"});
  EXPECT_EQ(g.push("xa", false).text, "x");  // "a" held: it begins "ab"
  auto r3 = g.push("c");                     // "a" ended in unchecked text: no match
  EXPECT_FALSE(r3.stopped);
  EXPECT_EQ(r3.text, "ac");
  auto r4 = g.push("zab");  // both begin at the same byte, in checked text: the first listed wins
  EXPECT_TRUE(r4.stopped);
  EXPECT_EQ(r4.matched, "a");
  EXPECT_EQ(r4.text, "z");
}

TEST(StopStrings, NoStopsPassesThrough) {
  StopStringFilter f({});
  EXPECT_EQ(f.push("abc").text, "abc");
  EXPECT_EQ(f.flush(), "");
}

}  // namespace
}  // namespace sparseserve
