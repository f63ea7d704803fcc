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
    const auto& entries = j.is_object() ? j.at("viewpoints") : j;
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
    if (!std::filesystem::is_regular_file(name))
        throw Error("unknown policy '" + name + "': use c2f, full, f-iid, r-iid or a viewpoints JSON file");
    std::vector<Viewpoints> viewpoints = viewpoints_from_json(name, batch);
    if (int(viewpoints.size()) < glimpses)
        throw Error(name + ": holds " + std::to_string(viewpoints.size()) + " viewpoints, " + std::to_string(glimpses) +
                    " glimpses asked for; pass --glimpses " + std::to_string(viewpoints.size()) + " or a longer file");
    viewpoints.resize(glimpses);
    return viewpoints;
}

}  // namespace canvit
