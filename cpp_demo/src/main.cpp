// canvit_demo: loop CanViT glimpses from an exported artifact and report per-glimpse latency. See --help.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <unistd.h>

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
  --policy NAME            viewpoints: c2f (default), full, f-iid, r-iid, eg-c2f, or a viewpoints JSON file
                           ({"viewpoints": [[row, col, scale], ...]}, as canvit_runtime.policies.to_json writes).
                           eg-c2f (entropy-guided C2F, paper App. F.1): C2F's quadtree levels in order, each level's
                           unvisited tile of highest mean segmentation entropy next (the previous glimpse's
                           seg_entropy readout); needs a segmentation readout and a power-of-two canvas grid
  --glimpses N             glimpses to run (default 21)
  --seed N                 seed of c2f, f-iid and r-iid (default 0)
  --canvas-out PATH        the final canvas [B, 16 + G*G, Dc] float32: PATH.npy, or raw float32 + PATH.json header
  --scene-out PATH.npy     the preprocessed scene of the first frame [B, 3, S, S] float32
  --pca-png PATH           PNG of the final canvas's first three principal components (batch item 0)
  --readouts-out DIR       the final step's readouts, one DIR/<name>.npy each (seg_logits [B, C, G, G],
                           seg_entropy [B, G, G], class_logits [B, n], teacher_patches [B, G*G, Dt]; float32)
  --pictures DIR           viewpoints.png (the scene, with --video its last frame, each glimpse's box numbered in
                           visiting order) and, with a segmentation readout, segmentation.png (the final argmax map
                           blended on the scene, the boxes, a legend of the classes present by area: S + 230 px
                           wide), entropy.png (0 to ln C nats, with its scale) and legend.txt (the legend's
                           classes, one per line); text drawn with OpenCV's Hershey font, or with stb_easy_font's
                           bitmap font in a build without OpenCV
  --overlay-video PATH     one frame per glimpse (10 fps): the scene with that glimpse's segmentation blended on
                           it and the boxes of the glimpses on that scene; PATH.avi (Motion JPEG) or PATH.mp4
                           (needs OpenCV)
  --log PATH               JSON log: configuration, viewpoints, per-glimpse latency and resident memory
  --manifest-sha256 HEX    refuse the artifact unless manifest.json's SHA-256 is HEX (sha256sum DIR/manifest.json
                           where it was exported): the manifest lists every file's SHA-256, so this pins them all
  --check                  validate the artifact (manifest.json against its JSON Schema and itself, every file's
                           SHA-256), print what it holds and exit
  --version                the backends compiled into this build

With a classification readout, the top-5 classes of the final step (softmax of class_logits, scene 0) are printed.
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

// Progress lines on stderr for long runs only (an emulated board, a big canvas, thousands of glimpses): at most one
// every kProgressEveryS seconds, so a quick run prints nothing and a slow one shows it is moving, not stuck.
class Progress {
public:
    explicit Progress(int glimpses) : glimpses_(glimpses), last_(std::chrono::steady_clock::now()) {}
    void loaded(const std::string& backend, double ms) {
        if (ms >= kProgressEveryS * 1000.0) {
            std::fprintf(stderr, "canvit_demo: step loaded on %s in %.1f s\n", backend.c_str(), ms / 1000.0);
            last_ = std::chrono::steady_clock::now();
        }
    }
    void glimpse(int done, double step_ms) {
        if (ms_since(last_) < kProgressEveryS * 1000.0) return;
        std::fprintf(stderr, "canvit_demo: glimpse %d/%d (step %.1f ms)\n", done, glimpses_, step_ms);
        last_ = std::chrono::steady_clock::now();
    }

private:
    static constexpr double kProgressEveryS = 2.0;
    int glimpses_;
    std::chrono::steady_clock::time_point last_;
};

