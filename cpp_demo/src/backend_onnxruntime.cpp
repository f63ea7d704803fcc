// ONNX Runtime backend (C++ API, onnxruntime_cxx_api.h): runs an ONNX artifact's step.onnx on the CPU, or on CUDA
// with --device CUDA (an ONNX Runtime built with the CUDA execution provider, e.g. the Jetson Zoo wheel's libraries).
// Every input and output is bound once, in the constructor, to host (CPU) buffers the backend owns (Ort::IoBinding):
// the state lives in two buffers per state tensor, and two bindings (one per buffer assignment) alternate between
// glimpses, so a glimpse allocates nothing. Readouts are written into host buffers of their own (bound once), which
// read_output copies.
// On the CPU nothing is copied per glimpse beyond the viewpoint. With --device CUDA the bound buffers are still host
// memory, so ONNX Runtime copies every bound input (scene, canvas, recurrent CLS, viewpoint) to the GPU and every
// output (the next canvas and CLS, the readouts) back to the host on each glimpse: the whole state crosses PCIe
// twice per glimpse (on a Jetson, whose memory is shared, a copy within the same DRAM). Keeping the state on the
// GPU needs bindings to device memory (Ort::MemoryInfo("Cuda", OrtDeviceAllocator, device, OrtMemTypeDefault) and
// the CUDA allocator), which this build machine (no GPU) cannot test; the TensorRT backend keeps it on the GPU.
#include <onnxruntime_cxx_api.h>

#include <cstring>

#include "backends.hpp"

