"""sparkjax: process-reward RL for language models on JAX (SPARK-PRM, SPARK-CoEvolve)."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent


def _requirements(name):
  lines = (HERE / name).read_text().splitlines()
  return [l.strip() for l in lines if l.strip() and not l.startswith(("#", "-r"))]


setup(
    name="sparkjax",
    version="0.1.0",
    description=__doc__,
    python_requires=">=3.11",
    packages=find_packages(include=["sparkjax", "sparkjax.*"]),
    install_requires=_requirements("requirements.txt"),
    extras_require={
        "test": _requirements("requirements-test.txt"),
        # Accelerator builds of the same jax release; see the README's "Accelerators" section.
        "cuda12": ["jax[cuda12]==0.10.2"],
        "tpu": ["jax[tpu]==0.10.2"],
        # Compiles for TPU topologies on any machine (sparkjax.tools.plan); the version jax[tpu] pins.
        "plan": ["libtpu==0.0.42.*"],
    },
)
