"""params.yaml, typed: one frozen dataclass per section. Values live in params.yaml only."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

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
    Positive,
    Quantile,
    Range,
    Seed,
    check_fields,
    check_range,
)
from pipeline.images.decode import DEFAULT_MAX_PIXELS

# Sub-sections: the types that stage sections nest.
SourceKind = Literal["folder", "manifest", "webdataset", "hf"]


EncoderKind = Literal["open_clip", "dinov2", "clip_retrieval"]  # clip_retrieval: imported, see pipeline.embedding.clip_retrieval


@dataclass(frozen=True)
class SourceParams:
    """One corpus source: how to list it and the licence its images carry."""

    kind: SourceKind
    name: str = "corpus"
    license: str | None = None  # default licence of every image the source gives none for
    path_column: str = "path"  # manifest: the column of file paths
    license_column: str | None = None  # manifest, hf: the column of per-item licences
    license_field: str = "license"  # webdataset: the key of the licence in a sample's .json member
    image_column: str = "image"  # hf: the column of images
    split: str = "train"  # hf: which split
    allow_pipe: bool = False  # webdataset: allow `pipe:` URLs (they run a shell command)
    part_size: AtLeastOne = 10_000  # manifest, hf: rows per part
    max_bytes: AtLeastOne = 256 * 2**20  # larger files are rejected unread (`too_large`), so memory stays bounded

    def __post_init__(self) -> None:
        check_fields(self, "ingest.source")


@dataclass(frozen=True)
class EncoderParams:
    """One encoder: which model, which weights, and how to run it."""

    kind: EncoderKind
    model: str
    weights: str
    pooling: Literal["cls", "mean"] = "cls"  # dinov2 only
    dtype: Literal["fp32", "bf16", "auto"] = "fp32"  # auto: bf16 where the CPU computes it natively
    device: Literal["cpu", "cuda"] = "cpu"
    image_size: AtLeastOne = 224
    seed: Seed = 0  # only used to initialise `weights: random`
    config: dict[str, Any] = field(default_factory=dict)  # architecture overrides for `weights: random`


@dataclass(frozen=True)
class VlmParams:
    """Which vision-language model answers, and how."""

    backend: Literal["transformers", "openai"]
    model: str  # transformers: a local model directory; openai: the model name the endpoint serves
    url: str | None = None  # openai: base URL, e.g. http://127.0.0.1:8000/v1
    api_key_env: str = "OPENAI_API_KEY"  # openai: environment variable holding the key (may be unset)
    max_new_tokens: AtLeastOne = 16
    timeout: Positive = 120.0  # seconds


@dataclass(frozen=True)
class SelectParams:
    """Params of pair selection (section `mine.select`)."""

    max_per_image: Count = 0  # 0: no cap
    target: Count = 0  # 0: keep every pair that passes the filters
    drop_near_duplicate_pairs: bool = True


@dataclass(frozen=True)
class Threshold:
    """A threshold given either as a cosine (`value`) or as a quantile over all pairs (`quantile`)."""

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
    max_pixels: AtLeastOne = DEFAULT_MAX_PIXELS  # width × height cap, checked from the header before decoding
    batch_size: AtLeastOne = 256  # items in flight (bytes held in memory at once)
    workers: AtLeastOne = 1  # decode processes; 1 decodes in this process

    @property
    def sources(self) -> tuple[SourceParams, ...]:
        """The configured sources, one or several."""
        return (self.source,) if isinstance(self.source, SourceParams) else tuple(self.source)

    def __post_init__(self) -> None:
        check_fields(self, "ingest")


@dataclass(frozen=True)
class EngineParams:
    """Where the encoders run (section `embed.engine`)."""

    kind: Literal["local", "ray"] = "local"
    prefetch_batches: AtLeastOne = 2  # local: decoded batches queued ahead of the model
    loader_threads: AtLeastOne = 1  # local: decode threads (PIL releases the GIL); raise it for a GPU
    address: str | None = None  # ray: cluster address ("auto", "ray://head:10001"); none starts a private local instance
    actors: AtLeastOne = 2  # ray: encoder actors (each holds both models)
    actor_cpus: Positive = 0.5  # ray: CPUs reserved per actor; fractions leave room for the read tasks
    read_cpus: Positive = 0.25  # ray: CPUs reserved per decode task
    actor_threads: Count = 0  # ray: torch threads per actor; 0 = the CPUs the actor reserved, at least 1


@dataclass(frozen=True)
class EmbedParams:
    """Params of the embed stage (section `embed`)."""

    clip: EncoderParams
    dino: EncoderParams
    batch_size: AtLeastOne = 16
    shard_size: AtLeastOne = 4096
    threads: Count = 0  # torch intra-op threads; 0 = torch's default
    engine: EngineParams = field(default_factory=EngineParams)


@dataclass(frozen=True)
class NearDuplicateGuard:
    """Drop (and count) candidates with CLIP cosine above `clip` AND DINOv2 cosine above `dino`."""

    clip: Cosine = 0.995
    dino: Cosine = 0.98


@dataclass(frozen=True)
class PartitionParams:
    """Partitioned mode: spherical k-means partitions, each vector also searched in its `probes` nearest other partitions."""

    partitions: AtLeastOne = 48
    probes: Count = 4
    train_size: AtLeastOne = 100_000  # vectors sampled to train the k-means centroids
    iterations: AtLeastOne = 20
    # a partition takes at most balance × the average number of members, and as many × the average visitors
    balance: Annotated[float, Range(1.0, meaning="a multiple of the average partition")] = 1.25
    recall_sample_rows: AtLeastOne = 1000  # at least this many rows' pairs are also searched exactly, to measure recall
    recall_max_rows: AtLeastOne = 20_000  # more rows, up to this many, until the recall's 95 % interval tells 0.99 from 0.95

    def __post_init__(self) -> None:
        if self.recall_sample_rows > self.recall_max_rows:
            raise ValueError(f"recall_sample_rows is {self.recall_sample_rows}, but it must be ≤ recall_max_rows "
                             f"({self.recall_max_rows}): change one of them in the params file")


@dataclass(frozen=True)
class SearchParams:
    """Params of the search stage (section `search`)."""

    recall_clip_threshold: CosineAbove = 0.9  # keep candidates down to here, so thresholds above it need no new products
    mode: Literal["exact", "partitioned"] = "exact"
    engine: Literal["local", "ray"] = "local"  # partitioned mode: run partitions as Ray tasks
    device: str = "cpu"  # torch device for the block products ("cuda" for a GPU)
    block_size: AtLeastOne = 4096
    threads: Count = 0  # torch threads; 0 keeps torch's default
    near_duplicate: NearDuplicateGuard = field(default_factory=NearDuplicateGuard)
    sample_pairs: Count = 200_000  # random pairs for the quantiles of both distributions
    clusters: AtLeastOne = 16  # k-means clusters over CLIP embeddings, for diverse selection
    seed: Seed = 0
    partition: PartitionParams = field(default_factory=PartitionParams)


@dataclass(frozen=True)
class MineParams:
    """Params of the mine stage (section `mine`)."""

    clip_threshold: Annotated[float, COSINE_ABOVE] | Threshold = 0.95  # keep pairs with CLIP cosine strictly above
    dino_threshold: Annotated[float, COSINE_BELOW] | Threshold = 0.6  # ... and DINOv2 cosine strictly below
    select: SelectParams = field(default_factory=SelectParams)

    def __post_init__(self) -> None:
        _spec(self.clip_threshold, "clip_threshold", COSINE_ABOVE)
        _spec(self.dino_threshold, "dino_threshold", COSINE_BELOW)


@dataclass(frozen=True)
class CalibrateParams:
    """Params of the calibrate stage (section `calibrate`)."""

    clip_grid: tuple[Cosine, ...] = (0.9, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99)
    dino_grid: tuple[Cosine, ...] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    scatter_points: Count = 50_000  # candidates drawn in the scatter plot (a seeded sample beyond that)
    seed: Seed = 0


@dataclass(frozen=True)
class ExportParams:
    """Params of the export stage (section `export`)."""

    # Label Studio local-files URL; `d=` is relative to the document root, the display folder's parent
    # (Label Studio refuses a storage folder equal to its document root).
    url_prefix: str = "/data/local-files/?d=display/"
    display_max_side: AtLeastOne = 1024
    jpeg_quality: JpegQuality = 92


@dataclass(frozen=True)
class GalleryParams:
    """Params of the gallery stage (section `gallery`)."""

    thumb_size: AtLeastOne = 256  # longest side of a thumbnail, pixels
    jpeg_quality: JpegQuality = 85
    max_pairs: Count = 0  # show the first this many pairs, in the pairs table's order (0: all)
    title: str = "clipblind: mined pairs"


BLIND_TRIALS = 6  # image-free trials per question in the blind gate


BLIND_MIN_RIGHT = Range(1, BLIND_TRIALS, meaning=f"right answers of {BLIND_TRIALS} image-free trials that flag a question")


@dataclass(frozen=True)
class GateParams:
    """Params of the gate stage (section `gate`)."""

    vlm: VlmParams | None = None  # null: the gate does not run (no model); the card says so
    flagged: Literal["drop", "keep"] = "keep"  # what package does with flagged pairs
    blind_min_right: Annotated[int, BLIND_MIN_RIGHT] = 6  # of 6 trials without the right image (chance: 3)


@dataclass(frozen=True)
class PackageParams:
    """Params of the package stage (section `package`)."""

    version: str  # semantic version of this release; CHANGELOG needs a section for it
    name: str = "clipblind-benchmark"
    pretty_name: str = "clipblind CLIP-blind pairs"
    # Source licences (SPDX ids) whose images may be redistributed as bytes; others are withheld.
    redistributable_licenses: tuple[str, ...] = ("CC0-1.0", "PDDL-1.0", "CC-BY-4.0", "CC-BY-SA-4.0")
    exclude: tuple[str, ...] = ()  # pair ids or image sha256s taken down (each needs a changelog line)
    shard_size: AtLeastOne = 1000  # webdataset items per tar shard
    # mmvp_vlm/: 0 writes every pair with statements (pattern by pattern, MMVP's order); 15 writes exactly
    # 15 per pattern (the first by pair_id), what MMVP's evaluate_vlm.py assumes (mmvp.VLM_PAIRS_PER_CATEGORY)
    mmvp_vlm_pairs_per_pattern: Literal[0, 15] = 0


@dataclass(frozen=True)
class EvaluateParams:
    """Params of the evaluate stage (section `evaluate`)."""

    clip: tuple[EncoderParams, ...] = ()
    vlm: tuple[VlmParams, ...] = ()


@dataclass(frozen=True)
class ValidateParams:
    """Params of the validate stage (section `validate`)."""

    options_ignore_case: bool = True  # "Left" and "left " count as identical options


@dataclass(frozen=True)
class AcceptParams:
    """Params of the accept stage (section `accept`)."""

    verifiers: AtLeastOne = 1  # answers from people other than the writer needed per question