// This process's resident set in MB (1e6 bytes), from Linux's /proc/self/statm (second field, in pages); a negative
// value where there is no /proc (the --log then leaves resident_mb out).
double resident_mb() {
    std::ifstream statm("/proc/self/statm");
    long long size = 0, resident = -1;
    if (!(statm >> size >> resident) || resident < 0) return -1.0;
    return double(resident) * double(sysconf(_SC_PAGESIZE)) / 1e6;
}

// What an artifact holds, for --check: "openvino (stateful), precision fp32, batch 1, scene 512 px, canvas 16x16".
std::string summary(const Manifest& m) {
    const std::string kind = m.target == "openvino" ? (m.stateful ? " (stateful)" : " (stateless)") : "";
    return m.target + kind + ", precision " + m.precision + ", batch " + std::to_string(m.batch) + ", scene " +
           std::to_string(m.scene_px) + " px, canvas " + std::to_string(m.canvas_grid) + "x" + std::to_string(m.canvas_grid) +
           (m.built_with.empty() ? "" : ", " + printable(m.built_with));
}

// Errors print on one line: a newline inside one (a tensor name, a command line) is written as \n, any other
// control character (an escape sequence from a manifest string) as '?'.
std::string one_line(std::string text) {
    for (size_t at = text.find('\n'); at != std::string::npos; at = text.find('\n', at + 2)) text.replace(at, 1, "\\n");
    return printable(text, 4096);
}

// The viewpoints of each glimpse: a fixed sequence (make_policy), or EG-C2F, adaptive: it reads the previous step's
// seg_entropy readout. Refuses eg-c2f, in one line, on an artifact without a segmentation readout (first) or with a
// canvas grid that is not a power of two, as canvit_runtime.rollout.rollout does.
class Policy {
   public:
    Policy(const std::string& name, const Manifest& m, int glimpses, uint32_t seed) {
        if (name != "eg-c2f") {
            fixed_ = make_policy(name, m.batch, glimpses, seed);
            return;
        }
        if (!m.readout("segmentation"))
            throw Error("--policy eg-c2f reads the segmentation entropy, and " + m.dir.string() +
                        " has no segmentation readout: re-export with --readout segmentation");
        eg_ = std::make_unique<EntropyGuidedC2F>(m.batch, glimpses, m.canvas_grid);
    }
    bool adaptive() const { return eg_ != nullptr; }
    // Glimpse t's viewpoints (t = 0, 1, ... in order); entropy: the previous step's seg_entropy (EG-C2F only).
    Viewpoints at(int t, const std::vector<float>& entropy) { return eg_ ? eg_->viewpoint(t, entropy) : fixed_.at(size_t(t)); }

   private:
    std::vector<Viewpoints> fixed_;
    std::unique_ptr<EntropyGuidedC2F> eg_;
};

// The output options checked before the run, so that a wrong one fails before any glimpse.
// Whether `path` lies in the folder `dir` (its parent resolved, its last part not: a link planted inside counts).
bool inside(const std::filesystem::path& path, const std::filesystem::path& dir) {
    namespace fs = std::filesystem;
    std::error_code failed;
    const fs::path folder = fs::weakly_canonical(dir, failed);
    const fs::path parent = fs::weakly_canonical(fs::absolute(path, failed).parent_path(), failed);
    const fs::path where = parent / path.filename();
    const auto mismatch = std::mismatch(folder.begin(), folder.end(), where.begin(), where.end());
    return mismatch.first == folder.end();
}

