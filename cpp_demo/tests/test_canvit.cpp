// Unit tests of the canvit library (GoogleTest). The step itself is checked against the Python runtime by
// tests/test_cpp_demo.py; these cover what the demo does around it.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <numeric>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <set>

#include "../src/manifest_schema.hpp"
#include "canvit/canvit.hpp"

#ifdef CANVIT_WITH_OPENCV
#include <opencv2/imgcodecs.hpp>
#include <opencv2/videoio.hpp>
#endif

namespace fs = std::filesystem;
using namespace canvit;

namespace {

fs::path temp_dir(const std::string& name) {
    const fs::path dir = fs::temp_directory_path() / ("canvit_tests_" + name + "_" + std::to_string(std::random_device{}()));
    fs::create_directories(dir);
    return dir;
}

void write_text(const fs::path& path, const std::string& text) { std::ofstream(path) << text; }

std::string error_of(const std::function<void()>& f) {
    try {
        f();
    } catch (const Error& e) {
        return e.what();
    }
    return "(no Error thrown)";
}

Viewpoints one(float row, float col, float scale) { return Viewpoints{{row, col}, {scale}}; }

Manifest scene_manifest(int scene_px, int batch = 1) {
    Manifest m;
    m.scene_px = scene_px, m.batch = batch;
    m.mean = {0.485f, 0.456f, 0.406f}, m.std = {0.229f, 0.224f, 0.225f};
    return m;
}

// Normalized value of an 8-bit level in channel c.
float normalized(const Manifest& m, int c, int level) { return (level / 255.0f - m.mean[c]) / m.std[c]; }

float scene_at(const std::vector<float>& scene, int S, int c, int y, int x) { return scene[(size_t(c) * S + y) * S + x]; }

}  // namespace

TEST(Viewpoints, RuleOfAppendixC1) {
    EXPECT_NO_THROW(check_viewpoints(one(0, 0, 1), 1));
    EXPECT_NO_THROW(check_viewpoints(one(0.5f, -0.5f, 0.5f), 1));
    EXPECT_NO_THROW(check_viewpoints(one(0.95f, 0.95f, 0.05f), 1));
    EXPECT_NE(error_of([] { check_viewpoints(one(0.6f, 0, 0.5f), 1); }).find("leaves the scene"), std::string::npos);
    EXPECT_NE(error_of([] { check_viewpoints(one(0, 0, 0), 1); }).find("outside (0, 1]"), std::string::npos);
    EXPECT_NE(error_of([] { check_viewpoints(one(0, 0, 1.5f), 1); }).find("outside (0, 1]"), std::string::npos);
    EXPECT_NE(error_of([] { check_viewpoints(one(NAN, 0, 0.5f), 1); }).find("not finite"), std::string::npos);
    // The second scene of a batch is checked too.
    EXPECT_NE(error_of([] { check_viewpoints(Viewpoints{{0, 0, 0.9f, 0}, {1, 0.5f}}, 2); }).find("viewpoint 1"), std::string::npos);
}

TEST(Policies, CoarseToFineTilesEveryLevelOnce) {
    const int batch = 2;
    const auto v = policy_c2f(batch, 21, 7);
    ASSERT_EQ(v.size(), 21u);
    for (int b = 0; b < batch; ++b) {
        EXPECT_EQ(v[0].scales[b], 1.0f);
        EXPECT_EQ(v[0].centers[2 * b], 0.0f);
        std::set<std::pair<float, float>> quadrants, sixteenths;
        for (int t = 1; t < 5; ++t) {
            EXPECT_EQ(v[t].scales[b], 0.5f);
            quadrants.insert({v[t].centers[2 * b], v[t].centers[2 * b + 1]});
        }
        for (int t = 5; t < 21; ++t) {
            EXPECT_EQ(v[t].scales[b], 0.25f);
            sixteenths.insert({v[t].centers[2 * b], v[t].centers[2 * b + 1]});
        }
        EXPECT_EQ(quadrants, (std::set<std::pair<float, float>>{{-0.5f, -0.5f}, {-0.5f, 0.5f}, {0.5f, -0.5f}, {0.5f, 0.5f}}));
        std::set<std::pair<float, float>> grid;
        for (float r : {-0.75f, -0.25f, 0.25f, 0.75f})
            for (float c : {-0.75f, -0.25f, 0.25f, 0.75f}) grid.insert({r, c});
        EXPECT_EQ(sixteenths, grid);
    }
    // Orders are random per seed (16! orders of the last level: two seeds agreeing is a bug).
    const auto w = policy_c2f(batch, 21, 8);
    bool differs = false;
    for (int t = 5; t < 21; ++t) differs |= v[t].centers != w[t].centers;
    EXPECT_TRUE(differs);
    EXPECT_EQ(policy_c2f(batch, 21, 7)[20].centers, v[20].centers);  // and reproducible
}

