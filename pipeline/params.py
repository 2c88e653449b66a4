"""params.yaml, typed: one frozen dataclass per section. Values live in params.yaml only."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pipeline.core.config import (
    COSINE_ABOVE,
    COSINE_BELOW,
    QUANTILE,
    AtLeastOne,
    Cosine,
    CosineAbove,
    Count,
    JpegQuality,
    ParamsError,
    Port,
    Positive,
    Quantile,
    Range,
    Seed,
    check_fields,
    check_range,
    load_section,
    require_by_kind,
)

T = TypeVar("T")

# The repository's own params file: code that builds params itself (benchmarks) starts from its values.
REPOSITORY_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def repository_params(section: str, cls: type[T]) -> T:
    """The `section` of the repository's params.yaml as `cls` (change fields with dataclasses.replace)."""
    return load_section(REPOSITORY_PARAMS, section, cls)

# Sub-sections: the types that stage sections nest.
SourceKind = Literal["folder", "manifest", "webdataset", "hf"]


EncoderKind = Literal["open_clip", "dinov2", "clip_retrieval"]  # clip_retrieval: imported, see pipeline.embedding.clip_retrieval

# The optional keys each kind needs (a key not listed for a kind is ignored by it).
SOURCE_KEYS: dict[str, tuple[str, ...]] = {
    "manifest": ("path_column", "part_size"),
    "hf": ("image_column", "split", "part_size"),
    "webdataset": ("license_field",),
}
ENCODER_KEYS: dict[str, tuple[str, ...]] = {"dinov2": ("pooling",)}
VLM_KEYS: dict[str, tuple[str, ...]] = {"openai": ("url", "api_key_env", "timeout")}


@dataclass(frozen=True)
class SourceParams:
    """One corpus source: how to list it and the licence its images carry."""

    kind: SourceKind
    name: str
    max_bytes: AtLeastOne  # larger files are rejected unread (`too_large`), so memory stays bounded
    license: str | None = None  # optional: default licence of every image the source gives none for
    # The keys below apply to some kinds only (SOURCE_KEYS says which a kind needs); optional otherwise.
    path_column: str | None = None  # manifest: the column of file paths
    license_column: str | None = None  # manifest, hf (optional): the column of per-item licences
    license_field: str | None = None  # webdataset: the key of the licence in a sample's .json member
    image_column: str | None = None  # hf: the column of images
    split: str | None = None  # hf: which split
    allow_pipe: bool | None = None  # webdataset (optional): true allows `pipe:` URLs (they run a shell command)
    part_size: AtLeastOne | None = None  # manifest, hf: rows per part

    def __post_init__(self) -> None:
        check_fields(self, "ingest.source")
        require_by_kind(self, "kind", SOURCE_KEYS)


@dataclass(frozen=True)
class EncoderParams:
    """One encoder: which model, which weights, and how to run it."""

    kind: EncoderKind
    model: str
    weights: str
    dtype: Literal["fp32", "bf16", "auto"]  # auto: bf16 where the CPU computes it natively
    device: Literal["cpu", "cuda"]
    image_size: AtLeastOne
    seed: Seed  # only used to initialise `weights: random`
    config: dict[str, Any]  # architecture overrides for `weights: random` ({}: none)
    pooling: Literal["cls", "mean"] | None = None  # dinov2 only (ENCODER_KEYS)

    def __post_init__(self) -> None:
        require_by_kind(self, "kind", ENCODER_KEYS)


@dataclass(frozen=True)
class VlmParams:
    """Which vision-language model answers, and how."""

    backend: Literal["transformers", "openai"]
    model: str  # transformers: a local model directory; openai: the model name the endpoint serves
    max_new_tokens: AtLeastOne
    # openai only (VLM_KEYS): optional for the other backends
    url: str | None = None  # openai: base URL, e.g. http://127.0.0.1:8000/v1
    api_key_env: str | None = None  # openai: environment variable holding the key (the variable may be unset)
    timeout: Positive | None = None  # openai: seconds

    def __post_init__(self) -> None:
        require_by_kind(self, "backend", VLM_KEYS)


@dataclass(frozen=True)
class SelectParams:
    """Params of pair selection (section `mine.select`)."""

    max_per_image: Count  # 0: no cap
    target: Count  # 0: keep every pair that passes the filters
    drop_near_duplicate_pairs: bool


