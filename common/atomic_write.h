// Writing a file all or nothing: the text goes to a new temporary file next to the target (a unique
// name, created exclusively, so no other file is ever truncated and two writers never share one),
// which is then renamed over the target. The target keeps its permission bits, and a symbolic link
// is followed: its target is replaced, the link stays. Errors are ModelFileError naming the target.
#pragma once

#include <string>
#include <string_view>

namespace sparseserve {

// Replaces path's content with text (or creates path). On failure path is left as it was and the
// temporary file is removed.
void write_file_atomically(const std::string& path, std::string_view text);

// Checks, without touching path or any other existing file, that write_file_atomically(path, ...)
// could create its temporary file: for checks before long work whose result goes to path.
void check_can_write_next_to(const std::string& path);

}  // namespace sparseserve
