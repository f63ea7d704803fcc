#include <openssl/evp.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <functional>
#include <iomanip>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "canvit/canvit.hpp"
#include "manifest_schema.hpp"

namespace fs = std::filesystem;
using nlohmann::json;

namespace canvit {

size_t TensorSpec::numel() const {
    size_t n = 1;
    for (auto d : shape) n *= static_cast<size_t>(d);
    return n;
}

static std::string hex_digest(EVP_MD_CTX* ctx) {
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int length = 0;
    EVP_DigestFinal_ex(ctx, digest, &length);
    EVP_MD_CTX_free(ctx);
    std::ostringstream hex;
    for (unsigned int i = 0; i < length; ++i) hex << std::hex << std::setfill('0') << std::setw(2) << int(digest[i]);
    return hex.str();
}

std::string sha256_file(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw Error(path.string() + ": cannot be read");
    EVP_MD_CTX* ctx = EVP_MD_CTX_new();
    EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr);
    std::vector<char> block(1 << 24);
    while (in) {
        in.read(block.data(), static_cast<std::streamsize>(block.size()));
        EVP_DigestUpdate(ctx, block.data(), static_cast<size_t>(in.gcount()));
    }
    return hex_digest(ctx);
}

std::string sha256_text(const std::string& text) {
    EVP_MD_CTX* ctx = EVP_MD_CTX_new();
    EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr);
    EVP_DigestUpdate(ctx, text.data(), text.size());
    return hex_digest(ctx);
}

std::string printable(const std::string& text, size_t limit) {
    std::string out;
    for (size_t i = 0; i < text.size() && out.size() < limit; ++i) {
        const unsigned char c = static_cast<unsigned char>(text[i]);
        if (c == 0xC2 && i + 1 < text.size() && static_cast<unsigned char>(text[i + 1]) >= 0x80 &&
            static_cast<unsigned char>(text[i + 1]) <= 0x9F) {  // a C1 control, UTF-8 encoded
            out += '?';
            ++i;
        } else {
            out += (c < 0x20 || c == 0x7f) ? '?' : char(c);
        }
    }
    return out;
}

bool plain_member(const std::string& name) {
    if (name.empty() || name.front() == '/' || name.find('\\') != std::string::npos) return false;
    for (unsigned char c : name)
        if (c < 0x20 || c == 0x7f) return false;
    size_t start = 0;
    while (start <= name.size()) {
        const size_t end = std::min(name.find('/', start), name.size());
        const std::string part = name.substr(start, end - start);
        if (part.empty() || part == "." || part == "..") return false;
        start = end + 1;
    }
    return true;
}

std::string shape_str(const std::vector<int64_t>& shape) {
    std::string out = "[";
    for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
    return out + "]";
}

std::string a_target(const std::string& target) {
    static const std::map<std::string, std::string> names{
        {"onnx", "an ONNX"}, {"openvino", "an OpenVINO IR"}, {"tensorrt", "a TensorRT engine"}, {"coreml", "a Core ML"}};
    const auto it = names.find(target);
    return it != names.end() ? it->second : "a " + target;
}

const TensorSpec& Manifest::tensor(const std::string& name) const {
    const auto it = specs.find(name);
    if (it == specs.end()) throw Error((dir / "manifest.json").string() + ": no tensor named '" + name + "'; re-export the artifact");
    return it->second;
}

using Shape = std::vector<int64_t>;
using Fail = std::function<void(const std::string&)>;  // throws Error "<manifest.json>: <what>; re-export the artifact"

const Readout* Manifest::readout(const std::string& name) const {
    for (const auto& r : readouts)
        if (r.name == name) return &r;
    return nullptr;
}

static TensorSpec parse_tensor(const json& j) {
    const std::string unit = j.contains("unit") && j.at("unit").is_string() ? j.at("unit").get<std::string>() : "";
    return TensorSpec{j.at("name"), j.at("dtype"), j.at("role"), j.at("shape").get<Shape>(), unit};
}

// A readout record: name, outputs, class names and palette (each may be absent or null).
static Readout parse_readout(const json& j) {
    Readout r{j.at("name"), j.at("outputs").get<std::vector<std::string>>(), {}, {}};
    if (j.contains("class_names") && !j.at("class_names").is_null()) r.class_names = j.at("class_names").get<std::vector<std::string>>();
    if (j.contains("palette") && !j.at("palette").is_null())
        for (const auto& rgb : j.at("palette"))
            r.palette.push_back({rgb.at(0).get<unsigned char>(), rgb.at(1).get<unsigned char>(), rgb.at(2).get<unsigned char>()});
    return r;
}

