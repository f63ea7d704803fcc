#define STB_IMAGE_IMPLEMENTATION
#define STB_IMAGE_RESIZE_IMPLEMENTATION
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb/stb_image.h>
#include <stb/stb_image_resize.h>
#include <stb/stb_image_write.h>

#include <algorithm>
#include <numeric>

#include <cmath>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "canvit/canvit.hpp"

namespace canvit {

void write_npy(const std::filesystem::path& path, const std::vector<float>& data, const std::vector<int64_t>& shape) {
    std::ostringstream dims;
    for (size_t i = 0; i < shape.size(); ++i) dims << shape[i] << (shape.size() == 1 || i + 1 < shape.size() ? "," : "");
    std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + dims.str() + "), }";
    header.append(64 - (10 + header.size() + 1) % 64, ' ');
    header += '\n';
    std::ofstream out(path, std::ios::binary);
    out.write("\x93NUMPY\x01\x00", 8);
    const uint16_t length = static_cast<uint16_t>(header.size());
    out.write(reinterpret_cast<const char*>(&length), 2);
    out << header;
    out.write(reinterpret_cast<const char*>(data.data()), std::streamsize(data.size() * 4));
    if (!out) throw Error(path.string() + ": cannot write; check the folder exists and is writable");
}

// The dimensions "3, 512, 512" of a .npy header: inside the first parentheses holding only digits, commas and spaces
// (as the regex \(([0-9, ]*)\) finds them; std::regex recursed once per character and overflowed the stack on a
// long header), or "" when there are none.
static std::string shape_text(const std::string& header) {
    for (size_t open = header.find('('); open != std::string::npos; open = header.find('(', open + 1)) {
        const size_t close = header.find_first_not_of("0123456789, ", open + 1);
        if (close != std::string::npos && header[close] == ')') return header.substr(open + 1, close - open - 1);
    }
    return "";
}

std::vector<float> read_npy(const std::filesystem::path& path, std::vector<int64_t>* shape) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw Error(path.string() + ": cannot be read; check the path");
    char magic[8];
    uint16_t length = 0;
    if (!in.read(magic, 8) || std::memcmp(magic, "\x93NUMPY\x01", 7) != 0 || !in.read(reinterpret_cast<char*>(&length), 2))
        throw Error(path.string() + ": not a .npy file (version 1)");
    std::string header(length, ' ');
    in.read(header.data(), length);
    if (header.find("'<f4'") == std::string::npos || header.find("'fortran_order': False") == std::string::npos)
        throw Error(path.string() + ": expected a C-ordered float32 .npy");
    std::stringstream dims(shape_text(header));
    size_t count = 1;  // saturating at SIZE_MAX: a shape larger than the file is refused below, before any allocation
    for (std::string d; std::getline(dims, d, ',');)
        if (d.find_first_not_of(' ') != std::string::npos) {
            try {
                shape->push_back(std::stoll(d));
            } catch (const std::out_of_range&) {
                throw Error(path.string() + ": a shape dimension (" + d + ") is out of range; expected a C-ordered float32 .npy");
            }
            const size_t n = size_t(shape->back());
            count = n != 0 && count > SIZE_MAX / n ? SIZE_MAX : count * n;
        }
    const std::streampos data_at = in.tellg();
    in.seekg(0, std::ios::end);
    const std::streamoff available = in ? std::streamoff(in.tellg() - data_at) : 0;
    in.seekg(data_at);
    if (!in || available < 0 || count > size_t(available) / 4) throw Error(path.string() + ": truncated");
    std::vector<float> data(count);
    if (!in.read(reinterpret_cast<char*>(data.data()), std::streamsize(4 * count))) throw Error(path.string() + ": truncated");
    return data;
}

