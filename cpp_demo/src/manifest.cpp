#include <openssl/evp.h>

#include <cmath>
#include <cstring>
#include <iomanip>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "canvit/canvit.hpp"

namespace fs = std::filesystem;
using nlohmann::json;

namespace canvit {

size_t TensorSpec::numel() const {
    size_t n = 1;
    for (auto d : shape) n *= static_cast<size_t>(d);
    return n;
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
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int length = 0;
    EVP_DigestFinal_ex(ctx, digest, &length);
    EVP_MD_CTX_free(ctx);
    std::ostringstream hex;
    for (unsigned int i = 0; i < length; ++i) hex << std::hex << std::setfill('0') << std::setw(2) << int(digest[i]);
    return hex.str();
}

std::string shape_str(const std::vector<int64_t>& shape) {
    std::string out = "[";
    for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
    return out + "]";
}

const TensorSpec& Manifest::tensor(const std::string& name) const {
    const auto it = specs.find(name);
    if (it == specs.end()) throw Error((dir / "manifest.json").string() + ": no tensor named '" + name + "'; re-export the artifact");
    return it->second;
}

static TensorSpec parse_tensor(const json& j) {
    return TensorSpec{j.at("name"), j.at("dtype"), j.at("role"), j.at("shape").get<std::vector<int64_t>>()};
}

// The manifest must agree with itself: roles present, I/O float32, shapes as the geometry and the initial state
// say (state: {"canvas": [B, R+G*G, Dc], "recurrent_cls": [B, 1, Db]}).
static void check_consistency(Manifest& m, const fs::path& path, const std::map<std::string, std::vector<int64_t>>& state) {
    const auto fail = [&](const std::string& what) { throw Error(path.string() + ": " + what + "; re-export the artifact"); };
    for (const auto& t : m.inputs) {
        if (t.role == "scene") m.scene_input = t.name;
        if (t.role == "viewpoint_centers") m.centers_input = t.name;
        if (t.role == "viewpoint_scales") m.scales_input = t.name;
    }
    if (m.scene_input.empty() || m.centers_input.empty() || m.scales_input.empty())
        fail("inputs lack a scene, viewpoint_centers or viewpoint_scales role");
    for (const auto* list : {&m.inputs, &m.outputs})
        for (const auto& t : *list) {
            if (t.dtype != "float32") fail("tensor '" + t.name + "' is " + t.dtype + ", but every step input and output is float32");
            m.specs[t.name] = t;
        }
    const std::vector<std::pair<std::string, std::string>> expected{{"canvas", "canvas_next"}, {"recurrent_cls", "recurrent_cls_next"}};
    if (m.state_pairs != expected) fail("state pairs must be canvas -> canvas_next, recurrent_cls -> recurrent_cls_next");
    const int64_t B = m.batch, S = m.scene_px;
    const std::map<std::string, std::vector<int64_t>> geometry{
        {m.scene_input, {B, 3, S, S}}, {m.centers_input, {B, 2}}, {m.scales_input, {B}},
        {"canvas", state.at("canvas")}, {"canvas_next", state.at("canvas")},
        {"recurrent_cls", state.at("recurrent_cls")}, {"recurrent_cls_next", state.at("recurrent_cls")}};
    for (const auto& [name, shape] : geometry) {
        auto it = m.specs.find(name);
        if (it == m.specs.end()) {
            bool state_tensor = false;  // a stateful IR keeps both sides of a state pair in its variables
            for (const auto& [input, output] : m.state_pairs) state_tensor |= name == input || name == output;
            if (!(m.stateful && state_tensor)) fail("no tensor '" + name + "'");
            it = m.specs.emplace(name, TensorSpec{name, "float32", "state", shape}).first;  // a stateful IR's variable
        }
        if (it->second.shape != shape)
            fail("tensor '" + name + "' has shape " + shape_str(it->second.shape) + " but the geometry (batch " +
                 std::to_string(B) + ", scene " + std::to_string(S) + " px, canvas " + std::to_string(m.canvas_grid) +
                 "x" + std::to_string(m.canvas_grid) + ", initial state) says " + shape_str(shape));
    }
}

Manifest load_manifest(const fs::path& dir, bool verify) {
    if (!fs::is_directory(dir)) throw Error(dir.string() + ": no such artifact folder; export one with canvit-export");
    const fs::path path = dir / "manifest.json";
    if (!fs::is_regular_file(path)) throw Error(dir.string() + ": no manifest.json; this is not a canvit-export artifact");
    json j;
    try {
        std::ifstream(path) >> j;
    } catch (const json::exception& e) {
        throw Error(path.string() + ": not valid JSON (" + e.what() + "); re-export the artifact");
    }
    if (j.value("format", "") != "canvit-export-manifest")
        throw Error(path.string() + ": not a canvit-export manifest");
    if (j.value("format_version", -1) != 1)
        throw Error(path.string() + ": manifest version " + j.value("format_version", json(nullptr)).dump() +
                    ", this demo reads version 1; re-export with a matching canvit-export");
    Manifest m;
    try {
        m.dir = dir;
        m.target = j.at("artifact").at("target");
        m.stateful = j.at("artifact").value("stateful", false);
        if (m.target == "tensorrt")
            m.built_with = "TensorRT " + j.at("artifact").value("tensorrt", "?") + " on " + j.at("artifact").value("gpu", "?");
        const auto& g = j.at("geometry");
        m.batch = g.at("batch"), m.scene_px = g.at("scene_px"), m.glimpse_px = g.at("glimpse_px");
        m.canvas_grid = g.at("canvas_grid");
        m.num_canvas_registers = j.at("architecture").at("num_canvas_registers");
        for (int c = 0; c < 3; ++c) {
            m.mean[c] = j.at("preprocessing").at("mean").at(c);
            m.std[c] = j.at("preprocessing").at("std").at(c);
        }
        for (const auto& t : j.at("inputs")) m.inputs.push_back(parse_tensor(t));
        for (const auto& t : j.at("outputs")) m.outputs.push_back(parse_tensor(t));
        for (const auto& s : j.at("state")) {
            m.state_pairs.emplace_back(s.at("input"), s.at("output"));
            if (s.contains("variable")) m.variables[s.at("input")] = s.at("variable");
            if (s.contains("shape")) m.specs[s.at("input")] = TensorSpec{s.at("input"), s.value("dtype", "float32"), "state",
                                                                         s.at("shape").get<std::vector<int64_t>>()};
        }
        for (const auto& [key, record] : j.at("files").items()) {
            const fs::path file = dir / record.at("path").get<std::string>();
            m.files[key] = file;
            m.file_sha256[key] = record.at("sha256");
            if (!verify || fs::is_directory(file)) continue;
            if (!fs::exists(file)) throw Error(file.string() + ": missing from the artifact; re-export or re-copy it");
            if (fs::file_size(file) != record.at("bytes").get<uintmax_t>() || sha256_file(file) != record.at("sha256"))
                throw Error(file.string() + ": SHA-256 mismatch, the file was altered or truncated; re-export or re-copy it");
        }
        // Initial state: little-endian float32 parts (manifest initial_state.parts, with byte offsets).
        std::ifstream bin(m.files.at("initial_state"), std::ios::binary);
        std::vector<char> raw((std::istreambuf_iterator<char>(bin)), std::istreambuf_iterator<char>());
        std::map<std::string, std::vector<float>> parts;
        for (const auto& p : j.at("initial_state").at("parts")) {
            size_t count = 1;
            for (auto d : p.at("shape")) count *= d.get<size_t>();
            const size_t offset = p.at("offset_bytes");
            if (offset + 4 * count > raw.size())
                throw Error(m.files.at("initial_state").string() + ": too short for the manifest's parts; re-export the artifact");
            std::vector<float> values(count);
            std::memcpy(values.data(), raw.data() + offset, 4 * count);
            parts[p.at("name")] = std::move(values);
        }
        const auto& registers = parts.at("canvas_registers");
        const auto& patch = parts.at("canvas_patch");
        const auto& cls = parts.at("recurrent_cls");
        if (m.batch < 1 || m.scene_px < 1 || m.glimpse_px < 1 || m.canvas_grid < 1 || patch.empty() ||
            registers.size() != size_t(m.num_canvas_registers) * patch.size())
            throw Error(path.string() + ": geometry or initial_state parts are inconsistent (batch, px and canvas grid >= 1, "
                        "canvas_registers [R, Dc]); re-export the artifact");
        const size_t dc = patch.size(), tokens = registers.size() / dc + size_t(m.canvas_grid) * m.canvas_grid;
        std::vector<float> canvas, rcls;
        for (int b = 0; b < m.batch; ++b) {
            canvas.insert(canvas.end(), registers.begin(), registers.end());
            for (int t = 0; t < m.canvas_grid * m.canvas_grid; ++t) canvas.insert(canvas.end(), patch.begin(), patch.end());
            rcls.insert(rcls.end(), cls.begin(), cls.end());
        }
        m.initial_state["canvas"] = std::move(canvas);
        m.initial_state["recurrent_cls"] = std::move(rcls);
        check_consistency(m, path, {{"canvas", {m.batch, int64_t(tokens), int64_t(dc)}},
                                    {"recurrent_cls", {m.batch, 1, int64_t(cls.size())}}});
    } catch (const json::out_of_range& e) {
        throw Error(path.string() + ": manifest lacks a required entry (" + e.what() + "); re-export the artifact");
    } catch (const json::exception& e) {
        throw Error(path.string() + ": malformed manifest (" + e.what() + "); re-export the artifact");
    } catch (const std::out_of_range&) {
        throw Error(path.string() + ": manifest lacks a required entry; re-export the artifact");
    }
    return m;
}

}  // namespace canvit
