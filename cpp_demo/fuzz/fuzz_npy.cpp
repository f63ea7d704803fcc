// libFuzzer target: the .npy reader (canvit::read_npy, and canvit::load_scene on a .npy for a scene of 4 px, batch 2)
// on arbitrary bytes, written to a scratch file.
// Expected outcome of a bad file: canvit::Error. A finding: any other exception (std::terminate), a crash, a
// sanitizer report, a timeout, or accepted data whose size is not its shape's (load_scene: not [2, 3, 4, 4]).
#include <cstdint>

#include "canvit/canvit.hpp"
#include "scratch.hpp"

using canvit_fuzz::require;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const auto path = canvit_fuzz::scratch("npy") / "scene.npy";
    canvit_fuzz::write_file(path, data, size);
    try {
        std::vector<int64_t> shape;
        const std::vector<float> values = canvit::read_npy(path, &shape);
        size_t count = 1;
        for (const auto d : shape) count *= size_t(d);
        require(values.size() == count, "the data has its shape's size");
    } catch (const canvit::Error&) {
        // refused, as a bad file should be
    }
    canvit::Manifest m;  // what load_scene reads of a manifest: the scene size and the batch
    m.scene_px = 4, m.batch = 2;
    try {
        require(canvit::load_scene(path, m).size() == 2 * 3 * 4 * 4, "a scene is [B, 3, S, S]");
    } catch (const canvit::Error&) {
    }
    return 0;
}
