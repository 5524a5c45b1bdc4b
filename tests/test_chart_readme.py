"""deploy/helm/moderation/README.md documents every value: its table is generated from the `# --`
comments of values.yaml (`python -m scripts.chart readme`) and must equal what the generator writes
now, and every key of values.yaml is documented there, itself or through a documented parent.
"""

from __future__ import annotations

import yaml

from scripts.chart import CHART, README, default_of, documented_values, readme_with_table


def leaves(node, path: str = ""):
    if isinstance(node, dict) and node:
        for key, value in node.items():
            yield from leaves(value, f"{path}.{key}" if path else key)
    else:
        yield path


def test_the_readme_table_is_the_generated_one():
    text = README.read_text()
    assert text == readme_with_table(text), "README.md's values table is stale: run `python -m scripts.chart readme`"


def test_every_value_is_documented():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    documented = [key for key, _ in documented_values()]
    for key in documented:
        default_of(values, key)  # KeyError: a comment documents a key values.yaml does not have
    undocumented = [leaf for leaf in leaves(values)
                    if not any(leaf == key or leaf.startswith(key + ".") for key in documented)]
    assert not undocumented, f"values without a `# --` comment (values.yaml): {undocumented}"


def test_the_parser_reads_comments_keys_and_lists():
    text = ("# -- top\n# continued\na: 1\nb:\n  # -- nested\n  c: {d: 1}\n  # plain comment\n  e: 2\n"
            "# -- a list\nl:\n  - name: x\n    # -- not a key\n    f: 1\n")
    assert documented_values(text) == [("a", "top continued"), ("b.c", "nested"), ("l", "a list")]
