"""Many glimpse sequences on one runner, keyed by correlation id: what the Triton Python backend's model.py runs.

A Triton model instance executes its requests one after another; each request belongs to a sequence (one camera,
one scene) named by its correlation id (CORRID). `SequenceStore` keeps one session per sequence: its state (canvas
[B, R + G*G, Dc], recurrent CLS [B, 1, Db], float32), its last scene [B, 3, S, S] and when it was last used; the
runner (one compiled step, shared by every sequence) is loaded with a session's state, stepped, and the new state
taken back. A session starts with START (from the artifact's initial state), ends with END (freed) or after
`idle_s` seconds without a request (freed at the next request to the store, as Triton's sequence batcher drops the
sequence after max_sequence_idle_microseconds). A request of a sequence that has no session here and no START is
refused with `UnknownSequence`.

The scene is sent once per frame: a request without a scene reuses its sequence's last scene, so the glimpses after
the first of a frame carry only the viewpoint (12 bytes for B = 1) instead of the scene (3 * S * S * 4 bytes:
3.1 MB at S = 512). This module imports numpy and canvit_runtime only; it never imports Triton.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Dict, Optional

import numpy as np

from canvit_runtime.base import Runner
from canvit_runtime.manifest import ROLE_CENTERS, ROLE_SCALES, ROLE_SCENE
from canvit_runtime.policies import check_viewpoints

OPEN_SEQUENCES = "open_sequences"
"""Extra output of the Python-backend model: sessions open after the request, int32 [1] (END and idle frees)."""


class UnknownSequence(ValueError):
    """A request for a sequence with no session here (never started, ended, timed out, or the server restarted)."""


@dataclass
class Session:
    """One sequence: its state by state input name, its last scene (None before the first) and glimpse count."""

    state: Dict[str, np.ndarray]
    scene: Optional[np.ndarray] = None
    last_used: float = 0.0
    glimpses: int = 0


@dataclass
class SequenceStore:
    """Sessions by correlation id over one runner. `step` runs one glimpse of one sequence."""

    runner: Runner
    idle_s: float
    clock: Callable[[], float] = time.monotonic
    sessions: Dict[int, Session] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.sessions)

    def evict_idle(self) -> list:
        """Free the sessions idle for more than idle_s seconds; return their correlation ids."""
        now = self.clock()
        stale = [corrid for corrid, s in self.sessions.items() if now - s.last_used > self.idle_s]
        for corrid in stale:
            del self.sessions[corrid]
        return stale

    def step(self, corrid: int, *, start: bool, end: bool, scene: Optional[np.ndarray], centers: np.ndarray,
             scales: np.ndarray) -> Dict[str, np.ndarray]:
        """One glimpse of sequence `corrid`: scene [B, 3, S, S] float32 (ImageNet-normalized; None: the sequence's
        last scene), centers [B, 2] (row, col) in [-1, 1], scales [B] in (0, 1]. With start, the sequence begins
        from the initial state (a running session of the same id is replaced); with end, its session is freed after
        this glimpse.

        Returns the graph's outputs by name: the new state under the state outputs' names (canvas_next
        [B, R + G*G, Dc], recurrent_cls_next [B, 1, Db]), the readouts and extras, and `open_sequences` int32 [1].
        Raises UnknownSequence without start for an id with no session, ValueError for a missing or malformed scene
        or an invalid viewpoint (the session is then left as it was).
        """
        manifest = self.runner.manifest
        self.evict_idle()
        if start:
            session = Session(state=manifest.initial_state_arrays(manifest.batch))
        elif corrid in self.sessions:
            session = self.sessions[corrid]
        else:
            raise UnknownSequence(f"sequence {corrid} has no state on this server (never started, ended, idle for more "
                                  f"than {self.idle_s:g} s, or the server restarted): send its first glimpse again "
                                  f"with sequence_start=True and the scene")
        if scene is None:
            if session.scene is None:
                raise ValueError(f"sequence {corrid}: the first request of a sequence must carry the scene "
                                 f"{manifest.input(ROLE_SCENE).shape}")
            scene = session.scene
        else:
            scene = self.runner._check_scene(scene)
        centers, scales = check_viewpoints(centers, scales, batch=manifest.batch)
        self.runner._reset_state(session.state)
        extras = self.runner._step({manifest.input(ROLE_SCENE).name: scene, manifest.input(ROLE_CENTERS).name: centers,
                                    manifest.input(ROLE_SCALES).name: scales})
        session.state = {inp: np.array(self.runner._read_state(inp), copy=True) for inp, _ in manifest.state_pairs}
        session.scene, session.last_used = scene, self.clock()
        session.glimpses += 1
        self.sessions[corrid] = session
        if end:
            del self.sessions[corrid]
        outputs = {out: session.state[inp] for inp, out in manifest.state_pairs}
        outputs.update(extras)
        outputs[OPEN_SEQUENCES] = np.array([len(self.sessions)], dtype=np.int32)
        return outputs
