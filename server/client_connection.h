// Whether an HTTP client is still connected, for the handlers of a non-streaming request, which
// write nothing until the answer is ready and so would not notice a client that left. cpp-httplib
// 0.11 (Debian 12's) gives a handler no access to its connection, only the addresses and ports of
// both ends (Request::local_addr/local_port, remote_addr/remote_port); those name one TCP
// connection, so the process's socket with these ends is the request's.
#pragma once

#include <string>

namespace sparseserve {

class ClientConnection {
 public:
  // Finds the connected socket whose local end is local_addr:local_port and whose peer is
  // remote_addr:remote_port (numeric hosts, as getnameinfo(NI_NUMERICHOST) writes them). When none
  // matches, found() is false and gone() always false. The socket is not owned: the caller uses
  // this object only while the server keeps the connection open (during the request's handler).
  ClientConnection(const std::string& local_addr, int local_port, const std::string& remote_addr, int remote_port);

  bool found() const { return fd_ >= 0; }
  int fd() const { return fd_; }

  // True once the peer has closed its end or the connection failed (end of file, hang-up or an
  // error). Bytes the peer sent after its request (a pipelined request) are left unread and do not
  // count as gone.
  bool gone() const;

 private:
  int fd_ = -1;
};

}  // namespace sparseserve
