"""The Triton target: a model repository that serves many glimpse sequences (cameras) with the state kept in the server.

`write_repository` turns artifacts into one Triton model repository, one model per artifact and backend:
- `<name>-onnxruntime` (ONNX artifact; ONNX Runtime backend, CPU or CUDA by --device), `<name>-tensorrt` (TensorRT
  engine artifact: model.plan), `<name>-openvino` (stateless OpenVINO IR artifact): `sequence_batching` with the
  oldest (or direct) strategy and implicit state: `canvas` and `recurrent_cls` live in Triton between the requests
  of a sequence, initialized from the artifact's initial state (initial_state/<state>.bin, raw little-endian float32
  of the state's full shape, a `data_file` Triton loads). The state outputs are also listed as outputs, so a client
  can read the canvas; the readouts are outputs.
- `<name>-python` (ONNX or OpenVINO artifact): Triton's Python backend running canvit_runtime
  (canvit_runtime/triton_backend/model.py), one session per CORRID, freed at END or idle timeout; for sites
  without the C++ backends. Its scene input is optional: send it once per frame, then only viewpoints.

Every model has max_batch_size 0 (the step's batch B is static: one request = one glimpse of B scenes) and the
manifest's full shapes as dims. Control inputs START, END, READY (int32 [1]) and CORRID (uint64 [1]) are given to
the Python model and to the ONNX Runtime model, whose repository copy of the graph gets them as (unused) inputs:
that backend wants every configured input in the graph. A TensorRT engine's and an OpenVINO IR's inputs are fixed
where they were built, so their models have no control inputs (the implicit state needs none).

State names. Triton pairs implicit-state inputs and outputs by position after sorting each list by name
(triton-inference-server/server#8586): when the state inputs and outputs sort in different orders, the states are
swapped. `triton_state_names` renames them (s0_canvas / s0_canvas_next, ...) in that case; the ONNX copy's I/O is
renamed with the onnx library and the mapping recorded in <model>/canvit_triton.json. A TensorRT engine or IR can't
be renamed here: such an artifact is refused, naming the fix (serve its ONNX artifact on ONNX Runtime).

Scene per frame: the step graph takes the scene as a plain input, and Triton's implicit state can't be written by a
request, so by default each glimpse request carries the scene: 3 * S * S * 4 * B bytes (3.1 MB at S = 512, B = 1).
The Python model reuses the sequence's last scene when a request has none. With `scene_state` (--scene-state), the
ONNX Runtime model's graph copy keeps the scene as a third implicit state and takes the scene as an optional input
(an overridable NaN initializer when absent: prepare_onnx); that graph is checked with ONNX Runtime here, but no
Triton ONNX Runtime backend ran it here (nvidia-pytriton's server has only the Python backend). A TensorRT engine's
or an IR's graph can't be changed here, so their requests always carry the scene.

One job per module:
  serving.py      what is served: Triton backends per artifact target (from canvit_runtime.base.TARGETS), the serve
                  options, model and state names
  onnx_graph.py   the ONNX Runtime model's copy of the step graph (renamed states, control inputs, the scene state)
  config.py       config.pbtxt, written and checked back with Triton's ModelConfig protobuf
  repository.py   the repository writer (write_repository)
The tritonserver harness the tests and scripts/serve_bench.py start is scripts/local_triton.py.
"""

from canvit_export.triton.config import check_config, config_text
from canvit_export.triton.onnx_graph import prepare_onnx
from canvit_export.triton.repository import plan_models, write_repository
from canvit_export.triton.serving import BACKENDS, ServeOptions, TritonModel, backends_of, model_name, triton_state_names

__all__ = ["BACKENDS", "ServeOptions", "TritonModel", "backends_of", "check_config", "config_text", "model_name",
           "plan_models", "prepare_onnx", "triton_state_names", "write_repository"]