TEST(Policies, RandomViewpointsFollowPretrainingDistribution) {
    // s = 1 - h, h = 0.95 sqrt(U): p(h) = 2h / 0.95^2 on [0, 0.95], so E[s] = 1 - (2/3) 0.95 = 0.36667; the center
    // is uniform in [-h, h]^2, so E[|row| / h] = 1/2.
    const int n = 20000;
    const auto v = policy_fiid(1, n + 1, 3);
    EXPECT_EQ(v[0].scales[0], 1.0f);
    double sum_s = 0, sum_ratio = 0;
    float lowest = 1;
    for (int t = 1; t <= n; ++t) {
        ASSERT_NO_THROW(check_viewpoints(v[t], 1)) << "glimpse " << t;
        const float s = v[t].scales[0];
        lowest = std::min(lowest, s);
        sum_s += s;
        if (s < 0.99f) sum_ratio += std::fabs(v[t].centers[0]) / (1.0 - s);
    }
    EXPECT_GE(lowest, kMinTrainedScale);
    EXPECT_LT(lowest, 0.06f);  // 20000 draws reach the smallest scales
    EXPECT_NEAR(sum_s / n, 1.0 - 2.0 / 3.0 * 0.95, 0.006);
    EXPECT_NEAR(sum_ratio / n, 0.5, 0.01);
    const auto r = policy_riid(1, 3, 3);
    EXPECT_LT(r[0].scales[0], 1.0f);                                  // R-IID: no full-scene first glimpse
    EXPECT_EQ(policy_fiid(1, 5, 3)[4].centers, v[4].centers);         // seeded
    EXPECT_NE(policy_fiid(1, 5, 4)[4].centers, v[4].centers);
}

TEST(Policies, NamesAndFiles) {
    EXPECT_EQ(make_policy("full", 1, 3, 0).size(), 3u);
    EXPECT_NE(error_of([] { make_policy("zigzag", 1, 3, 0); }).find("unknown policy 'zigzag'"), std::string::npos);
    EXPECT_NE(error_of([] { make_policy("c2f", 1, 0, 0); }).find("--glimpses must be >= 1"), std::string::npos);
    const fs::path dir = temp_dir("policy");
    write_text(dir / "bare.json", "[[0, 0, 1], [0.5, -0.5, 0.5]]");
    const auto bare = make_policy((dir / "bare.json").string(), 2, 2, 0);  // one triple for the whole batch
    EXPECT_EQ(bare[1].centers, (std::vector<float>{0.5f, -0.5f, 0.5f, -0.5f}));
    EXPECT_EQ(bare[1].scales, (std::vector<float>{0.5f, 0.5f}));
    EXPECT_NE(error_of([&] { make_policy((dir / "bare.json").string(), 1, 3, 0); }).find("holds 2 viewpoints, 3 glimpses"),
              std::string::npos);
    write_text(dir / "batch.json", R"({"viewpoints": [[[0, 0, 1], [0.25, 0.25, 0.75]]]})");
    const auto batch = viewpoints_from_json(dir / "batch.json", 2);
    EXPECT_EQ(batch[0].centers, (std::vector<float>{0, 0, 0.25f, 0.25f}));
    EXPECT_EQ(batch[0].scales, (std::vector<float>{1, 0.75f}));
    write_text(dir / "malformed.json", "[[0, 0, 1], [0.5, 0.5]]");
    EXPECT_NE(error_of([&] { viewpoints_from_json(dir / "malformed.json", 1); }).find("glimpse 1: expected [row, col, scale]"),
              std::string::npos);
    write_text(dir / "invalid.json", "[[0, 0, 1], [0.9, 0, 0.5]]");
    EXPECT_NE(error_of([&] { viewpoints_from_json(dir / "invalid.json", 1); }).find("glimpse 1"), std::string::npos);
    write_text(dir / "broken.json", "[[0, 0,");
    EXPECT_NE(error_of([&] { viewpoints_from_json(dir / "broken.json", 1); }).find("not valid JSON"), std::string::npos);
    write_text(dir / "other-key.json", R"({"glimpses": [[0, 0, 1]]})");  // no "viewpoints": refused as Python does
    EXPECT_NE(error_of([&] { viewpoints_from_json(dir / "other-key.json", 1); }).find("expected a non-empty list of viewpoints"),
              std::string::npos);
    fs::remove_all(dir);
}

// (row, col, scale) of scene b's viewpoint.
std::array<float, 3> triple(const Viewpoints& v, int b = 0) { return {v.centers[2 * b], v.centers[2 * b + 1], v.scales[b]}; }
using Triple = std::array<float, 3>;

// A G x G entropy map from its rows, top to bottom: [G*G].
std::vector<float> entropy_map(const std::vector<std::vector<float>>& rows) {
    std::vector<float> map;
    for (const auto& row : rows) map.insert(map.end(), row.begin(), row.end());
    return map;
}