// The outputs are written where the user said, never through a symlink and never into the input artifact (an
// artifact is untrusted input: a link planted in it would redirect the write).
void check_output_options(const std::map<std::string, std::string>& args, const Manifest& m) {
    for (const char* key : {"--pictures", "--readouts-out"})
        if (args.count(key) && std::filesystem::exists(args.at(key)) && !std::filesystem::is_directory(args.at(key)))
            throw Error(std::string(key) + " " + args.at(key) + " is a file: pass a folder (created if missing)");
    for (const char* key : {"--pictures", "--readouts-out", "--canvas-out", "--scene-out", "--pca-png", "--log", "--overlay-video"}) {
        if (!args.count(key)) continue;
        const std::filesystem::path path = args.at(key);
        if (std::filesystem::is_symlink(path))
            throw Error(std::string(key) + " " + path.string() + " is a symbolic link: canvit_demo does not write through links; choose another path");
        if (inside(path, m.dir))
            throw Error(std::string(key) + " " + path.string() + " is inside the input artifact " + m.dir.string() + ": write it elsewhere");
    }
    if (args.count("--readouts-out") && m.readout_outputs.empty())
        throw Error("--readouts-out: " + m.dir.string() + " has no readouts; re-export it with --readout segmentation, "
                    "classification or features");
}

// DIR/<name>.npy for each readout output of the final step, in its manifest shape.
void write_readouts(const std::filesystem::path& dir, const std::map<std::string, std::vector<float>>& readouts, const Manifest& m) {
    std::error_code error;
    std::filesystem::create_directories(dir, error);
    if (!std::filesystem::is_directory(dir)) throw Error("--readouts-out " + dir.string() + ": cannot create this folder; pass a writable folder");
    for (const auto& [name, values] : readouts) write_npy(dir / (name + ".npy"), values, m.tensor(name).shape);
}

// "top-5 classes: tabby 41.2%, ...": softmax of scene 0's class_logits [B, n], as canvit-runtime run prints them.
void print_top_classes(const std::vector<float>& logits, const Manifest& m, const Readout& classification) {
    const int classes = int(m.tensor("class_logits").shape.back());
    std::string line = "top-5 classes:";
    for (const auto& [name, p] : top_classes(logits, classes, classification.class_names, 5, 0)) {
        char share[32];
        std::snprintf(share, sizeof share, " %.1f%%", 100.0 * p);
        line += (line.back() == ':' ? " " : ", ") + name + share;
    }
    std::printf("%s\n", line.c_str());
}

using Args = std::map<std::string, std::string>;

// --- options ----------------------------------------------------------------------------------------------------

