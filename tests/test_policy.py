"""Scores -> moderation result: thresholds, safe labels, and where thresholds come from."""

from shared.config import load_settings
from shared.model_registry import build_spec
from worker.policy import moderation_result

MULTI = {"id2label": {"0": "hate", "1": "harassment"}, "problem_type": "multi_label_classification",
         "thresholds": {"hate": 0.3}}
SINGLE = {"id2label": {"0": "OK", "1": "toxic"}}


def spec(config, **env):
    return build_spec("m", "/m", config, load_settings(env))


def test_model_thresholds_then_env_overrides():
    assert spec(MULTI).thresholds == {"hate": 0.3, "harassment": 0.5}
    overridden = spec(MULTI, MODEL_THRESHOLDS='{"m": {"harassment": 0.9, "unknown": 0.1}}')
    assert overridden.thresholds == {"hate": 0.3, "harassment": 0.9}


def test_label_at_threshold_is_set_and_flags():
    result = moderation_result([0.3, 0.49], spec(MULTI))
    assert result == {"flagged": True, "categories": {"hate": True, "harassment": False},
                      "category_scores": {"hate": 0.3, "harassment": 0.49}}
    assert moderation_result([0.29, 0.1], spec(MULTI))["flagged"] is False


def test_safe_label_is_reported_but_never_flags():
    single = spec(SINGLE)
    assert single.safe_labels == {"OK"} and not single.multi_label
    assert moderation_result([0.95, 0.05], single) == {
        "flagged": False, "categories": {"OK": True, "toxic": False}, "category_scores": {"OK": 0.95, "toxic": 0.05}}
    assert moderation_result([0.2, 0.8], single)["flagged"] is True


def test_safe_labels_are_configurable():
    assert spec(SINGLE, SAFE_LABELS="toxic").safe_labels == {"toxic"}


def test_served_model_id_is_the_folder_and_a_version(tmp_path):
    from shared.model_registry import served_model_id

    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "config.json").write_text('{"id2label": {"0": "hate"}}')
    first = served_model_id(str(folder), {})
    assert first.startswith("my-model-") and len(first) == len("my-model-") + 12
    assert served_model_id(str(folder) + "/", {}) == first  # a trailing slash names the same folder
    (folder / "config.json").write_text('{"id2label": {"0": "hate"}, "thresholds": {"hate": 0.3}}')
    assert served_model_id(str(folder), {}) != first  # a retrained model's config changes its version
    assert served_model_id(str(folder), {"model_version": "2024-11-30"}) == "my-model-2024-11-30"
    assert build_spec("m", str(folder), {}, load_settings({})).model_id == served_model_id(str(folder), {})
