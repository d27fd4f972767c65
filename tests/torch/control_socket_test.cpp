// VALET_TORCH_CONTROL: the heap of a PyTorch process serves the control socket, so valetctl
// attaches to it; device d > 0 listens on its own path.
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <filesystem>

#include "torch_test_util.h"

namespace valet::torch::test {
namespace {

// One request, one reply line.
nlohmann::json ask(const std::string& path, const std::string& request) {
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  EXPECT_GE(fd, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path.c_str());
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(fd);
    ADD_FAILURE() << "cannot connect to " << path;
    return {};
  }
  const std::string line = request + "\n";
  EXPECT_EQ(::write(fd, line.data(), line.size()), ssize_t(line.size()));
  std::string reply;
  char c = 0;
  while (::read(fd, &c, 1) == 1 && c != '\n') reply += c;
  ::close(fd);
  return nlohmann::json::parse(reply, nullptr, false);
}

using ControlSocket = TorchHeapTest;

TEST_F(ControlSocket, ValetctlAttachesToEachDevicesHeap) {
  const auto dir = std::filesystem::temp_directory_path() / ("valet-torch-test-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  std::filesystem::permissions(dir, std::filesystem::perms::owner_all);
  const std::string path = (dir / "torch.sock").string();
  ::setenv("VALET_TORCH_CONTROL", path.c_str(), 1);
  void* p = valet_torch_malloc(4096, 0, nullptr);
  void* q = valet_torch_malloc(8192, 1, nullptr);
  ASSERT_TRUE(p && q) << last_error();
  auto reply = ask(path, R"({"v":1,"cmd":"stats"})");
  EXPECT_EQ(reply["ok"], true) << reply.dump();
  EXPECT_EQ(reply["live_objects"], 1u);
  reply = ask((dir / "torch-dev1.sock").string(), R"({"v":1,"cmd":"pages"})");
  EXPECT_EQ(reply["ok"], true) << reply.dump();
  EXPECT_GE(reply["virtual_slots"].get<std::uint64_t>(), 1u);
  valet_torch_free(p, 4096, 0, nullptr);
  valet_torch_free(q, 8192, 1, nullptr);
  ::unsetenv("VALET_TORCH_CONTROL");
  EXPECT_EQ(test_hooks::reset(), "");  // stops the servers: their sockets go
  EXPECT_FALSE(std::filesystem::exists(path));
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace valet::torch::test
