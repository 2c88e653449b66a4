"""bench embed: how close the embed stage runs to this machine's matmul rate, measured in one run.

Prints, for ViT-L/14-sized CLIP (open_clip) and DINOv2 encoders at 224 px with random
weights (same cost as trained ones):

* the machine's own dense matmul rate, bf16 and fp32 (2048³ GEMM), sampled between model
  batches too, so both rates see the same load on a shared machine;
* each encoder's forward FLOPs per image (torch.utils.flop_counter, attention counted on its
  math path), model-only images/s, and achieved FLOP/s ÷ bf16 matmul FLOP/s (target ≥ 60 %);
* the whole stage end to end (decode + preprocess + both models + shard writes) on generated
  JPEGs, as a ratio to the model-only rate of both encoders together (target ≥ 90 %);
* the largest difference of pairwise cosine similarities between bf16 and fp32 (limit 0.003);
* optionally (`--resume-trials N`) N SIGKILL-and-resume trials of the embed stage with tiny
  models: byte-identical output and at most one shard recomputed per worker.

`--profile` adds the top operators by CPU time of one batch per encoder.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.embedding.encoders import Encoder, load_encoder
from pipeline.params import REPOSITORY_PARAMS, EncoderParams

CLIP_L14 = EncoderParams(kind="open_clip", model="ViT-L-14", weights="random", dtype="bf16", device="cpu", image_size=224,
                         seed=0, config={})
DINO_L14 = EncoderParams(kind="dinov2", model="facebook/dinov2-large", weights="random", dtype="bf16", device="cpu",
                         image_size=224, seed=0, config={}, pooling="cls")
MATMUL_TARGET = 0.60
STAGE_TARGET = 0.90
COSINE_LIMIT = 0.003


class MatmulProbe:
    """Times a dense square GEMM, so the machine's matmul rate can be sampled between model runs.

    On a shared machine the load drifts; sampling the matmul rate in windows interleaved with
    the model's keeps the ratio of the two meaningful."""

    def __init__(self, dtype: str, n: int = 2048) -> None:
        import torch

        torch_dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
        self.a = torch.randn(n, n, dtype=torch_dtype)
        self.b = torch.randn(n, n, dtype=torch_dtype)
        self.flop_per_mm = 2 * n**3
        self.flops = 0.0
        self.seconds = 0.0
        self.sample(0.2)  # warm-up: kernels chosen, memory touched
        self.flops = self.seconds = 0.0

    def sample(self, seconds: float) -> None:
        """Run GEMMs for about `seconds` and add them to the tally."""
        import torch

        start = time.perf_counter()
        runs = 0
        while time.perf_counter() - start < seconds or runs < 2:
            torch.mm(self.a, self.b)
            runs += 1
        self.seconds += time.perf_counter() - start
        self.flops += runs * self.flop_per_mm

    @property
    def gflops(self) -> float:
        """GFLOP/s over every sample so far."""
        return self.flops / self.seconds / 1e9


def forward_flops(encoder: Encoder, size: int = 224) -> float:
    """FLOPs of one image's forward pass (matmuls and attention, counted by torch's flop counter)."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    batch = torch.randn(1, 3, size, size)
    # Neither the CPU flash-attention kernel nor oneDNN's fused linear is in the counter's table:
    # attention is counted on its math path, the fused linear as the GEMM it is.
    fused_linear = {torch.ops.mkldnn._linear_pointwise: _linear_flops} if hasattr(
        torch.ops.mkldnn, "_linear_pointwise") else {}
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False, custom_mapping=fused_linear) as counter:
        encoder.encode(batch)
    return float(counter.get_total_flops())


def _linear_flops(x_shape: Sequence[int], w_shape: Sequence[int], *args: Any, out_shape: Sequence[int], **kwargs: Any) -> int:
    return 2 * int(np.prod(x_shape)) * int(out_shape[-1])


def model_rate(encoder: Encoder, batch_size: int, batches: int, probe: MatmulProbe, size: int = 224) -> float:
    """Images/s of `encoder.encode` alone on preprocessed random batches (after one warm-up batch);
    `probe` samples the matmul rate for as long as each batch took, between batches."""
    import torch

    batch = torch.randn(batch_size, 3, size, size)
    encoder.encode(batch)
    elapsed = 0.0
    for _ in range(batches):
        start = time.perf_counter()
        encoder.encode(batch)
        took = time.perf_counter() - start
        elapsed += took
        probe.sample(took)
    return batch_size * batches / elapsed


def profile(encoder: Encoder, batch_size: int, rows: int = 10, size: int = 224) -> str:
    """The top operators by self CPU time for one batch."""
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    batch = torch.randn(batch_size, 3, size, size)
    encoder.encode(batch)
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        encoder.encode(batch)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def cosine_drift(params: EncoderParams, images: Sequence[Any]) -> float:
    """Largest |pairwise cosine (bf16) - pairwise cosine (fp32)| over `images` for one encoder."""
    import torch

    sims = []
    for dtype in ("fp32", "bf16"):
        encoder = load_encoder("drift", replace(params, dtype=dtype))
        vectors = encoder.encode(torch.stack([encoder.preprocess(im) for im in images]))
        sims.append(vectors @ vectors.T)
        del encoder
    return float(np.abs(sims[0] - sims[1]).max())


def generated_jpegs(folder: Path, count: int, seed: int = 0) -> None:
    """`count` distinct 640x480 JPEGs of the sample corpus's scenes (realistic decode cost)."""
    import random

    from pipeline.sample_corpus import draw, encode, random_scene

    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image = draw(random_scene(rng), size=640).resize((640, 480))
        (folder / f"{i:05d}.jpg").write_bytes(encode(image, "JPEG"))


