// Internal: one factory per backend, each defined in its own backend_<runtime>.cpp when that runtime is compiled in.
#pragma once

#include "canvit/canvit.hpp"

namespace canvit {

// Throws Error unless `name` is one of the manifest's readout outputs (Backend::read_output's argument).
void check_readout_output(const Manifest& m, const std::string& name);

#ifdef CANVIT_WITH_OPENVINO
std::unique_ptr<Backend> make_openvino_backend(const Manifest& m, const BackendOptions& options);
#endif
#ifdef CANVIT_WITH_ONNXRUNTIME
std::unique_ptr<Backend> make_onnxruntime_backend(const Manifest& m, const BackendOptions& options);
#endif
#ifdef CANVIT_WITH_TENSORRT
std::unique_ptr<Backend> make_tensorrt_backend(const Manifest& m, const BackendOptions& options);
#endif

}  // namespace canvit