TEST(EntropyGuidedC2F, TilesAreRowMajorAndCoverTheirCanvasCells) {
    const EntropyGuidedC2F eg(1, 21, 4);  // levels 0, 1, 2: 1 + 4 + 16 glimpses
    EXPECT_EQ(eg.cells(0, 0).size(), 16u);
    // Level 1 on a 4 x 4 canvas (cell centers -0.75, -0.25, 0.25, 0.75): each quadrant covers its 2 x 2 cells.
    EXPECT_EQ(eg.cells(1, 0), (std::vector<int>{0, 1, 4, 5}));
    EXPECT_EQ(eg.cells(1, 1), (std::vector<int>{2, 3, 6, 7}));
    EXPECT_EQ(eg.cells(1, 2), (std::vector<int>{8, 9, 12, 13}));
    EXPECT_EQ(eg.cells(1, 3), (std::vector<int>{10, 11, 14, 15}));
    for (int tile = 0; tile < 16; ++tile) EXPECT_EQ(eg.cells(2, tile), std::vector<int>{tile}) << tile;  // one cell each
    // Row-major, not C2F's Z-order: level 2's third tile is the top row's third, (-0.75, 0.25).
    const auto& t = eg.tiles(2)[2];
    EXPECT_EQ((Triple{t.row, t.col, t.scale}), (Triple{-0.75f, 0.25f, 0.25f}));
    EXPECT_EQ(eg.level_of(0), 0);
    EXPECT_EQ(eg.level_of(4), 1);
    EXPECT_EQ(eg.level_of(5), 2);
    EXPECT_EQ(eg.level_of(20), 2);
    // A 16 x 16 canvas: every level up to the cell size partitions the cells, each tile an equal block.
    const EntropyGuidedC2F fine(1, 85, 16);  // levels 0 .. 3
    for (int level = 1; level <= 3; ++level) {
        std::vector<int> seen;
        for (int tile = 0; tile < (1 << (2 * level)); ++tile) {
            const auto cells = fine.cells(level, tile);
            EXPECT_EQ(cells.size(), size_t(256 >> (2 * level))) << level << " " << tile;
            seen.insert(seen.end(), cells.begin(), cells.end());
        }
        std::sort(seen.begin(), seen.end());
        std::vector<int> all(256);
        std::iota(all.begin(), all.end(), 0);
        EXPECT_EQ(seen, all) << "level " << level;
    }
    // Tiles finer than the cells: on a 2 x 2 canvas (centers +-0.5), level 3's tiles (scale 1/8) cover no cell
    // center, and their mean is 0 (canvit_runtime divides by max(cells, 1)).
    const EntropyGuidedC2F coarse(1, 22, 2);
    EXPECT_TRUE(coarse.cells(3, 0).empty());
    EXPECT_EQ(coarse.tile_means(3, {1, 2, 3, 4}, 0)[0], 0.0f);
    EXPECT_EQ(coarse.tile_means(1, {1, 2, 3, 4}, 0), (std::vector<float>{1, 2, 3, 4}));
}

TEST(EntropyGuidedC2F, TileMeansRoundAsNumpysSum) {
    // 256 cells 1 + (i mod 97) / 100 (float32): numpy's pairwise float32 sum gives the mean 1.4376173 (bits
    // 0x3FB803D8), one ulp above the correctly rounded 1.4376172, and a plain running sum gives another; the C++
    // tile means round as numpy's, so near-tied tiles order as in canvit_runtime.
    std::vector<float> map(256);
    for (int i = 0; i < 256; ++i) map[size_t(i)] = 1.0f + float(i % 97) / 100.0f;
    const float mean = EntropyGuidedC2F(1, 1, 16).tile_means(0, map, 0)[0];
    EXPECT_EQ(mean, 1.4376173f);
    EXPECT_NE(mean, 1.4376172f);
}

TEST(EntropyGuidedC2F, HandMadeEntropyMap) {
    // Quadrant means TL 0, TR 1, BL 3, BR 2; inside each quadrant its cells tie.
    const std::vector<float> map = entropy_map({{0, 0, 1, 1}, {0, 0, 1, 1}, {3, 3, 2, 2}, {3, 3, 2, 2}});
    EntropyGuidedC2F eg(1, 21, 4);
    std::vector<Triple> got;
    for (int t = 0; t < 21; ++t) got.push_back(triple(eg.viewpoint(t, t == 0 ? std::vector<float>{} : map)));
    const float q = 0.5f, s = 0.25f;
    // Level 0: the scene. Level 1: quadrants by mean, highest first: BL (3), BR (2), TR (1), TL (0).
    const std::vector<Triple> level01{{0, 0, 1}, {q, -q, q}, {q, q, q}, {-q, q, q}, {-q, -q, q}};
    EXPECT_EQ(std::vector<Triple>(got.begin(), got.begin() + 5), level01);
    // Level 2 (visited reset): the 3s, then the 2s, 1s and 0s, each group in row-major order (ties: first index).
    std::vector<Triple> level2;
    for (int cell : {8, 9, 12, 13, 10, 11, 14, 15, 2, 3, 6, 7, 0, 1, 4, 5})
        level2.push_back({(2 * (cell / 4) + 1) * s - 1, (2 * (cell % 4) + 1) * s - 1, s});
    EXPECT_EQ(std::vector<Triple>(got.begin() + 5, got.end()), level2);
    EXPECT_EQ(eg.chosen()[1], std::vector<int>{2});  // the tile indices, per glimpse and scene
    EXPECT_EQ(eg.chosen()[5], std::vector<int>{8});
}

TEST(EntropyGuidedC2F, AdaptsToEachStepsEntropyAndTiesGoFirst) {
    const std::vector<float> flat(16, 1.0f);
    EntropyGuidedC2F eg(1, 21, 4);
    std::vector<Triple> got;
    for (int t = 0; t < 21; ++t) got.push_back(triple(eg.viewpoint(t, flat)));
    // All tie: row-major order, level by level.
    EXPECT_EQ(got[1], (Triple{-0.5f, -0.5f, 0.5f}));
    EXPECT_EQ(got[2], (Triple{-0.5f, 0.5f, 0.5f}));
    EXPECT_EQ(got[3], (Triple{0.5f, -0.5f, 0.5f}));
    EXPECT_EQ(got[7], (Triple{-0.75f, 0.25f, 0.25f}));  // Z-order would visit (-0.25, -0.75) third
    // The map changes between glimpses: each choice follows the latest one, among the tiles not yet visited.
    EntropyGuidedC2F live(1, 5, 4);
    live.viewpoint(0, {});
    EXPECT_EQ(triple(live.viewpoint(1, entropy_map({{0, 0, 0, 0}, {0, 0, 0, 0}, {0, 0, 9, 9}, {0, 0, 9, 9}}))), (Triple{0.5f, 0.5f, 0.5f}));
    EXPECT_EQ(triple(live.viewpoint(2, entropy_map({{0, 0, 0, 0}, {0, 0, 0, 0}, {0, 0, 9, 9}, {0, 0, 9, 9}}))), (Triple{-0.5f, -0.5f, 0.5f}));
    EXPECT_EQ(triple(live.viewpoint(3, entropy_map({{0, 0, 0, 0}, {0, 0, 0, 0}, {5, 0, 0, 0}, {0, 0, 0, 0}}))), (Triple{0.5f, -0.5f, 0.5f}));
    // A batch: each scene its own map, its own choice.
    EntropyGuidedC2F batch(2, 5, 4);
    batch.viewpoint(0, {});
    std::vector<float> two = entropy_map({{9, 9, 0, 0}, {9, 9, 0, 0}, {0, 0, 0, 0}, {0, 0, 0, 0}});
    const auto second = entropy_map({{0, 0, 0, 0}, {0, 0, 0, 0}, {0, 0, 0, 0}, {0, 0, 0, 7}});
    two.insert(two.end(), second.begin(), second.end());
    const Viewpoints v = batch.viewpoint(1, two);
    EXPECT_EQ(triple(v, 0), (Triple{-0.5f, -0.5f, 0.5f}));
    EXPECT_EQ(triple(v, 1), (Triple{0.5f, 0.5f, 0.5f}));
    EXPECT_NO_THROW(check_viewpoints(v, 2));
}

