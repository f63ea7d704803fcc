// OpenVINO backend: a stateful IR keeps canvas and recurrent CLS in its state variables (ReadValue/Assign, read back
// only on request); a stateless IR or an ONNX artifact takes and returns them every glimpse, in two host buffers
// per state that swap between glimpses (no copy). Readouts (a stateful IR's only graph outputs) stay in the
// request's output tensors, copied out by read_output. Inference precision hint f32: OpenVINO then runs the graph's
// own types (bf16 IRs carry their bf16 matmuls; the canvas path stays f32; docs/openvino.md).
#include <openvino/op/util/variable.hpp>
#include <openvino/openvino.hpp>

#include <cstring>

#include "backends.hpp"

namespace canvit {
namespace {

std::string dtype_name(const ov::element::Type& type) {
    if (type == ov::element::f32) return "float32";
    if (type == ov::element::f16) return "float16";
    if (type == ov::element::bf16) return "bfloat16";
    return type.get_type_name();
}

std::vector<int64_t> dims(const ov::PartialShape& shape, const std::string& where) {
    if (!shape.is_static()) throw Error(where + ": the model has dynamic shapes; canvit-export writes static ones, re-export it");
    const ov::Shape s = shape.to_shape();
    return {s.begin(), s.end()};
}

}  // namespace

// The backend's compile configuration: inference precision hint f32 (on ARM CPUs with fp16 arithmetic the CPU plugin
// would otherwise infer in f16, on x86 with AMX/AVX512-BF16 in bf16), latency mode, `threads` when > 0.
// canvit_openvino_precisions (openvino_precisions.cpp) audits the compiled model under this same configuration.
ov::AnyMap openvino_config(int threads) {
    ov::AnyMap config{{ov::hint::inference_precision.name(), ov::element::f32},
                      {ov::hint::performance_mode.name(), ov::hint::PerformanceMode::LATENCY}};
    if (threads > 0) config[ov::inference_num_threads.name()] = threads;
    return config;
}

namespace {

class OpenVinoBackend : public Backend {
   public:
    OpenVinoBackend(const Manifest& m, const BackendOptions& options) : m_(m), device_(options.device.empty() ? "CPU" : options.device) {
        if (m.target != "openvino" && m.target != "onnx")
            throw Error(m.dir.string() + " is " + a_target(m.target) + " artifact; the OpenVINO backend runs IR or ONNX artifacts");
        const auto path = m.target == "openvino" ? m.files.at("ir") : m.files.at("graph");
        // An IR's weights: the file the manifest lists and checksummed, passed explicitly (OpenVINO would otherwise
        // read the .bin named after the .xml, which the manifest may not list).
        const std::shared_ptr<ov::Model> model =
            m.target == "openvino" ? core_.read_model(path.string(), m.files.at("weights").string()) : core_.read_model(path.string());
        const std::string where = path.string();
        for (const auto& port : model->inputs())
            check_model_tensor(m, where, port.get_any_name(), dims(port.get_partial_shape(), where), dtype_name(port.get_element_type()));
        for (const auto& port : model->outputs())
            check_model_tensor(m, where, port.get_any_name(), dims(port.get_partial_shape(), where), dtype_name(port.get_element_type()));
        for (const auto& variable : model->get_variables()) {
            const auto& info = variable->get_info();
            std::string input;
            for (const auto& [name, id] : m.variables) if (id == info.variable_id) input = name;
            if (input.empty()) throw Error(where + ": state variable " + info.variable_id + " is not in the manifest; re-export the artifact");
            check_model_tensor(m, where, input, dims(info.data_shape, where), dtype_name(info.data_type));
        }
        try {
            compiled_ = core_.compile_model(model, device_, openvino_config(options.threads));
        } catch (const ov::Exception& e) {
            const std::string what = e.what();
            throw Error(where + ": OpenVINO cannot compile it for device '" + device_ + "' (" + what.substr(0, what.find('\n')) +
                        "); choose one of CPU, GPU, NPU, AUTO that this machine has");
        }
        request_ = compiled_.create_infer_request();
        for (const auto& [input, variable] : m.variables) {
            bool found = false;
            for (auto& state : request_.query_state())
                if (state.get_name() == variable) states_[input] = state, found = true;
            if (!found) throw Error(where + ": no state variable " + variable + "; re-export the artifact");
        }
        scene_ = tensor(m.scene_input), centers_ = tensor(m.centers_input), scales_ = tensor(m.scales_input);
        request_.set_tensor(m.scene_input, scene_);
        request_.set_tensor(m.centers_input, centers_);
        request_.set_tensor(m.scales_input, scales_);
        if (!m.stateful)
            for (const auto& [input, output] : m.state_pairs) buffers_[input] = {tensor(input), tensor(input)};
    }
    void reset() override {
        parity_ = 0;
        for (const auto& [name, values] : m_.initial_state) {
            ov::Tensor t = m_.stateful ? tensor(name) : buffers_.at(name)[0];
            std::memcpy(t.data<float>(), values.data(), values.size() * sizeof(float));
            if (m_.stateful) states_.at(name).set_state(t);
        }
    }
    void set_scene(const std::vector<float>& scene) override { copy_into(scene_, scene); }
    void step(const Viewpoints& v) override {
        copy_into(centers_, v.centers);
        copy_into(scales_, v.scales);
        if (!m_.stateful)
            for (const auto& [input, output] : m_.state_pairs) {
                request_.set_tensor(input, buffers_.at(input)[parity_]);
                request_.set_tensor(output, buffers_.at(input)[parity_ ^ 1]);
            }
        request_.infer();
        parity_ ^= 1;  // stateless: the outputs just written are the next glimpse's state inputs
    }
    std::vector<float> read_state(const std::string& name) override {
        const ov::Tensor t = m_.stateful ? states_.at(name).get_state() : buffers_.at(name)[parity_];
        return {t.data<const float>(), t.data<const float>() + t.get_size()};
    }
    std::vector<float> read_output(const std::string& name) override {  // the request's own output tensor, on the host
        check_readout_output(m_, name);
        const ov::Tensor t = request_.get_tensor(name);
        return {t.data<const float>(), t.data<const float>() + t.get_size()};
    }
    std::string description() const override { return "openvino/" + device_; }

   private:
    ov::Tensor tensor(const std::string& name) const {
        const auto& shape = m_.tensor(name).shape;
        return ov::Tensor(ov::element::f32, ov::Shape(shape.begin(), shape.end()));
    }
    static void copy_into(ov::Tensor& t, const std::vector<float>& data) {
        if (data.size() != t.get_size()) throw Error("expected " + std::to_string(t.get_size()) + " floats, got " + std::to_string(data.size()));
        std::memcpy(t.data<float>(), data.data(), data.size() * sizeof(float));
    }
    const Manifest& m_;
    std::string device_;
    ov::Core core_;
    ov::CompiledModel compiled_;
    ov::InferRequest request_;
    ov::Tensor scene_, centers_, scales_;
    std::map<std::string, ov::VariableState> states_;
    std::map<std::string, std::array<ov::Tensor, 2>> buffers_;
    int parity_ = 0;
};

}  // namespace

std::unique_ptr<Backend> make_openvino_backend(const Manifest& m, const BackendOptions& options) {
    return std::make_unique<OpenVinoBackend>(m, options);
}

}  // namespace canvit
