"""Where the Triton binary and the Python backend come from, and the environment they need.

The ``nvidia-pytriton`` wheel ships ``tritonserver`` and the Python backend, but two
things must be arranged before its Python backend can run our models:

* the backend directory must contain ``triton_python_backend_stub`` built for the
  running Python version (the wheel keeps one per version elsewhere); we assemble a
  private backend directory of links plus that stub instead of writing into
  site-packages;
* the stub is linked against ``libpython3.X.so.1.0`` and finds it through the dynamic
  loader, which would pick the distribution's libpython, whose standard library does
  not match a virtual environment made from another build of Python (compiled modules
  then fail with ``undefined symbol``). Putting the running interpreter's ``LIBDIR``
  first on ``LD_LIBRARY_PATH`` makes the stub load the same libpython, and putting the
  environment's ``bin`` first on ``PATH`` makes it use the environment's packages.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from image_router.errors import TritonStartupError

__all__ = ["TritonInstall", "find_pytriton", "prepare_backend_directory", "server_environment"]


@dataclass(frozen=True)
class TritonInstall:
    """A ``tritonserver`` binary and the directory of backends it should use."""

    binary: Path
    backends: Path | None
    libraries: Path | None


def find_pytriton() -> TritonInstall:
    """Locate the server inside the installed ``nvidia-pytriton`` wheel."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonStartupError(
            "nvidia-pytriton is not installed; install it (pip install 'image-router[pytriton]') "
            "or pass --tritonserver PATH to use another Triton build"
        )
    package = Path(next(iter(spec.submodule_search_locations)))
    root = package / "tritonserver"
    binary = root / "bin" / "tritonserver"
    if not binary.is_file():
        raise TritonStartupError(f"{binary} is missing from the nvidia-pytriton install")
    libraries = package.parent / "nvidia_pytriton.libs"
    return TritonInstall(binary, root / "backends", libraries if libraries.is_dir() else None)


def prepare_backend_directory(install: TritonInstall, workdir: Path) -> Path:
    """Assemble ``workdir/backends`` with the Python backend and the matching stub."""
    if install.backends is None:
        raise TritonStartupError("no backend directory to prepare")
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = install.backends.parent / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise TritonStartupError(f"the Triton wheel has no Python backend stub for Python {version}")
    target = workdir / "backends"
    python_dir = target / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    for backend in install.backends.iterdir():
        if backend.name != "python":
            (target / backend.name).symlink_to(backend, target_is_directory=True)
    for item in (install.backends / "python").iterdir():
        if item.name != "__pycache__":
            (python_dir / item.name).symlink_to(item)
    destination = python_dir / "triton_python_backend_stub"
    shutil.copy2(stub, destination)
    return target


def _venv_bin() -> Path:
    return Path(sys.executable).parent


def server_environment(install: TritonInstall, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for ``tritonserver`` so its Python stub runs our interpreter's world."""
    env = dict(os.environ if base is None else base)
    libdirs: list[str] = []
    if sysconfig.get_config_var("Py_ENABLE_SHARED"):
        libdir = sysconfig.get_config_var("LIBDIR")
        if libdir:
            libdirs.append(str(libdir))
    if install.libraries is not None:
        libdirs.append(str(install.libraries))
    if env.get("LD_LIBRARY_PATH"):
        libdirs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(libdirs)
    env["PATH"] = os.pathsep.join([str(_venv_bin()), env.get("PATH", "")])
    # The stub's own ``sys.path[0]`` is the server's working directory; never let a
    # user's PYTHONPATH shadow the models' imports either.
    env.pop("PYTHONPATH", None)
    return env
