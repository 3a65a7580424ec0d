"""Packaging for megaraptr. Users bring their own (CUDA) torch: it is not pinned here."""
from setuptools import find_packages, setup

setup(
    name="megaraptr",
    version="0.1.0",
    description="RAPTR progressive subnetwork pretraining (arXiv 2402.05913) as a DeepSpeed plugin",
    long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.9",
    packages=find_packages(include=["megaraptr", "megaraptr.*"]),
    package_data={"megaraptr.data": ["sample/*.jsonl.gz", "sample/README.md"]},
    include_package_data=True,
    install_requires=[
        "torch>=2.1",
        "deepspeed>=0.19.8,<0.20",
        "numpy",
        "pydantic>=2.7",  # megaraptr.core.config: attribute docstrings (use_attribute_docstrings)
        "tensorboard",
        "tokenizers",
        "tqdm",
    ],
    extras_require={"bench": ["matplotlib"], "hf": ["transformers"],
                    # triton: its CPU interpreter runs the fused residual-add kernel's test
                    "test": ["pytest", "pytest-xdist", "matplotlib", "transformers",
                             "triton; platform_system == 'Linux' and platform_machine == 'x86_64'"]},
    entry_points={"console_scripts": ["megaraptr-train=megaraptr.tools.train:main",
                                      "megaraptr-config=megaraptr.tools.config:main",
                                      "megaraptr-bench-quality=megaraptr.bench.quality:main"]},
)
