// Pictures of a rollout, as canvit_runtime/pictures.py draws them (same layout, colours and blending): the scene with
// every glimpse's box numbered in visiting order, the segmentation blended on it with a legend of the classes
// present, the entropy map with its scale. Text: OpenCV's Hershey font (cv::putText) when OpenCV is compiled in,
// otherwise stb_easy_font's bitmap font (libstb-dev); either way legend.txt lists the legend's classes.
#include <stb/stb_easy_font.h>
#include <stb/stb_image_write.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <numeric>

#include "canvit/canvit.hpp"

#ifdef CANVIT_WITH_OPENCV
#include <opencv2/imgproc.hpp>
#endif

namespace canvit {
namespace {

using Rgb = std::array<unsigned char, 3>;
using Box = std::array<int, 4>;  // left, top, right, bottom px, inclusive

// Box colour by scale: full scene white, quadrants yellow, sixteenths cyan, finer magenta (pictures.BOX_COLOURS).
const Rgb kBoxColours[] = {{255, 255, 255}, {255, 220, 0}, {0, 230, 255}, {255, 80, 200}};
// The entropy scale from low to high: the plasma colour map's ends and quartiles (pictures.ENTROPY_STOPS).
const float kEntropyStops[5][3] = {{13, 8, 135}, {126, 3, 168}, {204, 71, 120}, {248, 149, 64}, {240, 249, 33}};
const Rgb kPanel{24, 24, 24}, kText{235, 235, 235};
constexpr int kLegendWidth = 230, kLegendRows = 14;  // px, rows (pictures.LEGEND_WIDTH, LEGEND_ROWS)
constexpr float kAlpha = 0.55f;                      // segmentation colour over the scene

unsigned char to_byte(float value) { return static_cast<unsigned char>(std::clamp(value + 0.5f, 0.0f, 255.0f)); }

void fill(RgbImage& image, int x0, int y0, int x1, int y1, const Rgb& colour) {  // inclusive corners, clipped
    for (int y = std::max(y0, 0); y <= std::min(y1, image.height - 1); ++y)
        for (int x = std::max(x0, 0); x <= std::min(x1, image.width - 1); ++x)
            std::copy(colour.begin(), colour.end(), &image.pixels[(size_t(y) * image.width + x) * 3]);
}

RgbImage blank(int width, int height, const Rgb& colour) {
    RgbImage image{width, height, std::vector<unsigned char>(size_t(width) * height * 3)};
    fill(image, 0, 0, width - 1, height - 1, colour);
    return image;
}

void paste(RgbImage& into, const RgbImage& from, int x, int y) {
    for (int row = 0; row < from.height && y + row < into.height; ++row)
        std::copy_n(&from.pixels[size_t(row) * from.width * 3], size_t(std::min(from.width, into.width - x)) * 3,
                    &into.pixels[(size_t(y + row) * into.width + x) * 3]);
}

// Text of height ~px pixels with its top-left corner at (x, y); returns its width in px. `outline` px of black
// around the glyphs (the box numbers). Hershey simplex (OpenCV) or stb_easy_font (7 px glyphs, scaled up).
#ifdef CANVIT_WITH_OPENCV
int text_width(const std::string& text, int px, bool = false) {
    int baseline = 0;
    return cv::getTextSize(text, cv::FONT_HERSHEY_SIMPLEX, px / 22.0, 1, &baseline).width;
}
void draw_text(RgbImage& image, int x, int y, const std::string& text, int px, const Rgb& colour, int outline = 0) {
    cv::Mat mat(image.height, image.width, CV_8UC3, image.pixels.data());  // RGB order: the Scalars below are RGB
    const double scale = px / 22.0;
    const cv::Point origin(x, y + int(std::lround(px * 0.8)));  // putText's origin is the baseline's left end
    if (outline > 0) cv::putText(mat, text, origin, cv::FONT_HERSHEY_SIMPLEX, scale, cv::Scalar(0, 0, 0), 1 + 2 * outline, cv::LINE_AA);
    cv::putText(mat, text, origin, cv::FONT_HERSHEY_SIMPLEX, scale, cv::Scalar(colour[0], colour[1], colour[2]), 1, cv::LINE_AA);
}
#else
// stb_easy_font's glyphs are 7 px high, about 6 px apart: the outlined box numbers are scaled to ~px, the panel
// text stays at 7 px (13-14 px Hershey text would not fit the 230 px legend at twice the size).
int glyph_scale(int px, bool outlined) { return outlined ? std::max(1, int(std::lround(px / 7.0))) : std::max(1, px / 12); }
int text_width(const std::string& text, int px, bool outlined = false) {
    std::string copy = text;
    return stb_easy_font_width(copy.data()) * glyph_scale(px, outlined);
}
void draw_text(RgbImage& image, int x, int y, const std::string& text, int px, const Rgb& colour, int outline = 0) {
    std::string copy = text;
    std::vector<char> quads(copy.size() * 1024 + 64);  // 64 bytes a quad, at most 11 quads a character
    const int n = stb_easy_font_print(0, 0, copy.data(), nullptr, quads.data(), int(quads.size()));
    const int k = glyph_scale(px, outline > 0), grow = outline > 0 ? std::max(1, k / 2) : 0;
    for (int pass = outline > 0 ? 0 : 1; pass < 2; ++pass)  // the black outline, then the glyphs
        for (int q = 0; q < n; ++q) {  // 4 vertices of 16 bytes (x, y, z float, RGBA), axis-aligned
            const float* a = reinterpret_cast<const float*>(&quads[size_t(q) * 64]);
            const float* c = reinterpret_cast<const float*>(&quads[size_t(q) * 64 + 32]);
            const int g = pass == 0 ? grow : 0;
            fill(image, x + int(a[0]) * k - g, y + int(a[1]) * k - g, x + int(c[0]) * k - 1 + g, y + int(c[1]) * k - 1 + g,
                 pass == 0 ? Rgb{0, 0, 0} : colour);
        }
}
#endif

// A viewpoint (row, col, s) as the box of side s * S px centred at ((col + 1) / 2 * S, (row + 1) / 2 * S).
Box viewpoint_box(float row, float col, float scale, int size) {
    const double half = double(scale) * size / 2, x = (col + 1.0) / 2 * size, y = (row + 1.0) / 2 * size;
    return {int(std::lround(x - half)), int(std::lround(y - half)), int(std::lround(x + half)), int(std::lround(y + half))};
}

const Rgb& box_colour(float scale) {
    const int level = int(std::nearbyint(-std::log2(double(scale))));  // half to even, as Python's round
    return kBoxColours[std::clamp(level, 0, 3)];
}

std::vector<std::string> class_names_or_numbers(const Readout& r, int classes) {
    if (!r.class_names.empty()) return r.class_names;
    std::vector<std::string> names;
    for (int c = 0; c < classes; ++c) names.push_back("class " + std::to_string(c));
    return names;
}

std::vector<std::array<unsigned char, 3>> palette_or_default(const Readout& r, int classes) {
    if (!r.palette.empty()) return r.palette;
    std::vector<std::array<unsigned char, 3>> palette;  // pictures.draw_rollout's fallback
    for (int c = 0; c < classes; ++c)
        palette.push_back({static_cast<unsigned char>((37 * c) % 256), static_cast<unsigned char>((91 * c) % 256),
                           static_cast<unsigned char>((151 * c) % 256)});
    return palette;
}

}  // namespace

RgbImage scene_picture(const std::vector<float>& scene, const Manifest& m, int b) {
    const int S = m.scene_px;
    RgbImage image{S, S, std::vector<unsigned char>(size_t(S) * S * 3)};
    const float* one = scene.data() + size_t(b) * 3 * S * S;
    for (int c = 0; c < 3; ++c)
        for (size_t i = 0; i < size_t(S) * S; ++i)
            image.pixels[i * 3 + c] = to_byte((one[size_t(c) * S * S + i] * m.std[c] + m.mean[c]) * 255.0f);
    return image;
}

void draw_viewpoints(RgbImage& image, const std::vector<std::array<float, 3>>& viewpoints) {
    std::vector<Box> boxes;
    for (const auto& [row, col, scale] : viewpoints) {
        const Box b = viewpoint_box(row, col, scale, image.width);
        boxes.push_back(b);
        const int x0 = b[0] + 1, y0 = b[1] + 1, x1 = b[2] - 2, y1 = b[3] - 2;  // a 2 px outline inside the box
        const Rgb& colour = box_colour(scale);
        fill(image, x0, y0, x1, y0 + 1, colour), fill(image, x0, y1 - 1, x1, y1, colour);
        fill(image, x0, y0, x0 + 1, y1, colour), fill(image, x1 - 1, y0, x1, y1, colour);
    }
    const int px = std::max(10, image.width / 40);
    for (size_t t = 0; t < boxes.size(); ++t) {  // the numbers on top of every box, centred
        const std::string label = std::to_string(t + 1);
        const int x = (boxes[t][0] + boxes[t][2]) / 2 - text_width(label, px, true) / 2, y = (boxes[t][1] + boxes[t][3]) / 2 - px / 2;
        draw_text(image, x, y, label, px, box_colour(viewpoints[t][2]), 2);
    }
}

std::vector<int> argmax_map(const std::vector<float>& logits, int classes, int cells, int b) {
    std::vector<int> labels(size_t(cells), 0);
    const float* one = logits.data() + size_t(b) * classes * cells;
    for (int i = 0; i < cells; ++i)
        for (int c = 1; c < classes; ++c)  // strictly greater: the first class on ties, as numpy's argmax
            if (one[size_t(c) * cells + i] > one[size_t(labels[i]) * cells + i]) labels[i] = c;
    return labels;
}

std::vector<LegendEntry> legend_entries(const std::vector<int>& labels, int classes) {
    std::vector<int> counts(size_t(classes), 0);
    for (int label : labels) ++counts[size_t(label)];
    std::vector<LegendEntry> present;
    for (int c = 0; c < classes; ++c)
        if (counts[size_t(c)] > 0) present.push_back({c, counts[size_t(c)], 100.0 * counts[size_t(c)] / double(labels.size())});
    std::stable_sort(present.begin(), present.end(), [](const auto& a, const auto& b) { return a.cells > b.cells; });
    return present;
}

// The label map [G*G] in palette colours over the S x S image: 0.45 image + 0.55 colour, nearest upsampling (pixel
// y lies in cell row min(y * G / S, G - 1)).
static void blend_labels(RgbImage& image, const std::vector<int>& labels, int grid,
                         const std::vector<std::array<unsigned char, 3>>& palette) {
    const int S = image.width;
    for (int y = 0; y < S; ++y)
        for (int x = 0; x < S; ++x) {
            const int cell = std::min(y * grid / S, grid - 1) * grid + std::min(x * grid / S, grid - 1);
            unsigned char* p = &image.pixels[(size_t(y) * S + x) * 3];
            for (int c = 0; c < 3; ++c) p[c] = to_byte((1.0f - kAlpha) * p[c] + kAlpha * palette[size_t(labels[cell])][c]);
        }
}

RgbImage segmentation_picture(const RgbImage& scene, const std::vector<int>& labels, int grid,
                              const std::vector<std::string>& names, const std::vector<std::array<unsigned char, 3>>& palette,
                              const std::vector<std::array<float, 3>>& viewpoints) {
    const int S = scene.width;
    RgbImage blended = scene;
    blend_labels(blended, labels, grid, palette);
    draw_viewpoints(blended, viewpoints);
    RgbImage out = blank(S + kLegendWidth, S, kPanel);
    paste(out, blended, 0, 0);
    const auto present = legend_entries(labels, int(names.size()));
    draw_text(out, S + 10, 8, "classes present (" + std::to_string(present.size()) + ")", 14, {255, 255, 255});
    const int row_height = std::min(24, (S - 40) / kLegendRows);
    for (size_t i = 0; i < present.size() && i < size_t(kLegendRows); ++i) {
        const int y = 34 + int(i) * row_height;
        fill(out, S + 10, y, S + 28, y + row_height - 6, palette[size_t(present[i].label)]);
        char share[16];
        std::snprintf(share, sizeof share, " %.0f%%", present[i].share);
        const std::string text = names[size_t(present[i].label)].substr(0, 20) + share;
        const int room = kLegendWidth - 36 - 4, wide = text_width(text, 14);  // a long name: smaller, not cut
        draw_text(out, S + 36, y, text, wide > room ? std::max(8, 14 * room / wide) : 14, kText);
    }
    if (present.size() > size_t(kLegendRows))
        draw_text(out, S + 10, 34 + kLegendRows * row_height, "+ " + std::to_string(present.size() - kLegendRows) + " more", 14,
                  {180, 180, 180});
    return out;
}

RgbImage entropy_picture(const std::vector<float>& entropy, int grid, int classes, int size,
                         const std::vector<std::array<float, 3>>& viewpoints) {
    const auto ramp = [](float x) {  // x in [0, 4]: between two stops, linearly
        const int low = std::min(int(std::floor(x)), 3);
        const float frac = x - float(low);
        std::array<float, 3> rgb{};
        for (int c = 0; c < 3; ++c) rgb[c] = (1 - frac) * kEntropyStops[low][c] + frac * kEntropyStops[low + 1][c];
        return rgb;
    };
    const float top = float(std::log(double(classes)));  // ln C nats: the uniform distribution over the classes
    RgbImage map{size, size, std::vector<unsigned char>(size_t(size) * size * 3)};
    for (int y = 0; y < size; ++y)
        for (int x = 0; x < size; ++x) {
            const float e = entropy[size_t(std::min(y * grid / size, grid - 1)) * grid + std::min(x * grid / size, grid - 1)];
            const auto rgb = ramp(std::clamp(e / top, 0.0f, 1.0f) * 4.0f);
            for (int c = 0; c < 3; ++c) map.pixels[(size_t(y) * size + x) * 3 + c] = to_byte(rgb[c]);
        }
    draw_viewpoints(map, viewpoints);
    RgbImage out = blank(size, size + 44, kPanel);
    paste(out, map, 0, 0);
    const int bar = size - 20;  // the scale: 0 .. ln C from left to right, 10 px high
    for (int i = 0; i < bar; ++i) {
        const auto rgb = ramp(bar > 1 ? 4.0f * float(i) / float(bar - 1) : 0.0f);
        fill(out, 10 + i, size + 6, 10 + i, size + 15, {static_cast<unsigned char>(rgb[0]), static_cast<unsigned char>(rgb[1]),
                                                        static_cast<unsigned char>(rgb[2])});
    }
    draw_text(out, 10, size + 20, "0 nats (certain)", 13, kText);
    char label[64];
    std::snprintf(label, sizeof label, "ln %d = %.2f nats (uniform)", classes, double(top));
    draw_text(out, size - 10 - text_width(label, 13), size + 20, label, 13, kText);
    return out;
}

void write_png(const std::filesystem::path& path, const RgbImage& image) {
    if (!stbi_write_png(path.string().c_str(), image.width, image.height, 3, image.pixels.data(), image.width * 3))
        throw Error(path.string() + ": cannot write the PNG; check the folder is writable");
}

std::vector<std::pair<std::string, double>> top_classes(const std::vector<float>& logits, int classes,
                                                        const std::vector<std::string>& names, int k, int b) {
    const size_t n = size_t(classes);
    const float* one = logits.data() + size_t(b) * n;
    const double top = *std::max_element(one, one + n);
    std::vector<double> p(n);
    for (size_t i = 0; i < n; ++i) p[i] = std::exp(double(one[i]) - top);
    const double sum = std::accumulate(p.begin(), p.end(), 0.0);
    std::vector<size_t> order(n);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t c) { return p[a] > p[c]; });
    std::vector<std::pair<std::string, double>> out;
    for (size_t i = 0; i < std::min(n, size_t(k)); ++i)
        out.emplace_back(names.empty() ? "class " + std::to_string(order[i]) : names[order[i]], p[order[i]] / sum);
    return out;
}

