"""Package discovery only (metadata lives in pyproject.toml).

`encoders/` and `tasks/` sit at the repository's top level and install as `mmeff.encoders` and
`mmeff.tasks`; their subpackages are found here so `pip install .` and `pip install -e .` agree.
"""
from setuptools import find_packages, setup

MAPPED = {"mmeff.encoders": "encoders", "mmeff.tasks": "tasks"}

packages = find_packages(include=["mmeff", "mmeff.*"])
for name, folder in MAPPED.items():
    packages += [name] + [f"{name}.{sub}" for sub in find_packages(folder)]

setup(packages=packages, package_dir=MAPPED)