std::vector<float> write_canvas_pca_png(const std::filesystem::path& path, const std::vector<float>& canvas,
                                        const Manifest& m, int scale) {
    const auto& shape = m.tensor("canvas").shape;
    const size_t dc = size_t(shape[2]), n = size_t(m.canvas_grid) * m.canvas_grid, r = size_t(m.num_canvas_registers);
    std::vector<double> x(n * dc), mean(dc, 0.0);
    for (size_t t = 0; t < n; ++t)
        for (size_t d = 0; d < dc; ++d) mean[d] += (x[t * dc + d] = canvas[(r + t) * dc + d]) / double(n);
    for (size_t t = 0; t < n; ++t)
        for (size_t d = 0; d < dc; ++d) x[t * dc + d] -= mean[d];
    std::vector<double> cov(dc * dc, 0.0);
    for (size_t t = 0; t < n; ++t)
        for (size_t i = 0; i < dc; ++i) {
            const double xi = x[t * dc + i];
            for (size_t j = 0; j < dc; ++j) cov[i * dc + j] += xi * x[t * dc + j];
        }
    std::vector<float> projection(n * 3);
    for (int k = 0; k < 3; ++k) {
        std::vector<double> v(dc, 1.0 / std::sqrt(double(dc))), w(dc);
        for (size_t i = 0; i < dc; ++i) v[i] += 1e-3 * double((i * 2654435761u) % 1000) / 1000.0;  // break symmetry
        double eigenvalue = 0.0;
        for (int iter = 0; iter < 300; ++iter) {
            for (size_t i = 0; i < dc; ++i) w[i] = std::inner_product(&cov[i * dc], &cov[i * dc] + dc, v.begin(), 0.0);
            const double norm = std::sqrt(std::inner_product(w.begin(), w.end(), w.begin(), 0.0));
            if (norm == 0.0) break;
            for (size_t i = 0; i < dc; ++i) v[i] = w[i] / norm;
            eigenvalue = norm;
        }
        for (size_t i = 0; i < dc; ++i)  // deflate: C -= lambda v v^T
            for (size_t j = 0; j < dc; ++j) cov[i * dc + j] -= eigenvalue * v[i] * v[j];
        for (size_t t = 0; t < n; ++t)
            projection[t * 3 + k] = float(std::inner_product(&x[t * dc], &x[t * dc] + dc, v.begin(), 0.0));
    }
    const int g = m.canvas_grid, side = g * scale;
    std::vector<unsigned char> rgb(size_t(side) * side * 3);
    for (int k = 0; k < 3; ++k) {
        float lo = projection[k], hi = projection[k];
        for (size_t t = 0; t < n; ++t) lo = std::min(lo, projection[t * 3 + k]), hi = std::max(hi, projection[t * 3 + k]);
        for (int y = 0; y < side; ++y)
            for (int xx = 0; xx < side; ++xx) {
                const float p = projection[(size_t(y / scale) * g + xx / scale) * 3 + k];
                rgb[(size_t(y) * side + xx) * 3 + k] = static_cast<unsigned char>(hi > lo ? 255.0f * (p - lo) / (hi - lo) : 0.0f);
            }
    }
    if (!stbi_write_png(path.string().c_str(), side, side, 3, rgb.data(), side * 3))
        throw Error(path.string() + ": cannot write the PNG");
    return projection;
}

RgbImage read_image(const std::filesystem::path& path) {
    int w = 0, h = 0, c = 0;
    unsigned char* pixels = stbi_load(path.string().c_str(), &w, &h, &c, 3);
    if (!pixels) throw Error(path.string() + ": cannot read the image (" + stbi_failure_reason() + "); pass a PNG or JPEG file");
    RgbImage image{w, h, std::vector<unsigned char>(pixels, pixels + size_t(w) * h * 3)};
    stbi_image_free(pixels);
    return image;
}

// [B, ...]: `one` scene repeated for every scene of the batch.
static std::vector<float> repeat_batch(const std::vector<float>& one, int batch) {
    std::vector<float> scenes;
    scenes.reserve(one.size() * size_t(batch));
    for (int b = 0; b < batch; ++b) scenes.insert(scenes.end(), one.begin(), one.end());
    return scenes;
}

