// vk_emu_tests: run every registered emulated-kernel test (or those whose name contains argv[1]).
#include <chrono>
#include <cstdio>
#include <cstring>
#include <exception>

#include "emu_test.h"

int main(int argc, char** argv) {
  const char* filter = argc > 1 ? argv[1] : "";
  int failed = 0, ran = 0;
  for (const auto& test : vk::emu_test::registry()) {
    if (filter[0] && !std::strstr(test.name.c_str(), filter)) continue;
    ++ran;
    const auto start = std::chrono::steady_clock::now();
    try {
      test.run();
      const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      std::printf("PASS %-48s %.2f s\n", test.name.c_str(), seconds);
    } catch (const std::exception& error) {
      ++failed;
      std::printf("FAIL %-48s %s\n", test.name.c_str(), error.what());
    }
    std::fflush(stdout);
  }
  std::printf("%d of %d emulated-kernel tests passed\n", ran - failed, ran);
  return (failed || ran == 0) ? 1 : 0;
}
