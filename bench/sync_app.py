"""The original design, kept for the benchmark only: a synchronous Flask endpoint, one text per request.

Every gunicorn worker process loads the model (after fork) and scores each request's text alone,
in the request thread, with torch in fp32 (no ONNX Runtime, no quantization), as that app did.
`gunicorn --config api/gunicorn_conf.py "bench.sync_app:create_app()"`.
"""

from __future__ import annotations

from flask import Flask, jsonify, request

from bench.inprocess import load_classifier
from shared.config import get_settings


def create_app() -> Flask:
    settings = get_settings()
    classifier = load_classifier(settings.models[settings.default_model], settings.device, engine="torch",
                                 quantize="none", threads=settings.torch_threads)
    labels = [classifier.config.id2label[i] for i in range(classifier.config.num_labels)]
    app = Flask(__name__)

    @app.get("/healthz")
    def healthz():
        return jsonify({"status": "ok"})

    @app.post("/moderate")
    def moderate():
        text = request.get_json()["input_text"]
        return jsonify({"category_scores": dict(zip(labels, classifier.scores([text])[0]))})

    return app