namespace canvit {
namespace {

std::string dtype_name(ONNXTensorElementDataType type) {
    switch (type) {
        case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: return "float32";
        case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16: return "float16";
        case ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16: return "bfloat16";
        default: return "ONNX element type " + std::to_string(int(type));
    }
}

class OnnxRuntimeBackend : public Backend {
   public:
    OnnxRuntimeBackend(const Manifest& m, const BackendOptions& options)
        : m_(m), device_(options.device.empty() ? "CPU" : options.device), env_(ORT_LOGGING_LEVEL_WARNING, "canvit_demo"),
          memory_(Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault)) {
        if (m.target != "onnx")
            throw Error(m.dir.string() + " is " + a_target(m.target) + " artifact; the ONNX Runtime backend runs ONNX artifacts (step.onnx)");
        const std::string where = m.files.at("graph").string();
        Ort::SessionOptions session_options;
        session_options.SetGraphOptimizationLevel(GraphOptimizationLevel::ORT_ENABLE_ALL);
        if (options.threads > 0) session_options.SetIntraOpNumThreads(options.threads);
        // No spinning between glimpses: on a small device the workers' spin takes the cores from the rest of the
        // application (capture, the policy, another runtime); the step was no slower without it (canvit_runtime's
        // OnnxRuntimeRunner, same default).
        session_options.AddConfigEntry("session.intra_op.allow_spinning", "0");
        try {
            if (device_ == "CUDA") {
                OrtCUDAProviderOptions cuda{};
                session_options.AppendExecutionProvider_CUDA(cuda);
            } else if (device_ != "CPU") {
                throw Error("--device " + device_ + ": the ONNX Runtime backend runs on CPU or CUDA");
            }
            session_ = std::make_unique<Ort::Session>(env_, m.files.at("graph").c_str(), session_options);
        } catch (const Ort::Exception& e) {
            throw Error(where + ": ONNX Runtime cannot load it on " + device_ + " (" + e.what() + ")");
        }
        Ort::AllocatorWithDefaultOptions allocator;
        for (size_t i = 0; i < session_->GetInputCount(); ++i) {
            const Ort::TypeInfo type = session_->GetInputTypeInfo(i);  // owns what info views
            const auto info = type.GetTensorTypeAndShapeInfo();
            const std::string name = session_->GetInputNameAllocated(i, allocator).get();
            check_model_tensor(m, where, name, info.GetShape(), dtype_name(info.GetElementType()));
        }
        for (size_t i = 0; i < session_->GetOutputCount(); ++i) {
            const Ort::TypeInfo type = session_->GetOutputTypeInfo(i);
            const auto info = type.GetTensorTypeAndShapeInfo();
            const std::string name = session_->GetOutputNameAllocated(i, allocator).get();
            check_model_tensor(m, where, name, info.GetShape(), dtype_name(info.GetElementType()));
        }
        for (const auto& [input, output] : m.state_pairs) state_[input] = {host(input), host(input)};
        for (const auto& spec : m.outputs)
            if (!state_output(spec.name)) extras_[spec.name] = host(spec.name);
        scene_ = host(m.scene_input), centers_ = host(m.centers_input), scales_ = host(m.scales_input);
        // The buffers never reallocate (assign copies into them), so the tensors bound here stay valid.
        for (int parity = 0; parity < 2; ++parity) {
            bindings_[parity] = std::make_unique<Ort::IoBinding>(*session_);
            Ort::IoBinding& binding = *bindings_[parity];
            const auto bind = [&](const std::string& name, std::vector<float>& data, bool output) {
                const auto& shape = m.tensor(name).shape;
                values_.push_back(Ort::Value::CreateTensor<float>(memory_, data.data(), data.size(), shape.data(), shape.size()));
                output ? binding.BindOutput(name.c_str(), values_.back()) : binding.BindInput(name.c_str(), values_.back());
            };
            bind(m.scene_input, scene_, false);
            bind(m.centers_input, centers_, false);
            bind(m.scales_input, scales_, false);
            for (const auto& [input, output] : m.state_pairs) {  // parity 0 reads buffer 0 and writes buffer 1
                bind(input, state_.at(input)[parity], false);
                bind(output, state_.at(input)[parity ^ 1], true);
            }
            for (auto& [name, data] : extras_) bind(name, data, true);
        }
    }
    void reset() override {
        parity_ = 0;
        for (const auto& [name, values] : m_.initial_state) assign(state_.at(name)[0], values);
    }
    void set_scene(const std::vector<float>& scene) override { assign(scene_, scene); }
    void step(const Viewpoints& v) override {
        assign(centers_, v.centers);
        assign(scales_, v.scales);
        try {
            session_->Run(Ort::RunOptions{nullptr}, *bindings_[parity_]);
        } catch (const Ort::Exception& e) {
            throw Error(std::string("ONNX Runtime failed to run the step: ") + e.what());
        }
        parity_ ^= 1;  // the outputs just written are the next glimpse's state inputs
    }
    std::vector<float> read_state(const std::string& name) override { return state_.at(name)[parity_]; }
    std::vector<float> read_output(const std::string& name) override {  // bound to a host buffer: a copy of it
        check_readout_output(m_, name);
        return extras_.at(name);
    }
    std::string description() const override { return "onnxruntime/" + device_; }

   private:
    std::vector<float> host(const std::string& name) const { return std::vector<float>(m_.tensor(name).numel()); }
    bool state_output(const std::string& name) const {
        for (const auto& [input, output] : m_.state_pairs) if (output == name) return true;
        return false;
    }
    static void assign(std::vector<float>& to, const std::vector<float>& from) {
        if (from.size() != to.size()) throw Error("expected " + std::to_string(to.size()) + " floats, got " + std::to_string(from.size()));
        std::memcpy(to.data(), from.data(), from.size() * sizeof(float));
    }
    const Manifest& m_;
    std::string device_;
    Ort::Env env_;
    Ort::MemoryInfo memory_;
    std::unique_ptr<Ort::Session> session_;
    std::vector<float> scene_, centers_, scales_;
    std::map<std::string, std::array<std::vector<float>, 2>> state_;
    std::map<std::string, std::vector<float>> extras_;
    std::vector<Ort::Value> values_;                     // the tensors the bindings hold, over the buffers above
    std::array<std::unique_ptr<Ort::IoBinding>, 2> bindings_;
    int parity_ = 0;
};

}  // namespace

std::unique_ptr<Backend> make_onnxruntime_backend(const Manifest& m, const BackendOptions& options) {
    return std::make_unique<OnnxRuntimeBackend>(m, options);
}

}  // namespace canvit
