"""The dataset card: README.md with Hugging Face YAML metadata, rendered from a jinja2 template.

The metadata block (configs, dataset_info features, license, task_categories,
size_categories) is a `huggingface_hub.DatasetCardData` built here from the release's manifest;
`datasets` writes its dataset_info from the same `release.features()` that typed the parquet,
and each diagnostics configuration's from its schema (`records.SCHEMAS`), so it always matches
the parquets. The prose comes from the template in `data_cards/`; the diagnostics section renders
the manifest's `diagnostics` (`pipeline.diagnostics.summary.summarise`) with the names
`pipeline.diagnostics.records` defines.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml
from datasets import DatasetInfo, Features, SplitDict, SplitInfo
from datasets.info import DatasetInfosDict
from huggingface_hub import DatasetCardData

from pipeline.core import patterns
from pipeline.diagnostics import records
from pipeline.release import folder as release

DEFAULT_TEMPLATE = Path(__file__).resolve().parents[2] / "data_cards" / "benchmark_card.md.j2"


# What "verified" means, in the card, the README and metrics/accept.json (`verified`) alike.
VERIFIED_DEFINITION = (
    "A question is `verified` when at least `accept.verifiers` people other than its writer answered it and "
    "every one of them chose the writer's answer for both images; it is `adjudicated` when the lead decided it "
    "(`clipblind adjudicate`): accepted as written after a verifier answered otherwise, or accepted with the "
    "lead's corrected answers."
)

# SPDX ids whose Hub licence id is not simply the lower-cased SPDX id.
HUB_LICENSE_IDS = {"PDDL-1.0": "pddl", "ODC-By-1.0": "odc-by", "ODbL-1.0": "odbl"}


def size_category(n: int) -> str:
    """The Hub's size_categories bucket for `n` examples."""
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return label
    return "n>1M"


def hub_license(counts: Mapping[str, Any]) -> dict[str, Any]:
    """The card's licence fields: one Hub licence id when all images share one, else `other`."""
    licenses = sorted({lic for per_source in counts["licenses_per_source"].values() for lic in per_source})
    if len(licenses) == 1 and licenses[0] != "unknown":
        return {"license": HUB_LICENSE_IDS.get(licenses[0], licenses[0].lower())}
    return {
        "license": "other",
        "license_name": "mixed-per-source",
        "license_details": "; ".join(f"{s}: {', '.join(v)}" for s, v in counts["licenses_per_source"].items()),
    }


# The order of the card's metadata keys (the Hub reads any order; a stable one keeps the card's bytes stable).
METADATA_ORDER = ("pretty_name", "license", "license_name", "license_details", "language", "task_categories",
                  "size_categories", "annotations_creators", "tags", "configs", "dataset_info")
CONFIG = release.DEFAULT_CONFIG


def metadata(manifest: Mapping[str, Any]) -> DatasetCardData:
    """The card's metadata for a release manifest: the items' configuration and each diagnostics one it carries."""
    counts = manifest["counts"]
    num_bytes = manifest["layouts"]["huggingface_num_bytes"]
    extra = {name: c for name, c in manifest.get("configs", {}).items() if name != CONFIG}
    data = DatasetCardData(
        pretty_name=manifest["pretty_name"],
        language=["en"],
        task_categories=["visual-question-answering", "zero-shot-image-classification"],
        size_categories=[size_category(counts["items"])],
        annotations_creators=["expert-generated"],
        tags=["mmvp", "clip-blind", "benchmark", "visual-patterns"],
        configs=[{"config_name": name, "data_files": [{"split": release.SPLIT, "path": release.config_path(name)}]}
                 for name in (CONFIG, *extra)],
        **hub_license(counts),
    )
    infos = {CONFIG: _info(release.features(), num_bytes, counts["items"])}
    for name, c in extra.items():
        infos[name] = _info(Features.from_arrow_schema(records.SCHEMAS[name]), c["num_bytes"], c["rows"])
    DatasetInfosDict(infos).to_dataset_card_data(data)
    return data


def _info(features: Features, num_bytes: int, rows: int) -> DatasetInfo:
    split = SplitInfo(name=release.SPLIT, num_bytes=num_bytes, num_examples=rows)
    return DatasetInfo(features=features, splits=SplitDict({release.SPLIT: split}), dataset_size=num_bytes)


def metadata_yaml(manifest: Mapping[str, Any]) -> str:
    """The card's YAML metadata block (without its `---` fences) for a release manifest."""
    fields = metadata(manifest).to_dict()
    ordered = {key: fields[key] for key in METADATA_ORDER if key in fields}
    ordered.update((key, value) for key, value in fields.items() if key not in ordered)
    # DatasetCardData.to_yaml folds values at 80 characters; the card keeps each value on one line
    return yaml.safe_dump(ordered, sort_keys=False, allow_unicode=True, width=1000)


def renderer(template_path: str | Path = DEFAULT_TEMPLATE) -> Callable[[Mapping[str, Any], str], str]:
    """A function (manifest, changelog text) → README.md text using the template at `template_path`."""
    import jinja2

    path = Path(template_path)
    if not path.exists():
        raise FileNotFoundError(f"card template not found: {path}")
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(path.parent)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,  # markdown, not HTML; free text is escaped by the `md` filter
    )
    env.filters["md"] = escape_markdown
    env.filters["pattern"] = pattern_name
    env.filters["in_pattern_order"] = lambda rows: [(name, rows[name]) for name in patterns.in_order(rows)]
    template = env.get_template(path.name)

    def render(manifest: Mapping[str, Any], changelog: str) -> str:
        meta = metadata_yaml(manifest)
        body = changelog.split("\n", 1)[1].strip() if changelog.startswith("# ") else changelog
        # versions sit one heading level below the card's "Changelog" section
        changelog_body = "\n".join("#" + line if line.startswith("## ") else line for line in body.splitlines())
        return template.render(metadata_yaml=meta, m=manifest, changelog=changelog_body, patterns=patterns.PATTERNS,
                               verified_definition=VERIFIED_DEFINITION, d=DIAGNOSTICS_NAMES)

    return render


def config_of(record: type) -> str:
    """The release configuration whose rows are `record`s (`records.CONFIGS`)."""
    return next(name for name, rows in records.CONFIGS.items() if rows is record)


# The names the card's diagnostics section shows, as `pipeline.diagnostics.records` defines them.
DIAGNOSTICS_NAMES = {
    "configs": tuple(records.CONFIGS),
    "audit_config": config_of(records.TextBias),
    "encoders_config": config_of(records.EncoderPair),
    "models_config": config_of(records.ModelQuestion),
    "predictions_config": config_of(records.Prediction),
    "buckets": records.BUCKETS,
    "hidden": records.HIDDEN_IN_PLAIN_SIGHT,
    "blind": records.ENCODER_BLIND,
    "image": records.IMAGE,
    "no_image": records.NO_IMAGE,
    "blank": records.BLANK,
    "pixel_shuffle": records.PIXEL_SHUFFLE,
    "token_shuffle": records.TOKEN_SHUFFLE,
}


def pattern_name(pattern: str) -> str:
    """A pattern (any spelling) by the paper's name, as the card names patterns."""
    return patterns.lookup(pattern).paper


def escape_markdown(text: Any) -> str:
    """Text safe to place in a markdown table cell or line (no HTML, no table breaks)."""
    value = str(text)
    for char, repl in (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"), ("|", "\\|"), ("\n", " ")):
        value = value.replace(char, repl)
    return value
