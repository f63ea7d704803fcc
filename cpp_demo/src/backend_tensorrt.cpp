// TensorRT backend (TensorRT >= 10, C++ API): runs a `canvit-export trt` artifact's step.engine, or builds an engine
// on the device from an ONNX artifact's mixed-precision step.onnx with a strongly typed network (TensorRT 10.x:
// NetworkDefinitionCreationFlag::kSTRONGLY_TYPED; 11.x: always strongly typed), so TensorRT runs exactly the
// graph's types: fp16 matmuls, float32 canvas path (docs/export.md, "Precision"). --engine PATH loads an engine saved there
// (by an earlier run, or by trtexec from the same step.onnx) or saves the one it builds.
// The canvas and recurrent CLS stay in device memory, in two buffers each that swap between glimpses, so no
// canvas crosses PCIe per glimpse; with cuda_graph each buffer assignment's enqueueV3 is captured once as a CUDA
// graph and replayed. read_state copies a state to the host only when asked, read_output a readout (EG-C2F:
// seg_entropy, [B, G, G], every glimpse).
// Every host<->device copy runs with cudaMemcpyAsync on the step's stream (created cudaStreamNonBlocking, so it does
// not wait on the legacy default stream) and that stream is synchronized before the host buffer can be reused or
// freed. Device memory, the pinned viewpoint buffer, the stream and the graphs have RAII owners, so a constructor
// that throws half-way frees what it had allocated.
#include <NvInfer.h>
#include <NvOnnxParser.h>
#include <cuda_runtime_api.h>

#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <type_traits>
#include <vector>

#include "backends.hpp"

#if NV_TENSORRT_MAJOR < 10
#error "canvit_demo's TensorRT backend needs TensorRT >= 10 (JetPack 6.1 or later)"
#endif