def stage_vs_model(
    encoders: dict[str, Encoder], per_round: int, rounds: int, batch_size: int, workdir: Path
) -> tuple[float, float, list[float]]:
    """Images/s of the whole embed stage (decode, preprocess, both models, shard writes) on
    generated JPEGs and of both models alone on as many images, in alternating rounds; and the
    ratio of the two in each round (their median is robust to load that drifts between rounds)."""
    import torch

    from pipeline.embedding.engine import embed_corpus
    from pipeline.images.corpus import Corpus
    from pipeline.ingest import ingest
    from pipeline.params import EmbedParams, IngestParams, repository_params

    params = replace(repository_params("embed", EmbedParams), clip=CLIP_L14, dino=DINO_L14, batch_size=batch_size,
                     shard_size=per_round)
    ingest_params = repository_params("ingest", IngestParams)
    batch = torch.randn(batch_size, 3, 224, 224)
    stage_s = model_s = 0.0
    ratios = []
    for r in range(rounds):
        generated_jpegs(workdir / f"corpus-{r}", per_round, seed=r)
        corpus = Corpus(replace(ingest_params.sources[0], kind="folder", name="bench", license=None), workdir / f"corpus-{r}")
        table = ingest(corpus, replace(ingest_params, source=corpus.params)).images

        def models_alone() -> None:
            for _ in range(0, per_round, batch_size):
                for encoder in encoders.values():
                    encoder.encode(batch)

        def whole_stage(table: Any = table, corpus: Any = corpus, r: int = r) -> None:  # bound now: runs in this round
            embed_corpus(
                table.column("image_id").to_pylist(), table.column("source_path").to_pylist(), corpus, encoders,
                {n: workdir / f"out-{r}" / n for n in encoders}, params, max_pixels=50_000_000,
            )

        # Alternate which runs first, so load that drifts during a round favours neither.
        order = (models_alone, whole_stage) if r % 2 == 0 else (whole_stage, models_alone)
        took = {}
        for step in order:
            start = time.perf_counter()
            step()
            took[step] = time.perf_counter() - start
        model_round, stage_round = took[models_alone], took[whole_stage]
        model_s += model_round
        stage_s += stage_round
        ratios.append(model_round / stage_round)
    return per_round * rounds / stage_s, per_round * rounds / model_s, ratios


@dataclass(frozen=True)
class ResumeTrial:
    """One SIGKILL-and-resume trial of the embed stage."""

    shards: int
    complete_at_kill: int  # shards with every encoder's marker when the group was killed
    started_unfinished: int  # shards with some file written but not every marker: work lost
    rerun_written: int
    rerun_reused: int
    identical: bool  # every output file byte-identical to the uninterrupted run


def _killable_embed(argv: list[str]) -> None:
    os.setsid()  # its own process group, so the whole group can be killed like a scheduler would
    from pipeline import embed

    embed.main(argv)


