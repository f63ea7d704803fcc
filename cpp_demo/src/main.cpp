// canvit_demo: loop CanViT glimpses from an exported artifact and report per-glimpse latency.
//   canvit_demo --artifact DIR --image PHOTO|SCENE.npy [--backend openvino] [--device CPU] [--policy c2f|full|FILE.json]
//               [--glimpses 21] [--seed 0] [--threads N] [--canvas-out canvas.npy] [--pca-png canvas.png] [--log log.json]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "canvit/canvit.hpp"

using namespace canvit;

int main(int argc, char** argv) {
    std::map<std::string, std::string> args{{"--backend", "openvino"}, {"--device", "CPU"}, {"--policy", "c2f"},
                                            {"--glimpses", "21"}, {"--seed", "0"}, {"--threads", "0"}};
    try {
        for (int i = 1; i < argc; ++i) {
            const std::string key = argv[i];
            if (key == "--help" || key == "-h") {
                std::cout << "canvit_demo --artifact DIR --image PHOTO|SCENE.npy [--backend openvino] [--device CPU] "
                             "[--policy c2f|full|FILE.json] [--glimpses 21] [--seed 0] [--threads N] "
                             "[--canvas-out canvas.npy] [--pca-png canvas.png] [--log log.json]\n";
                return 0;
            }
            if (key.rfind("--", 0) != 0 || i + 1 >= argc) throw Error("bad argument '" + key + "': see --help");
            args[key] = argv[++i];
        }
        for (const char* required : {"--artifact", "--image"})
            if (!args.count(required)) throw Error(std::string("missing ") + required + ": see --help");
        const Manifest m = load_manifest(args["--artifact"]);
        const int glimpses = std::stoi(args["--glimpses"]);
        if (glimpses < 1) throw Error("--glimpses must be >= 1");
        std::vector<Viewpoints> viewpoints;
        if (args["--policy"] == "c2f") viewpoints = policy_c2f(m.batch, glimpses, uint32_t(std::stoul(args["--seed"])));
        else if (args["--policy"] == "full") viewpoints = policy_full(m.batch, glimpses);
        else {
            viewpoints = viewpoints_from_json(args["--policy"], m.batch);
            if (int(viewpoints.size()) < glimpses) throw Error(args["--policy"] + ": fewer viewpoints than --glimpses");
            viewpoints.resize(glimpses);
        }
        const std::vector<float> scene = load_scene(args["--image"], m);
        auto backend = make_backend(args["--backend"], m, args["--device"], std::stoi(args["--threads"]));
        backend->reset();
        std::vector<double> ms;
        for (const auto& v : viewpoints) {
            check_viewpoints(v, m.batch);
            const auto start = std::chrono::steady_clock::now();
            backend->step(scene, v);
            ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
        }
        std::vector<double> sorted = ms;
        std::sort(sorted.begin(), sorted.end());
        const double median = sorted[sorted.size() / 2], p90 = sorted[size_t(0.9 * (sorted.size() - 1))];
        std::printf("canvit_demo: %d glimpses on %s/%s, batch %d, canvas %dx%d\n", glimpses, args["--backend"].c_str(),
                    args["--device"].c_str(), m.batch, m.canvas_grid, m.canvas_grid);
        std::printf("%-10s %10s %10s %10s %12s\n", "", "min ms", "median ms", "p90 ms", "glimpses/s");
        std::printf("%-10s %10.2f %10.2f %10.2f %12.2f\n", "step", sorted.front(), median, p90, 1000.0 * m.batch / median);
        if (args.count("--canvas-out") || args.count("--pca-png")) {
            const std::vector<float> canvas = backend->read_state("canvas");
            if (args.count("--canvas-out")) write_npy(args["--canvas-out"], canvas, m.state_shapes.at("canvas"));
            if (args.count("--pca-png")) write_canvas_pca_png(args["--pca-png"], canvas, m);
        }
        if (args.count("--log")) {
            nlohmann::json log{{"artifact", args["--artifact"]}, {"backend", args["--backend"]}, {"device", args["--device"]},
                               {"glimpses", glimpses}, {"step_ms", ms}, {"median_ms", median}, {"p90_ms", p90}};
            std::ofstream(args["--log"]) << log.dump(1) << "\n";
        }
        return 0;
    } catch (const Error& e) {
        std::cerr << "error: " << e.what() << "\n";
        return 2;
    } catch (const std::exception& e) {
        std::cerr << "error: " << e.what() << "\n";
        return 1;
    }
}