// legend.txt: the legend's classes, one per line: index, name, canvas cells, share %, RGB (tab-separated).
static void write_legend(const std::filesystem::path& path, const std::vector<int>& labels, const std::vector<std::string>& names,
                         const std::vector<std::array<unsigned char, 3>>& palette, int grid) {
    std::ofstream legend(path);
    legend << "# segmentation.png's legend: the classes of the final argmax map (seg_logits, scene 0), largest first\n"
           << "# class\tname\tcells (of " << grid * grid << ")\tshare %\tRGB\n";
    for (const auto& entry : legend_entries(labels, int(names.size()))) {
        const auto& rgb = palette[size_t(entry.label)];
        char share[16];
        std::snprintf(share, sizeof share, "%.1f", entry.share);
        legend << entry.label << "\t" << names[size_t(entry.label)] << "\t" << entry.cells << "\t" << share << "\t"
               << int(rgb[0]) << "," << int(rgb[1]) << "," << int(rgb[2]) << "\n";
    }
    if (!legend) throw Error(path.string() + ": cannot write; check the folder is writable");
}

std::vector<std::filesystem::path> write_pictures(const std::filesystem::path& dir, const Manifest& m,
                                                  const std::vector<float>& scene, const std::vector<Viewpoints>& viewpoints,
                                                  const std::map<std::string, std::vector<float>>& readouts) {
    std::error_code error;
    std::filesystem::create_directories(dir, error);
    if (!std::filesystem::is_directory(dir)) throw Error("--pictures " + dir.string() + ": cannot create this folder; pass a writable folder");
    std::vector<std::array<float, 3>> boxes;  // scene 0's (row, col, scale), in visiting order
    for (const auto& v : viewpoints) boxes.push_back({v.centers[0], v.centers[1], v.scales[0]});
    const RgbImage image = scene_picture(scene, m, 0);
    RgbImage with_boxes = image;
    draw_viewpoints(with_boxes, boxes);
    std::vector<std::filesystem::path> written{dir / "viewpoints.png"};
    write_png(written.back(), with_boxes);
    const Readout* segmentation = m.readout("segmentation");
    if (!segmentation || !readouts.count("seg_logits") || !readouts.count("seg_entropy")) return written;
    const int G = m.canvas_grid, classes = int(m.tensor("seg_logits").shape[1]);
    const auto labels = argmax_map(readouts.at("seg_logits"), classes, G * G, 0);
    const auto names = class_names_or_numbers(*segmentation, classes);
    const auto palette = palette_or_default(*segmentation, classes);
    written.push_back(dir / "segmentation.png");
    write_png(written.back(), segmentation_picture(image, labels, G, names, palette, boxes));
    written.push_back(dir / "entropy.png");
    const auto& entropy = readouts.at("seg_entropy");
    write_png(written.back(), entropy_picture({entropy.begin(), entropy.begin() + G * G}, G, classes, m.scene_px, boxes));
    written.push_back(dir / "legend.txt");
    write_legend(written.back(), labels, names, palette, G);
    return written;
}

RgbImage overlay_frame(const Manifest& m, const std::vector<float>& scene, const std::vector<float>& seg_logits,
                       const std::vector<std::array<float, 3>>& viewpoints) {
    RgbImage frame = scene_picture(scene, m, 0);
    const Readout* segmentation = m.readout("segmentation");
    if (segmentation && !seg_logits.empty()) {
        const int G = m.canvas_grid, classes = int(m.tensor("seg_logits").shape[1]);
        blend_labels(frame, argmax_map(seg_logits, classes, G * G, 0), G, palette_or_default(*segmentation, classes));
    }
    draw_viewpoints(frame, viewpoints);
    return frame;
}

bool pictures_use_opencv_text() {
#ifdef CANVIT_WITH_OPENCV
    return true;
#else
    return false;
#endif
}

}  // namespace canvit
