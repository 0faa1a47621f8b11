"""Builds kernels/*.cpp into the extension module ``detectron_lib._C``.

Everything else about the package lives in pyproject.toml.
"""
import glob
import os

from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

HERE = os.path.dirname(os.path.abspath(__file__))


def kernel_extensions():
    sources = sorted(glob.glob(os.path.join("kernels", "*.cpp")))
    if not sources:
        return []
    return [
        CppExtension(
            name="detectron_lib._C",
            sources=sources,
            include_dirs=[os.path.join(HERE, "kernels")],
            # -fopenmp: ATen's at::parallel_for runs serially in code built without it.
            extra_compile_args=["-O3", "-fopenmp", "-std=c++20"],
            extra_link_args=["-fopenmp"],
        )
    ]


setup(
    ext_modules=kernel_extensions(),
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
