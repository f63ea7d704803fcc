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

// Every user-facing failure: one line naming the fix; main() prints it and exits non-zero.
struct Error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

struct TensorSpec {
    std::string name, dtype, role;
    std::vector<int64_t> shape;
    size_t numel() const;
};

struct Manifest {
    std::filesystem::path dir;
    std::string target;  // "onnx" or "openvino"
    bool stateful = false;
    int batch = 0, scene_px = 0, glimpse_px = 0, canvas_grid = 0, num_canvas_registers = 0;
    std::array<float, 3> mean{}, std{};
    std::vector<TensorSpec> inputs, outputs;
    std::vector<std::pair<std::string, std::string>> state_pairs;  // (input, output)
    std::map<std::string, std::string> variables;                   // state input -> OpenVINO variable id
    std::map<std::string, std::filesystem::path> files;             // key -> path
    std::map<std::string, std::vector<float>> initial_state;        // "canvas" [B,R+G*G,Dc], "recurrent_cls" [B,1,Db]
    std::map<std::string, std::vector<int64_t>> state_shapes;
};

// Reads and validates dir/manifest.json (format, version 1, keys), verifies every file's size and SHA-256,
// and builds the initial state for the manifest's batch (canvit-pytorch CanViT.init_state).
Manifest load_manifest(const std::filesystem::path& dir, bool verify = true);
std::string sha256_file(const std::filesystem::path& path);

// One glimpse's viewpoints for the batch: centers [B, 2] (row, col) in [-1, 1], scales [B] in (0, 1].
struct Viewpoints {
    std::vector<float> centers, scales;
};
// Throws Error unless finite, 0 < s <= 1 and |row|, |col| <= 1 - s (+1e-6) (paper App. C.1).
void check_viewpoints(const Viewpoints& v, int batch);
// {"viewpoints": [...]} or a bare list; each entry [row, col, scale] or B such triples.
std::vector<Viewpoints> viewpoints_from_json(const std::filesystem::path& path, int batch);
std::vector<Viewpoints> policy_full(int batch, int glimpses);
// C2F (paper App. F.1): quadtree levels in Z-order, each level in a random order per scene (std::mt19937 seed).
std::vector<Viewpoints> policy_c2f(int batch, int glimpses, uint32_t seed);

// [B, 3, S, S] float32 scene: short-side resize (bilinear), center crop, /255, ImageNet mean/std. An image file
// (PNG, JPEG, ... via stb_image) or a .npy written by Python (float32, exactly the scene tensor).
std::vector<float> load_scene(const std::filesystem::path& path, const Manifest& m);
// PNG of the canvas's first three principal components as RGB (paper figures): batch item 0's G x G spatial
// tokens, centered, projected on the top-3 eigenvectors of their covariance (power iteration with deflation),
// each component min-max scaled to [0, 255], upscaled `scale` times. Returns the [G*G, 3] projections.
std::vector<float> write_canvas_pca_png(const std::filesystem::path& path, const std::vector<float>& canvas,
                                        const Manifest& m, int scale = 8);
void write_npy(const std::filesystem::path& path, const std::vector<float>& data, const std::vector<int64_t>& shape);
std::vector<float> read_npy(const std::filesystem::path& path, std::vector<int64_t>* shape);

struct Backend {
    virtual ~Backend() = default;
    virtual void reset() = 0;  // the manifest's initial state
    virtual void step(const std::vector<float>& scene, const Viewpoints& v) = 0;
    virtual std::vector<float> read_state(const std::string& name) = 0;  // host copy, only when asked
};
// "openvino" (compiled in here), "tensorrt", "onnxruntime": refused with how to build them when not compiled in.
std::unique_ptr<Backend> make_backend(const std::string& name, const Manifest& m, const std::string& device, int threads);

}  // namespace canvit