@dataclass(frozen=True)
class Threshold:
    """A threshold given either as a cosine (`value`) or as a quantile over all pairs (`quantile`): one of them."""

    value: float | None = None  # its range is its threshold's: MineParams checks it
    quantile: Quantile | None = None


def _spec(threshold: float | Threshold, name: str, valid: Range | None = None) -> Threshold:
    """`threshold` as a Threshold, checked: exactly one of value or quantile, each in its range."""
    if not isinstance(threshold, Threshold):
        threshold = Threshold(value=float(threshold))
        key = f"mine.{name}"
    elif (threshold.value is None) == (threshold.quantile is None):
        raise ParamsError(f"params 'mine.{name}': give exactly one of value or quantile, got {threshold}")
    else:
        key = f"mine.{name}.value"
    if threshold.quantile is not None:
        check_range(QUANTILE, threshold.quantile, f"mine.{name}.quantile")
    elif valid is not None:
        check_range(valid, threshold.value, key)  # type: ignore[arg-type]
    return threshold


# Stage sections.
@dataclass(frozen=True)
class IngestParams:
    """Params of the ingest stage (section `ingest`)."""

    source: SourceParams | tuple[SourceParams, ...]  # one source, or a list of them
    max_pixels: AtLeastOne  # width × height cap, checked from the header before decoding
    batch_size: AtLeastOne  # items in flight (bytes held in memory at once)
    workers: AtLeastOne  # decode processes; 1 decodes in this process

    @property
    def sources(self) -> tuple[SourceParams, ...]:
        """The configured sources, one or several."""
        return (self.source,) if isinstance(self.source, SourceParams) else tuple(self.source)

    def __post_init__(self) -> None:
        check_fields(self, "ingest")


@dataclass(frozen=True)
class EngineParams:
    """Where the encoders run (section `embed.engine`)."""

    kind: Literal["local", "ray"]
    prefetch_batches: AtLeastOne  # local: decoded batches queued ahead of the model
    loader_threads: AtLeastOne  # local: decode threads (PIL releases the GIL); raise it for a GPU
    actors: AtLeastOne  # ray: encoder actors (each holds both models)
    actor_cpus: Positive  # ray: CPUs reserved per actor; fractions leave room for the read tasks
    read_cpus: Positive  # ray: CPUs reserved per decode task
    actor_threads: Count  # ray: torch threads per actor; 0 = the CPUs the actor reserved, at least 1
    address: str | None = None  # ray (optional): cluster address ("auto", "ray://head:10001"); none starts a private local instance


@dataclass(frozen=True)
class EmbedParams:
    """Params of the embed stage (section `embed`)."""

    clip: EncoderParams
    dino: EncoderParams
    batch_size: AtLeastOne
    shard_size: AtLeastOne
    threads: Count  # torch intra-op threads; 0 = torch's default
    engine: EngineParams


@dataclass(frozen=True)
class NearDuplicateGuard:
    """Drop (and count) candidates with CLIP cosine above `clip` AND DINOv2 cosine above `dino`."""

    clip: Cosine
    dino: Cosine


@dataclass(frozen=True)
class PartitionParams:
    """Partitioned mode: spherical k-means partitions, each vector also searched in its `probes` nearest other partitions."""

    partitions: AtLeastOne
    probes: Count
    train_size: AtLeastOne  # vectors sampled to train the k-means centroids
    iterations: AtLeastOne
    # a partition takes at most balance × the average number of members, and as many × the average visitors
    balance: Annotated[float, Range(1.0, meaning="a multiple of the average partition")]
    recall_sample_rows: AtLeastOne  # at least this many rows' pairs are also searched exactly, to measure recall
    recall_max_rows: AtLeastOne  # more rows, up to this many, until the recall's 95 % interval tells 0.99 from 0.95

    def __post_init__(self) -> None:
        if self.recall_sample_rows > self.recall_max_rows:
            raise ValueError(f"recall_sample_rows is {self.recall_sample_rows}, but it must be ≤ recall_max_rows "
                             f"({self.recall_max_rows}): change one of them in the params file")


