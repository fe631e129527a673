"""Build entry: setuptools drives CMakeLists.txt to build the native core ``fusekernels._C``.

Everything else (name, version, dependencies, extras, package data) is in ``pyproject.toml``.
``pip install .``, ``pip install -e .`` and ``python -m build`` all come here: ``build_ext``
configures CMake with this Python and pybind11 (both from the build environment; torch is not
needed to build) and builds the module where setuptools wants it, the wheel's ``fusekernels/``
or, for an editable install, the source tree's. Extra CMake options pass through the
``CMAKE_ARGS`` environment variable (e.g. ``-DCMAKE_CXX_FLAGS=...``), the parallel level through
``CMAKE_BUILD_PARALLEL_LEVEL`` (default: all cores).
"""
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    """An extension whose sources CMake knows (no sources for setuptools to compile)."""

    def __init__(self, name: str):
        super().__init__(name, sources=[])


def _cmake() -> str:
    """The cmake of the build environment (the ``cmake`` package) or of the system."""
    try:
        import cmake

        return str(Path(cmake.CMAKE_BIN_DIR) / "cmake")
    except ImportError:
        found = shutil.which("cmake")
        if found is None:
            raise RuntimeError("building fusekernels needs CMake >= 3.18: pip install cmake") from None
        return found


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        import pybind11

        target = Path(self.get_ext_fullpath(ext.name)).resolve()  # .../fusekernels/_C.<abi>.so
        build_dir = Path(self.build_temp).resolve() / "cmake"
        build_dir.mkdir(parents=True, exist_ok=True)
        config = "Debug" if self.debug else "Release"
        cmake = _cmake()
        args = [f"-DPython_EXECUTABLE={sys.executable}", f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
                f"-DCMAKE_BUILD_TYPE={config}", f"-DFUSEKERNELS_MODULE_DIR={target.parent}",
                *shlex.split(os.environ.get("CMAKE_ARGS", ""))]
        subprocess.run([cmake, "-S", str(ROOT), "-B", str(build_dir), *args], check=True)
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL") or str(os.cpu_count() or 1)
        subprocess.run([cmake, "--build", str(build_dir), "--config", config, "-j", jobs], check=True)
        built = sorted(target.parent.glob("_C.*"))
        if target not in built:
            raise RuntimeError(f"CMake did not write {target.name} into {target.parent} (found {built})")


setup(ext_modules=[CMakeExtension("fusekernels._C")], cmdclass={"build_ext": CMakeBuild})
