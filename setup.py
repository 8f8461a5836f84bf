"""Packaging only: the top-level folders components/, flows/ and catalog/ install as vlforge.components,
vlforge.flows and vlforge.catalog (the design card's layout, one import namespace). Metadata is in pyproject.toml."""
from setuptools import find_packages, setup

MAPPED = ("components", "flows", "catalog")
packages = ["vlforge", *(f"vlforge.{p}" for p in find_packages("vlforge"))]
package_dir = {"vlforge": "vlforge"}
for root in MAPPED:
    packages.append(f"vlforge.{root}")
    package_dir[f"vlforge.{root}"] = root
    packages.extend(f"vlforge.{root}.{sub}" for sub in find_packages(root))

setup(packages=packages, package_dir=package_dir, package_data={"": ["recipes/*.yaml"]})
