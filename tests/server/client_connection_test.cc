#include "server/client_connection.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <thread>

namespace sparseserve {
namespace {

// A connected pair over loopback: `server` is the accepted end (the one an HTTP server holds).
struct Pair {
  int listener = -1, client = -1, server = -1;
  int server_port = 0, client_port = 0;
  Pair() {
    listener = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(a);
    EXPECT_EQ(bind(listener, reinterpret_cast<sockaddr*>(&a), len), 0);
    EXPECT_EQ(listen(listener, 1), 0);
    EXPECT_EQ(getsockname(listener, reinterpret_cast<sockaddr*>(&a), &len), 0);
    server_port = ntohs(a.sin_port);
    client = socket(AF_INET, SOCK_STREAM, 0);
    EXPECT_EQ(connect(client, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
    server = accept(listener, nullptr, nullptr);
    sockaddr_in c{};
    len = sizeof(c);
    EXPECT_EQ(getsockname(client, reinterpret_cast<sockaddr*>(&c), &len), 0);
    client_port = ntohs(c.sin_port);
  }
  ~Pair() {
    for (int fd : {listener, client, server}) {
      if (fd >= 0) close(fd);
    }
  }
};

bool becomes_gone(const ClientConnection& c) {
  for (int i = 0; i < 200; ++i) {  // the peer's FIN crosses loopback at once; allow 2 s
    if (c.gone()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
}

TEST(ClientConnection, FindsTheAcceptedSocketAndSeesThePeerLeave) {
  Pair p;
  const ClientConnection c("127.0.0.1", p.server_port, "127.0.0.1", p.client_port);
  ASSERT_TRUE(c.found());
  EXPECT_EQ(c.fd(), p.server);  // not the client's end, whose ports are the other way round
  EXPECT_FALSE(c.gone());
  // A pipelined request waiting to be read is not a departure, and stays unread.
  const std::string next = "GET /health HTTP/1.1\r\n\r\n";
  ASSERT_EQ(send(p.client, next.data(), next.size(), 0), static_cast<ssize_t>(next.size()));
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_FALSE(c.gone());
  char buf[64];
  EXPECT_EQ(recv(p.server, buf, sizeof(buf), MSG_DONTWAIT), static_cast<ssize_t>(next.size()));
  close(p.client);
  p.client = -1;
  EXPECT_TRUE(becomes_gone(c));
}

TEST(ClientConnection, UnknownEndsAreNotFoundAndNeverGone) {
  Pair p;
  const ClientConnection wrong_port("127.0.0.1", p.server_port, "127.0.0.1", p.client_port == 1 ? 2 : 1);
  EXPECT_FALSE(wrong_port.found());
  EXPECT_FALSE(wrong_port.gone());
  const ClientConnection wrong_host("127.0.0.1", p.server_port, "10.1.2.3", p.client_port);
  EXPECT_FALSE(wrong_host.found());
  const ClientConnection no_ports("", -1, "", -1);  // what a request without a socket reports
  EXPECT_FALSE(no_ports.found());
  EXPECT_FALSE(no_ports.gone());
}

}  // namespace
}  // namespace sparseserve
