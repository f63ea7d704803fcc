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

static TensorSpec parse_tensor(const json& j) {
    return TensorSpec{j.at("name"), j.at("dtype"), j.at("role"), j.at("shape").get<std::vector<int64_t>>()};
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
        }
        for (const auto& [key, record] : j.at("files").items()) {
            const fs::path file = dir / record.at("path").get<std::string>();
            m.files[key] = file;
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
            if (offset + 4 * count > raw.size()) throw Error("initial_state.bin is too short; re-export the artifact");
            std::vector<float> values(count);
            std::memcpy(values.data(), raw.data() + offset, 4 * count);
            parts[p.at("name")] = std::move(values);
        }
        const auto& registers = parts.at("canvas_registers");
        const auto& patch = parts.at("canvas_patch");
        const auto& cls = parts.at("recurrent_cls");
        const size_t dc = patch.size(), tokens = registers.size() / dc + size_t(m.canvas_grid) * m.canvas_grid;
        std::vector<float> canvas, rcls;
        for (int b = 0; b < m.batch; ++b) {
            canvas.insert(canvas.end(), registers.begin(), registers.end());
            for (int t = 0; t < m.canvas_grid * m.canvas_grid; ++t) canvas.insert(canvas.end(), patch.begin(), patch.end());
            rcls.insert(rcls.end(), cls.begin(), cls.end());
        }
        m.initial_state["canvas"] = std::move(canvas);
        m.initial_state["recurrent_cls"] = std::move(rcls);
        m.state_shapes["canvas"] = {m.batch, int64_t(tokens), int64_t(dc)};
        m.state_shapes["recurrent_cls"] = {m.batch, 1, int64_t(cls.size())};
    } catch (const json::exception& e) {
        throw Error(path.string() + ": malformed manifest (" + e.what() + "); re-export the artifact");
    } catch (const std::out_of_range&) {
        throw Error(path.string() + ": manifest lacks a required entry; re-export the artifact");
    }
    return m;
}

}  // namespace canvit
