"""MMVP's two on-disk layouts, written so MMVP's own evaluation scripts read them unchanged.

* MMVP (multimodal LLMs): `MMVP Images/<index>.jpg` and `Questions.csv` with the header
  `Index,Question,Options,Correct Answer`; options are written `(a) <text> (b) <text>`; a
  pair's two images sit on consecutive indices (MMVP's scorer pairs rows 1-2, 3-4, ...).
* MMVP-VLM (CLIP-family encoders): `MLLM_VLM Images/<Type>/<Question ID>.jpg` and
  `Questions.csv` with `Question ID,Type,Statement`; the odd id is the pair's first image,
  the prompt is "a photo of <statement>". `<Type>` is `Pattern.vlm_type` (pipeline.core.patterns).
  MMVP's `scripts/evaluate_vlm.py` labels pair k with `categories[k // 15]`, its categories in
  `pipeline.patterns.PATTERNS` order, and divides by num_pairs // 9: its labels are right only
  when pairs are listed pattern by pattern in that order, exactly 15 per pattern.

MMVP's scripts find ground truth by row position and file name; the benchmark's own tables
keep it explicit (pair_id, member, answer) and these layouts are derived from them. Cells hold
the text exactly as written and verified: formula-like text is refused at validation.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.errors import ClipblindError
from pipeline.core.patterns import ANSWERS

MMVP_DIR = "mmvp"
MMVP_IMAGES = "MMVP Images"
MMVP_HEADER = ("Index", "Question", "Options", "Correct Answer")
VLM_DIR = "mmvp_vlm"
VLM_IMAGES = "MLLM_VLM Images"
VLM_HEADER = ("Question ID", "Type", "Statement")
QUESTIONS = "Questions.csv"
# MMVP's evaluate_vlm.py hard-codes this many pairs per category (`categories[num_pairs // 15]`).
VLM_PAIRS_PER_CATEGORY = 15


def options_text(option_a: str, option_b: str) -> str:
    """MMVP's options cell: `(a) <text> (b) <text>`."""
    return f"{ANSWERS[0]} {option_a.strip()} {ANSWERS[1]} {option_b.strip()}"


@dataclass(frozen=True)
class MmvpRow:
    """One row of MMVP's Questions.csv (one image)."""

    index: int
    question: str
    options: str
    answer: str


@dataclass(frozen=True)
class VlmRow:
    """One row of MMVP-VLM's Questions.csv (one image)."""

    question_id: int
    type: str
    statement: str


def _csv_bytes(header: Sequence[str], rows: Iterable[Sequence[object]]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue().encode("utf-8")


def mmvp_questions_csv(rows: Sequence[MmvpRow]) -> bytes:
    """MMVP's Questions.csv for `rows` (in index order)."""
    return _csv_bytes(MMVP_HEADER, [(r.index, r.question, r.options, r.answer) for r in rows])


def vlm_questions_csv(rows: Sequence[VlmRow]) -> bytes:
    """MMVP-VLM's Questions.csv for `rows` (in id order)."""
    return _csv_bytes(VLM_HEADER, [(r.question_id, r.type, r.statement) for r in rows])


def mmvp_image_path(index: int) -> str:
    """Path of image `index` inside the MMVP layout folder."""
    return f"{MMVP_IMAGES}/{index}.jpg"


def vlm_image_path(question_id: int, vlm_type: str) -> str:
    """Path of an MMVP-VLM image inside the MMVP-VLM layout folder (`vlm_type`: `Pattern.vlm_type`)."""
    return f"{VLM_IMAGES}/{vlm_type}/{question_id}.jpg"


class LayoutError(ClipblindError, ValueError):
    """A folder does not hold a readable MMVP or MMVP-VLM layout."""


def _read_questions(folder: str | Path, header: tuple[str, ...], images: str) -> list[list[str]]:
    path = Path(folder) / QUESTIONS
    if not path.exists():
        raise LayoutError(f"{path} not found: the folder must hold '{QUESTIONS}' and '{images}/'")
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        found = next(reader, None)
        if tuple(found or ()) != header:
            raise LayoutError(f"{path}: header {found}, expected {list(header)}")
        return [r for r in reader if r]


def read_mmvp(folder: str | Path) -> list[MmvpRow]:
    """Read an MMVP folder's Questions.csv the way MMVP's scripts do (row order is the index)."""
    rows = _read_questions(folder, MMVP_HEADER, MMVP_IMAGES)
    return [MmvpRow(int(r[0]), r[1], r[2], r[3].strip()) for r in rows]


def read_vlm(folder: str | Path) -> list[VlmRow]:
    """Read an MMVP-VLM folder's Questions.csv."""
    return [VlmRow(int(r[0]), r[1], r[2]) for r in _read_questions(folder, VLM_HEADER, VLM_IMAGES)]


def parse_options(cell: str) -> tuple[str, str]:
    """The two option texts of an MMVP options cell `(a) X (b) Y`."""
    text = cell.strip()
    first, second = ANSWERS
    start, split = text.find(first), text.find(second)
    if start != 0 or split < 0:
        raise LayoutError(f"options cell {cell!r} is not of the form '{first} ... {second} ...'")
    return text[len(first):split].strip(), text[split + len(second):].strip()
