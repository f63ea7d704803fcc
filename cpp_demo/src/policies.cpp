#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>

#include "canvit/canvit.hpp"

namespace canvit {

void check_viewpoints(const Viewpoints& v, int batch) {
    for (int b = 0; b < batch; ++b) {
        const float row = v.centers[2 * b], col = v.centers[2 * b + 1], s = v.scales[b];
        if (!std::isfinite(row) || !std::isfinite(col) || !std::isfinite(s))
            throw Error("viewpoint " + std::to_string(b) + " is not finite");
        if (!(s > 0.0f && s <= 1.0f)) throw Error("viewpoint " + std::to_string(b) + ": scale " + std::to_string(s) +
                                                 " is outside (0, 1]");
        if (std::max(std::fabs(row), std::fabs(col)) > 1.0f - s + 1e-6f)
            throw Error("viewpoint " + std::to_string(b) + ": center (" + std::to_string(row) + ", " +
                        std::to_string(col) + ") with scale " + std::to_string(s) + " leaves the scene; need |row|, |col| <= 1 - scale");
    }
}

std::vector<Viewpoints> viewpoints_from_json(const std::filesystem::path& path, int batch) {
    nlohmann::json j;
    try {
        std::ifstream in(path);
        if (!in) throw Error(path.string() + ": cannot read the viewpoints file");
        in >> j;
    } catch (const nlohmann::json::exception& e) {
        throw Error(path.string() + ": not valid JSON (" + e.what() + ")");
    }
    const nlohmann::json entries = j.is_object() ? j.value("viewpoints", nlohmann::json()) : j;  // none: refused below
    if (!entries.is_array() || entries.empty()) throw Error(path.string() + ": expected a non-empty list of viewpoints");
    std::vector<Viewpoints> out;
    for (const auto& entry : entries) {
        Viewpoints v;
        try {
            const bool per_scene = entry.is_array() && !entry.empty() && entry.at(0).is_array();
            if (per_scene ? entry.size() != size_t(batch) : entry.size() != 3) throw std::out_of_range("size");
            for (int b = 0; b < batch; ++b) {
                const auto& triple = per_scene ? entry.at(b) : entry;  // B triples, or one for the batch
                if (triple.size() != 3) throw std::out_of_range("size");
                v.centers.push_back(triple.at(0).get<float>()), v.centers.push_back(triple.at(1).get<float>());
                v.scales.push_back(triple.at(2).get<float>());
            }
        } catch (const std::exception&) {
            throw Error(path.string() + ": glimpse " + std::to_string(out.size()) + ": expected [row, col, scale] or " +
                        std::to_string(batch) + " such triples, got " + entry.dump());
        }
        try {
            check_viewpoints(v, batch);
        } catch (const Error& e) {
            throw Error(path.string() + ": glimpse " + std::to_string(out.size()) + ": " + e.what());
        }
        out.push_back(std::move(v));
    }
    return out;
}

std::vector<Viewpoints> policy_full(int batch, int glimpses) {
    Viewpoints v{std::vector<float>(2 * batch, 0.0f), std::vector<float>(batch, 1.0f)};
    return std::vector<Viewpoints>(glimpses, v);
}

std::vector<Viewpoints> policy_c2f(int batch, int glimpses, uint32_t seed) {
    std::mt19937 rng(seed);
    std::vector<Viewpoints> out;
    for (int level = 0; int(out.size()) < glimpses; ++level) {
        const int n = 1 << level;
        const float scale = 1.0f / n;
        std::vector<std::array<int, 2>> cells;
        for (int r = 0; r < n; ++r)
            for (int c = 0; c < n; ++c) cells.push_back({r, c});
        auto z = [level](const std::array<int, 2>& rc) {
            int index = 0;
            for (int b = 0; b < level; ++b) index |= (((rc[0] >> b) & 1) << (2 * b + 1)) | (((rc[1] >> b) & 1) << (2 * b));
            return index;
        };
        std::sort(cells.begin(), cells.end(), [&](auto& a, auto& b) { return z(a) < z(b); });
        std::vector<std::vector<int>> orders(batch, std::vector<int>(cells.size()));
        for (auto& order : orders) {
            std::iota(order.begin(), order.end(), 0);
            std::shuffle(order.begin(), order.end(), rng);
        }
        for (size_t i = 0; i < cells.size() && int(out.size()) < glimpses; ++i) {
            Viewpoints v;
            for (int b = 0; b < batch; ++b) {
                const auto& rc = cells[orders[b][i]];
                v.centers.push_back((2 * rc[0] + 1) * scale - 1.0f), v.centers.push_back((2 * rc[1] + 1) * scale - 1.0f);
                v.scales.push_back(scale);
            }
            out.push_back(std::move(v));
        }
    }
    return out;
}

static Viewpoints random_viewpoints(std::mt19937& rng, int batch) {
    std::uniform_real_distribution<double> unit(0.0, 1.0);
    Viewpoints v;
    for (int b = 0; b < batch; ++b) {
        // A ~ U[0, (1 - min)^2]; half side sqrt(A) = 1 - s; center uniform in [-(1 - s), 1 - s]^2.
        const double half_side = std::sqrt(unit(rng)) * (1.0 - double(kMinTrainedScale));
        const double row = (2.0 * unit(rng) - 1.0) * half_side, col = (2.0 * unit(rng) - 1.0) * half_side;
        v.centers.push_back(float(row)), v.centers.push_back(float(col));
        // float32 rounding of s may exceed 1 - |center| by an ulp: the rule's 1e-6 slack covers it.
        v.scales.push_back(float(1.0 - half_side));
    }
    return v;
}

std::vector<Viewpoints> policy_riid(int batch, int glimpses, uint32_t seed) {
    std::mt19937 rng(seed);
    std::vector<Viewpoints> out;
    for (int t = 0; t < glimpses; ++t) out.push_back(random_viewpoints(rng, batch));
    return out;
}

std::vector<Viewpoints> policy_fiid(int batch, int glimpses, uint32_t seed) {
    std::mt19937 rng(seed);
    std::vector<Viewpoints> out = policy_full(batch, std::min(1, glimpses));
    for (int t = 1; t < glimpses; ++t) out.push_back(random_viewpoints(rng, batch));
    return out;
}

std::vector<Viewpoints> make_policy(const std::string& name, int batch, int glimpses, uint32_t seed) {
    if (glimpses < 1) throw Error("--glimpses must be >= 1");
    const std::map<std::string, std::vector<Viewpoints> (*)(int, int, uint32_t)> generated{
        {"c2f", policy_c2f}, {"f-iid", policy_fiid}, {"r-iid", policy_riid},
        {"full", [](int b, int g, uint32_t) { return policy_full(b, g); }}};
    if (const auto it = generated.find(name); it != generated.end()) {
        std::vector<Viewpoints> viewpoints = it->second(batch, glimpses, seed);
        for (size_t t = 0; t < viewpoints.size(); ++t) {  // a file's viewpoints are checked as it is read
            try {
                check_viewpoints(viewpoints[t], batch);
            } catch (const Error& e) {
                throw Error(name + ": glimpse " + std::to_string(t) + ": " + e.what());
            }
        }
        return viewpoints;
    }
    if (name == "eg-c2f")
        throw Error("policy 'eg-c2f' chooses each viewpoint from the step's seg_entropy readout: drive it with "
                    "EntropyGuidedC2F (canvit_demo --policy eg-c2f does)");
    if (!std::filesystem::is_regular_file(name))
        throw Error("unknown policy '" + name + "': use c2f, eg-c2f, full, f-iid, r-iid or a viewpoints JSON file");
    std::vector<Viewpoints> viewpoints = viewpoints_from_json(name, batch);
    if (int(viewpoints.size()) < glimpses)
        throw Error(name + ": holds " + std::to_string(viewpoints.size()) + " viewpoints, " + std::to_string(glimpses) +
                    " glimpses asked for; pass --glimpses " + std::to_string(viewpoints.size()) + " or a longer file");
    viewpoints.resize(glimpses);
    return viewpoints;
}

// Level l's 2^l x 2^l tiles in row-major order (canvit_runtime.policies.quadtree_level_row_major): centers
// (2i + 1) / 2^l - 1 computed in double, then float32, as numpy's np.array(..., np.float32) of Python floats.
static std::vector<EntropyGuidedC2F::Tile> row_major_tiles(int level) {
    const int n = 1 << level;
    const double scale = 1.0 / n;
    std::vector<EntropyGuidedC2F::Tile> tiles;
    for (int r = 0; r < n; ++r)
        for (int c = 0; c < n; ++c) tiles.push_back({float((2 * r + 1) * scale - 1.0), float((2 * c + 1) * scale - 1.0), float(scale)});
    return tiles;
}

EntropyGuidedC2F::EntropyGuidedC2F(int batch, int glimpses, int canvas_grid) : batch_(batch), grid_(canvas_grid) {
    if (canvas_grid < 1 || (canvas_grid & (canvas_grid - 1)) != 0)
        throw Error("--policy eg-c2f needs a power-of-two canvas grid (its quadtree tiles align with canvas cells); this "
                    "artifact's is " + std::to_string(canvas_grid) + ": re-export with --canvas 16, 32 or 64");
    // Cell centers in [-1, 1], float32 as numpy computes them: (i + 0.5) / G * 2 - 1.
    std::vector<float> centers(static_cast<size_t>(canvas_grid));
    for (int i = 0; i < canvas_grid; ++i) centers[size_t(i)] = (float(i) + 0.5f) / float(canvas_grid) * 2.0f - 1.0f;
    for (int level = 0, total = 0; total < glimpses; total += 1 << (2 * level), ++level) {  // levels_covering(glimpses)
        level_start_.push_back(total);
        levels_.push_back(row_major_tiles(level));
        std::vector<std::vector<int>> covered;
        for (const Tile& tile : levels_.back()) {
            std::vector<int> cells;
            for (int i = 0; i < canvas_grid; ++i)
                for (int j = 0; j < canvas_grid; ++j)
                    if (std::fabs(centers[size_t(i)] - tile.row) <= tile.scale && std::fabs(centers[size_t(j)] - tile.col) <= tile.scale)
                        cells.push_back(i * canvas_grid + j);
            covered.push_back(std::move(cells));
        }
        cells_.push_back(std::move(covered));
    }
}

int EntropyGuidedC2F::level_of(int t) const {
    int level = 0;
    while (level + 1 < int(level_start_.size()) && t >= level_start_[size_t(level) + 1]) ++level;
    return level;
}

std::vector<int> EntropyGuidedC2F::cells(int level, int tile) const { return cells_.at(size_t(level)).at(size_t(tile)); }

// numpy's float32 sum (pairwise_sum of numpy/_core/src/umath/loops_utils.h.src), rounding for rounding: fewer than 8
// values in order; up to 128 in 8 running sums combined as ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7)), then the
// rest in order; more: split in two halves (the first a multiple of 8) summed so. Near-tied tile means then order
// exactly as canvit_runtime's do.
static float pairwise_sum(const float* a, size_t n) {
    if (n < 8) {
        float sum = 0.0f;
        for (size_t i = 0; i < n; ++i) sum += a[i];
        return sum;
    }
    if (n <= 128) {
        float r[8];
        std::copy(a, a + 8, r);
        size_t i = 8;
        for (; i < n - n % 8; i += 8)
            for (size_t j = 0; j < 8; ++j) r[j] += a[i + j];
        float sum = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for (; i < n; ++i) sum += a[i];
        return sum;
    }
    const size_t half = n / 2 - (n / 2) % 8;
    return pairwise_sum(a, half) + pairwise_sum(a + half, n - half);
}

std::vector<float> EntropyGuidedC2F::tile_means(int level, const std::vector<float>& entropy, int b) const {
    const size_t n = size_t(grid_) * grid_;
    const float* map = entropy.data() + size_t(b) * n;
    std::vector<float> masked(n), means;
    for (const auto& cells : cells_.at(size_t(level))) {
        std::fill(masked.begin(), masked.end(), 0.0f);  // entropy * mask over the whole grid, as numpy sums it
        for (int cell : cells) masked[size_t(cell)] = map[cell];
        means.push_back(pairwise_sum(masked.data(), n) / float(std::max<size_t>(cells.size(), 1)));
    }
    return means;
}

Viewpoints EntropyGuidedC2F::viewpoint(int t, const std::vector<float>& entropy) {
    const int level = level_of(t);
    const auto& tiles = levels_.at(size_t(level));
    if (t >= level_start_.back() + int(tiles.size()))
        throw Error("EG-C2F was set up for fewer glimpses than glimpse " + std::to_string(t) + "; construct it with more");
    Viewpoints v;
    std::vector<int> chosen(size_t(batch_), 0);
    if (level > 0) {
        const size_t want = size_t(batch_) * grid_ * grid_;
        if (entropy.size() != want)
            throw Error("EG-C2F at glimpse " + std::to_string(t) + " needs the seg_entropy readout [" + std::to_string(batch_) +
                        ", " + std::to_string(grid_) + ", " + std::to_string(grid_) + "] of the previous step, got " +
                        std::to_string(entropy.size()) + " values");
        if (t == level_start_[size_t(level)]) visited_.assign(size_t(batch_), std::vector<char>(tiles.size(), 0));
        for (int b = 0; b < batch_; ++b) {
            const std::vector<float> means = tile_means(level, entropy, b);
            int best = -1;  // the highest mean among unvisited tiles, the first in row-major order on ties
            for (int i = 0; i < int(tiles.size()); ++i)
                if (!visited_[size_t(b)][size_t(i)] && (best < 0 || means[size_t(i)] > means[size_t(best)])) best = i;
            visited_[size_t(b)][size_t(best)] = 1;
            chosen[size_t(b)] = best;
        }
    }
    for (int b = 0; b < batch_; ++b) {
        const Tile& tile = tiles[size_t(chosen[size_t(b)])];
        v.centers.push_back(tile.row), v.centers.push_back(tile.col), v.scales.push_back(tile.scale);
    }
    chosen_.push_back(std::move(chosen));
    return v;
}

}  // namespace canvit
