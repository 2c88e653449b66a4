"""croissant.json: a release described as Croissant 1.0 JSON-LD, with its responsible-AI fields.

What the datasets tracks of ML venues ask for. The distribution lists every parquet of the release
(one per configuration) and the webdataset shards as FileObjects with their sha256 and a contentUrl
relative to the release folder; each configuration is a RecordSet whose fields are typed from the
parquet's own arrow schema (an embedded image is an ImageObject read from its `bytes`). The
responsible-AI fields (http://mlcommons.org/croissant/RAI/) come from the manifest: how images were
collected and pairs mined, the annotation protocol (writers, then verifiers), biases and limitations
(CLIP-blind by construction; random-weight encoders when so), personal information, use cases,
licences per source, and how versions are maintained. `mlcroissant` reads it offline.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.diagnostics import records
from pipeline.release import card
from pipeline.release import folder as release

CONFORMS_TO = "http://mlcommons.org/croissant/1.0"
PARQUET = "application/x-parquet"
TAR = "application/x-tar"
# The JSON-LD context of Croissant 1.0 (the one `mlcroissant` writes for 1.0), with the RAI namespace.
CONTEXT: dict[str, Any] = {
    "@language": "en",
    "@vocab": "https://schema.org/",
    "citeAs": "cr:citeAs",
    "column": "cr:column",
    "conformsTo": "dct:conformsTo",
    "cr": "http://mlcommons.org/croissant/",
    "rai": "http://mlcommons.org/croissant/RAI/",
    "data": {"@id": "cr:data", "@type": "@json"},
    "dataType": {"@id": "cr:dataType", "@type": "@vocab"},
    "dct": "http://purl.org/dc/terms/",
    "equivalentProperty": "cr:equivalentProperty",
    "examples": {"@id": "cr:examples", "@type": "@json"},
    "extract": "cr:extract",
    "field": "cr:field",
    "fileProperty": "cr:fileProperty",
    "fileObject": "cr:fileObject",
    "fileSet": "cr:fileSet",
    "format": "cr:format",
    "includes": "cr:includes",
    "isLiveDataset": "cr:isLiveDataset",
    "jsonPath": "cr:jsonPath",
    "key": "cr:key",
    "md5": "cr:md5",
    "parentField": "cr:parentField",
    "path": "cr:path",
    "recordSet": "cr:recordSet",
    "references": "cr:references",
    "regex": "cr:regex",
    "repeated": "cr:repeated",
    "replace": "cr:replace",
    "samplingRate": "cr:samplingRate",
    "sc": "https://schema.org/",
    "separator": "cr:separator",
    "source": "cr:source",
    "subField": "cr:subField",
    "transform": "cr:transform",
}

DEFAULT_DESCRIPTION = (
    "One row per image of a pair, with the pair's question: `pair_id` joins the two rows of a pair, `member` says "
    "which image it is, `answer` is the right option for that image. A model scores a pair only when it answers both "
    "of its questions right."
)
# Unique keys of the diagnostics records that have one (a Prediction repeats a question per condition and seed).
KEYS: dict[type, tuple[str, ...]] = {records.TextBias: ("item_id",), records.EncoderPair: ("encoder", "pair_id"),
                                     records.ModelQuestion: ("model", "item_id")}
ITEM_KEY = ("item_id",)


def data_type(kind: pa.DataType) -> str:
    """The Croissant dataType of an arrow type (a list's is its values' type: the field is `repeated`)."""
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return data_type(kind.value_type)
    if pa.types.is_struct(kind):
        return "sc:ImageObject"  # the only struct a release holds: an embedded image {bytes, path}
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return "sc:Text"
    if pa.types.is_boolean(kind):
        return "sc:Boolean"
    if pa.types.is_integer(kind):
        return f"cr:{'U' if pa.types.is_unsigned_integer(kind) else ''}Int{kind.bit_width}"
    if pa.types.is_floating(kind):
        return f"cr:Float{kind.bit_width}"
    raise release.ReleaseError(f"no Croissant dataType for arrow type {kind}: describe the column's type in croissant.py")


def record_set(config: str, path: str, schema: pa.Schema, description: str) -> dict[str, Any]:
    """One configuration as a RecordSet: a field per column of its parquet, read from that column."""
    fields = []
    for column in schema:
        source: dict[str, Any] = {"fileObject": {"@id": path}, "extract": {"column": column.name}}
        if pa.types.is_struct(column.type):
            source["transform"] = {"jsonPath": "bytes"}
        field: dict[str, Any] = {"@type": "cr:Field", "@id": f"{config}/{column.name}", "name": column.name,
                                 "dataType": data_type(column.type), "source": source}
        if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
            field["repeated"] = True
        fields.append(field)
    described: dict[str, Any] = {"@type": "cr:RecordSet", "@id": config, "name": config, "description": description}
    key = ITEM_KEY if config == release.DEFAULT_CONFIG else KEYS.get(records.CONFIGS[config])
    if key:
        described["key"] = [{"@id": f"{config}/{k}"} for k in key]
    described["field"] = fields
    return described


def _doc(record: type) -> str:
    return " ".join((record.__doc__ or "").split())


def _file_object(path: str, data: bytes, encoding: str, description: str) -> dict[str, Any]:
    return {"@type": "cr:FileObject", "@id": path, "name": path, "description": description, "contentUrl": path,
            "encodingFormat": encoding, "contentSize": f"{len(data)} B", "sha256": release.sha256_hex(data)}


def _license_url(spdx: str) -> str:
    return spdx if spdx.startswith("LicenseRef-") or spdx == "unknown" else f"https://spdx.org/licenses/{spdx}.html"


def responsible_ai(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The RAI fields of a release, from its manifest."""
    p, c = manifest["provenance"], manifest["counts"]
    funnel = p.get("funnel", {})
    encoders = p.get("encoders", {})
    random_init = p.get("random_init_encoders", [])
    enc = "; ".join(f"{role}: {e.get('kind')} {e.get('model')} weights {e.get('weights')}"
                    f"{' (RANDOM INITIALISATION)' if e.get('random_init') else ''}" for role, e in encoders.items())
    licences = "; ".join(f"{s}: {', '.join(v)}" for s, v in c["licenses_per_source"].items())
    annotation = p.get("annotation") or {}
    accuracy = annotation.get("human_accuracy") or {}
    balance = manifest.get("answer_balance")
    diagnostics = manifest.get("diagnostics")
    biases = [
        "CLIP-blind by construction: pairs are kept only where the CLIP encoder sees the two images as nearly the same "
        f"(cosine > {p.get('clip_threshold')}) and DINOv2 sees them as different (cosine < {p.get('dino_threshold')}); "
        "models built on CLIP-like encoders are expected to fail more often than others, which is what the benchmark "
        "measures, and the pairs reflect these encoders, thresholds and corpus.",
        "Visual patterns are as unbalanced as the corpus: pairs per pattern "
        + ", ".join(f"{k} {n}" for k, n in c["pairs_per_pattern"].items() if n) + ".",
    ]
    if balance:
        biases.append(f"Answer position balanced per pair (seed {balance['seed']}): the first image's answer is (a) in "
                      f"{balance['first_answer_a']} and (b) in {balance['first_answer_b']} of {balance['pairs']} pairs.")
    if diagnostics:
        flagged = diagnostics.get("text_bias", {}).get("flagged", [])
        biases.append(f"{len(flagged)} questions whose right answer text alone predicts above "
                      f"{diagnostics.get('text_bias_threshold')} are listed for review (configuration "
                      f"`{card.config_of(records.TextBias)}`, column text_bias_flagged); none were dropped.")
    limitations = [
        "Two options per question: chance is 50 % per question and 25 % per pair.",
        "Questions and statements are written in English by a small group of annotators; their phrasing carries "
        "their judgement.",
        "Withheld images are fetched from their sources; a source that changes or disappears breaks those rows.",
    ]
    if random_init:
        warning = (f"This release was mined with RANDOMLY INITIALISED encoders ({', '.join(random_init)}): its pairs "
                   "demonstrate the pipeline and say nothing about what CLIP or DINOv2 can see. Do not report "
                   "numbers on it as a benchmark.")
        biases.insert(0, warning)
        limitations.insert(0, warning)
    return {
        "rai:dataCollection": (
            f"Images from an existing corpus ({', '.join(c['licenses_per_source'])}): {funnel.get('corpus_files')} files "
            f"read, {funnel.get('images')} images decoded; candidate pairs found by {p.get('search')} search over CLIP "
            f"embeddings ({funnel.get('clip_candidates')} candidates), {funnel.get('pairs_mined')} pairs mined, "
            f"{funnel.get('pairs_packaged')} packaged. Encoders: {enc}."
        ),
        "rai:dataCollectionType": ["Mined from an existing image corpus", "Human-written questions"],
        "rai:dataCollectionRawData": (
            f"Licences per source: {licences}. {c['images_redistributed']} images are included as bytes, "
            f"{c['images_withheld']} withheld (their licence forbids redistribution: withheld.csv and fetch_images.py "
            "fetch them from their source and check their sha256)."
        ),
        "rai:dataPreprocessingProtocol": [
            "Every image passes one canonical decode (EXIF-upright 8-bit RGB) before the encoders, the annotators and "
            "this release see it; released bytes are the display copies annotators judged: "
            + json.dumps(p.get("image_encoding", {}), sort_keys=True),
        ],
        "rai:dataAnnotationProtocol": [
            "Writers saw each pair side by side in Label Studio and wrote one question with two options, (a) and (b), "
            "whose right answer differs between the two images, chose the visual pattern it tests and, where they "
            "could, a statement true of each image.",
            "Verifiers, other than the writer, answered each image's question without seeing the writer's answer. "
            + card.VERIFIED_DEFINITION,
        ],
        "rai:dataAnnotationPlatform": ["Label Studio (open source), run locally on 127.0.0.1 with one account per person"],
        "rai:dataAnnotationAnalysis": [
            f"Verifier answers in this release: {c['verification']['verifier_answers']}, agreeing with the released "
            f"answers in {c['verification']['verifier_accuracy']} of them; pairs verified "
            f"{c['verification']['verified_pairs']}, adjudicated {c['verification']['adjudicated_pairs']}.",
            f"Human verification accuracy over every question verifiers answered: per question "
            f"{accuracy.get('per_question')}, per pair {accuracy.get('per_pair')}.",
        ],
        "rai:annotationsPerItem": (f"One writer per pair; {c['verification']['verifier_answers']} verifier answers over "
                                   f"{c['items']} questions"),
        "rai:machineAnnotationTools": [
            f"Pairs proposed by encoders ({enc}); a person wrote and others verified every released question."
            + (f" Blind gate: {manifest['gate']['model']} answered every question without its image "
               f"({manifest['gate']['flagged_items']} flagged)." if manifest.get("gate") else ""),
        ],
        "rai:dataBiases": biases,
        "rai:dataLimitations": limitations,
        "rai:dataUseCases": [
            "Evaluating what vision-language models and image encoders see: per pattern, and per pair (a pair counts "
            "only when both of its questions are answered right). Configurations beside the test split say why "
            "models fail (diagnostics, encoders, models, predictions) where they were computed.",
            "Not a training set: training on it makes its scores meaningless.",
        ],
        "rai:dataSocialImpact": (
            "Shows where models built on CLIP-like encoders fail to see differences people see; the images may show "
            "people, places and text as the source corpus does."
        ),
        "rai:personalSensitiveInformation": [
            "Images are not screened for people, faces or personal information beyond what their sources did; "
            "questions ask about visual patterns (orientation, colour, count, ...), not identities.",
            "Annotators' names and accounts are not released.",
        ],
        "rai:dataReleaseMaintenancePlan": (
            "Semantic versions; CHANGELOG.md names every added, removed and changed pair; SHA256SUMS covers every file "
            "(`sha256sum -c SHA256SUMS`); a takedown request becomes a new version without the pair "
            "(`clipblind remove`); released versions never change."
        ),
    }


