// canvit_demo: loop an exported CanViT glimpse step from its manifest, without Python.
// The manifest (manifest.json) is the contract with the Python side: see docs/manifest.md.
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
    std::string unit;  // readouts: "logits", "nats", ...; empty when the manifest gives none
    size_t numel() const;
};

// A readout head the step computes on the new state (manifest "readouts"; docs/export.md, "Readouts"):
//   segmentation:   seg_logits [B, C, G, G] (logits), seg_entropy [B, G, G] (nats, predictive entropy);
//   classification: class_logits [B, n] (logits);
//   features:       teacher_patches [B, G*G, Dt] (the teacher's standardized patch features).
struct Readout {
    std::string name;                                   // segmentation, classification or features
    std::vector<std::string> outputs;                   // graph outputs with role readout, in the order above
    std::vector<std::string> class_names;               // one per class, or empty when the manifest has none
    std::vector<std::array<unsigned char, 3>> palette;  // RGB 0-255 per class (segmentation), or empty
};

std::string shape_str(const std::vector<int64_t>& shape);  // "[1, 272, 1024]"
// "an ONNX", "an OpenVINO IR", "a TensorRT engine", "a Core ML" (manifest.contract.json's target_names), for
// messages: "DIR is an ONNX artifact".
std::string a_target(const std::string& target);

struct Manifest {
    std::filesystem::path dir;
    std::string target;     // "onnx", "openvino", "tensorrt" or "coreml" (artifact.target; no backend here runs coreml)
    std::string precision;  // precision.name: fp32, fp16, bf16, fp16-all, fp32-int8w, fp16-int8w, bf16-int8w or int8
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
    std::vector<Readout> readouts;             // in the manifest's order; empty for an artifact exported without any
    std::vector<std::string> readout_outputs;  // every output with role readout, in the manifest's order

    const Readout* readout(const std::string& name) const;  // nullptr when the artifact has no such readout

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
// scales [B], canvas [B,R+G*G,Dc], recurrent_cls [B,1,Db]), the readouts (as Manifest._check_readouts: names
// unique, every role-readout output declared by one, each readout's outputs exactly seg_logits + seg_entropy /
// class_logits / teacher_patches with role readout and shapes [B,C,G,G] + [B,G,G] / [B,n] / [B,G*G,Dt], class names
// and palette one per class), the target's files, the precision word against its dtypes. With verify, checks every
// file's size and SHA-256. Builds the initial state for the manifest's batch (canvit-pytorch CanViT.init_state:
// registers, then the patch token repeated G*G times). Throws Error, one line.
// pinned_sha256 (hex, from --manifest-sha256): manifest.json's own SHA-256 must equal it, checked before parsing; the
// manifest lists every file's SHA-256, so the pin covers the whole artifact (a checksum beside the files cannot).
Manifest load_manifest(const std::filesystem::path& dir, bool verify = true, const std::string& pinned_sha256 = "");
// Glimpses in one run: their viewpoints are built before the first (canvit_runtime.policies.MAX_GLIMPSES).
inline constexpr int kMaxGlimpses = 100000;
// The widest image preprocessing accepts (long side / short side), as canvit_runtime.preprocess.MAX_ASPECT.
inline constexpr int kMaxAspect = 16;
// SHA-256 (hex) of bytes in memory.
std::string sha256_text(const std::string& text);
// `text` safe to print on a terminal: control characters (escape sequences, newlines, C1) as '?', cut to `limit`
// bytes. For every string that comes from a manifest or a file.
std::string printable(const std::string& text, size_t limit = 200);
// Whether `name` is a plain relative path inside a folder: not absolute, no "..", ".", empty part, backslash or
// control character (the manifest's file entries).
bool plain_member(const std::string& name);
// The same checks on manifest.json's text, for the artifact folder `dir`, short of reading any file: no checksums,
// no initial state (Manifest::initial_state stays empty). Throws the Errors load_manifest throws for that text.
Manifest parse_manifest(const std::string& text, const std::filesystem::path& dir);
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
// "full", "c2f", "f-iid", "r-iid", or a viewpoints JSON file (its first `glimpses` entries). Throws Error (for
// "eg-c2f" too: it is adaptive, see EntropyGuidedC2F).
std::vector<Viewpoints> make_policy(const std::string& name, int batch, int glimpses, uint32_t seed);

// EG-C2F (paper App. F.1; canvit-pytorch policies.entropy.EntropyGuidedC2F, canvit_runtime.policies in numpy):
// C2F's quadtree levels in order (level l: 2^l x 2^l tiles of scale 2^-l, in row-major order); within a level, the
// unvisited tile whose canvas cells have the highest mean predictive entropy, the first in row-major order on ties;
// visited tiles reset at each level's start. Adaptive and deterministic: glimpse t's viewpoint depends on the
// seg_entropy readout [B, G, G] (nats) of the step before it; glimpse 0 is the full scene. A tile (row, col, s)
// covers the canvas cells whose centers c_i = (i + 0.5) / G * 2 - 1 (float32) have |c_row - row| <= s and
// |c_col - col| <= s; its mean is the float32 sum of entropy * mask over the grid, in numpy's pairwise order (so
// near-ties break as canvit_runtime's do), divided by max(cells, 1).
class EntropyGuidedC2F {
   public:
    struct Tile {
        float row, col, scale;
    };
    // Throws Error unless canvas_grid is a power of two (the tiles must align with the canvas cells).
    EntropyGuidedC2F(int batch, int glimpses, int canvas_grid);
    // The viewpoints of glimpse t (call with t = 0, 1, 2, ... in order) given `entropy`, the seg_entropy [B, G, G]
    // of the previous step (ignored, may be empty, at t = 0). Throws Error when it is missing or of the wrong size.
    Viewpoints viewpoint(int t, const std::vector<float>& entropy);
    const std::vector<Tile>& tiles(int level) const { return levels_.at(size_t(level)); }
    int level_of(int t) const;                             // the quadtree level glimpse t visits
    std::vector<int> cells(int level, int tile) const;     // the canvas cells (row * G + col) the tile covers
    // Mean entropy of each tile of `level` over its cells, for scene b of entropy [B, G, G]: [n_tiles] float32.
    std::vector<float> tile_means(int level, const std::vector<float>& entropy, int b) const;
    const std::vector<std::vector<int>>& chosen() const { return chosen_; }  // per glimpse: the tile index per scene

