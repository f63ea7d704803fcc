// canvit_demo: loop CanViT glimpses from an exported artifact and report per-glimpse latency. See --help.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "canvit/canvit.hpp"

using namespace canvit;

namespace {

const char* kUsage = R"(canvit_demo: loop CanViT glimpses from a canvit-export artifact (manifest.json), without Python.

usage: canvit_demo --artifact DIR (--image PHOTO|SCENE.npy | --video SOURCE) [options]
       canvit_demo --artifact DIR --check

  --artifact DIR           an artifact folder: ONNX (canvit-export onnx), OpenVINO IR (canvit-export openvino)
                           or TensorRT engine (canvit-export trt)
  --image PATH             a photo (PNG, JPEG, ...) or a float32 scene .npy [3|B, 3, S, S] written by Python
  --video SOURCE           each frame is the scene of the next --glimpses-per-frame glimpses (a time-varying
                           scene; the canvas carries over): a video file, an image sequence (frames/%03d.png),
                           a camera index (0) or /dev/videoN (V4L2), or a GStreamer pipeline ending in appsink
  --glimpses-per-frame K   glimpses per video frame (default 1); the run stops after --glimpses or at the end
  --backend NAME           openvino (default), onnxruntime or tensorrt, where compiled in (see --version)
  --device NAME            OpenVINO: CPU (default), GPU, NPU, AUTO; ONNX Runtime: CPU (default), CUDA;
                           TensorRT: a CUDA device index (default 0)
  --threads N              CPU threads of the runtime (default: its own choice)
  --engine PATH            TensorRT on an ONNX artifact: load the engine saved at PATH (by an earlier run or by
                           trtexec), or build a strongly typed one on this GPU and save it there
  --no-cuda-graph          TensorRT: enqueue every glimpse instead of replaying a captured CUDA graph
  --policy NAME            viewpoints: c2f (default), full, f-iid, r-iid, or a viewpoints JSON file
                           ({"viewpoints": [[row, col, scale], ...]}, as canvit_runtime.policies.to_json writes)
  --glimpses N             glimpses to run (default 21)
  --seed N                 seed of c2f, f-iid and r-iid (default 0)
  --canvas-out PATH        the final canvas [B, 16 + G*G, Dc] float32: PATH.npy, or raw float32 + PATH.json header
  --scene-out PATH.npy     the preprocessed scene of the first frame [B, 3, S, S] float32
  --pca-png PATH           PNG of the final canvas's first three principal components (batch item 0)
  --log PATH               JSON log: configuration, viewpoints and per-glimpse latency
  --check                  validate the artifact (manifest.json against its JSON Schema and itself, every file's
                           SHA-256), print what it holds and exit
  --version                the backends compiled into this build

Errors print one line 'error: ...' and exit 2.
)";

struct Latency {
    double min = 0, median = 0, p90 = 0;
};
Latency summarize(std::vector<double> ms) {
    if (ms.empty()) return {};
    std::sort(ms.begin(), ms.end());
    return {ms.front(), ms[ms.size() / 2], ms[size_t(0.9 * double(ms.size() - 1))]};
}

int parse_int(const std::map<std::string, std::string>& args, const std::string& key, int lowest) {
    const std::string& text = args.at(key);
    size_t used = 0;
    int value = 0;
    try {
        value = std::stoi(text, &used);
    } catch (const std::exception&) {
        used = 0;
    }
    if (used != text.size() || value < lowest)
        throw Error(key + " " + text + ": expected an integer >= " + std::to_string(lowest));
    return value;
}

double ms_since(std::chrono::steady_clock::time_point start) {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
}

// What an artifact holds, for --check: "openvino (stateful), precision fp32, batch 1, scene 512 px, canvas 16x16".
std::string summary(const Manifest& m) {
    const std::string kind = m.target == "openvino" ? (m.stateful ? " (stateful)" : " (stateless)") : "";
    return m.target + kind + ", precision " + m.precision + ", batch " + std::to_string(m.batch) + ", scene " +
           std::to_string(m.scene_px) + " px, canvas " + std::to_string(m.canvas_grid) + "x" + std::to_string(m.canvas_grid) +
           (m.built_with.empty() ? "" : ", " + m.built_with);
}

// Errors print on one line: a newline inside one (a tensor name, a command line) is written as \n.
std::string one_line(std::string text) {
    for (size_t at = text.find('\n'); at != std::string::npos; at = text.find('\n', at + 2)) text.replace(at, 1, "\\n");
    return text;
}

}  // namespace

