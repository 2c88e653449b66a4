"""The card's metadata: a huggingface_hub DatasetCardData whose dataset_info datasets reads back as the parquet's features."""

from __future__ import annotations

from typing import Any

import yaml
from datasets.info import DatasetInfosDict
from huggingface_hub import DatasetCard

from pipeline.release import card
from pipeline.release import folder as release


def manifest(licenses: dict[str, list[str]], pretty_name: str = "clipblind test release", items: int = 8) -> dict[str, Any]:
    return {"pretty_name": pretty_name, "counts": {"items": items, "licenses_per_source": licenses},
            "layouts": {"huggingface_num_bytes": 4321}}


def read_back(m: dict[str, Any]) -> DatasetCard:
    return DatasetCard(f"---\n{card.metadata_yaml(m)}---\n\n# card\n")


def test_the_hub_reads_the_cards_metadata_back_with_the_parquets_features():
    m = manifest({"generated": ["CC0-1.0"]})
    data = read_back(m).data
    assert data.to_dict() == card.metadata(m).to_dict()
    assert data["license"] == "cc0-1.0" and data["pretty_name"] == "clipblind test release"
    assert data["configs"] == [{"config_name": "default", "data_files": [{"split": "test", "path": release.PARQUET_PATH}]}]
    info = DatasetInfosDict.from_dataset_card_data(data)["default"]
    assert info.features == release.features()
    assert info.splits["test"].num_examples == 8 and info.dataset_size == 4321


def test_metadata_keys_keep_their_order_and_long_values_their_one_line():
    licenses = {f"source-{k}": ["CC-BY-4.0", "LicenseRef-All-Rights-Reserved"] for k in range(4)}
    m = manifest(licenses, pretty_name="a long pretty name " * 8, items=5000)
    text = card.metadata_yaml(m)
    keys = [line.split(":", 1)[0] for line in text.splitlines() if line[:1].isalpha()]
    assert keys == [k for k in card.METADATA_ORDER if k in keys] and keys[0] == "pretty_name"
    assert {"license_name", "license_details"} <= set(keys)
    lines = {line.split(":", 1)[0]: line for line in text.splitlines() if line[:1].isalpha()}
    for key in ("pretty_name", "license_details"):  # each whole on its own line, not folded at 80 characters
        assert yaml.safe_load(lines[key]) == {key: card.metadata(m)[key]} and len(lines[key]) > 100
    assert yaml.safe_load(text) == card.metadata(m).to_dict()
    assert read_back(m).data["size_categories"] == ["1K<n<10K"]