// A size the demo keeps in an int (the schema has made it an integer > 0 or >= 0): one beyond INT_MAX is refused, not
// truncated into another size.
static int int_size(const json& value, const std::string& field, const fs::path& path) {
    const bool fits = value.is_number_unsigned() ? value.get<uint64_t>() <= uint64_t(INT_MAX)
                                                 : value.get<int64_t>() >= INT_MIN && value.get<int64_t>() <= INT_MAX;
    if (!fits)
        throw Error(path.string() + ": " + field + " " + value.dump() + " is larger than canvit_demo reads (" +
                    std::to_string(INT_MAX) + "); re-export the artifact");
    return value.get<int>();
}

// The fields the demo uses; the schema has checked that they are there, with their types.
static Manifest read_fields(const json& j, const fs::path& dir) {
    const fs::path path = dir / "manifest.json";
    Manifest m;
    m.dir = dir;
    const json& artifact = j.at("artifact");
    m.target = artifact.at("target");
    m.stateful = artifact.value("stateful", false);
    if (m.target == "tensorrt")
        m.built_with = "TensorRT " + artifact.at("tensorrt").get<std::string>() + " on " + artifact.at("gpu").get<std::string>();
    m.precision = j.at("precision").at("name");
    const auto& g = j.at("geometry");
    m.batch = int_size(g.at("batch"), "geometry.batch", path);
    m.scene_px = int_size(g.at("scene_px"), "geometry.scene_px", path);
    m.glimpse_px = int_size(g.at("glimpse_px"), "geometry.glimpse_px", path);
    m.canvas_grid = int_size(g.at("canvas_grid"), "geometry.canvas_grid", path);
    m.num_canvas_registers = int_size(j.at("architecture").at("num_canvas_registers"), "architecture.num_canvas_registers", path);
    for (int c = 0; c < 3; ++c) {
        m.mean[c] = j.at("preprocessing").at("mean").at(c);
        m.std[c] = j.at("preprocessing").at("std").at(c);
    }
    for (const auto& t : j.at("inputs")) m.inputs.push_back(parse_tensor(t));
    for (const auto& t : j.at("outputs")) m.outputs.push_back(parse_tensor(t));
    for (const auto& t : m.outputs)
        if (t.role == "readout") m.readout_outputs.push_back(t.name);
    if (j.contains("readouts"))
        for (const auto& r : j.at("readouts")) m.readouts.push_back(parse_readout(r));
    for (const auto& s : j.at("state")) {
        m.state_pairs.emplace_back(s.at("input"), s.at("output"));
        if (s.contains("variable")) m.variables[s.at("input")] = s.at("variable");
    }
    for (const auto& [key, record] : j.at("files").items()) {
        const std::string name = record.at("path").get<std::string>();
        if (!plain_member(name))  // an artifact is untrusted: its files stay inside its folder
            throw Error((dir / "manifest.json").string() + ": file '" + key + "' is listed as '" + printable(name) +
                        "', not a plain name inside the artifact folder; re-export the artifact");
        m.files[key] = dir / name;
        m.file_sha256[key] = record.at("sha256");
    }
    return m;
}

// Unique names, exactly one input per role scene / viewpoint_centers / viewpoint_scales, every I/O float32.
static void check_tensors(Manifest& m, const Fail& fail) {
    for (const auto* list : {&m.inputs, &m.outputs})
        for (const auto& t : *list)
            if (!m.specs.emplace(t.name, t).second) fail("tensor name '" + t.name + "' repeats");
    for (auto [role, name] : {std::pair{"scene", &m.scene_input}, {"viewpoint_centers", &m.centers_input},
                              {"viewpoint_scales", &m.scales_input}}) {
        int count = 0;
        for (const auto& t : m.inputs)
            if (t.role == role) *name = t.name, ++count;
        if (count != 1) fail("inputs must have exactly one tensor with role '" + std::string(role) + "'");
    }
    for (const auto* list : {&m.inputs, &m.outputs})
        for (const auto& t : *list)
            if (t.dtype != "float32") fail("tensor '" + t.name + "' is " + t.dtype + ", but every step input and output is float32");
}