TEST(EntropyGuidedC2F, RefusesWhatItCannotRun) {
    EXPECT_NE(error_of([] { EntropyGuidedC2F(1, 21, 12); }).find("needs a power-of-two canvas grid"), std::string::npos);
    EXPECT_NE(error_of([] { EntropyGuidedC2F(1, 21, 12); }).find("re-export with --canvas 16, 32 or 64"), std::string::npos);
    EXPECT_NO_THROW(EntropyGuidedC2F(1, 21, 32));
    EntropyGuidedC2F eg(1, 5, 4);
    eg.viewpoint(0, {});
    EXPECT_NE(error_of([&] { eg.viewpoint(1, {}); }).find("needs the seg_entropy readout [1, 4, 4]"), std::string::npos);
    EXPECT_NE(error_of([] { make_policy("eg-c2f", 1, 3, 0); }).find("chooses each viewpoint from the step's seg_entropy"),
              std::string::npos);
}

TEST(Pictures, LabelsLegendAndTopClasses) {
    // logits [B=1, C=3, cells=4]: cell 0 class 2, cell 1 a tie of 0 and 1 (the first wins), cells 2, 3 class 1.
    const std::vector<float> logits{0, 5, 0, 0, 0, 5, 1, 1, 1, 0, 0, 0};
    EXPECT_EQ(argmax_map(logits, 3, 4, 0), (std::vector<int>{2, 0, 1, 1}));
    const auto legend = legend_entries({2, 0, 1, 1}, 3);  // by area, then the lower class on ties
    ASSERT_EQ(legend.size(), 3u);
    EXPECT_EQ(legend[0].label, 1);
    EXPECT_EQ(legend[0].cells, 2);
    EXPECT_DOUBLE_EQ(legend[0].share, 50.0);
    EXPECT_EQ(legend[1].label, 0);
    EXPECT_EQ(legend[2].label, 2);
    // Softmax of [0, ln 3, ln 2, ln 3] = [1, 3, 2, 3] / 9: classes 1 and 3 tie (the lower first), then 2.
    const std::vector<float> class_logits{0, std::log(3.0f), std::log(2.0f), std::log(3.0f)};
    const auto top = top_classes(class_logits, 4, {"a", "b", "c", "d"}, 3, 0);
    ASSERT_EQ(top.size(), 3u);
    EXPECT_EQ(top[0].first, "b");
    EXPECT_NEAR(top[0].second, 3.0 / 9, 1e-6);
    EXPECT_EQ(top[1].first, "d");
    EXPECT_EQ(top[2].first, "c");
    EXPECT_NEAR(top[2].second, 2.0 / 9, 1e-6);
    EXPECT_EQ(top_classes(class_logits, 4, {}, 1, 0)[0].first, "class 1");
}

TEST(Pictures, LayoutColoursAndBoxes) {
    const int S = 64, G = 4;
    const RgbImage grey{S, S, std::vector<unsigned char>(S * S * 3, 100)};
    const std::vector<std::array<unsigned char, 3>> palette{{200, 0, 0}, {0, 200, 0}};
    std::vector<int> labels(G * G, 0);
    labels[G * G - 1] = 1;  // the bottom-right cell
    const std::vector<Triple> boxes{{0, 0, 1}, {-0.5f, -0.5f, 0.5f}};
    const RgbImage seg = segmentation_picture(grey, labels, G, {"wall", "tree"}, palette, boxes);
    EXPECT_EQ(seg.width, S + 230);
    EXPECT_EQ(seg.height, S);
    const auto at = [](const RgbImage& image, int x, int y) {
        const unsigned char* p = &image.pixels[(size_t(y) * image.width + x) * 3];
        return std::array<int, 3>{p[0], p[1], p[2]};
    };
    EXPECT_EQ(at(seg, 40, 30), (std::array<int, 3>{155, 45, 45}));  // 0.45 * 100 + 0.55 * palette
    EXPECT_EQ(at(seg, 56, 56), (std::array<int, 3>{45, 155, 45}));
    EXPECT_EQ(at(seg, 1, 40), (std::array<int, 3>{255, 255, 255}));  // the scene's box: white, 2 px inside its edge
    EXPECT_EQ(at(seg, 3, 40), (std::array<int, 3>{155, 45, 45}));
    EXPECT_EQ(at(seg, 24, 2), (std::array<int, 3>{255, 220, 0}));  // the top-left quadrant's top edge: yellow
    EXPECT_EQ(at(seg, S + 100, S - 2), (std::array<int, 3>{24, 24, 24}));  // the legend panel
    const std::vector<float> entropy{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, std::log(150.0f)};
    const RgbImage map = entropy_picture(entropy, G, 150, S, {});
    EXPECT_EQ(map.width, S);
    EXPECT_EQ(map.height, S + 44);
    EXPECT_EQ(at(map, 20, 20), (std::array<int, 3>{13, 8, 135}));    // 0 nats: the ramp's low end
    EXPECT_EQ(at(map, 60, 60), (std::array<int, 3>{240, 249, 33}));  // ln C nats: its high end
    EXPECT_EQ(at(map, 10, S + 8), (std::array<int, 3>{13, 8, 135}));  // the scale bar, left to right
    const fs::path dir = temp_dir("pictures");
    write_png(dir / "seg.png", seg);
    EXPECT_EQ(read_image(dir / "seg.png").width, S + 230);
    EXPECT_NE(error_of([&] { write_png(dir / "missing" / "x.png", seg); }).find("cannot write the PNG"), std::string::npos);
    fs::remove_all(dir);
}

