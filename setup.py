"""Maps the design card's folders onto the `mcpm_mobile` import name.

toolkit/ -> mcpm_mobile, quantize/ -> mcpm_mobile.quantize, targets/ -> mcpm_mobile.targets.
Metadata lives in pyproject.toml; this file only lists the packages.
"""
import os

from setuptools import setup

ROOTS = {"mcpm_mobile": "toolkit", "mcpm_mobile.quantize": "quantize", "mcpm_mobile.targets": "targets"}


def packages():
    found = []
    for name, folder in ROOTS.items():
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            if "__init__.py" in filenames:
                rel = os.path.relpath(dirpath, folder)
                found.append(name if rel == "." else name + "." + rel.replace(os.sep, "."))
    return found


setup(packages=packages(), package_dir=ROOTS)