   private:
    int batch_, grid_;
    std::vector<std::vector<Tile>> levels_;              // per level, row-major
    std::vector<int> level_start_;                       // first glimpse of each level: 0, 1, 5, 21, ...
    std::vector<std::vector<std::vector<int>>> cells_;   // per level, per tile: the cells it covers
    std::vector<std::vector<char>> visited_;             // [B][n_tiles] of the level being visited
    std::vector<std::vector<int>> chosen_;
};

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

// Writes RGB frames to a video file through OpenCV videoio: PATH.avi as Motion JPEG (OpenCV's own encoder, always
// there), PATH.mp4 as MPEG-4 part 2 ('mp4v', where OpenCV has FFmpeg). Every frame is width x height.
struct FrameSink {
    virtual ~FrameSink() = default;
    virtual void write(const RgbImage& frame) = 0;
};
// Throws Error when the file cannot be opened for writing, or when this build has no OpenCV (says how to build it).
std::unique_ptr<FrameSink> open_video_writer(const std::filesystem::path& path, int width, int height, double fps);

// PNG of the canvas's first three principal components as RGB (paper figures): batch item 0's G x G spatial
// tokens, centered, projected on the top-3 eigenvectors of their covariance (power iteration with deflation),
// each component min-max scaled to [0, 255], upscaled `scale` times. Returns the [G*G, 3] projections.
std::vector<float> write_canvas_pca_png(const std::filesystem::path& path, const std::vector<float>& canvas,
                                        const Manifest& m, int scale = 8);
// Pictures of a rollout, as canvit_runtime/pictures.py draws them. Geometry: the scene is S x S px; viewpoint
// (row, col, s) is the box of side s * S px centred at ((col + 1) / 2 * S, (row + 1) / 2 * S) px; canvas cell
// (i, j) covers pixels y, x with min(y * G / S, G - 1) = i, min(x * G / S, G - 1) = j (nearest upsampling).
// Text is drawn with OpenCV's Hershey font (cv::putText) when OpenCV is compiled in, else with stb_easy_font's
// bitmap font (pictures_use_opencv_text() says which).
bool pictures_use_opencv_text();
// Scene b of [B, 3, S, S] float32 back to 8-bit RGB: round(clip((x * std + mean) * 255)), the manifest's mean/std.
RgbImage scene_picture(const std::vector<float>& scene, const Manifest& m, int b);
// Each viewpoint (row, col, scale) as a 2 px box coloured by scale (scale 1 white, 1/2 yellow, 1/4 cyan, finer
// magenta), numbered 1, 2, ... in visiting order at its centre (outlined in black).
void draw_viewpoints(RgbImage& image, const std::vector<std::array<float, 3>>& viewpoints);
// logits [B, C, cells] -> scene b's class per cell [cells], the first class on ties (numpy argmax).
std::vector<int> argmax_map(const std::vector<float>& logits, int classes, int cells, int b);
struct LegendEntry {
    int label = 0, cells = 0;  // class index, canvas cells of that class
    double share = 0;          // percent of all cells
};
// The classes present in a label map, by area (largest first, the lower class index on ties).
std::vector<LegendEntry> legend_entries(const std::vector<int>& labels, int classes);
// segmentation.png: the label map [G*G] in palette colours blended on the scene (0.45 scene + 0.55 colour), the
// boxes, and a 230 px legend panel on the right: "classes present (N)", then up to 14 rows (swatch, name, share).
// [S, S + 230] RGB.
RgbImage segmentation_picture(const RgbImage& scene, const std::vector<int>& labels, int grid,
                              const std::vector<std::string>& names, const std::vector<std::array<unsigned char, 3>>& palette,
                              const std::vector<std::array<float, 3>>& viewpoints);
// entropy.png: entropy [G*G] (nats) from 0 to ln(classes) on the plasma colour ramp at size x size px, the boxes,
// and a 44 px scale bar below: [size + 44, size] RGB.
RgbImage entropy_picture(const std::vector<float>& entropy, int grid, int classes, int size,
                         const std::vector<std::array<float, 3>>& viewpoints);
void write_png(const std::filesystem::path& path, const RgbImage& image);  // throws Error when unwritable
// Scene b's top-k classes of logits [B, classes]: (name, softmax probability), most probable first (the lower
// index on ties); names may be empty ("class i").
std::vector<std::pair<std::string, double>> top_classes(const std::vector<float>& logits, int classes,
                                                        const std::vector<std::string>& names, int k, int b);
// Writes into dir (created) viewpoints.png (scene 0 with its boxes) and, when the artifact has a segmentation
// readout and `readouts` holds seg_logits and seg_entropy (the final step's, [B, C, G, G] and [B, G, G]),
// segmentation.png, entropy.png and legend.txt (the legend's classes: index, name, cells, share, RGB, one per
// line). Class names and palette are the manifest's, else "class i" and pictures.py's fallback colours.
// Returns the paths written. Throws Error when dir cannot be created or written.
std::vector<std::filesystem::path> write_pictures(const std::filesystem::path& dir, const Manifest& m,
                                                  const std::vector<float>& scene, const std::vector<Viewpoints>& viewpoints,
                                                  const std::map<std::string, std::vector<float>>& readouts);

// A frame of the overlay video: scene 0 of [B, 3, S, S] with, when the artifact has a segmentation readout and
// seg_logits ([B, C, G, G], this glimpse's) is not empty, its argmax map blended as in segmentation.png, and the
// boxes: S x S RGB.
RgbImage overlay_frame(const Manifest& m, const std::vector<float>& scene, const std::vector<float>& seg_logits,
                       const std::vector<std::array<float, 3>>& viewpoints);

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
// changes (uploaded once, not per glimpse); step() once per glimpse; read_state() copies a state to the host;
// read_output() copies one of the last step's readouts to the host (the state itself never crosses per glimpse).
struct Backend {
    virtual ~Backend() = default;
    virtual void reset() = 0;  // the manifest's initial state
    virtual void set_scene(const std::vector<float>& scene) = 0;  // [B, 3, S, S] float32
    virtual void step(const Viewpoints& v) = 0;                     // waits until the new state and readouts are ready
    virtual std::vector<float> read_state(const std::string& name) = 0;  // "canvas" or "recurrent_cls"
    // A readout output of the last step (Manifest::readout_outputs: seg_logits, seg_entropy, class_logits,
    // teacher_patches), its manifest shape, float32. Read only what is needed: EG-C2F reads seg_entropy [B, G, G]
    // (B * G * G * 4 bytes) every glimpse, the others are read at the end. Throws Error for another name.
    virtual std::vector<float> read_output(const std::string& name) = 0;
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
