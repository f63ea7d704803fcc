"""The manifest's contract beyond its JSON Schema, as data both languages read: manifest.contract.json.

What Manifest._consistent checks and the C++ demo checks alike: the rule tables (the input roles, the state pairs,
every shape in symbols of the geometry, the readouts' outputs and shapes, the files each target lists, the precision
words' dtypes), the caps and name rules of an untrusted artifact (docs/security.md), and the one-line messages, as
templates. canvit_runtime.manifest.contract_document() builds it from this module and the tables of the manifest,
the precision vocabulary and the path rules; `canvit-runtime schema --contract --out PATH` writes it beside
manifest.schema.json (`schema --check` fails when either file is stale), and cpp_demo/CMakeLists.txt embeds it into
canvit_demo as it does the schema.

Shapes are lists of integers and symbols: B, S, G (geometry.batch, .scene_px, .canvas_grid), R, Dc, Db
(architecture.num_canvas_registers, .canvas_dim, .backbone_dim), sums of products of them ("R+G*G"), and for a
readout the free symbols C (classes) and D (feature width) read off its first output at the axis named.
Messages are str.format templates of named string fields; lists of names are written as Python prints them
(`py_list`), shapes as [1, 2]. This module imports the standard library only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

CONTRACT_PATH = Path(__file__).with_name("manifest.contract.json")
GENERATOR = "canvit-runtime schema --contract --out runtimes/canvit_runtime/manifest.contract.json"

SYMBOLS = {"B": ("geometry", "batch"), "S": ("geometry", "scene_px"), "G": ("geometry", "canvas_grid"),
           "R": ("architecture", "num_canvas_registers"), "Dc": ("architecture", "canvas_dim"),
           "Db": ("architecture", "backbone_dim")}
"""Each shape symbol: the manifest field it stands for (section, key)."""

IO_DTYPE = "float32"
"""Every step input and output is float32 (the precision lives inside the graph)."""
INPUT_ROLES = ("scene", "viewpoint_centers", "viewpoint_scales")
"""The roles the inputs hold exactly once each."""
ROLE_SHAPES: dict[str, list[int | str]] = {"scene": ["B", 3, "S", "S"], "viewpoint_centers": ["B", 2],
                                           "viewpoint_scales": ["B"], "reset": ["B"]}
"""The shape of every tensor with this role."""
STATE_PAIRS = (("canvas", "canvas_next"), ("recurrent_cls", "recurrent_cls_next"))
"""The state, in order: (graph input, the output that replaces it)."""
STATE_SHAPES: dict[str, list[int | str]] = {"canvas": ["B", "R+G*G", "Dc"], "canvas_next": ["B", "R+G*G", "Dc"],
                                            "recurrent_cls": ["B", 1, "Db"], "recurrent_cls_next": ["B", 1, "Db"]}
"""The shape of each state tensor (role state), by name; a state pair's `shape` is its input's."""
INITIAL_STATE_PARTS: dict[str, list[int | str]] = {"canvas_registers": ["R", "Dc"], "canvas_patch": ["Dc"],
                                                   "recurrent_cls": ["Db"]}
"""initial_state.bin's parts and their shapes (canvit-pytorch CanViT.init_state)."""
ALWAYS_FILES = ("initial_state",)
"""The files every artifact lists, beside its target's (canvit_runtime.manifest.TARGET_FILES)."""
READOUT_SHAPES: dict[str, dict[str, Any]] = {
    "segmentation": {"shapes": [["B", "C", "G", "G"], ["B", "G", "G"]], "free": {"C": 1}, "classes": "C"},
    "classification": {"shapes": [["B", "C"]], "free": {"C": -1}, "classes": "C"},
    "features": {"shapes": [["B", "G*G", "D"]], "free": {"D": -1}, "classes": None},
}
"""Each readout's output shapes (in READOUT_OUTPUTS' order); `free`: a symbol read off the first output at this axis
(-1: the last; 0 when the shape is too short, which the shape check then refuses); `classes`: the symbol that class
names and palette are counted against (None: the readout has no classes)."""

