// canvit_demo: loop an exported CanViT glimpse step from its manifest, without Python.
// The manifest (manifest.json) is the contract with the Python side: see the repository README, "The manifest".
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace canvit {

// Every user-facing failure: one line naming the fix; main() prints it and exits 2.
struct Error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

struct TensorSpec {
    std::string name, dtype, role;
    std::vector<int64_t> shape;
    size_t numel() const;
};

std::string shape_str(const std::vector<int64_t>& shape);  // "[1, 272, 1024]"

struct Manifest {
    std::filesystem::path dir;
    std::string target;     // "onnx", "openvino", "tensorrt" or "coreml" (artifact.target; no backend here runs coreml)
    std::string precision;  // precision.name: fp32, fp16, bf16, fp16-all, fp32-int8w, fp16-int8w or bf16-int8w
    bool stateful = false;
    int batch = 0, scene_px = 0, glimpse_px = 0, canvas_grid = 0, num_canvas_registers = 0;
    std::array<float, 3> mean{}, std{};
    std::vector<TensorSpec> inputs, outputs;  // the step's graph inputs/outputs (a stateful IR lists no state here)
    std::string scene_input, centers_input, scales_input;              // names, found by role
    std::vector<std::pair<std::string, std::string>> state_pairs;  // (input, output): canvas and recurrent_cls
    std::map<std::string, std::string> variables;                   // state input -> OpenVINO variable id
    std::map<std::string, std::filesystem::path> files;             // key -> path
    std::map<std::string, std::string> file_sha256;                 // key -> SHA-256 (hex)
    std::map<std::string, std::vector<float>> initial_state;        // "canvas" [B,R+G*G,Dc], "recurrent_cls" [B,1,Db]
    std::string built_with;  // TensorRT artifacts: "TensorRT <version> on <GPU>" (artifact.tensorrt, artifact.gpu)

    // Spec of any graph input/output, or of a state tensor of a stateful IR; throws Error if unknown.
    const TensorSpec& tensor(const std::string& name) const;
    std::map<std::string, TensorSpec> specs;  // every tensor above, by name
};

// Reads and validates dir/manifest.json, in order: JSON; format; format_version 1 (a newer one: upgrade canvit_demo;
// another: re-export); the JSON Schema of version 1 (runtimes/canvit_runtime/manifest.schema.json, embedded at build
// time; the error names the JSON pointer, e.g. "/inputs/0/role: 'foo' is not one of scene, ..."); then what a
// schema cannot state, as canvit_runtime.manifest.Manifest does: unique names, one input per role scene /
// viewpoint_centers / viewpoint_scales, I/O all float32, the state pairs canvas -> canvas_next, recurrent_cls ->
// recurrent_cls_next, shapes consistent with the geometry and the architecture (scene [B,3,S,S], centers [B,2],
// scales [B], canvas [B,R+G*G,Dc], recurrent_cls [B,1,Db]), the target's files, the precision word against its
// dtypes. With verify, checks every file's size and SHA-256. Builds the initial state for the manifest's batch
// (canvit-pytorch CanViT.init_state: registers, then the patch token repeated G*G times). Throws Error, one line.
Manifest load_manifest(const std::filesystem::path& dir, bool verify = true);
std::string sha256_file(const std::filesystem::path& path);

// One glimpse's viewpoints for the batch: centers [B, 2] (row, col) in scene coordinates [-1, 1]; scales [B].
struct Viewpoints {
    std::vector<float> centers, scales;
};
constexpr float kMinTrainedScale = 0.05f;  // canvit-pytorch policies.random.MIN_SCALE (paper Sec. 5.2)
// Throws Error unless finite, 0 < s <= 1 and |row|, |col| <= 1 - s (+1e-6) (paper App. C.1).
void check_viewpoints(const Viewpoints& v, int batch);
// {"viewpoints": [...]} or a bare list; each entry [row, col, scale] or B such triples (canvit_runtime.policies
// to_json/from_json). Throws Error naming the glimpse of an invalid entry.
std::vector<Viewpoints> viewpoints_from_json(const std::filesystem::path& path, int batch);
std::vector<Viewpoints> policy_full(int batch, int glimpses);
// C2F (paper App. F.1): quadtree levels in Z-order, each level in a random order per scene (std::mt19937 seed).
std::vector<Viewpoints> policy_c2f(int batch, int glimpses, uint32_t seed);
// Pretraining's random viewpoints (paper Sec. 5.2; canvit-pytorch policies.random.random_viewpoints):
// A ~ U[0, (1 - 0.05)^2], s = 1 - sqrt(A), center uniform in [-(1 - s), 1 - s]^2, so p(s) ∝ 1 - s on [0.05, 1].
// R-IID draws every glimpse so; F-IID takes the full scene first. std::mt19937 seeded with `seed`: the same
// seed gives the same sequence here, not the numpy sequence of canvit_runtime (use a viewpoints file for that).
std::vector<Viewpoints> policy_riid(int batch, int glimpses, uint32_t seed);
std::vector<Viewpoints> policy_fiid(int batch, int glimpses, uint32_t seed);
// "full", "c2f", "f-iid", "r-iid", or a viewpoints JSON file (its first `glimpses` entries). Throws Error.
std::vector<Viewpoints> make_policy(const std::string& name, int batch, int glimpses, uint32_t seed);

// A decoded RGB image, 8 bits per channel, rows top to bottom: [height, width, 3] uint8.
struct RgbImage {
    int width = 0, height = 0;
    std::vector<unsigned char> pixels;
};
RgbImage read_image(const std::filesystem::path& path);  // PNG, JPEG, BMP, ... (stb_image); throws Error
// [B, 3, S, S] float32 scene from an RGB image, as canvit_core.preprocess: short side to S px (bilinear, a
// triangle filter widened when downscaling, like PIL's; skipped when already S), int(S * long / short) px on the
// long side, centered S x S crop (round((H - S) / 2)), /255, (x - mean) / std per channel (the manifest's).
// Close to, not bit-equal with, PIL: resized pixels differ by at most one 8-bit level on the photos tested.
std::vector<float> preprocess_rgb(const RgbImage& image, const Manifest& m);
// An image file, or a .npy written by Python holding the float32 scene [3, S, S] or [B, 3, S, S] exactly.
std::vector<float> load_scene(const std::filesystem::path& path, const Manifest& m);

// Frames of a video file, an image sequence ("frames/%03d.png"), a camera (an index such as "0", or
// /dev/videoN: V4L2) or a GStreamer pipeline (any spec containing '!', ending in appsink), decoded by OpenCV.
struct FrameSource {
    virtual ~FrameSource() = default;
    virtual bool next(RgbImage& frame) = 0;  // false at the end of the stream
    virtual std::string description() const = 0;
};
// Throws Error when the source cannot be opened, or when this build has no OpenCV (says how to build it).
std::unique_ptr<FrameSource> open_video(const std::string& spec);

// PNG of the canvas's first three principal components as RGB (paper figures): batch item 0's G x G spatial
// tokens, centered, projected on the top-3 eigenvectors of their covariance (power iteration with deflation),
// each component min-max scaled to [0, 255], upscaled `scale` times. Returns the [G*G, 3] projections.
std::vector<float> write_canvas_pca_png(const std::filesystem::path& path, const std::vector<float>& canvas,
                                        const Manifest& m, int scale = 8);
void write_npy(const std::filesystem::path& path, const std::vector<float>& data, const std::vector<int64_t>& shape);
std::vector<float> read_npy(const std::filesystem::path& path, std::vector<int64_t>* shape);
// PATH.npy -> .npy; any other name -> raw little-endian float32 at PATH plus PATH.json
// {"dtype": "float32", "byte_order": "little", "shape": [...], "name": ...}. Throws Error when unwritable.
void write_tensor(const std::filesystem::path& path, const std::vector<float>& data, const std::vector<int64_t>& shape,
                  const std::string& name);

struct BackendOptions {
    std::string device;        // OpenVINO: CPU|GPU|NPU|AUTO; ONNX Runtime: CPU|CUDA; TensorRT: CUDA device index
    int threads = 0;           // 0: the runtime's default
    bool cuda_graph = true;    // TensorRT: capture the step once per state-buffer assignment and replay it
    std::filesystem::path engine_cache;  // TensorRT on an ONNX artifact: load/save the engine built on the device
};

// The step on one runtime. Lifetime: reset() before a scene's first glimpse; set_scene() whenever the scene
// changes (uploaded once, not per glimpse); step() once per glimpse; read_state() copies a state to the host.
struct Backend {
    virtual ~Backend() = default;
    virtual void reset() = 0;  // the manifest's initial state
    virtual void set_scene(const std::vector<float>& scene) = 0;  // [B, 3, S, S] float32
    virtual void step(const Viewpoints& v) = 0;                     // waits until the new state is ready
    virtual std::vector<float> read_state(const std::string& name) = 0;  // "canvas" or "recurrent_cls"
    virtual std::string description() const = 0;                   // e.g. "openvino/CPU"
};
// "openvino", "onnxruntime", "tensorrt": each compiled in when CMake found its runtime; one that is not is refused
// with how to build it. Throws Error, also when the model's I/O shapes or dtypes differ from the manifest's.
std::unique_ptr<Backend> make_backend(const std::string& name, const Manifest& m, const BackendOptions& options);
std::vector<std::string> compiled_backends();

// Throws Error "<where>: tensor 'name' is <shape> <dtype> in the model but <shape> <dtype> in the manifest" unless
// the model's tensor matches the manifest's spec of that name (backends call it on every I/O and state tensor).
void check_model_tensor(const Manifest& m, const std::string& where, const std::string& name,
                        const std::vector<int64_t>& shape, const std::string& dtype);

}  // namespace canvit
