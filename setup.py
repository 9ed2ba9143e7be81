"""raggedkv: head-level KV-cache compression with Triton kernels over a packed ragged cache."""

from pathlib import Path

from setuptools import find_packages, setup

# The repository keeps the user's top-level layout (kernels/, engine/) but installs it under the raggedkv
# namespace: a bare `kernels` package would shadow Hugging Face's `kernels`, which transformers probes at import.
SUBPACKAGES = {"kernels": "raggedkv.kernels", "engine": "raggedkv.engine"}

packages = ["raggedkv"]
package_dir = {"raggedkv": "raggedkv"}
for folder, name in SUBPACKAGES.items():
    for sub in find_packages(include=[folder, f"{folder}.*"]):
        packages.append(sub.replace(folder, name, 1))
        package_dir[sub.replace(folder, name, 1)] = sub.replace(".", "/")

setup(
    name="raggedkv",
    version="0.1.0",
    description="Head-level KV-cache compression (HeadKV and baselines) on a packed ragged cache with Triton kernels",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=packages,
    package_dir=package_dir,
    package_data={"raggedkv.engine": ["data/*.json", "data/*.txt"]},
    install_requires=["torch>=2.6", "triton>=3.3", "numpy", "transformers>=5.17,<5.24", "tqdm", "matplotlib"],
    extras_require={
        "test": ["pytest", "pytest-benchmark", "hypothesis"],
        "gguf": ["gguf>=0.10", "accelerate"],
        "eval": ["rouge-score", "rapidfuzz"],  # transformers' GGUF loader needs accelerate
    },
    entry_points={"console_scripts": ["raggedkv=raggedkv.engine.cli:main"]},
)
