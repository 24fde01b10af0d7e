"""fhgs_ros: FHGS semantic Gaussian-surfel mapping for ROS 2 (rclpy).

Installed with ``pip install --no-build-isolation -e .`` after torch (see the Makefile);
the native rasterizer extension is described in ``setup_ext.py``.
"""

import os
from glob import glob

from setuptools import find_packages, setup

try:
    from setup_ext import native_extensions  # noqa: E402  (needs torch at build time)
except ImportError as exc:  # pragma: no cover - building without torch
    print(f"fhgs_ros: native rasterizer not built ({exc})")
    native_extensions = lambda: ({}, [])  # noqa: E731

cmdclass, ext_modules = native_extensions()

setup(
    name="fhgs_ros",
    version="0.1.0",
    description="Feature-Homogenized Gaussian Splatting (FHGS) mapping node for ROS 2",
    license="Apache-2.0",
    packages=find_packages(include=["fhgs_ros", "fhgs_ros.*"]),
    package_data={"fhgs_ros": ["cuda/*.h", "cuda/*.cpp", "cuda/*.cu", "cuda/README.md", "cuda/emu/*.h",
                                "cuda/emu/*.cpp", "cuda/emu/cub/device/*.cuh"]},
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/fhgs_ros"]),
        ("share/fhgs_ros", ["package.xml"]),
        ("share/fhgs_ros/launch", glob("launch/*.py")),
        ("share/fhgs_ros/config", [f for f in glob("config/*") if os.path.isfile(f)]),
        ("share/fhgs_ros/config/sros2", glob("config/sros2/*")),
    ],
    python_requires=">=3.10",
    install_requires=["numpy", "scipy", "pillow", "pyyaml", "tqdm", "safetensors", "scikit-image"],
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    entry_points={
        "console_scripts": [
            "fhgs-map = fhgs_ros.cli:map_main",
            "fhgs-bench = fhgs_ros.cli:bench_main",
            "fhgs-node = fhgs_ros.ros.mapper_node:main",
            "fhgs-bag = fhgs_ros.bag.convert:main",
            "fhgs-replay = fhgs_ros.ros.replay:main",
        ],
    },
    zip_safe=False,
)
