// libFuzzer target: manifest.json's reader on arbitrary bytes.
//  1. canvit::parse_manifest(bytes): JSON, format, version, the JSON Schema (valijson), the consistency checks.
//  2. For a manifest it accepts: canvit::load_manifest on a scratch artifact folder holding those bytes as
//     manifest.json beside copies of the files in $CANVIT_FUZZ_FILES (when set): every file's size and SHA-256, then
//     the initial state from initial_state.bin at the manifest's offsets. Skipped when that state would exceed 2^24
//     floats (64 MiB): the reader allocates the state the manifest describes, by design, and a manifest that asks for
//     gigabytes is refused by the backend's shape check later, not here.
// Expected outcome of a bad manifest: canvit::Error. A finding: any other exception (std::terminate), a crash, a
// sanitizer report, a timeout, or an accepted manifest whose initial state does not have its state's shapes.
#include <cstdint>
#include <string>

#include "canvit/canvit.hpp"
#include "scratch.hpp"

namespace fs = std::filesystem;
using canvit_fuzz::require;

namespace {

// Floats of the state tensors (canvas, recurrent_cls) of the accepted manifest `m`, in double (no overflow).
double state_floats(const canvit::Manifest& m) {
    double total = 0;
    for (const auto& [input, output] : m.state_pairs) {
        double n = 1;
        for (const auto d : m.tensor(input).shape) n *= double(d);
        total += n;
    }
    return total;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    const fs::path& folder = canvit_fuzz::scratch("manifest");
    if (const char* files = std::getenv("CANVIT_FUZZ_FILES"))
        for (const auto& entry : fs::directory_iterator(files))
            if (entry.is_regular_file() && entry.path().filename() != "manifest.json")
                fs::copy_file(entry.path(), folder / entry.path().filename(), fs::copy_options::overwrite_existing);
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string text(reinterpret_cast<const char*>(data), size);
    canvit::Manifest parsed;
    try {
        parsed = canvit::parse_manifest(text, "fuzz-artifact");
    } catch (const canvit::Error&) {
        return 0;  // refused, as a bad manifest should be
    }
    require(parsed.initial_state.empty(), "parse_manifest read no file, so it has no initial state");
    if (state_floats(parsed) > double(1 << 24)) return 0;
    const fs::path& folder = canvit_fuzz::scratch("manifest");
    canvit_fuzz::write_file(folder / "manifest.json", data, size);
    canvit::Manifest loaded;
    try {
        loaded = canvit::load_manifest(folder);
    } catch (const canvit::Error&) {
        return 0;
    }
    for (const auto& [input, output] : loaded.state_pairs)
        require(loaded.initial_state.count(input) && loaded.initial_state.at(input).size() == loaded.tensor(input).numel(),
                "an accepted manifest's initial state has its state's shape");
    return 0;
}
