"""The ONNX Runtime model's copy of the step graph: state tensors renamed for Triton, the sequence batcher's control
inputs added, and with --scene-state the scene kept as a third implicit state."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from canvit_export.triton.serving import CONTROLS, SCENE_STATE


def prepare_onnx(source: Path | bytes, destination: Path, renames: dict[str, str], *, controls: bool,
                 scene: str | None = None) -> None:
    """Copy the step graph `source` (a path, or the checksummed bytes: manifest.verified_onnx) to `destination`
    with graph inputs/outputs renamed (`renames`, in every node that reads or writes them) and, with controls, the
    inputs START, END, READY int32 [1] and CORRID uint64 [1] added (unused by the graph: Triton feeds them, ONNX
    Runtime ignores them).

    With `scene` (the scene input's name), the scene becomes optional and is also kept as a state: inputs `scene`
    [B, 3, S, S] (an overridable initializer of NaNs: ONNX Runtime uses it when a request omits the scene) and
    `scene_state` (same shape), output `scene_state_next`; the step sees `scene_state` when the scene's first value is
    NaN, else the scene, and returns what it saw as `scene_state_next` (names after `renames`).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load_model_from_string(source) if isinstance(source, bytes) else onnx.load(str(source))
    graph = model.graph
    if scene is not None:
        used = "canvit_scene_used"
        for node in graph.node:
            for i, name in enumerate(node.input):
                if name == scene:
                    node.input[i] = used
        spec = next(v for v in graph.input if v.name == scene)
        shape = [d.dim_value for d in spec.type.tensor_type.shape.dim]
        state_in, state_out = (renames.get(n, n) for n in SCENE_STATE)
        graph.input.append(helper.make_tensor_value_info(state_in, TensorProto.FLOAT, shape))
        graph.output.append(helper.make_tensor_value_info(state_out, TensorProto.FLOAT, shape))
        graph.initializer.append(numpy_helper.from_array(np.full(shape, np.nan, np.float32), scene))
        graph.initializer.extend([numpy_helper.from_array(np.array([-1], np.int64), "canvit_flat"),
                                  numpy_helper.from_array(np.array([0], np.int64), "canvit_zero"),
                                  numpy_helper.from_array(np.array([1], np.int64), "canvit_one")])
        choose = [helper.make_node("Reshape", [scene, "canvit_flat"], ["canvit_scene_flat"]),
                  helper.make_node("Slice", ["canvit_scene_flat", "canvit_zero", "canvit_one"], ["canvit_scene_first"]),
                  helper.make_node("IsNaN", ["canvit_scene_first"], ["canvit_scene_absent"]),
                  helper.make_node("Where", ["canvit_scene_absent", state_in, scene], [used]),
                  helper.make_node("Identity", [used], [state_out])]
        nodes = [*choose, *graph.node]
        del graph.node[:]
        graph.node.extend(nodes)
    if renames:
        for value in (*graph.input, *graph.output):
            value.name = renames.get(value.name, value.name)
        for node in graph.node:
            for i, name in enumerate(node.input):
                node.input[i] = renames.get(name, name)
            for i, name in enumerate(node.output):
                node.output[i] = renames.get(name, name)
        for value in graph.value_info:
            value.name = renames.get(value.name, value.name)
    if controls:
        existing = {v.name for v in graph.input}
        for name, kind in CONTROLS:
            if name not in existing:
                dtype = TensorProto.UINT64 if kind == "CONTROL_SEQUENCE_CORRID" else TensorProto.INT32
                graph.input.append(helper.make_tensor_value_info(name, dtype, [1]))
    onnx.save(model, str(destination))