// Headers the .npy reader cannot hold end in one Error, before any allocation, and a long one is read. Before issue 15:
// 2^40 floats were allocated (std::bad_alloc; under ASan an abort), a shape of 2^64 + 4 floats wrapped around to 4 and
// was accepted with 16 bytes of data, std::stoll's out_of_range escaped, and std::regex overflowed the stack on the
// long header (canvit_fuzz_npy found that one).
TEST(Tensors, NpyReaderRefusesWhatItCannotHold) {
    const fs::path dir = temp_dir("npy");
    const auto npy = [&](const std::string& shape, const std::string& data = "") {
        const std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': " + shape + ", }\n";
        std::ofstream out(dir / "x.npy", std::ios::binary);
        out << "\x93NUMPY\x01" << '\0' << char(header.size() & 0xff) << char(header.size() >> 8) << header << data;
    };
    std::vector<int64_t> shape;
    npy("(1099511627776,)");  // 2^40 floats: refused before allocating them
    EXPECT_NE(error_of([&] { read_npy(dir / "x.npy", &shape); }).find("truncated"), std::string::npos);
    npy("(4611686018427387905, 4)", std::string(16, '\0'));  // (2^62 + 1) * 4 floats
    EXPECT_NE(error_of([&] { read_npy(dir / "x.npy", &(shape = {})); }).find("truncated"), std::string::npos);
    npy("(99999999999999999999,)");  // std::stoll's out_of_range
    EXPECT_NE(error_of([&] { read_npy(dir / "x.npy", &(shape = {})); }).find("a shape dimension (99999999999999999999) is out of range"),
              std::string::npos);
    std::string dims = "(";  // a long header: std::regex recursed once per character
    for (int i = 0; i < 15000; ++i) dims += "1, ";
    npy(dims + "2)", std::string(8, '\0'));
    EXPECT_EQ(read_npy(dir / "x.npy", &(shape = {})), (std::vector<float>{0.0f, 0.0f}));
    EXPECT_EQ(shape.size(), 15001u);
    fs::remove_all(dir);
}

TEST(Tensors, NpyAndRawRoundTrip) {
    const fs::path dir = temp_dir("tensor");
    const std::vector<float> data{1.5f, -2.0f, 3.25f, 0.0f, 1e-7f, 6.0f};
    write_tensor(dir / "a.npy", data, {1, 2, 3}, "canvas");
    std::vector<int64_t> shape;
    EXPECT_EQ(read_npy(dir / "a.npy", &shape), data);
    EXPECT_EQ(shape, (std::vector<int64_t>{1, 2, 3}));
    write_tensor(dir / "a.f32", data, {2, 3}, "canvas");
    std::ifstream raw(dir / "a.f32", std::ios::binary);
    std::vector<float> back(6);
    raw.read(reinterpret_cast<char*>(back.data()), 24);
    EXPECT_EQ(back, data);
    const auto header = nlohmann::json::parse(std::ifstream(dir / "a.f32.json"));
    EXPECT_EQ(header.at("shape"), nlohmann::json::array({2, 3}));
    EXPECT_EQ(header.at("dtype"), "float32");
    EXPECT_EQ(header.at("bytes"), 24);
    EXPECT_NE(error_of([&] { write_tensor(dir / "missing" / "x.npy", data, {6}, "canvas"); }).find("cannot write"), std::string::npos);
    fs::remove_all(dir);
}

TEST(Preprocess, NormalizesWithTheManifestsMeanAndStd) {
    const Manifest m = scene_manifest(8, 2);
    RgbImage image{8, 8, std::vector<unsigned char>(8 * 8 * 3)};
    for (size_t i = 0; i < image.pixels.size(); i += 3) image.pixels[i] = 200, image.pixels[i + 1] = 100, image.pixels[i + 2] = 0;
    const auto scene = preprocess_rgb(image, m);
    ASSERT_EQ(scene.size(), 2u * 3 * 8 * 8);
    for (int c = 0; c < 3; ++c) EXPECT_FLOAT_EQ(scene_at(scene, 8, c, 3, 5), normalized(m, c, c == 0 ? 200 : c == 1 ? 100 : 0));
    EXPECT_EQ(std::vector<float>(scene.begin(), scene.begin() + 192), std::vector<float>(scene.begin() + 192, scene.end()));
}

