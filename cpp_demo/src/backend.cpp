// The backend factory and the check every backend runs on its model's I/O against the manifest.
#include <algorithm>

#include "backends.hpp"

namespace canvit {

void check_model_tensor(const Manifest& m, const std::string& where, const std::string& name,
                        const std::vector<int64_t>& shape, const std::string& dtype) {
    const auto it = m.specs.find(name);
    if (it == m.specs.end())
        throw Error(where + ": the model has a tensor '" + name + "' that the manifest does not list; re-export the artifact");
    const TensorSpec& spec = it->second;
    if (spec.shape != shape || spec.dtype != dtype)
        throw Error(where + ": shape mismatch: tensor '" + name + "' is " + shape_str(shape) + " " + dtype +
                    " in the model but " + shape_str(spec.shape) + " " + spec.dtype +
                    " in the manifest; the model and manifest.json come from different exports, re-export the artifact");
}

void check_readout_output(const Manifest& m, const std::string& name) {
    if (std::find(m.readout_outputs.begin(), m.readout_outputs.end(), name) == m.readout_outputs.end())
        throw Error(m.dir.string() + " has no readout output '" + name + "'" +
                    (m.readout_outputs.empty() ? std::string(" (it was exported without readouts)") : "") +
                    "; re-export it with --readout segmentation, classification or features");
}

std::vector<std::string> compiled_backends() {
    std::vector<std::string> names;
#ifdef CANVIT_WITH_OPENVINO
    names.push_back("openvino");
#endif
#ifdef CANVIT_WITH_ONNXRUNTIME
    names.push_back("onnxruntime");
#endif
#ifdef CANVIT_WITH_TENSORRT
    names.push_back("tensorrt");
#endif
    return names;
}

// m and options go unused in a build without any backend (the fuzz and the bare builds).
std::unique_ptr<Backend> make_backend(const std::string& name, [[maybe_unused]] const Manifest& m,
                                      [[maybe_unused]] const BackendOptions& options) {
#ifdef CANVIT_WITH_OPENVINO
    if (name == "openvino") return make_openvino_backend(m, options);
#endif
#ifdef CANVIT_WITH_ONNXRUNTIME
    if (name == "onnxruntime") return make_onnxruntime_backend(m, options);
#endif
#ifdef CANVIT_WITH_TENSORRT
    if (name == "tensorrt") return make_tensorrt_backend(m, options);
#endif
    const std::map<std::string, std::string> how{
        {"openvino", "-DCANVIT_WITH_OPENVINO=ON -DOpenVINO_DIR=<site-packages>/openvino/cmake (pip install openvino)"},
        {"onnxruntime", "-DONNXRUNTIME_ROOT=<onnxruntime-linux-*/ folder with include/ and lib/> (the ONNX Runtime "
                        "release archive; the pip wheel ships no C++ headers)"},
        {"tensorrt", "-DTENSORRT_ROOT=<TensorRT folder with include/ and lib/> and CUDA (on JetPack both are found "
                     "in /usr)"}};
    if (how.count(name)) throw Error("backend '" + name + "' is not compiled into this canvit_demo: reconfigure CMake with " + how.at(name));
    throw Error("unknown backend '" + name + "': choose openvino, onnxruntime or tensorrt");
}

}  // namespace canvit
