"""The API process never imports torch or transformers (its image does not even install them)."""

import subprocess
import sys

from tests.support import ROOT

CHECK = """
import sys
from api import create_app
from shared.config import load_settings
app = create_app(load_settings({"REDIS_URL": "redis://127.0.0.1:1/0"}))
app.test_client().get("/openapi.json")
heavy = sorted(name for name in ("torch", "transformers", "worker") if name in sys.modules)
print(heavy)
sys.exit(1 if heavy else 0)
"""


def test_api_does_not_import_torch_transformers_or_the_worker():
    result = subprocess.run([sys.executable, "-c", CHECK], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