def describe(manifest: Mapping[str, Any], files: Mapping[str, bytes]) -> bytes:
    """croissant.json of a rendered release (its manifest and files: `folder.render_release`'s `describe`)."""
    distribution = []
    record_sets = []
    for config, info in manifest["configs"].items():
        path = info["path"]
        data = files[path]
        if config == release.DEFAULT_CONFIG:
            description = DEFAULT_DESCRIPTION
        else:
            description = f"Diagnostics configuration `{config}`, a row each: {_doc(records.CONFIGS[config])}"
        distribution.append(_file_object(path, data, PARQUET, f"The {config} configuration's {release.SPLIT} split"))
        record_sets.append(record_set(config, path, pq.read_schema(io.BytesIO(data)), description))
    for path in sorted(p for p in files if p.startswith(f"{release.WEBDATASET_DIR}/")):
        distribution.append(_file_object(path, files[path], TAR, "Webdataset shard of the items: <item_id>.json and "
                                                                 "<item_id>.jpg per row"))
    licences = sorted({lic for per_source in manifest["counts"]["licenses_per_source"].values() for lic in per_source})
    document = {
        "@context": CONTEXT,
        "@type": "sc:Dataset",
        "conformsTo": CONFORMS_TO,
        "name": manifest["name"],
        "alternateName": manifest["pretty_name"],
        "description": (
            "Pairs of images that a CLIP encoder sees as nearly the same while DINOv2 sees them as different "
            "(CLIP-blind pairs, as in Eyes Wide Shut?, Tong et al., CVPR 2024), each with one human-written question "
            f"whose right answer differs between the two images: {manifest['counts']['pairs']} pairs, "
            f"{manifest['counts']['items']} questions."
        ),
        "version": manifest["version"],
        "license": [_license_url(lic) for lic in licences],
        "inLanguage": "en",
        "keywords": ["mmvp", "clip-blind", "benchmark", "visual-patterns", "vision-language models"],
        "citeAs": manifest.get("citation") or manifest["name"],
        **responsible_ai(manifest),
        "distribution": distribution,
        "recordSet": record_sets,
    }
    return (json.dumps(document, indent=1, ensure_ascii=False) + "\n").encode()