TEST(Preprocess, CenterCropRoundsHalfToEvenLikePython) {
    // 9 x 8 (W x H) into S = 8: no resize (short side 8, long side int(8 * 9 / 8) = 9), crop left =
    // round((9 - 8) / 2) = round(0.5) = 0 in Python (half to even), so column 0 is kept and column 8 dropped.
    const Manifest m = scene_manifest(8);
    RgbImage image{9, 8, std::vector<unsigned char>(9 * 8 * 3, 128)};
    for (int y = 0; y < 8; ++y) image.pixels[(size_t(y) * 9 + 0) * 3 + 1] = 255;  // column 0: green 255
    const auto scene = preprocess_rgb(image, m);
    EXPECT_FLOAT_EQ(scene_at(scene, 8, 1, 4, 0), normalized(m, 1, 255));
    EXPECT_FLOAT_EQ(scene_at(scene, 8, 1, 4, 7), normalized(m, 1, 128));
}

TEST(Preprocess, ShortSideResizeThenCenterCrop) {
    // 64 x 32 into S = 16: resized to 32 x 16, crop left = 8: scene columns 0..7 come from the left half (red),
    // 8..15 from the right half (blue); the pixels next to the seam blend (bilinear).
    const Manifest m = scene_manifest(16);
    RgbImage image{64, 32, std::vector<unsigned char>(64 * 32 * 3, 0)};
    for (int y = 0; y < 32; ++y)
        for (int x = 0; x < 64; ++x) image.pixels[(size_t(y) * 64 + x) * 3 + (x < 32 ? 0 : 2)] = 255;
    const auto scene = preprocess_rgb(image, m);
    EXPECT_NEAR(scene_at(scene, 16, 0, 8, 2), normalized(m, 0, 255), 1e-5);
    EXPECT_NEAR(scene_at(scene, 16, 2, 8, 2), normalized(m, 2, 0), 1e-5);
    EXPECT_NEAR(scene_at(scene, 16, 2, 8, 13), normalized(m, 2, 255), 1e-5);
    EXPECT_NEAR(scene_at(scene, 16, 0, 8, 13), normalized(m, 0, 0), 1e-5);
    const float seam = scene_at(scene, 16, 0, 8, 7);
    EXPECT_GT(seam, normalized(m, 0, 0));
    EXPECT_LT(seam, normalized(m, 0, 255));
}

TEST(Manifest, BadArtifactsEndInOneClearError) {
    const fs::path dir = temp_dir("manifest");
    EXPECT_NE(error_of([&] { load_manifest(dir / "nope"); }).find("no such artifact folder"), std::string::npos);
    EXPECT_NE(error_of([&] { load_manifest(dir); }).find("no manifest.json"), std::string::npos);
    write_text(dir / "manifest.json", "{\"format\": ");
    EXPECT_NE(error_of([&] { load_manifest(dir); }).find("not valid JSON"), std::string::npos);
    write_text(dir / "manifest.json", R"({"format": "something-else", "format_version": 1})");
    EXPECT_NE(error_of([&] { load_manifest(dir); }).find("not a canvit-export manifest"), std::string::npos);
    write_text(dir / "manifest.json", "[1, 2]");
    EXPECT_NE(error_of([&] { load_manifest(dir); }).find("not a canvit-export manifest (format array"), std::string::npos);
    // Version before schema: a newer manifest names the upgrade, an older one the re-export, whatever else it holds.
    write_text(dir / "manifest.json", R"({"format": "canvit-export-manifest", "format_version": 2, "new": {}})");
    const std::string newer = error_of([&] { load_manifest(dir); });
    EXPECT_NE(newer.find("manifest version 2 is newer than this canvit_demo reads (1): upgrade canvit_demo"), std::string::npos) << newer;
    write_text(dir / "manifest.json", R"({"format": "canvit-export-manifest", "format_version": 0})");
    EXPECT_NE(error_of([&] { load_manifest(dir); }).find("manifest version 0 is not readable"), std::string::npos);
    write_text(dir / "manifest.json", R"({"format": "canvit-export-manifest", "format_version": "1"})");
    EXPECT_NE(error_of([&] { load_manifest(dir); }).find("manifest version \"1\" is not readable"), std::string::npos);
    write_text(dir / "manifest.json", R"({"format": "canvit-export-manifest", "format_version": 1})");
    const std::string missing = error_of([&] { load_manifest(dir); });
    EXPECT_NE(missing.find("not a valid version-1 manifest, /architecture: missing, a required field; re-export the artifact"),
              std::string::npos) << missing;
    fs::remove_all(dir);
}

// parse_manifest: load_manifest's checks on the text, the same errors, and no file read.
TEST(Manifest, ParseManifestRefusesAsLoadManifest) {
    const fs::path dir = temp_dir("parse");
    for (const std::string& text : {std::string("{\"format\": "), std::string("[1, 2]"), std::string("{\"format\": 5e421}"),
                                    std::string(R"({"format": "canvit-export-manifest", "format_version": 2})"),
                                    std::string(R"({"format": "canvit-export-manifest", "format_version": 1})")}) {
        write_text(dir / "manifest.json", text);
        const std::string loaded = error_of([&] { load_manifest(dir); });
        EXPECT_EQ(error_of([&] { parse_manifest(text, dir); }), loaded);
        EXPECT_EQ(loaded.rfind((dir / "manifest.json").string(), 0), 0u) << loaded;
    }
    // A number beyond double is refused as invalid JSON (canvit_fuzz_manifest: nlohmann's out_of_range.406 escaped).
    EXPECT_NE(error_of([&] { parse_manifest("{\"format\": 5e421}", dir); }).find("not valid JSON ([json.exception.out_of_range.406]"),
              std::string::npos);
    fs::remove_all(dir);
}