// initial_state's parts, their shapes as the architecture says: canvas_registers [R, Dc], canvas_patch [Dc],
// recurrent_cls [Db]. Returns {name: shape}.
static std::map<std::string, Shape> initial_state_parts(const json& j, const Fail& fail) {
    const auto& a = j.at("architecture");
    const int64_t R = a.at("num_canvas_registers"), Dc = a.at("canvas_dim"), Db = a.at("backbone_dim");
    const std::map<std::string, Shape> expected{{"canvas_registers", {R, Dc}}, {"canvas_patch", {Dc}}, {"recurrent_cls", {Db}}};
    std::map<std::string, Shape> parts;
    for (const auto& p : j.at("initial_state").at("parts")) parts[p.at("name")] = p.at("shape").get<Shape>();
    for (const auto& [name, shape] : expected) {
        if (!parts.count(name)) fail("initial_state must have the parts canvas_registers, canvas_patch and recurrent_cls");
        if (parts.at(name) != shape)
            fail("initial_state part " + name + " has shape " + shape_str(parts.at(name)) + ", the architecture says " +
                 shape_str(shape));
    }
    return parts;
}

// Every tensor's shape against the geometry, by role (scene [B, 3, S, S], viewpoint_centers [B, 2],
// viewpoint_scales and reset [B]) or, for role state, by name (canvas(_next) [B, R + G*G, Dc], recurrent_cls(_next)
// [B, 1, Db]); the state entries the same. A stateful IR keeps the state in variables: its specs come from there.
static void check_shapes(Manifest& m, const json& j, const Fail& fail) {
    const auto& a = j.at("architecture");
    const int64_t B = m.batch, S = m.scene_px, G = m.canvas_grid;
    const Shape canvas{B, int64_t(m.num_canvas_registers) + G * G, a.at("canvas_dim").get<int64_t>()};
    const Shape cls{B, 1, a.at("backbone_dim").get<int64_t>()};
    const std::map<std::string, Shape> by_role{{"scene", {B, 3, S, S}}, {"viewpoint_centers", {B, 2}},
                                               {"viewpoint_scales", {B}}, {"reset", {B}}};
    const std::map<std::string, Shape> by_state{{"canvas", canvas}, {"canvas_next", canvas},
                                                {"recurrent_cls", cls}, {"recurrent_cls_next", cls}};
    for (const auto* list : {&m.inputs, &m.outputs})
        for (const auto& t : *list) {
            const bool state = t.role == "state";
            if (state && !by_state.count(t.name))
                fail("tensor '" + t.name + "' has role state but is not one of canvas, canvas_next, recurrent_cls, recurrent_cls_next");
            const auto& want = state ? by_state : by_role;
            const auto it = want.find(state ? t.name : t.role);
            if (it != want.end() && t.shape != it->second)
                fail("tensor '" + t.name + "' has shape " + shape_str(t.shape) + ", but the geometry (batch " + std::to_string(B) +
                     ", scene " + std::to_string(S) + " px, canvas " + std::to_string(G) + "x" + std::to_string(G) + ") says " +
                     shape_str(it->second));
        }
    for (const auto& s : j.at("state")) {
        const std::string input = s.at("input"), output = s.at("output");
        const Shape shape = s.at("shape").get<Shape>();
        if (shape != by_state.at(input))
            fail("state '" + input + "' has shape " + shape_str(shape) + ", the geometry says " + shape_str(by_state.at(input)));
        for (const auto& name : {input, output}) {
            const auto it = m.specs.find(name);
            if (it != m.specs.end() && it->second.role != "state")
                fail("tensor '" + name + "' is a state pair's but has role '" + it->second.role + "'");
            if (it == m.specs.end() && !m.stateful) fail("a stateless artifact's graph must take and return every state tensor");
            if (it == m.specs.end()) m.specs[name] = TensorSpec{name, "float32", "state", shape, ""};  // in a variable
        }
    }
}

// ['a', 'b']: a list of names as Python prints it, so that both languages word an error alike.
static std::string py_list(const std::vector<std::string>& names) {
    std::string out = "[";
    for (size_t i = 0; i < names.size(); ++i) out += (i ? ", '" : "'") + names[i] + "'";
    return out + "]";
}