std::vector<float> preprocess_rgb(const RgbImage& image, const Manifest& m) {
    const int S = m.scene_px, w = image.width, h = image.height;
    if (w < 1 || h < 1 || image.pixels.size() != size_t(w) * h * 3) throw Error("empty or malformed RGB image");
    // Resizing the short side to S makes the long side S x the aspect ratio: a 100000 x 1 image would ask for
    // gigabytes. canvit_runtime.preprocess.MAX_ASPECT, the same cap.
    if (std::max(w, h) > kMaxAspect * std::min(w, h))
        throw Error(std::to_string(w) + " x " + std::to_string(h) + " px is more than " + std::to_string(kMaxAspect) +
                    ":1; crop it to the scene first");
    // Short side to S (canvit_core.preprocess._resized_short_side: long side int(S * long / short)), then a
    // centered S x S crop (_center_crop: round((H - S) / 2)).
    const bool wide = w > h;
    const int rw = wide ? int(double(S) * w / h) : S, rh = wide ? S : int(double(S) * h / w);
    const unsigned char* resized = image.pixels.data();
    std::vector<unsigned char> buffer;
    if (rw != w || rh != h) {
        buffer.resize(size_t(rw) * rh * 3);
        stbir_resize_uint8_generic(image.pixels.data(), w, h, 0, buffer.data(), rw, rh, 0, 3, STBIR_ALPHA_CHANNEL_NONE, 0,
                                   STBIR_EDGE_CLAMP, STBIR_FILTER_TRIANGLE, STBIR_COLORSPACE_LINEAR, nullptr);
        resized = buffer.data();
    }
    const int top = int(std::nearbyint((rh - S) / 2.0)), left = int(std::nearbyint((rw - S) / 2.0));  // half to even, as Python's round
    std::vector<float> one(size_t(3) * S * S);
    for (int ch = 0; ch < 3; ++ch)
        for (int y = 0; y < S; ++y)
            for (int x = 0; x < S; ++x)
                one[(size_t(ch) * S + y) * S + x] =
                    (resized[(size_t(top + y) * rw + left + x) * 3 + ch] / 255.0f - m.mean[ch]) / m.std[ch];
    return repeat_batch(one, m.batch);
}

std::vector<float> load_scene(const std::filesystem::path& path, const Manifest& m) {
    const size_t S = size_t(m.scene_px), one = 3 * S * S;
    if (path.extension() != ".npy") return preprocess_rgb(read_image(path), m);
    std::vector<int64_t> shape;
    std::vector<float> scene = read_npy(path, &shape);
    if (scene.size() == one * m.batch) return scene;
    if (scene.size() != one)
        throw Error(path.string() + ": a scene .npy must hold [3, " + std::to_string(S) + ", " + std::to_string(S) +
                    "] or [" + std::to_string(m.batch) + ", 3, " + std::to_string(S) + ", " + std::to_string(S) + "] float32, got " +
                    shape_str(shape));
    return repeat_batch(scene, m.batch);
}

void write_tensor(const std::filesystem::path& path, const std::vector<float>& data, const std::vector<int64_t>& shape,
                  const std::string& name) {
    if (path.extension() == ".npy") {
        write_npy(path, data, shape);
    } else {
        std::ofstream out(path, std::ios::binary);
        out.write(reinterpret_cast<const char*>(data.data()), std::streamsize(data.size() * 4));
        if (!out) throw Error(path.string() + ": cannot write; check the folder exists and is writable");
        nlohmann::json header{{"name", name}, {"dtype", "float32"}, {"byte_order", "little"}, {"shape", shape},
                              {"bytes", data.size() * 4}};
        std::ofstream(path.string() + ".json") << header.dump(1) << "\n";
    }
}

}  // namespace canvit
