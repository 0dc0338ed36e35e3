"""The names runs carry, and dagster.yaml, which spells three of them out."""

from __future__ import annotations

import yaml

from export_platform.naming import EXPORT_TYPE_TAG, INCREMENTAL_TAG, REQUESTED_BY_TAG
from export_platform.tooling.instance import INSTANCE_YAML


def test_the_queue_limits_in_dagster_yaml_name_the_tags_runs_carry():
    limits = yaml.safe_load(INSTANCE_YAML.read_text())["run_coordinator"]["config"]["tag_concurrency_limits"]
    assert [limit["key"] for limit in limits] == [EXPORT_TYPE_TAG, REQUESTED_BY_TAG, INCREMENTAL_TAG]