// The readouts, as Manifest._check_readouts (same rules, same order): names unique; every output with role readout
// declared by a readout; each readout's outputs exactly segmentation: seg_logits [B, C, G, G] + seg_entropy
// [B, G, G], classification: class_logits [B, n], features: teacher_patches [B, G*G, Dt], outputs with role readout;
// class names and palette, when given, one per class (C or n; features has no classes).
static void check_readouts(const Manifest& m, const json& j, const Fail& fail) {
    const std::map<std::string, std::vector<std::string>> expected{
        {"segmentation", {"seg_logits", "seg_entropy"}}, {"classification", {"class_logits"}}, {"features", {"teacher_patches"}}};
    std::vector<std::string> names, declared, undeclared;
    for (const auto& r : m.readouts) {
        if (std::find(names.begin(), names.end(), r.name) != names.end()) fail("readouts repeat a name");
        names.push_back(r.name);
        declared.insert(declared.end(), r.outputs.begin(), r.outputs.end());
    }
    for (const auto& name : m.readout_outputs)
        if (std::find(declared.begin(), declared.end(), name) == declared.end()) undeclared.push_back(name);
    std::sort(undeclared.begin(), undeclared.end());
    if (!undeclared.empty()) fail("outputs " + py_list(undeclared) + " have role readout but no readout declares them");
    const int64_t B = m.batch, G = m.canvas_grid;
    size_t index = 0;
    for (const auto& r : m.readouts) {
        if (r.outputs != expected.at(r.name))
            fail("readout " + r.name + " outputs " + py_list(expected.at(r.name)) + ", not " + py_list(r.outputs));
        for (const auto& name : r.outputs) {
            const auto it = m.specs.find(name);
            if (it == m.specs.end() || it->second.role != "readout")
                fail("readout " + r.name + "'s output '" + name + "' is not an output with role readout");
        }
        const Shape& first = m.specs.at(r.outputs[0]).shape;
        const int64_t last = first.empty() ? 0 : first.back();
        int64_t classes = -1;  // features: none
        std::vector<Shape> want;
        if (r.name == "segmentation") {
            classes = first.size() > 1 ? first[1] : 0;
            want = {{B, classes, G, G}, {B, G, G}};
        } else if (r.name == "classification") {
            classes = last;
            want = {{B, last}};
        } else {
            want = {{B, G * G, last}};
        }
        for (size_t i = 0; i < r.outputs.size(); ++i)
            if (m.specs.at(r.outputs[i]).shape != want[i])
                fail("readout output '" + r.outputs[i] + "' has shape " + shape_str(m.specs.at(r.outputs[i]).shape) +
                     ", the geometry says " + shape_str(want[i]));
        const json& record = j.at("readouts").at(index++);
        for (const auto& [key, field] : {std::pair{"class_names", "class names"}, {"palette", "palette"}}) {
            const bool given = record.contains(key) && !record.at(key).is_null();  // [] is given, and wrong
            if (given && int64_t(record.at(key).size()) != classes)
                fail("readout " + r.name + " has " + std::to_string(record.at(key).size()) + " " + field + " for " +
                     (classes < 0 ? std::string("no") : std::to_string(classes)) + " classes");
        }
    }
}

// The target's files listed, and the precision word agreeing with its dtypes (canvit_runtime/precision.py:
// fp32 fp16 bf16 fp16-all, each but fp16-all also with -int8w, and int8 (static Q/DQ); matmuls in the base word's
// dtype, streams in float32 but for fp16-all).
static void check_files_and_precision(const Manifest& m, const json& j, const Fail& fail) {
    const std::map<std::string, std::vector<std::string>> target_files{
        {"onnx", {"graph"}}, {"openvino", {"ir", "weights"}}, {"tensorrt", {"engine"}}, {"coreml", {"package"}}};
    std::vector<std::string> keys{"initial_state"}, missing;
    keys.insert(keys.end(), target_files.at(m.target).begin(), target_files.at(m.target).end());
    for (const auto& key : keys)
        if (!m.files.count(key)) missing.push_back(key);
    if (!missing.empty()) fail("files lacks " + json(missing).dump() + " for " + a_target(m.target) + " artifact");
    const std::string suffix = "-int8w";
    const size_t cut = m.precision.size() - std::min(m.precision.size(), suffix.size());
    const std::string base = m.precision.substr(cut) == suffix ? m.precision.substr(0, cut) : m.precision;
    const std::map<std::string, std::string> matmul{
        {"fp32", "float32"}, {"fp16", "float16"}, {"bf16", "bfloat16"}, {"fp16-all", "float16"}, {"int8", "int8"}};
    const std::string stream = base == "fp16-all" ? "float16" : "float32";
    const auto& p = j.at("precision");
    if (!matmul.count(base)) fail("precision '" + m.precision + "' is not a word of the precision vocabulary");
    if (p.at("matmul_dtype") != matmul.at(base) || p.at("stream_dtype") != stream)
        fail("precision " + m.precision + " means matmuls in " + matmul.at(base) + " and streams in " + stream +
             ", the record says " + p.at("matmul_dtype").get<std::string>() + " and " + p.at("stream_dtype").get<std::string>());
}

