"""Declarative automation on the real definitions and a real instance: what follows an ingest run."""

from dagster import AssetKey, DagsterInstance, evaluate_automation_conditions, materialize

from resources import default_resources
from voicefw_assets.assets import modeling
from voicefw_assets.assets.ingest import ingest_assets
from voicefw_assets.definitions import defs
from voicefw_assets.partitions import add_data_partitions, operator_day

from tests.test_ingest_dagster import HEADER_C, c_rows
from tests.test_mapping import land


def requested(result, name: str) -> set:
    return set(result.get_requested_partitions(AssetKey(name)))


def test_an_ingested_day_brings_its_features_and_labels_and_a_first_training(home):
    instance = DagsterInstance.get()
    first = evaluate_automation_conditions(defs=defs, instance=instance)
    assert first.total_requested == 0  # nothing landed, nothing to do

    land(home, "operator_c", "a.csv", HEADER_C + c_rows("2026-11-03", 200, "x"))
    add_data_partitions(instance, ["operator_c"], ["2026-11-03"])
    ingest = materialize(
        ingest_assets,
        partition_key=operator_day("operator_c", "2026-11-03"),
        resources=default_resources(),
        instance=instance,
    )
    assert ingest.success
    second = evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
    # only that day, although operator_a and operator_b have nothing for it
    assert requested(second, "call_features") == {"2026-11-03"}
    assert requested(second, "call_labels") == {"2026-11-03"}
    assert not requested(second, "training_set")  # features are requested, not there yet
    # no promoted model yet: nothing to score with
    assert not requested(second, "scored_calls") and not requested(second, "suspicious_ranges")

    third = evaluate_automation_conditions(defs=defs, instance=instance, cursor=second.cursor)
    assert third.total_requested == 0  # handled: not requested again until upstream changes

    features = materialize(
        [a for a in modeling.assets if a.key.to_user_string() in ("call_features", "call_labels")],
        partition_key="2026-11-03",
        resources=default_resources(),
        instance=instance,
    )
    assert features.success
    fourth = evaluate_automation_conditions(defs=defs, instance=instance, cursor=third.cursor)
    assert requested(fourth, "training_set") == {None}  # the first model, once features exist
    assert not requested(fourth, "call_features")
