"""MMVP's own reading and scoring logic, re-implemented as a test oracle for the `mmvp/` and `mmvp_vlm/` layouts.

This module mirrors, statement for statement, what MMVP's published scripts do with a benchmark
folder (github.com/tsb0601/MMVP, `scripts/`), and deliberately nothing of clipblind: it imports
no project module, so a layout that clipblind writes wrongly cannot be read "right" by it.

* `scripts/evaluate_mllm.py`, `eval_model`: `pd.read_csv(<dir>/Questions.csv)`, then for every
  `index, row in df.iterrows()` the prompt `row['Question'] + " " + row['Options']`, the image
  `<dir>/MMVP Images/<index + 1>.jpg` (row position, not the `Index` column), and the answer
  `row["Correct Answer"]` written to the answers file with `question_id = index + 1`.
  → `read_mmvp`.
* `scripts/gpt_grader.py`: answers are graded one by one in file order; every two consecutive
  answers form a pair, counted right only when both are right; accuracy = pairs right / pairs.
  → `score_mmvp`.
* `scripts/evaluate_vlm.py`, `benchmark_model`: the category list below, in its order;
  `csv.reader` over `<dir>/Questions.csv`, header skipped; rows taken two at a time
  (`qid, qtype, statement`; a lone last row ends the loop); both images opened from the FIRST
  row's type folder, `<dir>/MLLM_VLM Images/<qtype1>/<qid>.jpg`; text `'a photo of ' + statement`;
  ground truth `img1` for an odd question id, `img2` for an even one; prediction `img1` when the
  softmax probability of image 1 for a statement is above 0.5; pair k labelled
  `categories[k // 15]`; per-category accuracy = right pairs / (num_pairs // 9) * 100.
  → `read_mmvp_vlm` and `score_mmvp_vlm`. The script hard-codes 15 pairs per category; the
  reduced form (`pairs_per_category=None`) applies the same arithmetic with num_pairs // 9,
  for small test releases.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# MMVP's category list as scripts/evaluate_vlm.py spells and orders it. Kept here, not imported:
# the oracle is MMVP's reading of a folder, independent of the code that wrote the folder.
MMVP_CATEGORIES: tuple[str, ...] = (
    "Orientation and Direction", "Presence of Specific Features",
    "State and Condition", "Quantity and Count",
    "Positional and Relational Context", "Color and Appearance",
    "Structural Characteristics", "Texts",
    "Viewpoint and Perspective",
)
MMVP_PAIRS_PER_CATEGORY = 15  # evaluate_vlm.py: `categories[num_pairs // 15]`


@dataclass(frozen=True)
class MmvpQuestion:
    """One row as evaluate_mllm.py uses it: its question id, prompt, image path and answer."""

    question_id: int  # index + 1
    prompt: str  # Question + " " + Options
    image_path: str
    answer: str  # the "Correct Answer" cell


@dataclass(frozen=True)
class VlmPair:
    """One pair as evaluate_vlm.py reads it."""

    category: str
    image_a: str  # path of the first row's image
    image_b: str
    statement_a: str
    statement_b: str
    qid_a: int
    qid_b: int

    @property
    def texts(self) -> tuple[str, str]:
        """The two prompts the script tokenises."""
        return "a photo of " + self.statement_a, "a photo of " + self.statement_b

    @property
    def truth(self) -> tuple[str, str]:
        """Which image each statement belongs to, by the parity of its question id."""
        return ("img1" if self.qid_a % 2 == 1 else "img2"), ("img1" if self.qid_b % 2 == 1 else "img2")


def read_mmvp(folder: str | os.PathLike[str]) -> list[MmvpQuestion]:
    """Every row of an MMVP folder, read as evaluate_mllm.py reads it (pandas, image by row position)."""
    import pandas as pd

    df = pd.read_csv(os.path.join(folder, "Questions.csv"))
    questions = []
    for index, row in df.iterrows():
        photo_id = index + 1
        questions.append(MmvpQuestion(
            question_id=photo_id,
            prompt=row["Question"] + " " + row["Options"],
            image_path=os.path.join(folder, "MMVP Images", f"{photo_id}.jpg"),
            answer=row["Correct Answer"],
        ))
    return questions


def score_mmvp(graded: Sequence[bool]) -> float:
    """gpt_grader.py's accuracy: consecutive answers in pairs, a pair right when both are right."""
    num_correct = num_total = 0
    index = round_correct = 0
    for grade in graded:
        index += 1
        if grade:
            round_correct += 1
        if index == 2:
            index = 0
            if round_correct == 2:
                num_correct += 1
            round_correct = 0
            num_total += 1
    return num_correct / num_total


def read_mmvp_vlm(folder: str | os.PathLike[str], pairs_per_category: int | None = MMVP_PAIRS_PER_CATEGORY) -> list[VlmPair]:
    """Every pair of an MMVP-VLM folder with the category evaluate_vlm.py gives it.

    `pairs_per_category=None` is the reduced form: num_pairs // 9 pairs per category.
    Like the script, a folder with more pairs than categories can hold raises IndexError.
    """
    image_dir = os.path.join(folder, "MLLM_VLM Images")
    rows: list[tuple[int, str, str, int, str, str]] = []
    with open(os.path.join(folder, "Questions.csv")) as f:
        reader = csv.reader(f)
        next(reader)
        for row in reader:
            qid1, qtype1, statement1 = row
            row = next(reader, None)
            if not row:
                break
            qid2, _qtype2, statement2 = row
            rows.append((int(qid1), qtype1, statement1, int(qid2), _qtype2, statement2))
    per_category = pairs_per_category if pairs_per_category is not None else len(rows) // len(MMVP_CATEGORIES)
    pairs = []
    for num_pairs, (qid1, qtype1, statement1, qid2, _, statement2) in enumerate(rows):
        pairs.append(VlmPair(
            category=MMVP_CATEGORIES[num_pairs // per_category],
            image_a=os.path.join(image_dir, qtype1, f"{qid1}.jpg"),
            image_b=os.path.join(image_dir, qtype1, f"{qid2}.jpg"),
            statement_a=statement1, statement_b=statement2, qid_a=qid1, qid_b=qid2,
        ))
    return pairs


def score_mmvp_vlm(pairs: Sequence[VlmPair], image1_probability: Mapping[tuple[int, int], tuple[float, float]]
                   ) -> dict[str, float]:
    """evaluate_vlm.py's per-category pair accuracy (%), given for each pair (qid_a, qid_b) the
    probability of image 1 for statement a and for statement b."""
    accuracies = {category: 0.0 for category in MMVP_CATEGORIES}
    for pair in pairs:
        p1, p2 = image1_probability[(pair.qid_a, pair.qid_b)]
        pred1 = "img1" if p1 > 0.5 else "img2"
        pred2 = "img1" if p2 > 0.5 else "img2"
        gt1, gt2 = pair.truth
        if pred1 == gt1 and pred2 == gt2:
            accuracies[pair.category] += 1
    for category in accuracies:
        accuracies[category] = accuracies[category] / (len(pairs) // len(MMVP_CATEGORIES)) * 100
    return accuracies