// The checks a JSON Schema cannot state, as canvit_runtime.manifest.Manifest._consistent makes them (same rules,
// same order): tensors, state pairs, initial state parts, shapes, readouts, files and precision. Returns the parts'
// shapes.
static std::map<std::string, Shape> check_consistency(Manifest& m, const json& j, const fs::path& path) {
    const Fail fail = [&](const std::string& what) { throw Error(path.string() + ": " + what + "; re-export the artifact"); };
    check_tensors(m, fail);
    const std::vector<std::pair<std::string, std::string>> expected{{"canvas", "canvas_next"}, {"recurrent_cls", "recurrent_cls_next"}};
    if (m.state_pairs != expected) fail("state must be the pairs canvas -> canvas_next, recurrent_cls -> recurrent_cls_next");
    auto parts = initial_state_parts(j, fail);
    check_shapes(m, j, fail);
    check_readouts(m, j, fail);
    check_files_and_precision(m, j, fail);
    return parts;
}

// An ONNX graph may load external data from any file of its folder, by a name inside the graph: a file the manifest
// does not list would run unchecked. The folder of an ONNX artifact holds only what the manifest lists (and the
// manifest, this tool's marker and a signature). canvit_runtime checks the graph itself (manifest.verified_onnx).
static void refuse_unlisted_files(const Manifest& m) {
    std::set<fs::path> listed{m.dir / "manifest.json", m.dir / ".canvit-export", m.dir / "artifact.sig"};
    for (const auto& [key, path] : m.files) listed.insert(path);
    std::error_code failed;
    for (auto it = fs::recursive_directory_iterator(m.dir, failed); !failed && it != fs::recursive_directory_iterator();
         it.increment(failed)) {
        if (it->is_directory(failed) && !it->is_symlink(failed)) continue;
        if (!listed.count(it->path()))
            throw Error(it->path().string() + ": in the ONNX artifact's folder but not in its manifest; the graph could "
                        "load it as external data, unchecked: remove it (or re-export the artifact)");
    }
}

// Every listed file's size and SHA-256 (an .mlpackage folder is not checked here: no backend reads one).
static void verify_files(const Manifest& m, const json& j) {
    if (m.target == "onnx") refuse_unlisted_files(m);
    for (const auto& [key, record] : j.at("files").items()) {
        const fs::path& file = m.files.at(key);
        std::error_code failed;  // a path the system refuses (too long, a loop) is missing, not a filesystem_error
        const fs::file_type type = fs::symlink_status(file, failed).type();  // a link is not followed
        if (type == fs::file_type::directory && key == "package") continue;
        if (type == fs::file_type::not_found || type == fs::file_type::none)
            throw Error(file.string() + ": missing from the artifact (" + key + "); re-export or re-copy it");
        // a symlink, a FIFO, a device: not the file exported, and never read (it could lead outside, block or never end)
        if (type != fs::file_type::regular)
            throw Error(file.string() + ": not a regular file (a symlink, folder, device or FIFO); artifacts hold only "
                        "plain files: re-export or re-copy it");
        if (fs::file_size(file, failed) != record.at("bytes").get<uintmax_t>() || sha256_file(file) != record.at("sha256"))
            throw Error(file.string() + ": SHA-256 mismatch, the file was altered or truncated; re-export or re-copy it");
    }
}