int main(int argc, char** argv) {
    std::map<std::string, std::string> args{{"--backend", "openvino"}, {"--device", ""}, {"--policy", "c2f"},
                                            {"--glimpses", "21"}, {"--seed", "0"}, {"--threads", "0"},
                                            {"--glimpses-per-frame", "1"}};
    const std::vector<std::string> flags{"--no-cuda-graph", "--check"};
    const std::vector<std::string> known{"--artifact", "--image", "--video", "--glimpses-per-frame", "--backend", "--device",
                                         "--threads", "--engine", "--policy", "--glimpses", "--seed", "--canvas-out",
                                         "--scene-out", "--pca-png", "--log"};
    try {
        for (int i = 1; i < argc; ++i) {
            const std::string key = argv[i];
            if (key == "--help" || key == "-h") {
                std::cout << kUsage;
                return 0;
            }
            if (key == "--version") {
                std::cout << "canvit_demo, manifest format 1 (JSON Schema embedded); backends:";
                for (const auto& name : compiled_backends()) std::cout << " " << name;
                std::cout << "\n";
                return 0;
            }
            if (std::find(flags.begin(), flags.end(), key) != flags.end()) {
                args[key] = "1";
                continue;
            }
            if (std::find(known.begin(), known.end(), key) == known.end()) throw Error("unknown option '" + key + "': see --help");
            if (i + 1 >= argc) throw Error(key + " needs a value: see --help");
            args[key] = argv[++i];
        }
        if (!args.count("--artifact")) throw Error("missing --artifact DIR: see --help");
        if (args.count("--check")) {
            const Manifest m = load_manifest(args["--artifact"]);
            std::printf("%s: a valid canvit-export artifact (manifest format 1, files verified): %s\n", args["--artifact"].c_str(),
                        summary(m).c_str());
            return 0;
        }
        if (args.count("--image") == args.count("--video")) throw Error("pass one of --image PATH or --video SOURCE: see --help");
        const int glimpses = parse_int(args, "--glimpses", 1), per_frame = parse_int(args, "--glimpses-per-frame", 1);
        const int threads = parse_int(args, "--threads", 0), seed = parse_int(args, "--seed", 0);

        const Manifest m = load_manifest(args["--artifact"]);
        const std::vector<Viewpoints> viewpoints = make_policy(args["--policy"], m.batch, glimpses, uint32_t(seed));
        std::unique_ptr<FrameSource> video;
        std::vector<float> scene;
        if (args.count("--video")) video = open_video(args["--video"]);
        else scene = load_scene(args["--image"], m);
        BackendOptions options{args["--device"], threads, !args.count("--no-cuda-graph"), args.count("--engine") ? args["--engine"] : ""};
        auto backend = make_backend(args["--backend"], m, options);

        std::vector<double> step_ms, frame_ms;
        int frames = 0;
        bool ended = false;
        backend->reset();
        for (int t = 0; t < glimpses; ++t) {
            if (video && t % per_frame == 0) {  // the next frame is the scene of the next per_frame glimpses
                const auto start = std::chrono::steady_clock::now();
                RgbImage frame;
                if (!video->next(frame)) {
                    if (frames == 0) throw Error(video->description() + ": no frame could be read");
                    ended = true;
                    break;
                }
                scene = preprocess_rgb(frame, m);
                frame_ms.push_back(ms_since(start));
                ++frames;
            }
            if (t == 0 || (video && t % per_frame == 0)) backend->set_scene(scene);
            if (t == 0 && args.count("--scene-out")) write_npy(args["--scene-out"], scene, {m.batch, 3, m.scene_px, m.scene_px});
            const auto start = std::chrono::steady_clock::now();
            backend->step(viewpoints[t]);
            step_ms.push_back(ms_since(start));
        }
        const int ran = int(step_ms.size());
        const Latency step = summarize(step_ms), frame = summarize(frame_ms);
        std::printf("canvit_demo: %d glimpses on %s, precision %s, batch %d, canvas %dx%d, policy %s%s\n", ran,
                    backend->description().c_str(), m.precision.c_str(), m.batch, m.canvas_grid, m.canvas_grid, args["--policy"].c_str(),
                    video ? (", " + std::to_string(frames) + " frames of " + video->description()).c_str() : "");
        if (ended) std::printf("note: the video ended after %d frames, before the %d glimpses asked for\n", frames, glimpses);
        std::printf("%-24s %10s %10s %10s %12s\n", "", "min ms", "median ms", "p90 ms", "glimpses/s");
        std::printf("%-24s %10.2f %10.2f %10.2f %12.2f\n", "step", step.min, step.median, step.p90, 1000.0 * m.batch / step.median);
        if (video) std::printf("%-24s %10.2f %10.2f %10.2f\n", "frame decode+preprocess", frame.min, frame.median, frame.p90);
        if (args.count("--canvas-out") || args.count("--pca-png")) {
            const std::vector<float> canvas = backend->read_state("canvas");
            if (args.count("--canvas-out")) write_tensor(args["--canvas-out"], canvas, m.tensor("canvas").shape, "canvas");
            if (args.count("--pca-png")) write_canvas_pca_png(args["--pca-png"], canvas, m);
        }
        if (args.count("--log")) {
            nlohmann::json vps = nlohmann::json::array();
            for (int t = 0; t < ran; ++t) {
                nlohmann::json triples = nlohmann::json::array();
                for (int b = 0; b < m.batch; ++b)
                    triples.push_back({viewpoints[t].centers[2 * b], viewpoints[t].centers[2 * b + 1], viewpoints[t].scales[b]});
                vps.push_back(triples);
            }
            nlohmann::json log{{"artifact", args["--artifact"]}, {"target", m.target}, {"precision", m.precision},
                               {"backend", backend->description()}, {"policy", args["--policy"]},
                               {"seed", seed}, {"glimpses", ran}, {"batch", m.batch}, {"canvas_grid", m.canvas_grid},
                               {"viewpoints", vps}, {"step_ms", step_ms}, {"min_ms", step.min}, {"median_ms", step.median},
                               {"p90_ms", step.p90}, {"glimpses_per_s", 1000.0 * m.batch / step.median}};
            if (video)
                log["video"] = {{"source", video->description()}, {"frames", frames}, {"glimpses_per_frame", per_frame},
                                {"frame_ms", frame_ms}, {"ended_early", ended}};
            std::ofstream out(args["--log"]);
            out << log.dump(1) << "\n";
            if (!out) throw Error(args["--log"] + ": cannot write the log");
        }
        return 0;
    } catch (const Error& e) {
        std::cerr << "error: " << one_line(e.what()) << "\n";
        return 2;
    } catch (const std::exception& e) {
        std::string what = e.what();
        std::cerr << "error: " << what.substr(0, what.find('\n')) << "\n";
        return 2;
    }
}