MESSAGES = {
    "inconsistent": "{source}: {message}; re-export the artifact",
    "json_depth": "{source}: JSON nested deeper than {limit} levels, not a canvit-export manifest",
    "manifest_bytes": "{source}: {size} bytes, more than the {limit} a manifest may have; re-export the artifact",
    "file_not_plain": "file '{key}' is listed as '{name}', not a plain name inside the artifact folder",
    "name_repeats": "tensor name '{name}' repeats",
    "role_count": "inputs must have exactly one tensor with role '{role}'",
    "io_dtype": "tensor '{name}' is {dtype}, but every step input and output is {io_dtype}",
    "state_pairs": "state must be the pairs {pairs}",
    "initial_parts": "initial_state must have the parts {parts}",
    "initial_part_shape": "initial_state part {part} has shape {shape}, the architecture says {expected}",
    "tensor_elements": "tensor '{name}' of shape {shape} has more than {limit} elements, the most a runtime allocates",
    "state_name": "tensor '{name}' has role state but is not one of {names}",
    "tensor_shape": ("tensor '{name}' has shape {shape}, but the geometry (batch {B}, scene {S} px, canvas {G}x{G}) "
                     "says {expected}"),
    "state_shape": "state '{name}' has shape {shape}, the geometry says {expected}",
    "state_role": "tensor '{name}' is a state pair's but has role '{role}'",
    "stateless_state": "a stateless artifact's graph must take and return every state tensor",
    "readouts_repeat": "readouts repeat a name",
    "readout_undeclared": "outputs {names} have role readout but no readout declares them",
    "readout_outputs": "readout {readout} outputs {expected}, not {outputs}",
    "readout_role": "readout {readout}'s output '{name}' is not an output with role readout",
    "readout_shape": "readout output '{name}' has shape {shape}, the geometry says {expected}",
    "readout_classes": "readout {readout} has {count} {field} for {classes} classes",
    "files_lacking": "files lacks {keys} for {a_target} artifact",
    "precision_dtypes": ("precision {name} means matmuls in {matmul} and streams in {stream}, the record says "
                         "{record_matmul} and {record_stream}"),
}
"""Every one-line message of the consistency rules and the manifest caps; `inconsistent` wraps a rule's message."""

FILE_NAMES = {"separator": "/", "forbidden_parts": ["", ".", ".."], "forbidden_characters": ["\\"],
              "control_characters": "C0 (U+0000-U+001F), DEL and C1 (U+007F-U+009F)"}
"""A file entry of the manifest is a relative path: parts split by `separator`, none of `forbidden_parts`, no
`forbidden_characters`, no control character, not starting with the separator (paths.plain_member)."""


def say(key: str, /, **fields: object) -> str:
    """MESSAGES[key] with its fields filled in (each as str(value))."""
    return MESSAGES[key].format(**{name: str(value) for name, value in fields.items()})


def py_list(names: list[str] | tuple[str, ...]) -> str:
    """['a', 'b']: names as both languages write a list in a message (each quoted with ', as is)."""
    return "[" + ", ".join(f"'{name}'" for name in names) + "]"


def dimension(expression: int | str, symbols: dict[str, int]) -> int:
    """The value of a shape entry: an integer, or a sum of products of symbols and integers ("R+G*G")."""
    if isinstance(expression, int):
        return expression
    total = 0
    for term in expression.split("+"):
        product = 1
        for factor in term.split("*"):
            product *= int(factor) if factor.isdigit() else symbols[factor]
        total += product
    return total


def shape_of(expressions: list[int | str], symbols: dict[str, int]) -> list[int]:
    """A shape in symbols (ROLE_SHAPES, STATE_SHAPES, ...) evaluated against `symbols`."""
    return [dimension(e, symbols) for e in expressions]