// valijson 1.0 reads JSON Schema draft 7; these are the draft 2020-12 keywords of manifest.schema.json, each on a
// small schema: enforced, and reported as "<JSON pointer>: <what is wrong>".
TEST(SchemaValidator, EnforcesTheKeywordsOfTheManifestSchema) {
    const SchemaValidator v(nlohmann::json::parse(R"({
        "$defs": {"Positive": {"type": "integer", "exclusiveMinimum": 0}, "F32": {"const": "f32", "type": "string"}},
        "type": "object", "additionalProperties": false, "required": ["n"],
        "properties": {
            "n": {"$ref": "#/$defs/Positive"}, "c": {"$ref": "#/$defs/F32"}, "e": {"enum": ["a", "b"]},
            "o": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": null},
            "k": {"type": "object", "propertyNames": {"enum": ["x", "y"]}, "additionalProperties": {"type": "integer"}},
            "s": {"type": "string", "pattern": "^[0-9a-f]{4}$"},
            "l": {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2}}})"));
    using nlohmann::json;
    EXPECT_EQ(v.first_error(json{{"n", 1}, {"c", "f32"}, {"e", "b"}, {"o", nullptr}, {"k", {{"x", 1}}}, {"s", "00af"}}), "");
    EXPECT_EQ(v.first_error(json{{"n", 0}}), "/n: 0 must be > 0");  // exclusiveMinimum as a number ($defs ref)
    EXPECT_EQ(v.first_error(json{{"n", "1"}}), "/n: '1' is a string, expected integer");
    EXPECT_EQ(v.first_error(json{{"n", 1.5}}), "/n: 1.5 is a number, expected integer");
    EXPECT_EQ(v.first_error(json::object()), "/n: missing, a required field");
    EXPECT_EQ(v.first_error(json{{"n", 1}, {"z", 1}}), "/z: unknown field, not in manifest version 1");
    EXPECT_EQ(v.first_error(json{{"n", 1}, {"c", "f16"}}), "/c: 'f16' must be 'f32'");  // const
    EXPECT_EQ(v.first_error(json{{"n", 1}, {"e", "c"}}), "/e: 'c' is not one of a, b");
    EXPECT_EQ(v.first_error(json{{"n", 1}, {"o", 5}}), "/o: 5 is an integer, expected string or null");
    EXPECT_EQ(v.first_error(json{{"n", 1}, {"k", {{"x", 1}, {"w", 2}}}}),
              "/k/w: unknown field (allowed: x, y), not in manifest version 1");
    EXPECT_EQ(v.first_error(json{{"n", 1}, {"k", {{"x", true}}}}), "/k/x: true is a boolean, expected integer");
    EXPECT_EQ(v.first_error(json{{"n", 1}, {"s", "00ag"}}), "/s: '00ag' does not match ^[0-9a-f]{4}$");
    EXPECT_NE(v.first_error(json{{"n", 1}, {"l", json::array({1.0})}}).find("/l: [1.0]: array should contain no fewer than 2"),
              std::string::npos);
    EXPECT_EQ(v.first_error(json{{"n", 1}, {"l", json::array({1.0, "x"})}}), "/l/1: 'x' is a string, expected number");
}

// pydantic's tagged unions: oneOf + discriminator (OpenAPI's keyword, which validators ignore). The oneOf is kept;
// errors are reported in the branch the tag selects.
TEST(SchemaValidator, DiscriminatedUnionsReportInTheTaggedBranch) {
    const nlohmann::json schema = nlohmann::json::parse(R"({
        "$defs": {
            "A": {"type": "object", "additionalProperties": false, "required": ["kind"],
                  "properties": {"kind": {"const": "a", "type": "string"}, "a": {"type": "boolean"}}},
            "B": {"type": "object", "additionalProperties": false, "required": ["kind", "b"],
                  "properties": {"kind": {"const": "b", "type": "string"}, "b": {"type": "integer"}}}},
        "type": "object", "properties": {"u": {
            "oneOf": [{"$ref": "#/$defs/A"}, {"$ref": "#/$defs/B"}],
            "discriminator": {"propertyName": "kind", "mapping": {"a": "#/$defs/A", "b": "#/$defs/B"}}}}})");
    EXPECT_TRUE(schema_for_valijson(schema)["properties"]["u"].contains("oneOf"));
    const SchemaValidator v(schema);
    using nlohmann::json;
    EXPECT_EQ(v.first_error(json{{"u", {{"kind", "b"}, {"b", 3}}}}), "");
    EXPECT_EQ(v.first_error(json{{"u", {{"kind", "a"}}}}), "");
    EXPECT_EQ(v.first_error(json{{"u", {{"kind", "b"}, {"b", true}}}}), "/u/b: true is a boolean, expected integer");
    EXPECT_EQ(v.first_error(json{{"u", {{"kind", "b"}}}}), "/u/b: missing, a required field");
    EXPECT_EQ(v.first_error(json{{"u", {{"kind", "a"}, {"b", 3}}}}), "/u/b: unknown field, not in manifest version 1");
    EXPECT_EQ(v.first_error(json{{"u", {{"kind", "c"}}}}), "/u/kind: 'c' is not one of a, b");
    EXPECT_EQ(v.first_error(json{{"u", {{"b", 3}}}}), "/u/kind: missing, a required field");
    EXPECT_EQ(v.first_error(json{{"u", "a"}}), "/u: 'a' is a string, expected object");
}

