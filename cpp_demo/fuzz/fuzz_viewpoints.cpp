// libFuzzer target: the viewpoints file reader (--policy FILE: canvit::viewpoints_from_json) on arbitrary bytes,
// written to a scratch file and read for a batch of 1 and of 2.
// Expected outcome of a bad file: canvit::Error. A finding: any other exception (std::terminate), a crash, a
// sanitizer report, a timeout, or accepted viewpoints that are not B centers and B scales passing check_viewpoints.
#include <cstdint>

#include "canvit/canvit.hpp"
#include "scratch.hpp"

using canvit_fuzz::require;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const auto path = canvit_fuzz::scratch("viewpoints") / "viewpoints.json";
    canvit_fuzz::write_file(path, data, size);
    for (const int batch : {1, 2}) {
        std::vector<canvit::Viewpoints> glimpses;
        try {
            glimpses = canvit::viewpoints_from_json(path, batch);
        } catch (const canvit::Error&) {
            continue;  // refused, as a bad file should be
        }
        require(!glimpses.empty(), "an accepted viewpoints file has a glimpse");
        for (const auto& v : glimpses) {
            require(v.centers.size() == size_t(2 * batch) && v.scales.size() == size_t(batch), "B centers and B scales");
            try {
                canvit::check_viewpoints(v, batch);
            } catch (const canvit::Error&) {
                require(false, "accepted viewpoints pass check_viewpoints");
            }
        }
    }
    return 0;
}
