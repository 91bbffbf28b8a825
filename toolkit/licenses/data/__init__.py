"""Package data: licenses.json (a package so that setuptools ships the JSON file)."""