// The command line as {option: value} (a flag: "1"), the defaults filled in. --help and --version print and set
// `exit` to 0 (nothing else runs); an unknown option or a missing value throws Error.
Args parse_options(int argc, char** argv, bool& exit) {
    Args args{{"--backend", "openvino"}, {"--device", ""}, {"--policy", "c2f"}, {"--glimpses", "21"}, {"--seed", "0"},
              {"--threads", "0"}, {"--glimpses-per-frame", "1"}};
    const std::vector<std::string> flags{"--no-cuda-graph", "--check"};
    const std::vector<std::string> known{"--artifact", "--image", "--video", "--glimpses-per-frame", "--backend", "--device",
                                         "--threads", "--engine", "--policy", "--glimpses", "--seed", "--canvas-out",
                                         "--scene-out", "--pca-png", "--log", "--readouts-out", "--pictures",
                                         "--overlay-video", "--manifest-sha256"};
    exit = false;
    for (int i = 1; i < argc; ++i) {
        const std::string key = argv[i];
        if (key == "--help" || key == "-h") {
            std::cout << kUsage;
            exit = true;
            return args;
        }
        if (key == "--version") {
            std::cout << "canvit_demo, manifest format 1 (JSON Schema embedded); backends:";
            for (const auto& name : compiled_backends()) std::cout << " " << name;
            std::cout << "\n";
            exit = true;
            return args;
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
    return args;
}

// The run's numbers, checked before the artifact is read.
struct RunOptions {
    int glimpses = 0, per_frame = 1, threads = 0, seed = 0;
};

RunOptions run_options(Args& args) {
    if (args.count("--image") == args.count("--video")) throw Error("pass one of --image PATH or --video SOURCE: see --help");
    RunOptions o;
    o.glimpses = parse_int(args, "--glimpses", 1);
    o.per_frame = parse_int(args, "--glimpses-per-frame", 1);
    if (o.glimpses > kMaxGlimpses)  // the viewpoints are built before the first glimpse
        throw Error("--glimpses " + std::to_string(o.glimpses) + ": at most " + std::to_string(kMaxGlimpses) +
                    " in one run (as canvit_runtime.policies.MAX_GLIMPSES)");
    o.threads = parse_int(args, "--threads", 0);
    o.seed = parse_int(args, "--seed", 0);
    return o;
}

// --- the loop ---------------------------------------------------------------------------------------------------

// What the glimpse loop leaves: timings, the viewpoints run, the last scene, the video frames read.
struct Rollout {
    std::vector<double> step_ms, frame_ms, policy_ms, rss_mb;  // rss_mb: resident memory after each glimpse
    std::vector<Viewpoints> used;                             // the viewpoints of every glimpse run
    std::vector<float> scene;                                 // the scene of the last glimpse
    int frames = 0;
    bool ended = false;  // the video ended before the glimpses asked for
};

// The inputs of the loop: the artifact, its backend, the policy and where the scenes come from.
struct Loop {
    const Manifest& m;
    Backend& backend;
    Policy& policy;
    FrameSource* video;       // nullptr: one scene (--image)
    FrameSink* overlay;       // nullptr: no --overlay-video
    const Args& args;
    const RunOptions& options;
    Progress& progress;
};

// The next video frame as the scene, when glimpse t starts a frame; false when the video has ended.
bool next_frame(const Loop& loop, int t, Rollout& r) {
    if (!loop.video || t % loop.options.per_frame != 0) return true;
    const auto start = std::chrono::steady_clock::now();
    RgbImage frame;
    if (!loop.video->next(frame)) {
        if (r.frames == 0) throw Error(loop.video->description() + ": no frame could be read");
        return false;
    }
    r.scene = preprocess_rgb(frame, loop.m);
    r.frame_ms.push_back(ms_since(start));
    ++r.frames;
    return true;
}

// The glimpses: each chooses its viewpoints (EG-C2F from the last step's seg_entropy), runs one step, and records
// its time, memory and viewpoints; with --overlay-video, writes a frame of scene 0 with its viewpoints since its
// scene last changed.
Rollout glimpse_loop(const Loop& loop, std::vector<float> scene) {
    Rollout r;
    r.scene = std::move(scene);
    std::vector<float> entropy;               // EG-C2F: the last step's seg_entropy [B, G, G]
    std::vector<std::array<float, 3>> boxes;  // the overlay: scene 0's viewpoints since its scene last changed
    const Manifest& m = loop.m;
    loop.backend.reset();
    for (int t = 0; t < loop.options.glimpses; ++t) {
        if (!next_frame(loop, t, r)) {
            r.ended = true;
            break;
        }
        if (t == 0 || (loop.video && t % loop.options.per_frame == 0)) loop.backend.set_scene(r.scene), boxes.clear();
        if (t == 0 && loop.args.count("--scene-out"))
            write_npy(loop.args.at("--scene-out"), r.scene, {m.batch, 3, m.scene_px, m.scene_px});
        const auto choose = std::chrono::steady_clock::now();
        const Viewpoints v = loop.policy.at(t, entropy);
        const double choose_ms = ms_since(choose);
        const auto start = std::chrono::steady_clock::now();
        loop.backend.step(v);
        r.step_ms.push_back(ms_since(start));
        loop.progress.glimpse(t + 1, r.step_ms.back());
        if (loop.policy.adaptive()) {  // the entropy the next glimpse is chosen from: B * G * G floats to the host
            const auto read = std::chrono::steady_clock::now();
            entropy = loop.backend.read_output("seg_entropy");
            r.policy_ms.push_back(choose_ms + ms_since(read));
        }
        r.used.push_back(v);
        r.rss_mb.push_back(resident_mb());
        if (loop.overlay) {
            boxes.push_back({v.centers[0], v.centers[1], v.scales[0]});
            const bool segmented = m.readout("segmentation") != nullptr;
            loop.overlay->write(overlay_frame(m, r.scene, segmented ? loop.backend.read_output("seg_logits") : std::vector<float>{}, boxes));
        }
    }
    return r;
}

// --- outputs ----------------------------------------------------------------------------------------------------

// The latency table: step, and the frame decoding and EG-C2F choice where they ran.
void print_latency(const Loop& loop, const Rollout& r) {
    const Manifest& m = loop.m;
    const Latency step = summarize(r.step_ms), frame = summarize(r.frame_ms), choice = summarize(r.policy_ms);
    std::printf("canvit_demo: %d glimpses on %s, precision %s, batch %d, canvas %dx%d, policy %s%s\n", int(r.step_ms.size()),
                loop.backend.description().c_str(), m.precision.c_str(), m.batch, m.canvas_grid, m.canvas_grid,
                loop.args.at("--policy").c_str(),
                loop.video ? (", " + std::to_string(r.frames) + " frames of " + loop.video->description()).c_str() : "");
    if (r.ended)
        std::printf("note: the video ended after %d frames, before the %d glimpses asked for\n", r.frames, loop.options.glimpses);
    std::printf("%-24s %10s %10s %10s %12s\n", "", "min ms", "median ms", "p90 ms", "glimpses/s");
    std::printf("%-24s %10.2f %10.2f %10.2f %12.2f\n", "step", step.min, step.median, step.p90, 1000.0 * m.batch / step.median);
    if (loop.video) std::printf("%-24s %10.2f %10.2f %10.2f\n", "frame decode+preprocess", frame.min, frame.median, frame.p90);
    if (loop.policy.adaptive())
        std::printf("%-24s %10.3f %10.3f %10.3f\n", "eg-c2f entropy+choice", choice.min, choice.median, choice.p90);
}

// The final step's readouts (top classes, --readouts-out, --pictures) and canvas (--canvas-out, --pca-png).
void write_outputs(const Loop& loop, const Rollout& r) {
    const Manifest& m = loop.m;
    const Args& args = loop.args;
    std::map<std::string, std::vector<float>> readouts;  // the final step's, read once
    if (args.count("--readouts-out") || args.count("--pictures") || m.readout("classification"))
        for (const auto& name : m.readout_outputs) readouts[name] = loop.backend.read_output(name);
    if (const Readout* classification = m.readout("classification"))
        print_top_classes(readouts.at("class_logits"), m, *classification);
    if (args.count("--readouts-out")) write_readouts(args.at("--readouts-out"), readouts, m);
    if (args.count("--pictures")) {
        const auto written = write_pictures(args.at("--pictures"), m, r.scene, r.used, readouts);
        std::printf("pictures:");
        for (const auto& path : written) std::printf(" %s", path.string().c_str());
        std::printf("\n");
    }
    if (args.count("--canvas-out") || args.count("--pca-png")) {
        const std::vector<float> canvas = loop.backend.read_state("canvas");
        if (args.count("--canvas-out")) write_tensor(args.at("--canvas-out"), canvas, m.tensor("canvas").shape, "canvas");
        if (args.count("--pca-png")) write_canvas_pca_png(args.at("--pca-png"), canvas, m);
    }
}

// --log: the run as JSON (the viewpoints [glimpse][b] = [row, col, scale], every step's time, memory, video).
void write_log(const Loop& loop, const Rollout& r) {
    const Manifest& m = loop.m;
    const Latency step = summarize(r.step_ms);
    nlohmann::json vps = nlohmann::json::array();
    for (const auto& v : r.used) {
        nlohmann::json triples = nlohmann::json::array();
        for (int b = 0; b < m.batch; ++b) triples.push_back({v.centers[2 * b], v.centers[2 * b + 1], v.scales[b]});
        vps.push_back(triples);
    }
    nlohmann::json readout_names = nlohmann::json::array();
    for (const auto& readout : m.readouts) readout_names.push_back(readout.name);
    nlohmann::json log{{"artifact", loop.args.at("--artifact")}, {"target", m.target}, {"precision", m.precision},
                       {"backend", loop.backend.description()}, {"policy", loop.args.at("--policy")},
                       {"seed", loop.options.seed}, {"glimpses", int(r.step_ms.size())}, {"batch", m.batch},
                       {"canvas_grid", m.canvas_grid}, {"readouts", readout_names}, {"viewpoints", vps},
                       {"step_ms", r.step_ms}, {"min_ms", step.min}, {"median_ms", step.median}, {"p90_ms", step.p90},
                       {"glimpses_per_s", 1000.0 * m.batch / step.median}};
    if (loop.policy.adaptive()) log["policy_ms"] = r.policy_ms;
    if (!r.rss_mb.empty() && r.rss_mb.front() >= 0) log["resident_mb"] = r.rss_mb;
    if (loop.video)
        log["video"] = {{"source", loop.video->description()}, {"frames", r.frames}, {"glimpses_per_frame", loop.options.per_frame},
                        {"frame_ms", r.frame_ms}, {"ended_early", r.ended}};
    std::ofstream out(loop.args.at("--log"));
    out << log.dump(1) << "\n";
    if (!out) throw Error(loop.args.at("--log") + ": cannot write the log");
}

// --check: the artifact validated (manifest, files), and what it holds.
int check_artifact(Args& args) {
    const Manifest m = load_manifest(args["--artifact"], true, args["--manifest-sha256"]);
    std::printf("%s: a valid canvit-export artifact (manifest format 1, files verified): %s\n", args["--artifact"].c_str(),
                summary(m).c_str());
    return 0;
}

// A run: the artifact, the policy and the outputs checked, the scene (or video) and the backend opened, before the
// first glimpse; then the loop and the outputs.
int run(Args& args) {
    const RunOptions options = run_options(args);
    const Manifest m = load_manifest(args["--artifact"], true, args["--manifest-sha256"]);
    Policy policy(args["--policy"], m, options.glimpses, uint32_t(options.seed));
    check_output_options(args, m);
    std::unique_ptr<FrameSource> video;
    std::vector<float> scene;
    if (args.count("--video")) video = open_video(args["--video"]);
    else scene = load_scene(args["--image"], m);
    BackendOptions backend_options{args["--device"], options.threads, !args.count("--no-cuda-graph"),
                                   args.count("--engine") ? args["--engine"] : ""};
    const auto loading = std::chrono::steady_clock::now();
    auto backend = make_backend(args["--backend"], m, backend_options);
    Progress progress(options.glimpses);
    progress.loaded(backend->description(), ms_since(loading));
    std::unique_ptr<FrameSink> overlay;  // opened before the run: a bad path fails before any glimpse
    if (args.count("--overlay-video")) overlay = open_video_writer(args["--overlay-video"], m.scene_px, m.scene_px, 10.0);
    const Loop loop{m, *backend, policy, video.get(), overlay.get(), args, options, progress};
    const Rollout rollout = glimpse_loop(loop, std::move(scene));
    print_latency(loop, rollout);
    write_outputs(loop, rollout);
    if (args.count("--log")) write_log(loop, rollout);
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    try {
        bool exit = false;
        Args args = parse_options(argc, argv, exit);
        if (exit) return 0;
        return args.count("--check") ? check_artifact(args) : run(args);
    } catch (const Error& e) {
        std::cerr << "error: " << one_line(e.what()) << "\n";
        return 2;
    } catch (const std::exception& e) {
        std::string what = e.what();
        std::cerr << "error: " << what.substr(0, what.find('\n')) << "\n";
        return 2;
    }
}