@dataclass(frozen=True)
class SearchParams:
    """Params of the search stage (section `search`)."""

    recall_clip_threshold: CosineAbove  # keep candidates down to here, so thresholds above it need no new products
    mode: Literal["exact", "partitioned"]
    engine: Literal["local", "ray"]  # partitioned mode: run partitions as Ray tasks
    device: str  # torch device for the block products ("cuda" for a GPU)
    block_size: AtLeastOne
    threads: Count  # torch threads; 0 keeps torch's default
    near_duplicate: NearDuplicateGuard
    sample_pairs: Count  # random pairs for the quantiles of both distributions
    clusters: AtLeastOne  # k-means clusters over CLIP embeddings, for diverse selection
    seed: Seed
    partition: PartitionParams


@dataclass(frozen=True)
class MineParams:
    """Params of the mine stage (section `mine`)."""

    clip_threshold: Annotated[float, COSINE_ABOVE] | Threshold  # keep pairs with CLIP cosine strictly above
    dino_threshold: Annotated[float, COSINE_BELOW] | Threshold  # ... and DINOv2 cosine strictly below
    select: SelectParams

    def __post_init__(self) -> None:
        _spec(self.clip_threshold, "clip_threshold", COSINE_ABOVE)
        _spec(self.dino_threshold, "dino_threshold", COSINE_BELOW)


@dataclass(frozen=True)
class CalibrateParams:
    """Params of the calibrate stage (section `calibrate`)."""

    clip_grid: tuple[Cosine, ...]
    dino_grid: tuple[Cosine, ...]
    scatter_points: Count  # candidates drawn in the scatter plot (a seeded sample beyond that)
    seed: Seed


@dataclass(frozen=True)
class ExportParams:
    """Params of the export stage (section `export`)."""

    # Label Studio local-files URL; `d=` is relative to the document root, the display folder's parent
    # (Label Studio refuses a storage folder equal to its document root).
    url_prefix: str
    display_max_side: AtLeastOne
    jpeg_quality: JpegQuality


@dataclass(frozen=True)
class GalleryParams:
    """Params of the gallery stage (section `gallery`)."""

    thumb_size: AtLeastOne  # longest side of a thumbnail, pixels
    jpeg_quality: JpegQuality
    max_pairs: Count  # show the first this many pairs, in the pairs table's order (0: all)
    title: str


BLIND_TRIALS = 6  # image-free trials per question in the blind gate


BLIND_MIN_RIGHT = Range(1, BLIND_TRIALS, meaning=f"right answers of {BLIND_TRIALS} image-free trials that flag a question")


@dataclass(frozen=True)
class GateParams:
    """Params of the gate stage (section `gate`)."""

    vlm: VlmParams | None  # null: the gate does not run (no model); the card says so
    flagged: Literal["drop", "keep"]  # what package does with flagged pairs
    blind_min_right: Annotated[int, BLIND_MIN_RIGHT]  # of 6 trials without the right image (chance: 3)


@dataclass(frozen=True)
class PackageParams:
    """Params of the package stage (section `package`)."""

    version: str  # semantic version of this release; CHANGELOG needs a section for it
    name: str
    pretty_name: str
    # Source licences (SPDX ids) whose images may be redistributed as bytes; others are withheld.
    redistributable_licenses: tuple[str, ...]
    exclude: tuple[str, ...]  # pair ids or image sha256s taken down (each needs a changelog line)
    shard_size: AtLeastOne  # webdataset items per tar shard
    # mmvp_vlm/: 0 writes every pair with statements (pattern by pattern, MMVP's order); 15 writes exactly
    # 15 per pattern (the first by pair_id), what MMVP's evaluate_vlm.py assumes (mmvp.VLM_PAIRS_PER_CATEGORY)
    mmvp_vlm_pairs_per_pattern: Literal[0, 15]
    # option order per pair, seeded: the first image's answer is (a) in half of the pairs (recorded per item)
    option_order_seed: Seed


@dataclass(frozen=True)
class EvaluateParams:
    """Params of the evaluate stage (section `evaluate`)."""

    clip: tuple[EncoderParams, ...]
    vlm: tuple[VlmParams, ...]
    # also run the diagnostics (section `diagnose`) on the scored models; each VLM is then asked
    # 3 + len(grids) x permutations (+ permutations for a token shuffle) times per question instead of once
    diagnostics: bool


GRID = Range(2, 64, meaning="tiles per side of the shuffled image")
FRACTION = Range(0.0, 1.0, meaning="a share")