def resume_trial(argv_for: Callable[[Path], list[str]], reference: Path, workdir: Path, kill_after: int) -> ResumeTrial:
    """Run the embed stage in its own process group, SIGKILL the group once every encoder has
    `kill_after` completion markers, rerun to completion in this process, and compare with the `reference` output."""
    from pipeline import embed

    out = workdir / "out"
    shutil.rmtree(out, ignore_errors=True)
    context = multiprocessing.get_context("forkserver")
    # Import the heavy libraries once in the fork server, not in every killed run.
    context.set_forkserver_preload(
        ["pipeline.embed", "open_clip", "torchvision", "transformers.models.dinov2.modeling_dinov2"]
    )
    child = context.Process(target=_killable_embed, args=(argv_for(out),))
    child.start()
    names = sorted(p.name for p in reference.iterdir() if p.is_dir())
    deadline = time.monotonic() + 300
    while child.is_alive() and time.monotonic() < deadline and min(
        len(list((out / n).glob("shard-*.done"))) for n in names
    ) < kill_after:
        time.sleep(0.002)
    if not child.is_alive():
        raise RuntimeError(f"the embed run ended (exit code {child.exitcode}) before {kill_after} markers existed")
    assert child.pid is not None  # started above
    os.killpg(child.pid, signal.SIGKILL)
    child.join()
    shard_files = {
        n: {p.name.lstrip(".").split(".")[0] for p in (out / n).glob("*shard-*")} for n in names
    }
    done = {n: {p.name.split(".")[0] for p in (out / n).glob("shard-*.done")} for n in names}
    complete = set.intersection(*done.values())
    started = set.union(*shard_files.values()) - complete
    embed.main(argv_for(out))
    metrics = json.loads((out / "embed.json").read_text())
    identical = all(_tree(out / n) == _tree(reference / n) for n in names)
    return ResumeTrial(metrics["shards"], len(complete), len(started), metrics["shards_written"], metrics["shards_reused"], identical)


