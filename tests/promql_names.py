"""Metric names used by PromQL expressions, found with regular expressions instead of a parser.

Good enough for the expressions in grafana/ and prometheus/: strings, label matchers, range
selectors, `by (...)`-style label lists, Grafana variables and numbers are removed, and every
identifier that is left and is not a PromQL function or keyword is a metric name. A typo in a
function name therefore shows up as an unknown metric name too, which is what a check wants.
"""

from __future__ import annotations

import re

# PromQL functions (Prometheus 2.x and 3.x) and aggregation operators.
FUNCTIONS = frozenset("""
    abs absent absent_over_time acos acosh asin asinh atan atanh avg_over_time ceil changes clamp
    clamp_max clamp_min cos cosh count_over_time day_of_month day_of_week day_of_year days_in_month
    deg delta deriv double_exponential_smoothing exp first_over_time floor histogram_avg
    histogram_count histogram_fraction histogram_quantile histogram_stddev histogram_stdvar
    histogram_sum holt_winters hour idelta increase info irate label_join label_replace
    last_over_time ln log10 log2 mad_over_time max_over_time min_over_time minute month pi
    predict_linear present_over_time quantile_over_time rad rate resets round scalar sgn sin sinh
    sort sort_by_label sort_by_label_desc sort_desc sqrt stddev_over_time stdvar_over_time
    sum_over_time tan tanh time timestamp vector year
""".split())
AGGREGATIONS = frozenset("""
    avg bottomk count count_values group limit_ratio limitk max min quantile stddev stdvar sum topk
""".split())
# Keywords, set operators, modifiers (`@ start()`), and the float literals Inf and NaN.
KEYWORDS = frozenset("""
    and or unless atan2 bool by without on ignoring group_left group_right offset start end inf nan
""".split())
NOT_METRICS = FUNCTIONS | AGGREGATIONS | KEYWORDS

_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_COMMENT = re.compile(r"#[^\n]*")
_LABEL_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_LABEL_LIST = re.compile(r"(?<![\w:])(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)",
                         re.IGNORECASE)
_GRAFANA_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+|\[\[\w+\]\]")
_NUMBER = re.compile(r"(?<![\w:.])\.?\d[\w.]*")
_IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def strip_non_names(expr: str) -> str:
    """The expression without anything that may hold identifiers other than metric names."""
    text = _STRING.sub('""', expr)
    text = _COMMENT.sub(" ", text)
    text = _GRAFANA_VARIABLE.sub(" ", text)
    text = _LABEL_MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _LABEL_LIST.sub(" ", text)
    return _NUMBER.sub(" ", text)


def metric_names(expr: str) -> set[str]:
    """Every metric name an expression selects, e.g. {"up"} for 'sum by (job) (up{job="api"})'."""
    names = set()
    for name in _IDENTIFIER.findall(strip_non_names(expr)):
        if name.lower() not in NOT_METRICS:
            names.add(name)
    return names


# Grafana template-variable queries that wrap a series selector or an expression.
_VARIABLE_QUERY = re.compile(r"^\s*(?P<function>label_values|query_result)\s*\((?P<inner>.*)\)\s*$", re.DOTALL)
_LABEL_NAME = re.compile(r"^\s*[A-Za-z_]\w*\s*$")


def grafana_variable_expr(query: str) -> str:
    """The PromQL inside a Grafana Prometheus variable query; "" for label_values(label)."""
    match = _VARIABLE_QUERY.match(query)
    if not match:
        raise ValueError(f"unsupported Grafana variable query: {query!r}")
    inner = match.group("inner")
    if match.group("function") == "query_result":
        return inner
    selector, comma, label = inner.rpartition(",")
    if comma and _LABEL_NAME.match(label):
        return selector  # label_values(selector, label)
    return "" if _LABEL_NAME.match(inner) else inner  # label_values(label) or label_values(selector)