// Draft 7 (and valijson) ignore the keywords beside a $ref; 2020-12 applies them, and so does this validator.
TEST(SchemaValidator, KeywordsBesideARefStillApply) {
    const SchemaValidator v(nlohmann::json::parse(R"({"$defs": {"N": {"type": "integer"}},
        "properties": {"n": {"$ref": "#/$defs/N", "maximum": 3, "default": 1}}})"));
    EXPECT_EQ(v.first_error(nlohmann::json{{"n", 3}}), "");
    EXPECT_EQ(v.first_error(nlohmann::json{{"n", 4}}), "/n: 4 must be <= 3");
    EXPECT_EQ(v.first_error(nlohmann::json{{"n", "4"}}), "/n: '4' is a string, expected integer");
}

// A keyword the validator would skip is refused, so that a growing schema never validates less than it says.
TEST(SchemaValidator, RefusesKeywordsItCannotEnforce) {
    for (const char* keyword : {"format", "prefixItems", "unevaluatedProperties", "dependentRequired", "$dynamicRef"}) {
        const nlohmann::json schema{{"type", "object"}, {"properties", {{"x", {{keyword, "anything"}}}}}};
        const std::string error = error_of([&] { SchemaValidator{schema}; });
        EXPECT_NE(error.find("uses '" + std::string(keyword) + "' (at #/properties/x/" + keyword + ")"), std::string::npos) << error;
    }
}

TEST(SchemaValidator, TheEmbeddedManifestSchemaCompiles) {
    EXPECT_NO_THROW(manifest_schema());
    // valijson reports missing fields in name order
    EXPECT_EQ(manifest_schema().first_error(nlohmann::json::object()), "/architecture: missing, a required field");
}

TEST(Backends, UnknownAndMissingBackendsAreRefused) {
    const Manifest m = scene_manifest(8);
    EXPECT_NE(error_of([&] { make_backend("tflite", m, {}); }).find("unknown backend 'tflite'"), std::string::npos);
    for (const std::string name : {"openvino", "onnxruntime", "tensorrt"}) {
        const auto compiled = compiled_backends();
        if (std::find(compiled.begin(), compiled.end(), name) == compiled.end()) {
            EXPECT_NE(error_of([&] { make_backend(name, m, {}); }).find("is not compiled into this canvit_demo"), std::string::npos);
        }
    }
}

#ifdef CANVIT_WITH_OPENCV
TEST(Video, ReadsAnMjpegFileInRgbOrder) {
    const fs::path dir = temp_dir("video");
    const fs::path path = dir / "clip.avi";
    {
        cv::VideoWriter writer(path.string(), cv::CAP_OPENCV_MJPEG, cv::VideoWriter::fourcc('M', 'J', 'P', 'G'), 10,
                               cv::Size(64, 48));
        ASSERT_TRUE(writer.isOpened());
        for (int f = 0; f < 5; ++f) writer.write(cv::Mat(48, 64, CV_8UC3, cv::Scalar(40 * f, 0, 255)));  // BGR: red + blue ramp
    }
    auto source = open_video(path.string());
    RgbImage frame;
    for (int f = 0; f < 5; ++f) {
        ASSERT_TRUE(source->next(frame)) << "frame " << f;
        ASSERT_EQ(frame.width, 64);
        ASSERT_EQ(frame.height, 48);
        const unsigned char* center = &frame.pixels[(size_t(24) * 64 + 32) * 3];
        EXPECT_NEAR(center[0], 255, 12) << "R";  // BGR -> RGB
        EXPECT_NEAR(center[2], 40 * f, 12) << "B";
    }
    EXPECT_FALSE(source->next(frame));
    fs::remove_all(dir);
}

TEST(Video, ImageSequenceIsLossless) {
    const fs::path dir = temp_dir("sequence");
    for (int f = 0; f < 3; ++f) cv::imwrite((dir / ("frame_" + std::to_string(f) + ".png")).string(), cv::Mat(4, 6, CV_8UC3, cv::Scalar(1, 2, 3 + f)));
    auto source = open_video((dir / "frame_%d.png").string());
    RgbImage frame;
    for (int f = 0; f < 3; ++f) {
        ASSERT_TRUE(source->next(frame));
        EXPECT_EQ(frame.pixels[0], 3 + f);
        EXPECT_EQ(frame.pixels[1], 2);
        EXPECT_EQ(frame.pixels[2], 1);
    }
    EXPECT_FALSE(source->next(frame));
    EXPECT_NE(error_of([&] { open_video((dir / "missing.mp4").string()); }).find("no such video file"), std::string::npos);
    fs::remove_all(dir);
}
#else
TEST(Video, RefusedWithoutOpenCv) {
    EXPECT_NE(error_of([] { open_video("clip.mp4"); }).find("built without OpenCV"), std::string::npos);
}
#endif

TEST(Messages, ArticleOfEachTarget) {
    // canvit_runtime.manifest.TARGET_NAMES' words: "DIR is an ONNX artifact", never "a onnx"
    EXPECT_EQ(canvit::a_target("onnx"), "an ONNX");
    EXPECT_EQ(canvit::a_target("openvino"), "an OpenVINO IR");
    EXPECT_EQ(canvit::a_target("tensorrt"), "a TensorRT engine");
    EXPECT_EQ(canvit::a_target("coreml"), "a Core ML");
    EXPECT_EQ(canvit::a_target("other"), "a other");
}
