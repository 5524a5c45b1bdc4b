"""The bundled offline moderation model: data, training, evaluation and build."""
