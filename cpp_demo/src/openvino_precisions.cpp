// canvit_openvino_precisions: the OpenVINO precision audit on the device itself. Compiles a step graph (a stateless
// IR's step.xml or an ONNX artifact's graph; a stateful IR's runtime model lists only its inputs) with the C++
// backend's own configuration (openvino_config in backend_openvino.cpp: inference precision hint f32), or with the
// plugin's defaults (--hint default), and writes each node of the compiled model's runtime model as OpenVINO
// reports it (rt_info layerType, runtimePrecision, outputPrecisions, originalLayersNames) with their census, as
// canvit_export.export.openvino.audit_compiled reads it on the export machine. What must stay f32 (the canvas path)
// is judged from that file by the caller (tests/test_cpp_aarch64.py): this tool only reports.
#include <openvino/openvino.hpp>

#include <fstream>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>

namespace canvit {
ov::AnyMap openvino_config(int threads);  // backend_openvino.cpp: the demo's compile configuration
}

namespace {

constexpr const char* kUsage =
    "usage: canvit_openvino_precisions MODEL --out JSON [--hint demo|default] [--device CPU]\n"
    "  MODEL        a stateless IR's step.xml or an ONNX artifact's graph .onnx\n"
    "  --out JSON   where the runtime model's nodes and the census go\n"
    "  --hint demo  canvit_demo's configuration (inference precision f32; the default); default: the plugin's own\n";

std::string rt(const ov::Node& node, const char* key) {
    const auto& info = node.get_rt_info();
    const auto it = info.find(key);
    return it == info.end() ? std::string() : it->second.as<std::string>();
}

}  // namespace

int main(int argc, char** argv) {
    std::map<std::string, std::string> args{{"--hint", "demo"}, {"--device", "CPU"}};
    std::string model_path;
    for (int i = 1; i < argc; ++i) {
        const std::string key = argv[i];
        if (key == "--help" || key == "-h") {
            std::cout << kUsage;
            return 0;
        }
        if (key.rfind("--", 0) == 0) {
            if (!args.count(key) && key != "--out") {
                std::cerr << "error: unknown option '" << key << "'\n" << kUsage;
                return 2;
            }
            if (i + 1 >= argc) {
                std::cerr << "error: " << key << " needs a value\n";
                return 2;
            }
            args[key] = argv[++i];
        } else {
            model_path = key;
        }
    }
    if (model_path.empty() || !args.count("--out") || (args["--hint"] != "demo" && args["--hint"] != "default")) {
        std::cerr << "error: pass MODEL, --out JSON and --hint demo|default\n" << kUsage;
        return 2;
    }
    try {
        ov::Core core;
        const ov::AnyMap config = args["--hint"] == "demo" ? canvit::openvino_config(0) : ov::AnyMap{};
        const ov::CompiledModel compiled = core.compile_model(model_path, args["--device"], config);
        nlohmann::json out;
        out["model"] = model_path;
        out["device"] = args["--device"];
        out["hint"] = args["--hint"];
        out["openvino"] = ov::get_openvino_version().buildNumber;
        out["inference_precision"] = compiled.get_property(ov::hint::inference_precision).to_string();
        out["device_capabilities"] = core.get_property(args["--device"], ov::device::capabilities);
        std::map<std::string, int> census;
        nlohmann::json nodes = nlohmann::json::array();
        for (const auto& op : compiled.get_runtime_model()->get_ops()) {
            const std::string precision = rt(*op, "runtimePrecision");
            ++census[precision];
            nodes.push_back({{"name", op->get_friendly_name()},
                             {"layerType", rt(*op, "layerType")},
                             {"runtimePrecision", precision},
                             {"outputPrecisions", rt(*op, "outputPrecisions")},
                             {"originalLayersNames", rt(*op, "originalLayersNames")}});
        }
        out["runtime_precisions"] = census;
        out["nodes"] = nodes;
        std::ofstream(args["--out"]) << out.dump(1) << "\n";
        std::cout << "inference precision " << out["inference_precision"].get<std::string>() << "; runtime precisions:";
        for (const auto& [precision, count] : census) std::cout << " " << (precision.empty() ? "(none)" : precision) << " " << count;
        std::cout << "\n";
    } catch (const std::exception& e) {
        const std::string what = e.what();
        std::cerr << "error: " << what.substr(0, what.find('\n')) << "\n";
        return 1;
    }
    return 0;
}