// The state before the first glimpse (canvit-pytorch CanViT.init_state) from initial_state.bin: little-endian
// float32 parts at the manifest's byte offsets. canvas [B, R + G*G, Dc]: the registers, then the patch token
// repeated G*G times; recurrent_cls [B, 1, Db].
static void build_initial_state(Manifest& m, const json& j, const std::map<std::string, Shape>& shapes) {
    const fs::path& bin_path = m.files.at("initial_state");
    std::ifstream bin(bin_path, std::ios::binary);
    const std::vector<char> raw((std::istreambuf_iterator<char>(bin)), std::istreambuf_iterator<char>());
    std::map<std::string, std::vector<float>> parts;
    for (const auto& p : j.at("initial_state").at("parts")) {
        size_t count = 1;  // the part's floats, saturating at SIZE_MAX (dimensions are > 0: the schema)
        for (auto d : shapes.at(p.at("name"))) count = count > SIZE_MAX / size_t(d) ? SIZE_MAX : count * size_t(d);
        const size_t offset = p.at("offset_bytes");
        if (offset > raw.size() || count > (raw.size() - offset) / 4)  // offset + 4 * count could wrap around
            throw Error(bin_path.string() + ": too short for part " + p.at("name").get<std::string>() + "; re-export the artifact");
        std::vector<float> values(count);
        std::memcpy(values.data(), raw.data() + offset, 4 * count);
        parts[p.at("name")] = std::move(values);
    }
    const auto& registers = parts.at("canvas_registers");
    const auto& patch = parts.at("canvas_patch");
    const auto& cls = parts.at("recurrent_cls");
    std::vector<float> canvas, rcls;
    for (int b = 0; b < m.batch; ++b) {
        canvas.insert(canvas.end(), registers.begin(), registers.end());
        for (size_t t = 0; t < size_t(m.canvas_grid) * size_t(m.canvas_grid); ++t) canvas.insert(canvas.end(), patch.begin(), patch.end());
        rcls.insert(rcls.end(), cls.begin(), cls.end());
    }
    m.initial_state["canvas"] = std::move(canvas);
    m.initial_state["recurrent_cls"] = std::move(rcls);
}

static Error malformed(const fs::path& path, const json::exception& e) {
    return Error(path.string() + ": malformed manifest (" + std::string(e.what()) + "); re-export the artifact");
}

// manifest.json's text for the artifact folder `dir`, read and checked as load_manifest does short of any file:
// j and parts are what verify_files and build_initial_state then need.
static Manifest checked_manifest(const std::string& text, const fs::path& dir, json& j, std::map<std::string, Shape>& parts) {
    const fs::path path = dir / "manifest.json";
    j = parse_manifest_json(text, path.string());  // JSON, format, version, then the JSON Schema
    try {
        Manifest m = read_fields(j, dir);
        parts = check_consistency(m, j, path);
        return m;
    } catch (const json::exception& e) {  // the schema makes these unreachable; kept one line all the same
        throw malformed(path, e);
    }
}

Manifest parse_manifest(const std::string& text, const fs::path& dir) {
    json j;
    std::map<std::string, Shape> parts;
    return checked_manifest(text, dir, j, parts);
}

Manifest load_manifest(const fs::path& dir, bool verify, const std::string& pinned_sha256) {
    if (!fs::is_directory(dir)) throw Error(dir.string() + ": no such artifact folder; export one with canvit-export");
    const fs::path path = dir / "manifest.json";
    std::error_code failed;
    const fs::file_type type = fs::symlink_status(path, failed).type();
    if (type == fs::file_type::not_found || type == fs::file_type::none)
        throw Error(dir.string() + ": no manifest.json; this is not a canvit-export artifact");
    if (type != fs::file_type::regular || fs::file_size(path, failed) > kMaxManifestBytes)
        throw Error(path.string() + ": not a plain manifest file (a symlink, FIFO or device, or over 16 MiB); re-export the artifact");
    std::ifstream in(path, std::ios::binary);
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (!pinned_sha256.empty()) {  // the manifest lists every file's SHA-256: pinning it pins the whole artifact
        std::string pin = pinned_sha256;
        std::transform(pin.begin(), pin.end(), pin.begin(), [](unsigned char c) { return char(std::tolower(c)); });
        if (sha256_text(text) != pin)
            throw Error(path.string() + ": SHA-256 " + sha256_text(text) + " is not the pinned " + printable(pinned_sha256) +
                        ": this is not the artifact you pinned; copy it again from its source");
    }
    json j;
    std::map<std::string, Shape> parts;
    Manifest m = checked_manifest(text, dir, j, parts);
    try {
        if (verify) verify_files(m, j);
        build_initial_state(m, j, parts);
        return m;
    } catch (const json::exception& e) {  // the schema makes these unreachable; kept one line all the same
        throw malformed(path, e);
    }
}

}  // namespace canvit