namespace canvit {
namespace {

void cuda_check(cudaError_t status, const char* what) {
    if (status != cudaSuccess) throw Error(std::string("CUDA: ") + what + ": " + cudaGetErrorString(status));
}

// Owners of CUDA resources: each frees its own handle, so nothing leaks when the constructor throws half-way.
struct DeviceBuffer {
    void* ptr = nullptr;
    explicit DeviceBuffer(size_t bytes) { cuda_check(cudaMalloc(&ptr, bytes), "cudaMalloc"); }
    DeviceBuffer(const DeviceBuffer&) = delete;
    DeviceBuffer& operator=(const DeviceBuffer&) = delete;
    ~DeviceBuffer() {
        if (ptr) cudaFree(ptr);
    }
};
struct PinnedHost {
    float* ptr = nullptr;
    explicit PinnedHost(size_t count) {
        cuda_check(cudaMallocHost(reinterpret_cast<void**>(&ptr), count * sizeof(float)), "cudaMallocHost");
    }
    PinnedHost(const PinnedHost&) = delete;
    PinnedHost& operator=(const PinnedHost&) = delete;
    ~PinnedHost() {
        if (ptr) cudaFreeHost(ptr);
    }
};
struct StreamDeleter {
    void operator()(cudaStream_t stream) const { cudaStreamDestroy(stream); }
};
struct GraphExecDeleter {
    void operator()(cudaGraphExec_t exec) const { cudaGraphExecDestroy(exec); }
};
using StreamOwner = std::unique_ptr<std::remove_pointer_t<cudaStream_t>, StreamDeleter>;
using GraphExecOwner = std::unique_ptr<std::remove_pointer_t<cudaGraphExec_t>, GraphExecDeleter>;

class Logger : public nvinfer1::ILogger {
    void log(Severity severity, const char* message) noexcept override {
        if (severity <= Severity::kWARNING) std::cerr << "tensorrt: " << message << "\n";
    }
};

std::string dtype_name(nvinfer1::DataType type) {
    switch (type) {
        case nvinfer1::DataType::kFLOAT: return "float32";
        case nvinfer1::DataType::kHALF: return "float16";
        case nvinfer1::DataType::kBF16: return "bfloat16";
        default: return "TensorRT DataType " + std::to_string(int(type));
    }
}

std::vector<char> read_bytes(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw Error(path.string() + ": cannot be read");
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

class TensorRtBackend : public Backend {
   public:
    TensorRtBackend(const Manifest& m, const BackendOptions& options) : m_(m), cuda_graph_(options.cuda_graph) {
        const std::string& d = options.device;
        device_ = d.empty() || d == "GPU" || d == "CUDA" ? 0 : std::stoi(d.rfind("cuda:", 0) == 0 ? d.substr(5) : d);
        int count = 0;
        if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0)
            throw Error("the TensorRT backend needs a CUDA GPU, and none is visible here");
        if (device_ < 0 || device_ >= count) throw Error("--device " + d + ": this machine has " + std::to_string(count) + " CUDA device(s)");
        cuda_check(cudaSetDevice(device_), "cudaSetDevice");
        cudaDeviceProp props{};
        cuda_check(cudaGetDeviceProperties(&props, device_), "cudaGetDeviceProperties");
        gpu_ = std::string(props.name) + " (compute capability " + std::to_string(props.major) + "." + std::to_string(props.minor) + ")";

        std::vector<char> plan;
        std::string where;
        if (m.target == "tensorrt") {
            where = m.files.at("engine").string();
            plan = read_bytes(m.files.at("engine"));
        } else if (m.target == "onnx") {
            plan = onnx_plan(options.engine_cache, &where);
        } else {
            throw Error(m.dir.string() + " is " + a_target(m.target) + " artifact; the TensorRT backend runs TensorRT engines "
                        "(canvit-export trt) or ONNX artifacts (built into an engine on this device)");
        }
        runtime_.reset(nvinfer1::createInferRuntime(logger_));
        if (!runtime_) throw Error("TensorRT cannot create a runtime (createInferRuntime returned null; see the tensorrt: lines above)");
        engine_.reset(runtime_->deserializeCudaEngine(plan.data(), plan.size()));
        if (!engine_)
            throw Error(where + ": TensorRT " + std::to_string(NV_TENSORRT_MAJOR) + "." + std::to_string(NV_TENSORRT_MINOR) +
                        " cannot load this engine on " + gpu_ + (m.built_with.empty() ? "" : " (built with " + m.built_with + ")") +
                        "; rebuild it on this device");
        context_.reset(engine_->createExecutionContext());
        if (!context_) throw Error(where + ": TensorRT cannot create an execution context (out of device memory?)");
        for (int i = 0; i < engine_->getNbIOTensors(); ++i) {
            const std::string name = engine_->getIOTensorName(i);
            const nvinfer1::Dims dims = engine_->getTensorShape(name.c_str());
            check_model_tensor(m, where, name, std::vector<int64_t>(dims.d, dims.d + dims.nbDims),
                               dtype_name(engine_->getTensorDataType(name.c_str())));
            owned_.push_back(std::make_unique<DeviceBuffer>(m.tensor(name).numel() * sizeof(float)));
            buffers_[name] = owned_.back()->ptr;
        }
        for (const std::string& name : {m.scene_input, m.centers_input, m.scales_input})
            if (!buffers_.count(name)) throw Error(where + ": the engine has no input '" + name + "'; rebuild it from this artifact");
        cudaStream_t stream = nullptr;
        cuda_check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
        stream_owner_.reset(stream);
        stream_ = stream;
        viewpoint_host_owner_ = std::make_unique<PinnedHost>(3 * size_t(m.batch));
        viewpoint_host_ = viewpoint_host_owner_->ptr;
    }
    ~TensorRtBackend() override {
        if (stream_) cudaStreamSynchronize(stream_);  // no copy or launch in flight while the owners free
    }
    void reset() override {
        parity_ = 0;
        for (const auto& [name, values] : m_.initial_state)
            cuda_check(cudaMemcpyAsync(buffers_.at(name), values.data(), values.size() * sizeof(float), cudaMemcpyHostToDevice, stream_), "reset");
        cuda_check(cudaStreamSynchronize(stream_), "reset");
    }
    void set_scene(const std::vector<float>& scene) override {  // once per scene, not per glimpse
        if (scene.size() != m_.tensor(m_.scene_input).numel()) throw Error("scene of the wrong size");
        cuda_check(cudaMemcpyAsync(buffers_.at(m_.scene_input), scene.data(), scene.size() * sizeof(float), cudaMemcpyHostToDevice, stream_),
                   "scene upload");
        cuda_check(cudaStreamSynchronize(stream_), "scene upload");  // the caller's vector may be freed on return
    }
    void step(const Viewpoints& v) override {
        const size_t B = size_t(m_.batch);
        std::memcpy(viewpoint_host_, v.centers.data(), 2 * B * sizeof(float));
        std::memcpy(viewpoint_host_ + 2 * B, v.scales.data(), B * sizeof(float));
        cuda_check(cudaMemcpyAsync(buffers_.at(m_.centers_input), viewpoint_host_, 2 * B * sizeof(float), cudaMemcpyHostToDevice, stream_), "centers");
        cuda_check(cudaMemcpyAsync(buffers_.at(m_.scales_input), viewpoint_host_ + 2 * B, B * sizeof(float), cudaMemcpyHostToDevice, stream_), "scales");
        if (graphs_[parity_]) {
            cuda_check(cudaGraphLaunch(graphs_[parity_].get(), stream_), "cudaGraphLaunch");
        } else {
            for (const auto& [name, address] : addresses(parity_))
                if (!context_->setTensorAddress(name.c_str(), address)) throw Error("TensorRT rejected the address of '" + name + "'");
            if (!context_->enqueueV3(stream_)) throw Error("TensorRT enqueueV3 failed");
            if (cuda_graph_) capture();  // this glimpse ran uncaptured (TensorRT needs one launch first); later ones replay
        }
        parity_ ^= 1;  // the outputs just written are the next glimpse's state inputs
        cuda_check(cudaStreamSynchronize(stream_), "step");
    }
    std::vector<float> read_state(const std::string& name) override {
        std::vector<float> host(m_.tensor(name).numel());
        cuda_check(cudaMemcpyAsync(host.data(), addresses(parity_).at(name), host.size() * sizeof(float), cudaMemcpyDeviceToHost, stream_),
                   "read_state");
        cuda_check(cudaStreamSynchronize(stream_), "read_state");
        return host;
    }
    std::vector<float> read_output(const std::string& name) override {  // one device buffer of its own per readout
        check_readout_output(m_, name);
        std::vector<float> host(m_.tensor(name).numel());
        cuda_check(cudaMemcpyAsync(host.data(), buffers_.at(name), host.size() * sizeof(float), cudaMemcpyDeviceToHost, stream_),
                   "read_output");
        cuda_check(cudaStreamSynchronize(stream_), "read_output");
        return host;
    }
    std::string description() const override {
        return "tensorrt/cuda:" + std::to_string(device_) + (cuda_graph_ ? " (CUDA graph)" : "");
    }

   private:
    // Parity 0 reads the state input buffers and writes the output buffers; parity 1 the reverse.
    std::map<std::string, void*> addresses(int parity) const {
        std::map<std::string, void*> out = buffers_;
        if (parity == 1)
            for (const auto& [input, output] : m_.state_pairs) std::swap(out.at(input), out.at(output));
        return out;
    }
    void capture() {
        cudaGraph_t graph = nullptr;
        cuda_check(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture");
        const bool enqueued = context_->enqueueV3(stream_);
        const cudaError_t ended = cudaStreamEndCapture(stream_, &graph);
        cudaGraphExec_t exec = nullptr;
#if CUDART_VERSION >= 12000
        const bool ok = enqueued && ended == cudaSuccess && cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess;
#else
        const bool ok = enqueued && ended == cudaSuccess && cudaGraphInstantiate(&exec, graph, nullptr, nullptr, 0) == cudaSuccess;
#endif
        if (graph) cudaGraphDestroy(graph);
        if (!ok) {  // some engines hold ops that cannot be captured: run uncaptured
            cudaGetLastError();
            cuda_graph_ = false;
            std::cerr << "note: this engine cannot be captured as a CUDA graph; running enqueueV3 every glimpse\n";
            return;
        }
        graphs_[parity_].reset(exec);
    }
    std::vector<char> onnx_plan(const std::filesystem::path& cache, std::string* where) {
        const std::string graph_sha = m_.file_sha256.at("graph");
        const std::filesystem::path sidecar = cache.string() + ".json";
        if (!cache.empty() && std::filesystem::exists(cache)) {
            *where = cache.string();
            if (std::filesystem::exists(sidecar)) {
                const auto info = nlohmann::json::parse(std::ifstream(sidecar));
                if (info.value("graph_sha256", "") != graph_sha)
                    throw Error(cache.string() + ": this engine was built from another step.onnx; delete it to rebuild");
            } else {
                std::cerr << "note: " << cache.string() << " has no " << sidecar.filename().string()
                          << " (built by trtexec?): its I/O is checked against the manifest, its graph is not\n";
            }
            return read_bytes(cache);
        }
        *where = m_.files.at("graph").string();
        std::cerr << "building a strongly typed TensorRT engine from " << *where << " on " << gpu_
                  << " (minutes on a Jetson; pass --engine PATH to keep it)\n";
        std::unique_ptr<nvinfer1::IBuilder> builder(nvinfer1::createInferBuilder(logger_));
        if (!builder) throw Error("TensorRT cannot create a builder (createInferBuilder returned null)");
#if NV_TENSORRT_MAJOR >= 11
        const uint32_t flags = 0;  // 11.x: every network is strongly typed
#else
        const uint32_t flags = 1U << static_cast<uint32_t>(nvinfer1::NetworkDefinitionCreationFlag::kSTRONGLY_TYPED);
#endif
        std::unique_ptr<nvinfer1::INetworkDefinition> network(builder->createNetworkV2(flags));
        if (!network) throw Error("TensorRT cannot create a network definition (createNetworkV2 returned null)");
        std::unique_ptr<nvonnxparser::IParser> parser(nvonnxparser::createParser(*network, logger_));
        if (!parser) throw Error("TensorRT cannot create an ONNX parser (createParser returned null)");
        if (!parser->parseFromFile(where->c_str(), int(nvinfer1::ILogger::Severity::kWARNING))) {
            std::string errors;
            for (int i = 0; i < parser->getNbErrors(); ++i) errors += std::string(i ? "; " : "") + parser->getError(i)->desc();
            throw Error(*where + ": TensorRT's ONNX parser rejected it (" + errors + ")");
        }
        std::unique_ptr<nvinfer1::IBuilderConfig> config(builder->createBuilderConfig());
        if (!config) throw Error("TensorRT cannot create a builder config (createBuilderConfig returned null)");
        config->setMemoryPoolLimit(nvinfer1::MemoryPoolType::kWORKSPACE, size_t(4) << 30);
        std::unique_ptr<nvinfer1::IHostMemory> plan(builder->buildSerializedNetwork(*network, *config));
        if (!plan) throw Error(*where + ": TensorRT could not build an engine (see the tensorrt: lines above)");
        const char* bytes = static_cast<const char*>(plan->data());
        std::vector<char> out(bytes, bytes + plan->size());
        if (!cache.empty()) {  // temporary file, then rename: never a half-written engine
            const std::filesystem::path tmp = cache.string() + ".partial";
            std::ofstream(tmp, std::ios::binary).write(out.data(), std::streamsize(out.size()));
            std::filesystem::rename(tmp, cache);
            nlohmann::json info{{"graph_sha256", graph_sha}, {"gpu", gpu_},
                                {"tensorrt", std::to_string(NV_TENSORRT_MAJOR) + "." + std::to_string(NV_TENSORRT_MINOR) + "." +
                                             std::to_string(NV_TENSORRT_PATCH)}, {"strongly_typed", true}};
            std::ofstream(sidecar) << info.dump(1) << "\n";
            std::cerr << "saved the engine to " << cache.string() << "\n";
        }
        return out;
    }

    const Manifest& m_;
    bool cuda_graph_;
    int device_ = 0, parity_ = 0;
    std::string gpu_;
    Logger logger_;
    // Destroyed in reverse order: graphs, then the stream, then the context (before its engine and runtime), and
    // the device buffers last (the graphs and the context refer to them).
    std::vector<std::unique_ptr<DeviceBuffer>> owned_;
    std::map<std::string, void*> buffers_;  // views of owned_, by tensor name
    std::unique_ptr<PinnedHost> viewpoint_host_owner_;
    std::unique_ptr<nvinfer1::IRuntime> runtime_;
    std::unique_ptr<nvinfer1::ICudaEngine> engine_;
    std::unique_ptr<nvinfer1::IExecutionContext> context_;
    StreamOwner stream_owner_;
    cudaStream_t stream_ = nullptr;  // stream_owner_'s handle
    float* viewpoint_host_ = nullptr;  // viewpoint_host_owner_'s memory
    GraphExecOwner graphs_[2];
};

}  // namespace

std::unique_ptr<Backend> make_tensorrt_backend(const Manifest& m, const BackendOptions& options) {
    return std::make_unique<TensorRtBackend>(m, options);
}

}  // namespace canvit
