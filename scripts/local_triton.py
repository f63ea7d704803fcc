"""A local tritonserver for the tests (tests/test_triton.py) and scripts/serve_bench.py: nvidia-pytriton's server on
the loopback interface, and the inputs of one glimpse request. Not part of canvit-export: import it from its path."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_tritonserver(python_env: Path) -> tuple[Path, Path]:
    """(tritonserver binary, the Python backend stub for the env's Python) of the nvidia-pytriton wheel installed in
    the virtual environment `python_env`. Raises FileNotFoundError naming what to install."""
    found = sorted(python_env.glob("lib/python3.*/site-packages/pytriton/tritonserver/bin/tritonserver"))
    if not found:
        raise FileNotFoundError(f"no tritonserver in {python_env}: create it with scripts/setup.sh (a venv with "
                                f"nvidia-pytriton, numpy<2 and canvit-runtime)")
    server = found[0]
    version = server.parents[4].name.removeprefix("python")  # lib/python3.12/site-packages/pytriton/...
    stub = server.parents[1] / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        raise FileNotFoundError(f"{stub}: nvidia-pytriton ships no Python backend stub for Python {version}")
    return server, stub


class LocalTriton:
    """The tritonserver of nvidia-pytriton, on the loopback interface only, serving `repository` (CPU).

    Its Python backend runs the stub with `python_env`'s interpreter (put first on PATH; the stub finds its
    site-packages from it). Ports are chosen free unless given. Use as a context manager, or start()/stop().
    """

    def __init__(self, repository: Path, python_env: Path, *, workdir: Path, grpc_port: int | None = None,
                 http_port: int | None = None) -> None:
        self.repository, self.python_env, self.workdir = Path(repository), Path(python_env), Path(workdir)
        self.grpc_port, self.http_port = grpc_port or free_port(), http_port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.workdir / "tritonserver.log"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def _layout(self) -> Path:
        """A server folder: the wheel's tritonserver tree with the stub in backends/python (as PyTriton lays it)."""
        server, stub = find_tritonserver(self.python_env)
        root = self.workdir / "tritonserver"
        if not root.exists():
            shutil.copytree(server.parents[1], root, ignore=shutil.ignore_patterns("python_backend_stubs"))
            shutil.copy(stub, root / "backends" / "python" / "triton_python_backend_stub")
        return root

    def start(self, timeout_s: float = 120.0) -> LocalTriton:
        """Start the server and wait until it is ready; RuntimeError with the log's last lines if it does not."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        root = self._layout()
        python = self.python_env / "bin" / "python"
        libdir = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
                                capture_output=True, text=True, check=True).stdout.strip()
        libs = next(self.python_env.glob("lib/python3.*/site-packages/nvidia_pytriton.libs"))
        env = {**os.environ, "LD_LIBRARY_PATH": f"{libs}:{libdir}:{os.environ.get('LD_LIBRARY_PATH', '')}",
               "PATH": f"{self.python_env / 'bin'}:{os.environ['PATH']}"}
        env.pop("PYTHONPATH", None)
        command = [str(root / "bin" / "tritonserver"), "--model-repository", str(self.repository),
                   "--backend-directory", str(root / "backends"), "--cache-directory", str(root / "caches"),
                   "--http-address", "127.0.0.1", "--http-port", str(self.http_port),
                   "--grpc-address", "127.0.0.1", "--grpc-port", str(self.grpc_port),
                   "--allow-metrics", "false", "--allow-sagemaker", "false", "--allow-vertex-ai", "false",
                   "--exit-timeout-secs", "5"]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"tritonserver exited ({self.process.returncode}): {self.log_tail()}")
            if self.ready():
                return self
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"tritonserver not ready after {timeout_s:.0f} s: {self.log_tail()}")

    def ready(self) -> bool:
        import tritonclient.grpc as grpcclient

        try:
            return bool(grpcclient.InferenceServerClient(self.grpc_url).is_server_ready())
        except Exception:
            return False

    def log_tail(self, lines: int = 15) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return " | ".join(line for line in text.splitlines()[-lines:] if line.strip())

    def kill(self) -> None:
        """SIGKILL the server (a crash, for restart tests)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        """SIGTERM the server (its process group: the Python backend stubs too), SIGKILL after 20 s."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill()

    def __enter__(self) -> LocalTriton:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def default_python_env() -> Path:
    """The Triton server's Python environment: $CANVIT_TRITON_ENV, else .venv/triton beside this checkout's .venv
    (scripts/setup.sh makes it: nvidia-pytriton's Python backend needs numpy < 2, canvit-pytorch numpy >= 2.2)."""
    if "CANVIT_TRITON_ENV" in os.environ:
        return Path(os.environ["CANVIT_TRITON_ENV"])
    return Path(sys.prefix) / "triton"


def glimpse_inputs(scene: np.ndarray | None, centers: Any, scales: Any) -> list[Any]:
    """A glimpse request's inputs for tritonclient.grpc: scene [1, 3, S, S] float32 (None: the Python model reuses the
    sequence's last scene), centers [1, 2] (row, col in [-1, 1]) and scales [1] (in (0, 1]), as float32: e.g. a
    canvit_runtime.policies.Viewpoints' centers and scales."""
    import tritonclient.grpc as grpcclient

    arrays = ([] if scene is None else [("scene", scene)]) + [("centers", np.asarray(centers, np.float32)),
                                                               ("scales", np.asarray(scales, np.float32))]
    tensors = []
    for name, array in arrays:
        tensor = grpcclient.InferInput(name, list(array.shape), "FP32")
        tensor.set_data_from_numpy(np.ascontiguousarray(array, np.float32))
        tensors.append(tensor)
    return tensors
