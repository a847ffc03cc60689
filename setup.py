"""Installs the `causalneg` package; metadata comes from settings.ini (nbdev 2 convention)."""

from configparser import ConfigParser
from setuptools import find_packages, setup

cfg = ConfigParser(delimiters=["="])
cfg.read("settings.ini", encoding="utf-8")
cfg = cfg["DEFAULT"]

setup(
    name=cfg["lib_name"],
    version=cfg["version"],
    description=cfg["description"],
    author=cfg["author"],
    license="Apache-2.0",
    packages=find_packages(include=["causalneg", "causalneg.*"]),
    python_requires=">=" + cfg["min_python"],
    install_requires=cfg.get("requirements", "").split(),
    extras_require={
        "dev": cfg.get("dev_requirements", "").split(),
        # local LLM backend: OpenAI-compatible llama.cpp server (compiles llama.cpp from the sdist)
        "llm": ["llama-cpp-python[server]==0.3.36"],
    },
    include_package_data=True,
    zip_safe=False,
)
