// Error channels (STYLE.md §12).
//  - ModelFileError: a model file or config is bad; names the file and the problem; rejected at start.
//  - InvalidArgument: the client's input is bad (front ends map it to HTTP 400 / INVALID_ARGUMENT).
//  - InternalError: a broken invariant; caught at the server boundary (500 for that request).
// Serving code never aborts: it throws one of these.
#pragma once

#include <source_location>
#include <stdexcept>
#include <string>

namespace sparseserve {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class ModelFileError : public Error {
 public:
  ModelFileError(const std::string& file, const std::string& problem)
      : Error(file + ": " + problem), file_(file), problem_(problem) {}
  const std::string& file() const { return file_; }
  const std::string& problem() const { return problem_; }

 private:
  std::string file_;
  std::string problem_;
};

class InvalidArgument : public Error {
 public:
  using Error::Error;
};

class InternalError : public Error {
 public:
  explicit InternalError(const std::string& what,
                         std::source_location loc = std::source_location::current())
      : Error(std::string(loc.file_name()) + ":" + std::to_string(loc.line()) + ": " + what) {}
};

// Checks an internal invariant; throws InternalError naming the place when it does not hold.
inline void check(bool ok, const char* what,
                  std::source_location loc = std::source_location::current()) {
  if (!ok) throw InternalError(what, loc);
}

}  // namespace sparseserve
