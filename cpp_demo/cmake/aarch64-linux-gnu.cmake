# CMake toolchain file: canvit_demo and canvit_tests for 64-bit ARM Linux (Jetson, Raspberry Pi 4/5, Graviton, ...),
# cross-compiled on an x86-64 Debian/Ubuntu host with its multiarch packages (scripts/build-cpp-aarch64.sh installs
# them and passes the rest):
#   apt-get install g++-aarch64-linux-gnu qemu-user-static; dpkg --add-architecture arm64; apt-get update;
#   apt-get install libssl-dev:arm64 libgtest-dev:arm64 (nlohmann-json3-dev libstb-dev libvalijson-dev: header-only)
#   cmake -S cpp_demo -B build-aarch64 -DCMAKE_TOOLCHAIN_FILE=cpp_demo/cmake/aarch64-linux-gnu.cmake \
#         -DOpenVINO_DIR=<the aarch64 OpenVINO wheel, unpacked>/openvino/cmake
# Libraries come from the host's multiarch folders (/usr/lib/aarch64-linux-gnu: libssl-dev:arm64, libgtest-dev:arm64)
# and from the folders given by hint (OpenVINO_DIR); headers from /usr/include (the header-only ones are
# architecture-independent). Debian's cross g++ is configured --with-sysroot=/ and searches those itself.
# CANVIT_AARCH64_SYSROOT (default /usr/aarch64-linux-gnu, Debian's libc6-arm64-cross) is what qemu-aarch64-static -L
# runs the binaries against: CMake's cross-compiling emulator, so that gtest_discover_tests(canvit_tests) can list
# the tests at build time.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_LIBRARY_ARCHITECTURE aarch64-linux-gnu)  # find_library/find_package: <prefix>/lib/aarch64-linux-gnu

set(CANVIT_AARCH64_TRIPLE aarch64-linux-gnu CACHE STRING "Cross compiler prefix: <triple>-gcc, <triple>-g++")
find_program(CANVIT_AARCH64_CXX ${CANVIT_AARCH64_TRIPLE}-g++)
find_program(CANVIT_AARCH64_CC ${CANVIT_AARCH64_TRIPLE}-gcc)
if(NOT CANVIT_AARCH64_CXX OR NOT CANVIT_AARCH64_CC)
  message(FATAL_ERROR "${CANVIT_AARCH64_TRIPLE}-g++ not found: apt-get install g++-aarch64-linux-gnu "
                      "(or run scripts/build-cpp-aarch64.sh as root, which installs it)")
endif()
set(CMAKE_C_COMPILER "${CANVIT_AARCH64_CC}")
set(CMAKE_CXX_COMPILER "${CANVIT_AARCH64_CXX}")

# Search programs on the host, libraries and packages for the target: the multiarch folders are searched through
# CMAKE_LIBRARY_ARCHITECTURE; never the host's x86-64 ones (/usr/lib/x86_64-linux-gnu is not a search path here).
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_IGNORE_PATH /usr/lib/x86_64-linux-gnu /lib/x86_64-linux-gnu /usr/lib/x86_64-linux-gnu/cmake)

set(CANVIT_AARCH64_SYSROOT /usr/aarch64-linux-gnu CACHE PATH "aarch64 runtime root for qemu-aarch64-static -L")
# The emulated CPU: Armv8.2 with fp16 arithmetic and no SVE, the boards' class (Jetson Orin's Cortex-A78AE, Graviton2,
# Raspberry Pi 5's Cortex-A76); qemu's default, max, emulates SVE/SME slowly on some hosts. QEMU_CPU sets another.
if(DEFINED ENV{QEMU_CPU} AND NOT "$ENV{QEMU_CPU}" STREQUAL "")
  set(_canvit_qemu_cpu "$ENV{QEMU_CPU}")
else()
  set(_canvit_qemu_cpu neoverse-n1)
endif()
set(CANVIT_QEMU_CPU "${_canvit_qemu_cpu}" CACHE STRING "qemu-aarch64-static -cpu for the cross-compiling emulator")
find_program(CANVIT_QEMU_AARCH64 qemu-aarch64-static)
if(CANVIT_QEMU_AARCH64)
  set(CMAKE_CROSSCOMPILING_EMULATOR "${CANVIT_QEMU_AARCH64};-cpu;${CANVIT_QEMU_CPU};-L;${CANVIT_AARCH64_SYSROOT}")
endif()