def _tree(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def tiny_world(workdir: Path, scenes: int, shard_size: int) -> tuple[Callable[[Path], list[str]], Path]:
    """A generated corpus, its images table and tiny-model params; returns the stage argv builder and the reference output."""
    import yaml

    from pipeline import embed, ingest
    from pipeline.sample_corpus import generate

    tiny_clip = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
        "text_cfg": {"context_length": 16, "vocab_size": 1000, "width": 64, "heads": 2, "layers": 1},
    }
    tiny_dino = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "patch_size": 8, "mlp_ratio": 2}
    base = yaml.safe_load(REPOSITORY_PARAMS.read_text())  # the repository's values, tiny models and sizes laid over them
    params = {
        "ingest": {**base["ingest"], "source": {**base["ingest"]["source"], "kind": "folder", "name": "bench", "license": None},
                   "max_pixels": 10_000_000},
        "embed": {
            **base["embed"],
            "clip": {**base["embed"]["clip"], "kind": "open_clip", "model": "tiny-clip", "weights": "random", "image_size": 32,
                     "config": tiny_clip},
            "dino": {**base["embed"]["dino"], "kind": "dinov2", "model": "tiny-dino", "weights": "random", "image_size": 32,
                     "config": tiny_dino},
            "batch_size": max(1, shard_size // 2),
            "shard_size": shard_size,
        },
    }
    params_file = workdir / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    generate(workdir / "corpus", scenes=scenes, seed=1)
    images = workdir / "images.parquet"
    ingest.main(["--params", str(params_file), "--source", str(workdir / "corpus"), "--images", str(images),
                 "--rejects", str(workdir / "rejects.parquet"), "--metrics", str(workdir / "ingest.json")])

    def argv_for(out: Path) -> list[str]:
        return ["--params", str(params_file), "--images", str(images), "--source", str(workdir / "corpus"),
                "--clip", str(out / "clip"), "--dino", str(out / "dino"), "--metrics", str(out / "embed.json")]

    reference = workdir / "reference"
    embed.main(argv_for(reference))
    return argv_for, reference


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: `clipblind bench embed [--batch-size 8] [--images 32] [--resume-trials 20] [--profile]`."""
    parser = argparse.ArgumentParser(prog="clipblind bench embed", description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=3, help="timed batches per encoder (model-only)")
    parser.add_argument("--images", type=int, default=64, help="generated JPEGs for the end-to-end run (0: skip)")
    parser.add_argument("--drift-images", type=int, default=8, help="images for the bf16-vs-fp32 check (0: skip)")
    parser.add_argument("--resume-trials", type=int, default=0, help="SIGKILL-and-resume trials with tiny models")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--profile", action="store_true", help="print the top operators of one batch per encoder")
    parser.add_argument("--skip-models", action="store_true", help="only the resume trials")
    args = parser.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"bench embed: torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}", flush=True)
    results: dict[str, Any] = {}
    if not args.skip_models:
        results.update(_model_benchmarks(args))
    if args.resume_trials:
        results["resume"] = _resume_benchmark(args.resume_trials)
    print(json.dumps(results, indent=2, sort_keys=True))
    return 0


def _model_benchmarks(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    fp32 = MatmulProbe("fp32")
    fp32.sample(2.0)
    bf16 = MatmulProbe("bf16")
    bf16.sample(2.0)
    results["matmul_gflops"] = {"bf16": round(bf16.gflops, 1), "fp32": round(fp32.gflops, 1)}
    print(f"matmul: bf16 {bf16.gflops:.0f} GFLOP/s, fp32 {fp32.gflops:.0f} GFLOP/s (2048^3 GEMM)", flush=True)
    encoders = {"clip": load_encoder("clip", CLIP_L14), "dino": load_encoder("dino", DINO_L14)}
    for name, encoder in encoders.items():
        flops = forward_flops(encoder)
        probe = MatmulProbe("bf16")
        rate = model_rate(encoder, args.batch_size, args.batches, probe)
        ratio = rate * flops / 1e9 / probe.gflops
        results[name] = {
            "gflop_per_image": round(flops / 1e9, 2), "images_per_s": round(rate, 3),
            "gflops": round(rate * flops / 1e9, 1), "bf16_matmul_gflops_meanwhile": round(probe.gflops, 1),
            "ratio_to_bf16_matmul": round(ratio, 3), "meets_60_percent": ratio >= MATMUL_TARGET,
        }
        print(f"{name}: {flops / 1e9:.1f} GFLOP/img, {rate:.2f} img/s model-only = {rate * flops / 1e9:.0f} GFLOP/s "
              f"= {ratio:.1%} of the bf16 matmul rate sampled meanwhile ({probe.gflops:.0f} GFLOP/s; "
              f"target {MATMUL_TARGET:.0%})", flush=True)
        if args.profile:
            print(profile(encoder, args.batch_size), flush=True)
    if args.images:
        with tempfile.TemporaryDirectory(prefix="clipblind-bench-") as tmp:
            rounds = max(1, args.images // (2 * args.batch_size))
            stage, model_only, ratios = stage_vs_model(encoders, 2 * args.batch_size, rounds, args.batch_size, Path(tmp))
        median = float(np.median(ratios))
        results["stage"] = {"images_per_s": round(stage, 3), "model_only_images_per_s": round(model_only, 3),
                            "ratio_to_model_only": round(stage / model_only, 3),
                            "round_ratios": [round(r, 3) for r in ratios], "median_round_ratio": round(median, 3),
                            "meets_90_percent": median >= STAGE_TARGET}
        print(f"stage end to end: {stage:.2f} img/s vs both models alone {model_only:.2f} img/s "
              f"= {stage / model_only:.1%}; per round {', '.join(f'{r:.0%}' for r in ratios)}, "
              f"median {median:.1%} (target {STAGE_TARGET:.0%})", flush=True)
    del encoders
    if args.drift_images:
        import random

        from pipeline.sample_corpus import draw, random_scene

        rng = random.Random(7)
        images = [draw(random_scene(rng), size=256) for _ in range(args.drift_images)]
        for name, params in (("clip", CLIP_L14), ("dino", DINO_L14)):
            drift = cosine_drift(params, images)
            results[name]["bf16_cosine_drift"] = round(drift, 5)
            print(f"{name}: max |pairwise cosine bf16 - fp32| = {drift:.4f} (limit {COSINE_LIMIT})", flush=True)
    return results


def _resume_benchmark(trials: int) -> dict[str, Any]:
    records = []
    with tempfile.TemporaryDirectory(prefix="clipblind-resume-") as tmp:
        argv_for, reference = tiny_world(Path(tmp), scenes=3, shard_size=2)
        for trial in range(trials):
            record = resume_trial(argv_for, reference, Path(tmp) / "trial", kill_after=1 + trial % 5)
            records.append(record)
            print(f"resume trial {trial + 1}: {record}", flush=True)
    ok = all(r.identical and r.started_unfinished <= 1 and r.rerun_reused == r.complete_at_kill for r in records)
    print(f"resume: {sum(r.identical for r in records)}/{trials} byte-identical, at most "
          f"{max(r.started_unfinished for r in records)} shard recomputed per run", flush=True)
    return {"trials": trials, "all_ok": ok, "records": [r.__dict__ for r in records]}


if __name__ == "__main__":
    from pipeline.core.errors import run_command

    raise SystemExit(run_command(main, "bench embed"))
