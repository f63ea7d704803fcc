// What the fuzz targets share: a scratch folder for the files a reader takes by path, and the check that fails a run.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

namespace canvit_fuzz {

// $TMPDIR/canvit_fuzz_<name>.<pid>: made at the first call, removed when the process exits normally.
inline const std::filesystem::path& scratch(const std::string& name) {
    static const std::filesystem::path folder = [&] {
        const auto path = std::filesystem::temp_directory_path() / ("canvit_fuzz_" + name + "." + std::to_string(getpid()));
        std::filesystem::create_directories(path);
        std::atexit([] { std::error_code ignored; std::filesystem::remove_all(scratch(""), ignored); });
        return path;
    }();
    return folder;
}

// Writes `size` bytes to `path` (replacing it).
inline void write_file(const std::filesystem::path& path, const uint8_t* data, size_t size) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(data), std::streamsize(size));
    if (!out) {
        std::fprintf(stderr, "canvit_fuzz: cannot write %s\n", path.c_str());
        std::abort();
    }
}

// A broken promise of the reader (not a refused input): report it and abort, which libFuzzer records as a crash.
inline void require(bool holds, const char* what) {
    if (holds) return;
    std::fprintf(stderr, "canvit_fuzz: the reader broke its contract: %s\n", what);
    std::abort();
}

}  // namespace canvit_fuzz
