#include <cstring>

#include "canvit/canvit.hpp"

#ifdef CANVIT_WITH_OPENVINO
#include <openvino/openvino.hpp>
#endif

namespace canvit {

#ifdef CANVIT_WITH_OPENVINO
// OpenVINO: a stateful IR keeps canvas and recurrent CLS in state variables (read back only on request); a
// stateless IR or an ONNX artifact takes and returns them every glimpse. Inference precision hint f32: OpenVINO
// then runs the graph's own types (bf16 IRs carry their bf16 matmuls; the canvas path stays f32).
class OpenVinoBackend : public Backend {
   public:
    OpenVinoBackend(const Manifest& m, const std::string& device, int threads) : m_(m) {
        const auto path = m.target == "openvino" ? m.files.at("ir") : m.files.at("graph");
        ov::AnyMap config{{ov::hint::inference_precision.name(), ov::element::f32},
                          {ov::hint::performance_mode.name(), ov::hint::PerformanceMode::LATENCY}};
        if (threads > 0) config[ov::inference_num_threads.name()] = threads;
        compiled_ = core_.compile_model(path.string(), device, config);
        request_ = compiled_.create_infer_request();
        for (const auto& [input, variable] : m.variables) {
            bool found = false;
            for (auto& state : request_.query_state())
                if (state.get_name() == variable) states_[input] = state, found = true;
            if (!found) throw Error(path.string() + ": no state variable " + variable + "; re-export the artifact");
        }
    }
    void reset() override {
        for (const auto& [name, values] : m_.initial_state) {
            ov::Tensor t(ov::element::f32, shape(name));
            std::memcpy(t.data<float>(), values.data(), values.size() * 4);
            if (m_.stateful) states_.at(name).set_state(t);
            else host_[name] = values;
        }
    }
    void step(const std::vector<float>& scene, const Viewpoints& v) override {
        feed("scene", scene, {m_.batch, 3, m_.scene_px, m_.scene_px});
        feed("centers", v.centers, {m_.batch, 2});
        feed("scales", v.scales, {m_.batch});
        if (!m_.stateful)
            for (const auto& [input, output] : m_.state_pairs) feed(input, host_.at(input), m_.state_shapes.at(input));
        request_.infer();
        if (!m_.stateful)
            for (const auto& [input, output] : m_.state_pairs) {
                const ov::Tensor t = request_.get_tensor(output);
                host_[input].assign(t.data<const float>(), t.data<const float>() + t.get_size());
            }
    }
    std::vector<float> read_state(const std::string& name) override {
        if (!m_.stateful) return host_.at(name);
        const ov::Tensor t = states_.at(name).get_state();
        return {t.data<const float>(), t.data<const float>() + t.get_size()};
    }

   private:
    ov::Shape shape(const std::string& name) const {
        const auto& s = m_.state_shapes.at(name);
        return ov::Shape(s.begin(), s.end());
    }
    void feed(const std::string& name, const std::vector<float>& data, const std::vector<int64_t>& dims) {
        ov::Tensor t(ov::element::f32, ov::Shape(dims.begin(), dims.end()));
        std::memcpy(t.data<float>(), data.data(), data.size() * 4);
        request_.set_tensor(name, t);
    }
    const Manifest& m_;
    ov::Core core_;
    ov::CompiledModel compiled_;
    ov::InferRequest request_;
    std::map<std::string, ov::VariableState> states_;
    std::map<std::string, std::vector<float>> host_;
};
#endif

std::unique_ptr<Backend> make_backend(const std::string& name, const Manifest& m, const std::string& device, int threads) {
    if (name == "openvino") {
#ifdef CANVIT_WITH_OPENVINO
        if (m.target != "openvino" && m.target != "onnx")
            throw Error(m.dir.string() + " is a " + m.target + " artifact; the OpenVINO backend runs IR or ONNX artifacts");
        return std::make_unique<OpenVinoBackend>(m, device, threads);
#endif
    }
    if (name == "openvino" || name == "tensorrt" || name == "onnxruntime")
        throw Error("backend '" + name + "' is not compiled into this canvit_demo: reconfigure with -DCANVIT_WITH_" +
                    (name == "openvino" ? std::string("OPENVINO=ON -DOpenVINO_DIR=<openvino>/cmake")
                     : name == "tensorrt" ? std::string("TENSORRT=ON (not yet implemented in this demo)")
                                          : std::string("ONNXRUNTIME=ON (not yet implemented in this demo)")));
    throw Error("unknown backend '" + name + "': choose openvino, tensorrt or onnxruntime");
}

}  // namespace canvit