@dataclass(frozen=True)
class ShuffleParams:
    """Patch- and token-shuffle trials (section `diagnose.shuffle`)."""

    grids: tuple[Annotated[int, GRID], ...]  # g: each image cut into g x g tiles, the tiles permuted
    permutations: AtLeastOne  # K seeded permutations per grid (and per token shuffle)
    seed: Seed
    token_level: bool  # also permute the visual tokens after the projector (local transformers VLMs)
    global_cue_min_grid: Annotated[int, GRID]  # a pair right at every grid >= this (see min_rate) is tagged global_cue
    global_cue_min_rate: Annotated[float, FRACTION]  # share of the K seeds at which the pair stays right


@dataclass(frozen=True)
class EncoderDiagnosticsParams:
    """Can an encoder tell a pair's images apart (section `diagnose.encoders`)."""

    probe: Literal["linear", "knn"]  # leave-one-pair-out readout of each image's answer, within a pattern
    probe_min_train_pairs: AtLeastOne  # fewer training pairs in the pattern: the patch rule decides
    separable_min: Annotated[float, Range(0.0, 2.0, meaning="mean 1 - cosine of aligned patch tokens")]
    probe_l2: Positive  # linear probe: lambda of its objective, the log-losses summed + lambda / 2 * |w|^2
    # the chance control: the same probe with whole pairs' labels shuffled across the pattern's pairs, R seeded
    # rounds; p = (1 + rounds at or above the pattern's accuracy) / (1 + R) must be at most probe_max_p
    probe_permutations: AtLeastOne
    probe_max_p: Annotated[float, Range(0.0, 1.0, low_open=True, meaning="p-value at or below which a pattern's probe beats chance")]
    seed: Seed  # the label permutations of the chance control
    batch_size: AtLeastOne  # images per forward pass of an encoder

    def __post_init__(self) -> None:
        smallest = 1.0 / (1 + self.probe_permutations)
        if smallest > self.probe_max_p:
            raise ParamsError(
                f"params 'diagnose.encoders.probe_permutations' is {self.probe_permutations}: its p-value is at least "
                f"1 / (1 + {self.probe_permutations}) = {smallest:.3g}, above probe_max_p {self.probe_max_p:g}, so no "
                f"probe could beat chance: raise it to at least {math.ceil(1.0 / self.probe_max_p - 1.0 - 1e-9)}")


@dataclass(frozen=True)
class TextBiasParams:
    """Text-only bias score per question (section `diagnose.text_bias`)."""

    folds: Annotated[int, Range(2, meaning="folds (grouped by pair)")]
    seed: Seed
    threshold: Annotated[float, Range(0.5, 1.0, meaning="P(right answer) from text alone above which a question is listed")]


@dataclass(frozen=True)
class DiagnoseParams:
    """Why models fail, per question (section `diagnose`); the models are `evaluate.vlm`, the encoders embed's."""

    shuffle: ShuffleParams
    encoders: EncoderDiagnosticsParams
    text_bias: TextBiasParams


@dataclass(frozen=True)
class DraftParams:
    """Params of the draft command (section `draft`)."""

    vlm: VlmParams | None  # the model that drafts questions; null: `clipblind draft` refuses and says so
    panel_height: AtLeastOne  # pixels: each image's height in the side-by-side picture the model sees


@dataclass(frozen=True)
class ValidateParams:
    """Params of the validate stage (section `validate`)."""

    options_ignore_case: bool  # "Left" and "left " count as identical options


@dataclass(frozen=True)
class AcceptParams:
    """Params of the accept stage (section `accept`)."""

    verifiers: AtLeastOne  # answers from people other than the writer needed per question


@dataclass(frozen=True)
class LabelStudioParams:
    """Params of the annotation server (section `labelstudio`)."""

    port: Port  # the writing server (writers and the lead)
    verification_port: Port  # the verification server (verifiers and the lead)
    data_dir: str  # a folder per server: database, secret key, PID file, log, admin secret
    venv: str  # overridden by the CLIPBLIND_LABELSTUDIO_VENV environment variable
    database: Literal["sqlite", "postgresql"]
    writing_project: str
    verification_project: str
    start_timeout_s: Positive

    def __post_init__(self) -> None:
        if self.port == self.verification_port:
            raise ParamsError(f"labelstudio.port and labelstudio.verification_port are both {self.port}: "
                              "the writing and the verification server each need a port of their own")
